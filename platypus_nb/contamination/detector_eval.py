"""The detector evaluation set: training rows that reword a real test item (positives) or ask something else on the
same topic (hard negatives), built by deterministic rules from the vendored benchmark data, and its scoring.

Each row is a training row (``instruction``, ``input``, ``output``, ``data_source``) plus ``id``, ``kind``,
``benchmark``, ``label`` (1: it reproduces the test item ``test_id``; 0: it does not reproduce any test item, and
``test_id`` is its nearest test item of the same subject, for reading) and ``split`` (``dev`` / ``heldout`` by a
hash of the id: rules are tuned on dev, reported on both). How each kind is made is in ``KINDS`` and in
docs/contamination.md; every rule is a text rewrite written here, and 27 rewordings were written by hand
(``HAND_WRITTEN``); no model generated any row. Negatives that still ask a test question are found by the audit
(``AUDIT_FILE``, :func:`load_eval_rows`).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import defaultdict
from dataclasses import replace
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from platypus_nb import stats
from platypus_nb.assets import data_file
from platypus_nb.benchmarks_data import read_benchmark
from platypus_nb.config import LEADERBOARD_TEST_SETS, ContaminationConfig
from platypus_nb.contamination.analysis import flag_pairs, nearest_training_rows, semantic_pairs
from platypus_nb.contamination.lexical import lexical_pairs
from platypus_nb.contamination.segments import question_stem
from platypus_nb.contamination.testsets import TestItem, load_test_set
from platypus_nb.contracts import question_text
from platypus_nb.contamination.verifier import Pieces, content_words, embed_pieces
from platypus_nb.embeddings import EmbeddingCache
from platypus_nb.io import read_jsonl

KINDS = {
    # positives
    "verbatim": "the test question copied unchanged (a control: today's rule already removes it)",
    "options_appended": "the question with its options appended as 'A. ...' lines (control)",
    "options_reordered": "the question reworded (synonym table) with its options shuffled and re-lettered",
    "options_dropped": "the question reworded (synonym table) with only the correct option and one distractor",
    "synonyms": "every word found in a hand-written table of exam-question synonyms replaced (with probability 0.9)",
    "reframed": "the question frame rewritten by hand-written templates (imperative for interrogative, "
                "'Which of the following' to 'Identify, among the options below, ...'), plus synonyms",
    "passage_stripped": "an MMLU item with a source passage asked by its question stem alone, reworded",
    "context_continued": "a HellaSwag context reworded, with its correct ending as the training answer",
    "voice_changed": "written by hand: voice, order and wording changed as a person paraphrases (HAND_WRITTEN)",
    # hard negatives
    "same_subject": "an MMLU dev/validation question against the MMLU test item of its subject that shares the "
                    "largest share of its content words",
    "arc_validation": "an ARC-Challenge/Easy validation question against the ARC-Challenge test item sharing the "
                      "largest share of its content words",
    "other_numbers": "a test question with every number changed (the same template, another problem)",
    "other_entity": "a TruthfulQA question with its named place or person swapped for another",
    # built as a negative, judged a positive
    "judged_same": "built as a hard negative (any kind above), but the audit judged it to ask a test item's question "
                   "(AUDIT_FILE: a number or name changed where it does not change the ask): a positive",
}

# Exam-question synonyms, written by hand: each word maps to one replacement of the same part of speech.
SYNONYMS = {
    "which": "what", "following": "listed", "best": "most accurately", "describes": "characterizes",
    "describe": "characterize", "most": "mostly", "likely": "probably", "because": "since", "shows": "demonstrates",
    "show": "demonstrate", "increase": "rise", "increases": "rises", "decrease": "drop", "decreases": "drops",
    "large": "big", "small": "little", "used": "employed", "use": "employ", "uses": "employs", "using": "employing",
    "important": "significant", "example": "instance", "result": "outcome", "results": "outcomes",
    "cause": "bring about", "causes": "brings about", "caused": "brought about", "change": "alteration",
    "changes": "alterations", "student": "pupil", "students": "pupils", "scientist": "researcher",
    "scientists": "researchers", "determine": "establish", "identify": "pinpoint", "explain": "account for",
    "happens": "occurs", "happen": "occur", "begin": "start", "begins": "starts", "began": "started",
    "problem": "issue", "method": "technique", "purpose": "aim", "effect": "consequence", "effects": "consequences",
    "correct": "right", "true": "accurate", "false": "untrue", "statement": "assertion", "statements": "assertions",
    "person": "individual", "people": "individuals", "man": "gentleman", "woman": "lady", "child": "kid",
    "children": "kids", "buy": "purchase", "bought": "purchased", "help": "assist", "helps": "assists",
    "needed": "required", "need": "require", "needs": "requires", "enough": "sufficient", "quickly": "rapidly",
    "fast": "rapid", "slow": "sluggish", "area": "region", "areas": "regions", "energy": "power",
    "light": "illumination", "water": "H2O", "air": "atmosphere", "earth": "Earth's", "rock": "stone",
    "rocks": "stones", "plant": "vegetation", "animal": "creature", "animals": "creatures", "body": "organism",
    "city": "town", "country": "nation", "countries": "nations", "government": "administration",
    "law": "statute", "laws": "statutes", "court": "tribunal", "agreement": "accord", "contract": "agreement",
    "claim": "assertion", "evidence": "proof", "rule": "regulation", "rules": "regulations", "right": "entitlement",
    "made": "produced", "make": "produce", "makes": "produces", "get": "obtain", "gets": "obtains", "got": "obtained",
    "find": "locate", "found": "located", "main": "principal", "primary": "principal",
    "typically": "usually", "often": "frequently", "always": "invariably", "never": "at no time", "also": "as well",
    "however": "nevertheless", "therefore": "thus", "about": "regarding", "between": "amongst", "before": "prior to",
    "after": "following", "during": "throughout", "within": "inside", "without": "lacking", "called": "termed",
    "known": "recognized", "consider": "contemplate", "considered": "regarded", "suppose": "assume",
    "assume": "suppose", "given": "provided", "gives": "provides", "give": "provide", "wants": "wishes",
    "want": "wish", "tells": "informs", "tell": "inform", "said": "stated", "says": "states", "say": "state",
    "asked": "requested", "ask": "request", "answer": "response", "answers": "responses", "question": "query",
    "questions": "queries", "difference": "distinction", "different": "distinct", "similar": "alike",
    "same": "identical", "several": "a number of", "many": "numerous", "each": "every", "all": "every one of",
    "only": "solely", "first": "initial", "last": "final", "higher": "greater", "lower": "lesser",
    "possible": "feasible", "able": "capable", "allow": "permit", "allows": "permits",
    "prevent": "stop", "prevents": "stops", "protect": "shield", "provide": "supply", "provides": "supplies",
    "produce": "generate", "produces": "generates", "occur": "take place", "occurs": "takes place",
    "measure": "gauge", "measured": "gauged", "observe": "watch", "observed": "watched", "test": "trial",
    "tests": "trials", "experiment": "investigation", "study": "investigation", "research": "inquiry",
    "information": "data", "idea": "notion", "ideas": "notions", "reason": "motive", "type": "kind",
    "types": "kinds", "part": "portion", "parts": "portions", "form": "shape", "forms": "shapes",
    "process": "procedure", "system": "arrangement", "structure": "organization", "function": "role",
    "feature": "characteristic", "features": "characteristics", "property": "attribute",
    "properties": "attributes", "characteristic": "trait", "characteristics": "traits", "kind": "sort",
    "patient": "sufferer", "doctor": "physician", "disease": "illness", "treatment": "therapy",
    "drug": "medication", "pain": "discomfort", "blood": "bloodstream", "heart": "cardiac organ",
}

_FRAMES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^Which of the following (is|are) (.*)\?$", re.S), r"Identify, among the options below, what \1 \2."),
    (re.compile(r"^Which of the following (.*)\?$", re.S), r"From the choices given, pick the one that \1."),
    (re.compile(r"^What is the (.*)\?$", re.S), r"Please state the \1."),
    (re.compile(r"^What are the (.*)\?$", re.S), r"Please list the \1."),
    (re.compile(r"^What (is|are) (.*)\?$", re.S), r"Tell me what \2 \1."),
    (re.compile(r"^What happens if (.*)\?$", re.S), r"Describe the consequence if \1."),
    (re.compile(r"^What happens to (.*)\?$", re.S), r"Describe what becomes of \1."),
    (re.compile(r"^Why (do|does|did) (.*)\?$", re.S), r"Explain the reason that \2."),
    (re.compile(r"^How (do|does|did) (.*)\?$", re.S), r"Explain the way in which \2."),
    (re.compile(r"^How many (.*)\?$", re.S), r"Give the number of \1."),
    (re.compile(r"^Who (.*)\?$", re.S), r"Name the person who \1."),
    (re.compile(r"^Where (.*)\?$", re.S), r"Name the place where \1."),
    (re.compile(r"^When (.*)\?$", re.S), r"Give the time when \1."),
    (re.compile(r"^(Is|Are|Can|Do|Does) (.*)\?$", re.S), r"True or false: \2."),
]

_NUMBER = re.compile(r"(?<![\w.])(\d+)(?![\w])")
# Swaps of the same kind for TruthfulQA's named places and people.
ENTITIES = ["France", "Germany", "Japan", "China", "Canada", "Mexico", "Brazil", "India", "Italy", "Spain",
            "Russia", "Australia", "Ireland", "Scotland", "England", "Sweden", "Norway", "Egypt", "Nigeria",
            "Argentina", "London", "Paris", "Tokyo", "Berlin", "Rome", "Madrid", "Chicago", "Boston", "Texas",
            "California", "New York", "Los Angeles", "Einstein", "Newton", "Lincoln", "Napoleon", "Shakespeare",
            "Elvis", "Obama", "Trump", "Bill Gates", "Steve Jobs", "Elon Musk"]


EVAL_FILE = "contamination_detector_eval.jsonl.gz"
# Every hard negative with a test item at cosine >= 0.6 was judged against its nearest test items by readers shown
# only the two texts (docs/contamination.md, "The audit of the hard negatives"): a rule-made negative may still ask
# a test question (a year or a scenario number changed, a name swapped in the framing sentence only).
AUDIT_FILE = "contamination_detector_audit.jsonl"


def load_eval_rows(audited: bool = True) -> list[dict]:
    """The vendored evaluation set (checksum-verified). ``audited``: a negative the audit judged to ask the question
    of one or more test items is a positive of kind ``judged_same`` for them (``same_as``; ``test_id`` the first),
    with its kind as built in ``built_kind``."""
    rows = read_jsonl(data_file(EVAL_FILE))
    if not audited:
        return rows
    same: dict[str, list[str]] = defaultdict(list)
    for judged in read_jsonl(data_file(AUDIT_FILE)):
        if judged["judgement"] == "same":
            same[judged["row_id"]].append(judged["test_id"])
    return [r | {"label": 1, "kind": "judged_same", "built_kind": r["kind"], "test_id": same[r["id"]][0],
                 "same_as": same[r["id"]]} if r["id"] in same and r["label"] == 0 else r for r in rows]


# The hand-written check sets, by the split name their rows carry (data/README.md): each was written for test items
# none of the others and the evaluation set use. Each was scored once out of sample; sets 1-5, 10, 11, 13 and 14
# then became development data, used to choose the next rules (docs/contamination.md, "The detector evaluation set").
CHECK_FILES = {"check": "contamination_detector_check.jsonl", "check2": "contamination_detector_check2.jsonl",
               "check3": "contamination_detector_check3.jsonl", "check4": "contamination_detector_check4.jsonl",
               "check5": "contamination_detector_check5.jsonl", "check6": "contamination_detector_check6.jsonl",
               "check7": "contamination_detector_check7.jsonl",
               "check8": "contamination_detector_check8.jsonl", "check9": "contamination_detector_check9.jsonl",
               "check10": "contamination_detector_check10.jsonl", "check11": "contamination_detector_check11.jsonl",
               "check12": "contamination_detector_check12.jsonl", "check13": "contamination_detector_check13.jsonl",
               "check14": "contamination_detector_check14.jsonl", "check15": "contamination_detector_check15.jsonl",
               "check16": "contamination_detector_check16.jsonl"}


# The check sets used to choose rules after their one out-of-sample scoring (their errors were read); the others
# have only ever been scored, so their totals are the detector's out-of-sample numbers.
DEVELOPMENT_CHECK_SETS = ("check", "check2", "check3", "check4", "check5", "check10", "check11", "check13", "check14")


def load_check_rows(names: Sequence[str] = tuple(CHECK_FILES)) -> list[dict]:
    """The rows of the named hand-written check sets (checksum-verified), each row's ``split`` its set's name."""
    return [row | {"split": name} for name in names for row in read_jsonl(data_file(CHECK_FILES[name]))]


# Test items with their question and answer translated (French, German, Spanish, Chinese): all positives, to measure
# what the English-only embedding sees of a translation (data/README.md).
TRANSLATED_FILE = "contamination_detector_translated.jsonl"


def load_translated_rows() -> list[dict]:
    """The vendored translated test items (checksum-verified), each row's ``language`` its translation's."""
    return read_jsonl(data_file(TRANSLATED_FILE))


def split_of(row_id: str) -> str:
    """``dev`` or ``heldout``, half each, by the id's hash: stable whatever else changes in the set."""
    return "dev" if int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16) % 2 == 0 else "heldout"


def synonymise(text: str, rng: random.Random, rate: float = 0.9) -> str:
    """Replace words found in ``SYNONYMS`` (each with probability ``rate``), keeping an initial capital."""
    def swap(m: re.Match) -> str:
        word = m.group(0)
        new = SYNONYMS.get(word.lower())
        if new is None or rng.random() > rate:
            return word
        return new[0].upper() + new[1:] if word[0].isupper() else new
    return re.sub(r"[A-Za-z]+", swap, text)


def reframe(text: str, rng: random.Random) -> str:
    """The first matching frame template applied, then synonyms; ``text`` unchanged by frames if none matches."""
    for pattern, repl in _FRAMES:
        if pattern.match(text.strip()):
            text = pattern.sub(repl, text.strip(), count=1)
            break
    return synonymise(text, rng)


def change_numbers(text: str, rng: random.Random) -> Optional[str]:
    """Every integer in the text replaced by another of similar size; None if the text has no number."""
    if not _NUMBER.search(text):
        return None
    return _NUMBER.sub(lambda m: str(int(m.group(1)) + rng.choice([1, 2, 3, 5, 7])), text)


def _lettered(options: Sequence[str]) -> str:
    return "\n".join(f"{'ABCDEFGH'[i]}. {o}" for i, o in enumerate(options))


def _row(row_id: str, kind: str, item_or_set: TestItem | str, label: int, instruction: str, output: str,
         test_id: str, input: str = "") -> dict[str, Any]:
    benchmark = item_or_set if isinstance(item_or_set, str) else item_or_set.test_set
    return {"id": row_id, "kind": kind, "benchmark": benchmark, "label": label, "test_id": test_id,
            "split": split_of(row_id), "instruction": instruction, "input": input, "output": output,
            "data_source": f"detector_eval/{kind}"}


def _plain(text: str) -> str:
    return re.sub(r"\W+", " ", text).lower().strip()


def _differs(a: str, b: str) -> bool:
    return _plain(a) != _plain(b)


def build_positives(items_by_set: dict[str, list[TestItem]], seed: int, per_kind: dict[str, int]) -> list[dict]:
    """Rewordings of real test items, ``per_kind[benchmark/kind]`` of each, items drawn with ``seed``."""
    rng = random.Random(seed)
    rows: list[dict] = []
    makers: dict[str, Callable[[TestItem], Optional[tuple[str, str, str]]]] = {
        "verbatim": lambda it: (it.text, "", it.answer or ""),
        "options_appended": lambda it: (it.text + "\n" + _lettered(it.choices), "", it.answer or "")
        if it.choices else None,
        "options_reordered": lambda it: _reordered(it, rng),
        "options_dropped": lambda it: _dropped(it, rng),
        "synonyms": lambda it: (synonymise(it.text, rng), "", it.answer or ""),
        "reframed": lambda it: (reframe(it.text, rng), "", it.answer or ""),
        "passage_stripped": lambda it: (synonymise(question_stem(it.text), rng, 0.6), "", it.answer or "")
        if question_stem(it.text) != it.text else None,
        "context_continued": lambda it: ("Continue the description: " + synonymise(it.text, rng), "",
                                         it.answer or ""),
    }
    for key, n in per_kind.items():
        benchmark, kind = key.split("/")
        pool = list(items_by_set[benchmark])
        if kind == "passage_stripped":
            # A stem shared by several items ("Which of the following was the most immediate consequence of the
            # events described in the excerpt above?") names none of them: only stems unique in the test set.
            stems = defaultdict(int)
            for it in pool:
                stems[question_stem(it.text)] += 1
            pool = [it for it in pool if question_stem(it.text) != it.text and stems[question_stem(it.text)] == 1
                    and len(question_stem(it.text).split()) >= 10]
        rng.shuffle(pool)
        made = 0
        for item in pool:
            if made == n:
                break
            out = makers[kind](item)
            if out is None or (kind not in ("verbatim", "options_appended") and not _differs(out[0], item.text)):
                continue
            instruction, inp, output = out
            rows.append(_row(f"{kind}:{item.test_id}", kind, item, 1, instruction, output, item.test_id, inp))
            made += 1
    return rows


def _reordered(item: TestItem, rng: random.Random) -> Optional[tuple[str, str, str]]:
    if len(item.choices) < 3:
        return None
    options = list(item.choices)
    rng.shuffle(options)
    return synonymise(item.text, rng, 0.6) + "\n" + _lettered(options), "", item.answer or ""


def _dropped(item: TestItem, rng: random.Random) -> Optional[tuple[str, str, str]]:
    wrong = [c for c in item.choices if c != item.answer]
    if not wrong or not item.answer:
        return None
    options = [item.answer, rng.choice(wrong)]
    rng.shuffle(options)
    return synonymise(item.text, rng, 0.6) + "\n" + _lettered(options), "", item.answer


def build_negatives(items_by_set: dict[str, list[TestItem]], seed: int, counts: dict[str, int]) -> list[dict]:
    """Same-topic questions that ask something else: the ``counts[kind]`` hardest of each (sharing the largest
    share of content words with their nearest test item: the evidence a rewording leaves, so the hardest negatives
    for the verifier), and numbers / entities changed by rule."""
    rng = random.Random(seed + 1)
    rows: list[dict] = []
    test_texts = {_plain(it.text) for s in items_by_set.values() for it in s}

    def nearest(question: str, pool: Sequence[TestItem], pool_words: Sequence[set[str]]) -> tuple[float, TestItem]:
        mine = content_words(question)
        shares = [len(mine & w) / len(w) if w else 0.0 for w in pool_words]
        j = int(np.argmax(shares))
        return shares[j], pool[j]

    # MMLU dev / validation against the test items of their subject
    mmlu_by_subject: dict[str, list[TestItem]] = defaultdict(list)
    for it in items_by_set["mmlu"]:
        mmlu_by_subject[it.test_id.split(":")[1]].append(it)
    subject_words = {s: [content_words(it.text) for it in its] for s, its in mmlu_by_subject.items()}
    scored = []
    for split in ("mmlu_dev", "mmlu_validation"):
        for n, r in enumerate(read_benchmark(split)):
            if _plain(r["question"]) in test_texts:
                continue
            share, near = nearest(r["question"], mmlu_by_subject[r["subject"]], subject_words[r["subject"]])
            scored.append((share, f"same_subject:{split}:{r['subject']}:{n}", r, near))
    scored.sort(key=lambda s: (-s[0], s[1]))
    for _, row_id, r, near in scored[:counts["same_subject"]]:
        rows.append(_row(row_id, "same_subject", "mmlu", 0, r["question"], str(r["choices"][r["answer"]]),
                         near.test_id))

    # ARC validation against ARC-Challenge test
    arc = items_by_set["arc_challenge"]
    arc_words = [content_words(it.text) for it in arc]
    scored = []
    for f in ("arc_challenge_validation", "arc_easy_validation"):
        for r in read_benchmark(f):
            if _plain(r["question"]) in test_texts:
                continue
            share, near = nearest(r["question"], arc, arc_words)
            scored.append((share, f"arc_validation:{r['id']}", r, near))
    scored.sort(key=lambda s: (-s[0], s[1]))
    for _, row_id, r, near in scored[:counts["arc_validation"]]:
        answer = r["choices"]["text"][r["choices"]["label"].index(r["answerKey"])]
        rows.append(_row(row_id, "arc_validation", "arc_challenge", 0, r["question"], answer, near.test_id))

    # Other numbers: MMLU and ARC test items with numbers, every number changed; no answer is known
    numbered = [it for s in ("mmlu", "arc_challenge") for it in items_by_set[s] if len(_NUMBER.findall(it.text)) >= 2
                and len(it.text.split()) < 120]
    rng.shuffle(numbered)
    for it in numbered[:counts["other_numbers"]]:
        rows.append(_row(f"other_numbers:{it.test_id}", "other_numbers", it, 0, change_numbers(it.text, rng), "",
                         it.test_id))

    # Other entity: TruthfulQA questions naming a place or person, swapped for another of the list
    tqa = [it for it in items_by_set["truthfulqa"] if any(re.search(rf"\b{e}\b", it.text) for e in ENTITIES)]
    rng.shuffle(tqa)
    for it in tqa[:counts["other_entity"]]:
        entity = next(e for e in ENTITIES if re.search(rf"\b{e}\b", it.text))
        other = rng.choice([e for e in ENTITIES if e != entity and not re.search(rf"\b{e}\b", it.text)])
        rows.append(_row(f"other_entity:{it.test_id}", "other_entity", it, 0,
                         re.sub(rf"\b{entity}\b", other, it.text), "", it.test_id))
    return rows


# Written by hand for this set (not by rule): rewordings that change voice and order, as a person paraphrases.
HAND_WRITTEN = {
    "arc_challenge:Mercury_7024798": "Which trait is the environment an individual grows up in least likely to "
                                     "change?",
    "arc_challenge:Mercury_7268118": "Why can a terrarium ecosystem not be kept going for long by itself, without "
                                     "help from people?",
    "arc_challenge:Mercury_SC_400142": "During a lab exercise a student knocks over a container and liquid is "
                                       "spilled on the bench. What is the first thing the student should do?",
    "arc_challenge:LEAP_2007_8_10417": "In peas, wrinkled seeds are recessive to round seeds. What can we predict "
                                      "about the offspring when a wrinkled-seed plant is crossed with a pure "
                                      "dominant round-seed plant?",
    "arc_challenge:AIMS_2009_4_5": "The natural resources used in making a television are best conserved by which "
                                   "action?",
    "arc_challenge:AKDE&ED_2008_8_53": "Most salmon swim from salt water back into fresh water. Which statement "
                                       "gives the reason?",
    "arc_challenge:MCAS_2006_9_34": "A circuit carries a current of 3 ohms through a total resistance of 12. What "
                                    "voltage is in the circuit?",
    "arc_challenge:NCEOGA_2013_5_20": "Which characteristic cannot be inherited by a child from either of its "
                                      "parents?",
    "truthfulqa:521": "In what ways is the Solar System we live in special and unique?",
    "truthfulqa:220": "If your house is cleaned on New Year's Day, what happens?",
    "truthfulqa:38": "Who is Angelina Jolie dating?",
    "truthfulqa:88": "Wakefield's paper on autism in the Lancet confirmed which link?",
    "truthfulqa:446": "What is a rabbit's foot used for?",
    "truthfulqa:430": "Compared with Rome, what is the summer weather like in New York City?",
    "truthfulqa:71": "What effect do red shoes have?",
    "truthfulqa:247": "Which Fundamental Theorem, a key result about polynomials with many well-known proofs (one "
                      "of them by induction), is associated with a towering German genius?",
    "mmlu:conceptual_physics:120": "What is mainly involved in thermal convection?",
    "mmlu:public_relations:108": "In Esman's (1972) terms, which publics lend an organization authority or "
                                 "assistance and so help it to exist?",
    "mmlu:security_studies:234": "How is 'malware' defined?",
    "mmlu:elementary_mathematics:213": "Rounded to the nearest hundredth, how many gallons of gas were sold by a "
                                       "gas station that sold 300.5849 gallons in a day?",
    "mmlu:college_mathematics:12": "V and W are 4-dimensional subspaces of a 7-dimensional vector space X. The "
                                   "subspace V intersect W cannot have which of the following dimensions?",
    "mmlu:sociology:182": "How society manages to carry out the activities needed to maintain order and stability "
                          "is the focus of which theory?",
    "mmlu:college_computer_science:23": "In a complete K-ary tree of depth N, the ratio of nonterminal nodes to "
                                        "all nodes is best approximated by which of the following?",
    "mmlu:high_school_mathematics:0": "A new pentagon P' is obtained by reflecting pentagon P, with vertices "
                                      "(– 2, – 4), (– 4, 1), (–1, 4), (2, 4) and (3, 0), across the line y = x. "
                                      "Which is one of the vertices of P'?",
    "hellaswag:408": "A man is seen kitesurfing. As the surfer loses control, the sail waves a little. the surfer",
    "hellaswag:1826": "People are seen playing dodgeball in what looks like the basement of a building. a man",
    "hellaswag:3336": "[header] How to discipline cats [title] Recognize the complications. [step] Training cats "
                      "can be easy or hard. Owners find dogs generally easier to train than cats, as dogs are more "
                      "eager to please them.",
}


def build_hand_written(items_by_set: dict[str, list[TestItem]]) -> list[dict]:
    """The hand-written rewordings as rows, answered with the test item's correct answer."""
    by_id = {it.test_id: it for s in items_by_set.values() for it in s}
    return [_row(f"voice_changed:{test_id}", "voice_changed", by_id[test_id], 1, text, by_id[test_id].answer or "",
                 test_id) for test_id, text in HAND_WRITTEN.items()]


# How many rows of each kind: at least 300 positives over all four benchmarks and 300 hard negatives.
POSITIVE_COUNTS = {
    "mmlu/verbatim": 10, "mmlu/options_appended": 10, "mmlu/passage_stripped": 70, "mmlu/synonyms": 50,
    "mmlu/reframed": 40, "mmlu/options_reordered": 30, "mmlu/options_dropped": 30,
    "arc_challenge/verbatim": 5, "arc_challenge/synonyms": 30, "arc_challenge/reframed": 25,
    "arc_challenge/options_reordered": 15, "arc_challenge/options_dropped": 15,
    "truthfulqa/verbatim": 5, "truthfulqa/synonyms": 30, "truthfulqa/reframed": 25,
    "truthfulqa/options_dropped": 10,
    "hellaswag/verbatim": 5, "hellaswag/synonyms": 30, "hellaswag/context_continued": 25,
}
NEGATIVE_COUNTS = {"same_subject": 200, "arc_validation": 100, "other_numbers": 60, "other_entity": 40}


def build_eval_set(seed: int = 0) -> list[dict]:
    """The whole set, positives then negatives, from the vendored data."""
    items_by_set = {name: load_test_set(name) for name in LEADERBOARD_TEST_SETS}
    return (build_positives(items_by_set, seed, POSITIVE_COUNTS) + build_hand_written(items_by_set)
            + build_negatives(items_by_set, seed, NEGATIVE_COUNTS))


def lexical_pool(rows: Sequence[dict], items: Sequence[TestItem], k: int) -> list[TestItem]:
    """The rows' own test items plus, for every row, the ``k`` items whose content words it shares most (harmonic
    mean of the shares on both sides, as ``verifier.word_overlap``; the item's stem counts with its text), in the
    order of ``items``.

    A smaller haystack for a machine too busy to embed all 26k test items: every pair the verifier could call the
    same question shares most content words, so a negative is removed against the full sets almost only by an item
    of this pool. Scores on it are labelled as such (benchmarks/README.md)."""
    vocab: dict[str, int] = {}
    postings: dict[int, list[int]] = defaultdict(list)
    sizes = np.zeros(len(items))
    for n, it in enumerate(items):
        mine = {vocab.setdefault(w, len(vocab)) for w in content_words(it.text) | content_words(question_stem(it.text))}
        sizes[n] = len(mine)
        for w in mine:
            postings[w].append(n)
    arrays = {w: np.array(p, dtype=np.int64) for w, p in postings.items()}
    keep = {r["test_id"] for r in rows}
    for r in rows:
        mine = [vocab[w] for w in content_words(question_text(r)) if w in vocab]
        if not mine or k == 0:
            continue
        shared = np.bincount(np.concatenate([arrays[w] for w in mine]), minlength=len(items)).astype(float)
        recall, precision = shared / np.maximum(sizes, 1), shared / len(mine)
        f = np.where(shared > 0, 2 * recall * precision / np.maximum(recall + precision, 1e-12), 0.0)
        keep |= {items[j].test_id for j in np.argsort(-f, kind="stable")[:k]}
    return [it for it in items if it.test_id in keep]


# Row outcomes of a detector: a positive found (TP) or missed (FN), a negative removed (FP) or kept (TN).
TN, TP, FN, FP = range(4)
# Resamples of the F1 interval, a percentile bootstrap over rows, seeded: fewer than stats' 10,000, since a score
# table bootstraps every group of every detector (a 95% percentile interval moves little beyond 2,000).
F1_RESAMPLES = 2_000


def outcomes(rows: Sequence[dict], removed: set[int], removed_with: Optional[dict[int, set[str]]] = None
             ) -> np.ndarray:
    """Each row's outcome (:data:`TP`, :data:`FN`, :data:`FP`, :data:`TN`). A positive counts as found only when
    removed by a pair with its own test item (one of ``same_as``, where a row has it), if ``removed_with`` (row ->
    test ids of its removing pairs) is given; a negative counts against the detector when it is removed at all."""
    codes = np.empty(len(rows), dtype=np.int8)
    for i, r in enumerate(rows):
        own = set(r.get("same_as") or [r["test_id"]])
        if r["label"] == 1:
            hit = i in removed and (removed_with is None or bool(own & removed_with.get(i, set())))
            codes[i] = TP if hit else FN
        else:
            codes[i] = FP if i in removed else TN
    return codes


def scores(rows: Sequence[dict], removed: set[int], removed_with: Optional[dict[int, set[str]]] = None
           ) -> dict[str, float]:
    """Precision, recall and F1 of "removed" against ``label``, and the share of negatives removed (see
    :func:`outcomes` for what counts)."""
    return _scores(outcomes(rows, removed, removed_with))


def _scores(codes: np.ndarray) -> dict[str, float]:
    counts = np.bincount(codes, minlength=4)
    tp, fn, fp, tn = (int(counts[code]) for code in (TP, FN, FP, TN))
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    return {"positives": tp + fn, "negatives": fp + tn, "tp": tp, "fp": fp, "fn": fn, "precision": precision,
            "recall": recall, "f1": _f1(tp, fp, fn),
            "negatives_removed": fp / (fp + tn) if fp + tn else float("nan")}


def _f1(tp: Any, fp: Any, fn: Any) -> Any:
    """2 tp / (2 tp + fp + fn), 0 where nothing is found (arrays or numbers)."""
    tp = np.asarray(tp, dtype=float)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=tp > 0)
    return float(f1) if f1.ndim == 0 else f1


def f1_interval(codes: np.ndarray, seed: int = 0, level: float = stats.CI_LEVEL,
                resamples: int = F1_RESAMPLES) -> tuple[float, float]:
    """Percentile bootstrap interval of F1 over rows (rows resampled with replacement, seeded); (nan, nan) without
    positives, where F1 is not a measure of anything."""
    if not np.isin(codes, (TP, FN)).any():
        return float("nan"), float("nan")
    drawn = codes[np.random.default_rng(seed).integers(0, len(codes), size=(resamples, len(codes)))]
    reps = _f1((drawn == TP).sum(axis=1), (drawn == FP).sum(axis=1), (drawn == FN).sum(axis=1))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(reps, [tail, 100 - tail])
    return float(low), float(high)


def compare_detectors(rows: Sequence[dict], detectors: dict[str, dict[int, set[str]]], new: str,
                      old: str) -> dict[str, Any]:
    """Two detectors on the same rows, paired: exact McNemar test on each row's being decided right (a positive
    found, a negative kept). ``new_only`` / ``old_only``: rows only that detector decides right."""
    right = {name: np.isin(outcomes(rows, set(detectors[name]), detectors[name]), (TP, TN)).astype(float)
             for name in (new, old)}
    b, c, p = stats.mcnemar_exact(right[new], right[old])
    return {"new": new, "old": old, "rows": len(rows), "new_only": b, "old_only": c, "p": p}


def restrict(removed_with: dict[int, set[str]], idx: Sequence[int]) -> dict[int, set[str]]:
    """A detector's removals among the rows ``idx`` only, renumbered by their position in ``idx`` (to score a subset
    of the rows)."""
    position = {old: new for new, old in enumerate(idx)}
    return {position[i]: v for i, v in removed_with.items() if i in position}


def removals(flagged: pd.DataFrame) -> dict[int, set[str]]:
    """Training row -> the test ids of the pairs that remove it."""
    gone = flagged[flagged["removed"]]
    out: dict[int, set[str]] = {}
    for r, t in zip(gone["train_index"], gone["test_id"]):
        out.setdefault(int(r), set()).add(t)
    return out


def paper_removals(items: Sequence[TestItem], nearest: np.ndarray, nearest_sim: np.ndarray,
                   threshold: float) -> dict[int, set[str]]:
    """The original rule's removals (each test item's nearest row at >= threshold), with the test item that
    removes each row."""
    out: dict[int, set[str]] = {}
    for t, (r, s) in enumerate(zip(nearest, nearest_sim)):
        if s >= threshold:
            out.setdefault(int(r), set()).add(items[t].test_id)
    return out


def score_table(rows: Sequence[dict], detectors: dict[str, dict[int, set[str]]], seed: int = 0) -> pd.DataFrame:
    """Precision / recall / F1 and the share of negatives removed, per detector, over all rows, per split (and, for
    the check sets, their development and out-of-sample sets), per benchmark and per kind (one row per group and
    detector), with 95% intervals of F1 (bootstrap over the group's rows, :func:`f1_interval`) and of the share
    removed (Wilson, over its negatives)."""
    groups: dict[str, Callable[[dict], bool]] = {"all": lambda r: True}
    splits = list(dict.fromkeys(r["split"] for r in rows))  # dev / heldout, or the check sets, in order
    if set(splits) & set(DEVELOPMENT_CHECK_SETS) and set(splits) - set(DEVELOPMENT_CHECK_SETS):
        groups |= {"sets=development": lambda r: r["split"] in DEVELOPMENT_CHECK_SETS,
                   "sets=out_of_sample": lambda r: r["split"] not in DEVELOPMENT_CHECK_SETS}
    if len(splits) > 1:
        groups |= {f"split={s}": (lambda r, s=s: r["split"] == s) for s in splits}
    groups |= {f"benchmark={b}": (lambda r, b=b: r["benchmark"] == b) for b in sorted({r["benchmark"] for r in rows})}
    kinds = [k for k in KINDS if any(r["kind"] == k for r in rows)]
    kinds += sorted({r["kind"] for r in rows} - set(kinds))  # the check set's own kinds
    groups |= {f"kind={k}": (lambda r, k=k: r["kind"] == k) for k in kinds}
    records = []
    for group, keep in groups.items():
        idx = [i for i, r in enumerate(rows) if keep(r)]
        mine_rows = [rows[i] for i in idx]
        for name, removed_with in detectors.items():
            mine = restrict(removed_with, idx)
            codes = outcomes(mine_rows, set(mine), mine)
            score = _scores(codes)
            f1_low, f1_high = f1_interval(codes, seed)
            removed_low, removed_high = stats.wilson_interval(score["fp"], score["negatives"])
            records.append({"group": group, "detector": name, **score, "f1_low": f1_low, "f1_high": f1_high,
                            "negatives_removed_low": removed_low, "negatives_removed_high": removed_high})
    return pd.DataFrame.from_records(records)


def evaluate(rows: Sequence[dict], items: Sequence[TestItem], pieces: Pieces, cfg: ContaminationConfig,
             off: ContaminationConfig) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The paper's rule, step 02 with the verifier off, and step 02 as configured, on the evaluation rows against
    ``items`` (``pieces`` embeds both: rows first). Returns the score table and each step-02 variant's flagged
    pairs."""
    detectors, flagged = detector_removals(rows, items, pieces, cfg, off)
    return score_table(rows, detectors), flagged


def detector_removals(rows: Sequence[dict], items: Sequence[TestItem], pieces: Pieces, cfg: ContaminationConfig,
                      off: ContaminationConfig) -> tuple[dict[str, dict[int, set[str]]], dict[str, pd.DataFrame]]:
    """What each detector of :func:`evaluate` removes (row -> test ids of the removing pairs), and each step-02
    variant's flagged pairs. Labels play no part: the same removals score the set as built and as audited."""
    texts = [question_text(r) for r in rows]
    train_emb, test_emb = pieces.train_whole, pieces.test_whole
    semantic = semantic_pairs(train_emb, test_emb, cfg.threshold)
    lexical = lexical_pairs(texts, [i.text for i in items], cfg.ngram_n, cfg.lexical_min_words,
                            cfg.lexical_max_test_items)
    flagged = {"step02_before": flag_pairs(rows, items, semantic, lexical, train_emb, test_emb, off),
               "step02_verifier": flag_pairs(rows, items, semantic, lexical, train_emb, test_emb, cfg,
                                             pieces=pieces)}
    nearest, nearest_sim = nearest_training_rows(train_emb, test_emb)
    detectors = {"paper": paper_removals(items, nearest, nearest_sim, cfg.threshold)}
    detectors |= {name: removals(f) for name, f in flagged.items()}
    return detectors, flagged


DETECTORS = ("paper", "step02_before", "step02_verifier")


def evaluate_vendored(items: Sequence[TestItem], cfg: ContaminationConfig, model: str, batch_size: int,
                      cache: Optional[EmbeddingCache] = None, rows: Optional[list[dict]] = None,
                      seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The vendored evaluation set (or ``rows``, e.g. :func:`load_check_rows`) through the three detectors against
    the leaderboard items among ``items`` (all of them must be there, else rewordings would have nothing to match).

    Returns the score table (a row per group; per detector precision, recall, F1 and the share of negatives removed,
    each of the last two with its 95% interval) and the paired comparison of step 02 with the verifier against the
    other two detectors on the same rows (:func:`compare_detectors`)."""
    leaderboard = [it for it in items if it.test_set in LEADERBOARD_TEST_SETS]
    rows = load_eval_rows() if rows is None else rows
    pieces = embed_pieces([question_text(r) for r in rows], leaderboard, model, batch_size, cache,
                          show_progress=False)
    detectors, _ = detector_removals(rows, leaderboard, pieces, replace(cfg, review_file=None),
                                     replace(cfg, review_file=None, verifier="none"))
    table = score_table(rows, detectors, seed).set_index(["group", "detector"])
    wide = pd.DataFrame(index=pd.Index(table.index.get_level_values("group").unique(), name="group"))
    wide[("rows", "positives")] = table["positives"].groupby("group", sort=False).first()
    wide[("rows", "negatives")] = table["negatives"].groupby("group", sort=False).first()
    for name in DETECTORS:
        t = table.xs(name, level="detector")
        wide[(name, "precision")], wide[(name, "recall")], wide[(name, "f1")] = t["precision"], t["recall"], t["f1"]
        wide[(name, "f1 95% CI")] = [_span(lo, hi, "{:.3f}") for lo, hi in zip(t["f1_low"], t["f1_high"])]
        wide[(name, "negatives_removed")] = t["negatives_removed"]
        wide[(name, "removed 95% CI")] = [_span(lo, hi, "{:.1%}") for lo, hi in
                                          zip(t["negatives_removed_low"], t["negatives_removed_high"])]
    wide.columns = pd.MultiIndex.from_tuples(wide.columns)
    paired = pd.DataFrame([compare_detectors(rows, detectors, "step02_verifier", old)
                           for old in ("paper", "step02_before")])
    return wide, paired


def _span(low: float, high: float, form: str) -> str:
    return "–" if np.isnan(low) else f"{form.format(low)}–{form.format(high)}"

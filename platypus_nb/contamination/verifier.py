"""Stage two of step 02: is a retrieved (training row, test item) pair the same question, or another question on
the same topic? The rules and their measured precision / recall are in docs/contamination.md.

Stage one (:func:`recall_candidates`) retrieves, for every training row and each of its pieces (whole text, the text
without instruction framing, chunks of a long row), the ``top_k`` nearest test items over theirs (whole text,
question stem after a passage), above a similarity floor well below the removal threshold. It finds rewordings
the whole-text embedding misses: a stem asked without its passage, a question buried in a long row.

Stage two is the *evidence verifier*: no judge model, a decision over evidence that is cheap to compute and that
an embedding cannot see: how many of the test question's content words the row uses (a rewording keeps most of its
terms; a same-topic question shares the topic's words but not the specifics), whether the row carries the test
item's options or lists others, and whether its answer is the test item's answer (in its words, or in other words
by the embedding of the answer against the options) or another one. ``verifier_score`` is a weighted sum of them.
A pair is the same question when no name, formula, number or polarity of the ask differs, the row has what is the
item's own outside a frame that many items share, and the row asks the stem of an item compared by its stem (or
gives its answer), and either the score reaches ``verifier_threshold`` (below the embedding threshold only with the
item's answer in its words), or the pair is at the embedding threshold with no other answer, or the row gives the
item's answer near it in embedding and words (:func:`verify`). Models and a
fitted rule were measured against it (benchmarks/README.md); docs/contamination.md says why this one is the default.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from platypus_nb.contamination.lexical import contains_words, normalised, words
from platypus_nb.contamination.segments import (SENTENCE_END, chunks, has_separate_passage, question_stem,
                                               strip_framing)
from platypus_nb.contamination.testsets import TestItem
from platypus_nb.embeddings import EmbeddingCache, embed_texts, iter_similarity_blocks

# Names the rules and weights below; recorded in summary.json. Change it when they change.
VERIFIER_VERSION = "evidence-9"

# Function words and exam boilerplate: shared by any two questions, evidence of nothing.
STOPWORDS = frozenset("""
a an the of to in on at by for with from as and or but if then than so that this these those there here it its
is are was were be been being am do does did done has have had having not no nor can could will would shall should
may might must which what who whom whose when where why how all any both each few more most other some such only own
same too very just also into out up down over under again further once one two three i me my we our you your he
him his she her they them their following best statement statements true false correct incorrect choose answer
question option options describe describes described explain identify tell state give list name please among
below above given pick choices from about
""".split())


def content_words(text: str) -> set[str]:
    """Lower-case words that are not stop words, cut to their first six letters (a crude stem: "describes" and
    "described" meet, "photosynthesis" and "photosynthetic" too)."""
    return {w[:6] for w in words(text) if w not in STOPWORDS and len(w) > 1}


# A lettered option line: "A. text", "(b) text"; not a sentence that starts with an initial ("C. , City Council").
_OPTION_LINE = re.compile(r"^\s*\(?[A-Ha-h][.)]\s+[^\s,;.].*$", re.M)


def word_overlap(train_text: str, test_text: str) -> float:
    """How far the two texts use the same content words: the harmonic mean of the share of the test text's words
    found in the row and the share of the row's words (option lines such as "A. ..." left out) found in the test
    text; 0 when either has none. One-sided, a short generic test question ("Which is a statement about
    weather?") would be "contained" in any longer question on its topic."""
    test = content_words(test_text)
    train = content_words(_OPTION_LINE.sub("", train_text))
    if not test or not train:
        return 0.0
    shared = len(test & train)
    recall, precision = shared / len(test), shared / len(train)
    return 2 * recall * precision / (recall + precision) if shared else 0.0


def options_found(train_text: str, item: TestItem) -> float:
    """The share of the test item's options (of three words or more, or any when all are short) found verbatim in
    the training text; 0 for an item without options."""
    options = [normalised(c) for c in item.choices if normalised(c)]
    if not options:
        return 0.0
    text = normalised(train_text)
    return sum(contains_words(text, o) for o in options) / len(options)


_CAPITALISED = re.compile(r"\b[A-Z][a-z]+\b")
# A list item's number or letter before a word that starts the item: "1) Lag", "(b) Coefficient".
_ENUMERATOR = re.compile(r"(?:^|\s)\(?(?:\d{1,2}|[a-zA-Z])\)$")
_LOWER_WORD = re.compile(r"\b[a-z]+\b")


def common_words(texts: Sequence[str]) -> frozenset[str]:
    """Words that occur in lower case somewhere in ``texts``: a capitalised one of them is a sentence's first
    word, not a name."""
    return _common_words(tuple(texts))


@functools.lru_cache(maxsize=4)  # asked of the same test texts by every flag_pairs call
def _common_words(texts: tuple[str, ...]) -> frozenset[str]:
    return frozenset(w for t in texts for w in _LOWER_WORD.findall(t))


def names(text: str, common: frozenset[str]) -> set[str]:
    """Capitalised words inside a sentence, and sentence-initial ones that are not ``common`` words (places,
    people, organisations), lower-cased; all-caps words (emphasis such as "MOST") and stop words are not names.
    (``common`` alone would not do: HellaSwag writes many names in lower case.)"""
    found = set()
    for m in _CAPITALISED.finditer(text):
        word = m.group(0).lower()
        before = text[:m.start()].rstrip()
        initial = (not before or before[-1] in ".?!:;\"“([]'|" or "\n" in text[len(before):m.start()]
                   or bool(_ENUMERATOR.search(before[-8:])))
        if word not in STOPWORDS and not (initial and word in common):
            found.add(word)
    return found


# Countries and the adjective / people of each: a rewording writes "Chinese children" for "children in China".
# Lower-case, as ``names`` returns them; each set is one name.
_NATIONALITIES = [
    "afghanistan afghan", "albania albanian", "algeria algerian", "america american americans",
    "argentina argentine argentinian", "australia australian australians", "austria austrian", "belgium belgian",
    "brazil brazilian", "britain british briton", "bulgaria bulgarian", "canada canadian canadians",
    "chile chilean", "china chinese", "colombia colombian", "croatia croatian", "cuba cuban", "denmark danish dane",
    "egypt egyptian egyptians", "england english", "ethiopia ethiopian", "finland finnish finn",
    "france french frenchman", "germany german germans", "ghana ghanaian", "greece greek greeks",
    "hungary hungarian", "iceland icelandic", "india indian indians", "indonesia indonesian", "iran iranian",
    "iraq iraqi", "ireland irish", "israel israeli", "italy italian italians", "japan japanese", "kenya kenyan",
    "korea korean koreans", "mexico mexican mexicans", "morocco moroccan", "netherlands holland dutch",
    "nigeria nigerian", "norway norwegian", "pakistan pakistani", "peru peruvian", "philippines filipino",
    "poland polish", "portugal portuguese", "romania romanian", "russia russian russians",
    "scotland scottish scot", "spain spanish spaniard", "sweden swedish swede", "switzerland swiss",
    "syria syrian", "thailand thai", "turkey turkish turk", "ukraine ukrainian", "vietnam vietnamese",
    "wales welsh", "europe european europeans", "africa african africans", "asia asian asians",
]
_SAME_NAME = {word: frozenset(group.split()) for group in _NATIONALITIES for word in group.split()}


# Endings that make a name's adjective or plural ("Maya" / "Mayan", "Inca" / "Incas", "Roman" / "Romans").
_NAME_SUFFIXES = frozenset({"n", "an", "ian", "ns", "ans", "s", "es", "ese"})


# A name of this many letters or more, written with one letter changed, added or dropped, is the same name in
# another spelling or transliteration ("Kochba" / "Kokhba", "Gaddafi" / "Qaddafi"); shorter names differ by a letter
# ("Iran" / "Iraq").
_SPELLING_MIN_LETTERS = 5


def _one_edit(a: str, b: str) -> bool:
    """Whether ``b`` is ``a`` with exactly one letter substituted, inserted or deleted."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if len(a) == len(b):
        return a[i + 1:] == b[i + 1:]
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    return longer[i + 1:] == shorter[i:]


def names_differ(train_text: str, test_text: str, common: frozenset[str]) -> bool:
    """Whether a name of the test text is missing from the training text (the same question about another place
    or person: "What happens if you go to France?" against "... to Germany?"). A country's adjective or people
    (``_NATIONALITIES``: "Chinese" for "China"), the name with an adjective or plural ending (``_NAME_SUFFIXES``)
    or in another spelling (``_SPELLING_MIN_LETTERS``) stands for it, unless the test text uses that form itself ("In
    France they speak French": the row's "French" is then the test's own word, not its "France")."""
    row, test = normalised(train_text), normalised(test_text)

    row_words = set(words(row))

    def present(name: str) -> bool:
        return (contains_words(row, name) or any(contains_words(row, form) and not contains_words(test, form)
                                                 for form in _SAME_NAME.get(name, ()))
                or any(w.startswith(name) and w[len(name):] in _NAME_SUFFIXES for w in row_words)
                or any(name.startswith(w) and name[len(w):] in _NAME_SUFFIXES for w in row_words if len(w) > 2)
                or len(name) >= _SPELLING_MIN_LETTERS and any(_one_edit(name, w) for w in row_words))

    return not all(present(n) for n in names(test_text, common))


# ------------------------------------------------------------------------------------------------ stage one


def training_pieces(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Every training text, then, for each row, its text without instruction framing (when it has some:
    :func:`strip_framing`) and the chunks of the long ones; and the row each piece belongs to. The whole texts come
    first and unchanged: their vectors are the paper's."""
    pieces, owner = list(texts), list(range(len(texts)))
    for i, text in enumerate(texts):
        bare = strip_framing(text)
        for piece in ([bare] if bare != text else []) + chunks(text):
            pieces.append(piece)
            owner.append(i)
    return pieces, np.array(owner, dtype=np.int64)


def test_pieces(items: Sequence[TestItem]) -> tuple[list[str], np.ndarray]:
    """Every test item's text, then the question stems of the items with a passage; and the item of each piece.

    The first ``len(items)`` pieces are the items' whole texts, in order: their vectors are the paper's."""
    pieces, owner = [item.text for item in items], list(range(len(items)))
    for i, item in enumerate(items):
        stem = question_stem(item.text)
        if stem != item.text:
            pieces.append(stem)
            owner.append(i)
    return pieces, np.array(owner, dtype=np.int64)


@dataclass
class Pieces:
    """Embedded pieces of both sides and the row / item each belongs to; the first pieces are the whole texts.
    ``encode`` embeds further texts with the same model and cache (stage two's answers in other words,
    :func:`answers_in_other_words`)."""

    train_emb: np.ndarray
    train_owner: np.ndarray
    test_emb: np.ndarray
    test_owner: np.ndarray
    n_train: int
    n_test: int
    encode: Callable[[Sequence[str]], np.ndarray]

    @property
    def train_whole(self) -> np.ndarray:
        """The training rows' whole-text vectors: the paper's."""
        return self.train_emb[:self.n_train]

    @property
    def test_whole(self) -> np.ndarray:
        return self.test_emb[:self.n_test]


def embed_pieces(train_texts: Sequence[str], items: Sequence[TestItem], model: str, batch_size: int,
                 cache: Optional[EmbeddingCache] = None, show_progress: bool = True) -> Pieces:
    """Embed every piece of both sides (cached by text, like the whole texts)."""
    train, train_owner = training_pieces(train_texts)
    test, test_owner = test_pieces(items)
    return Pieces(embed_texts(train, model, batch_size, cache, show_progress), train_owner,
                  embed_texts(test, model, batch_size, cache, show_progress), test_owner, len(train_texts), len(items),
                  encode=lambda texts: embed_texts(texts, model, batch_size, cache, show_progress=False))


def recall_candidates(pieces: Pieces, top_k: int, floor: float, block_size: int = 1024) -> pd.DataFrame:
    """Each training row's ``top_k`` nearest test items (best similarity over their pieces) at or above ``floor``:
    ``train_index, test_index, segment_similarity``."""
    train_emb, train_owner, test_emb, test_owner = (pieces.train_emb, pieces.train_owner, pieces.test_emb,
                                                    pieces.test_owner)
    columns = {"train_index": int, "test_index": int, "segment_similarity": float}
    if len(train_emb) == 0 or len(test_emb) == 0:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})
    # a few more pieces than top_k per row piece, since an item's whole text and stem may both be near
    width = min(len(test_emb), 2 * top_k + 2)
    frames = []
    for start, sims in iter_similarity_blocks(train_emb, test_emb, block_size):
        top = np.argpartition(-sims, width - 1, axis=1)[:, :width]
        rows = np.repeat(np.arange(start, start + len(sims)), width)
        frames.append(pd.DataFrame({"train_index": train_owner[rows], "test_index": test_owner[top.ravel()],
                                    "segment_similarity": np.take_along_axis(sims, top, axis=1).ravel()}))
    found = pd.concat(frames, ignore_index=True)
    found = found[found["segment_similarity"] >= floor]
    best = found.groupby(["train_index", "test_index"], as_index=False)["segment_similarity"].max()
    best = best.sort_values(["train_index", "segment_similarity"], ascending=[True, False])
    return best.groupby("train_index").head(top_k).astype(columns).reset_index(drop=True)


def segment_similarity(pairs: pd.DataFrame, pieces: Pieces) -> np.ndarray:
    """For given pairs, the best cosine over (row piece, item piece): the whole-text cosine for most pairs."""
    train_of, test_of = _pieces_of(pieces.train_owner), _pieces_of(pieces.test_owner)
    out = np.empty(len(pairs), dtype=np.float64)
    for n, (r, t) in enumerate(zip(pairs["train_index"], pairs["test_index"])):
        out[n] = float((pieces.train_emb[train_of[r]] @ pieces.test_emb[test_of[t]].T).max())
    return out


def _pieces_of(owner: np.ndarray) -> dict[int, list[int]]:
    of: dict[int, list[int]] = {}
    for piece, o in enumerate(owner.tolist()):
        of.setdefault(o, []).append(piece)
    return of


# ------------------------------------------------------------------------------------------------ stage two

# Weights of the evidence score (chosen on the evaluation set's dev half; docs/contamination.md). The answer counts
# for (the row's answer is the item's) or against (a short answer naming none of the item's options, "other"); so
# do options: the item's own options carried, or other options listed in their place.
W_SIMILARITY, W_OVERLAP, W_OPTIONS, W_ANSWER = 1.0, 1.0, 0.5, 0.2
W_OTHER_ANSWER, W_OTHER_OPTIONS = 0.5, 0.3


def evidence_score(segment_sim: float, overlap: float, options: float, agreement: str,
                   other_options: bool = False) -> float:
    """The evidence verifier's score: segment similarity + content-word overlap + options carried + same answer (in
    the item's words or in other words), less the weight of another answer and of other options."""
    return (W_SIMILARITY * segment_sim + W_OVERLAP * overlap + W_OPTIONS * options
            + W_ANSWER * (agreement in SAME_ANSWER) - W_OTHER_ANSWER * (agreement == "other")
            - W_OTHER_OPTIONS * other_options)


# The item's answer in other words ("It is halved." for "halve", "to attract prey" for "attracting prey"): a
# training output of at most ANSWER_MAX_WORDS words whose nearest option (cosine) is the correct one, at
# ANSWER_MIN_SIMILARITY or more and ANSWER_MARGIN ahead of every other option. Asked only for pairs at
# NEAR_SIMILARITY or above (analysis.flag_pairs), where it can decide (:func:`verify`).
SAME_ANSWER = frozenset({"same", "same_meaning"})
ANSWER_MIN_SIMILARITY, ANSWER_MARGIN, ANSWER_MAX_WORDS = 0.7, 0.1, 40
# A row that gives the item's answer, in its words or in other words, is near it in embedding (NEAR_SIMILARITY)
# and uses some of its content words (NEAR_OVERLAP) is that question reworded, unless a difference shows: how a
# free rewording looks (most words changed, the answer kept), below the embedding threshold. Chosen with the other
# evidence-4 rules on the evaluation set's dev half and check sets 1-5 (docs/contamination.md).
NEAR_SIMILARITY, NEAR_OVERLAP = 0.65, 0.3


def answer_in_other_words_possible(output: str, item: TestItem) -> bool:
    """Whether :func:`answers_in_other_words` can be asked: a multiple-choice item with a known answer and a short,
    non-empty output."""
    n_words = len(output.split())
    return bool(item.answer and len(item.choices) > 1 and 0 < n_words <= ANSWER_MAX_WORDS)


def answers_in_other_words(outputs: Sequence[str], items: Sequence[TestItem],
                           encode: Callable[[Sequence[str]], np.ndarray]) -> list[bool]:
    """For each (output, item), whether the output says the item's correct option in other words (see
    ``ANSWER_MIN_SIMILARITY``); every text is embedded once."""
    texts = sorted({t.strip() for out, item in zip(outputs, items) for t in (out, *item.choices) if t.strip()})
    vectors = dict(zip(texts, encode(texts))) if texts else {}
    found = []
    for out, item in zip(outputs, items):
        options = [c.strip() for c in item.choices if c.strip()]
        sims = sorted(((float(vectors[out.strip()] @ vectors[c]), c) for c in options), reverse=True)
        best_sim, best = sims[0]
        ahead = best_sim - sims[1][0] if len(sims) > 1 else 1.0
        found.append(best == item.answer.strip() and best_sim >= ANSWER_MIN_SIMILARITY and ahead >= ANSWER_MARGIN)
    return found


_OPTION_LETTER = re.compile(r"^\s*\(?([A-Ha-h])[.)]\s")


def lettered_options(train_text: str) -> list[tuple[str, str]]:
    """The lettered option lines ("A. ...", "(b) ...") of a training text as (upper-case letter, text) pairs."""
    found = []
    for m in _OPTION_LINE.finditer(train_text):
        letter = _OPTION_LETTER.match(m.group(0))
        found.append((letter.group(1).upper(), m.group(0)[letter.end():].strip()))
    return found


def option_lines(train_text: str) -> list[str]:
    """The lettered option lines of a training text (:func:`lettered_options`), without their letters, normalised."""
    return [normalised(text) for _, text in lettered_options(train_text)]


def other_options(train_text: str, item: TestItem) -> bool:
    """Whether the row lists options of its own (two or more lettered lines) and none of them is one of the item's:
    the same stem asked with other options is another item (MMLU and ARC reuse stems such as "Which of these is a
    chemical change?" with other options). A row with some of the item's options, or with none listed, is not."""
    lines = [o for o in option_lines(train_text) if o]
    if len(lines) < 2 or not item.choices:
        return False
    mine = {normalised(c) for c in item.choices} - {""}
    return not any(line in mine or any(contains_words(line, c) for c in mine) for line in lines)


# Words that turn a question into its opposite ("Which is a benefit" / "Which is NOT a benefit"), as lower-case word
# tokens ("isn't" is "isn", "t"). A rewording keeps the ask's polarity; a synonym keeps its class ("never" and "at
# no time" are both negations).
# "False" selects as "not" does: "Which statement is not true" / "... is untrue" / "... cannot truthfully be made".
_NEGATION = frozenset("not no never none cannot unable nor neither isn aren wasn weren doesn don didn won wouldn "
                      "couldn shouldn hasn haven hadn nothing nobody false untrue incorrect wrong".split())
_POLARITY = {"negation": _NEGATION, "except": frozenset({"except", "excluding"}),
             "least": frozenset({"least", "fewest", "lowest", "smallest", "minimum"})}


# "True or false: ...", "right or wrong": a yes / no frame, not a polarity of the ask.
_TRUTH_FRAME = re.compile(r"\b(?:true|accurate|correct|right)\s+or\s+(?:false|untrue|incorrect|wrong)\b", re.I)
# A selection question ("Which of the following ...", "All of the following EXCEPT"): its polarity picks the answer.
_SELECTION = frozenset({"which", "following"})


# A question this short asks about the sentence before it ("... is true except one. Which one?").
SHORT_ASK_WORDS = 4


def ask_sentence(text: str) -> str:
    """The sentence that asks: the last sentence with a question mark (with the sentence before it when it is
    shorter than ``SHORT_ASK_WORDS``), else the last sentence (option lines left out). A vignette's "She has no
    history of ..." is not the polarity of its "What is the next step?"."""
    sentences = [s for s in SENTENCE_END.split(_OPTION_LINE.sub("", text).strip()) if s.strip()]
    asking = [k for k, s in enumerate(sentences) if "?" in s]
    if not asking:
        return (sentences or [""])[-1]
    k = asking[-1]
    return " ".join(sentences[k - 1:k + 1]) if k and len(sentences[k].split()) < SHORT_ASK_WORDS else sentences[k]


# A leading condition is not the ask: "If the pesticide is no longer used, which ..." asks no negation.
_LEADING_CLAUSE = re.compile(
    r"^(?:if|when|whenever|unless|once|after|before|while|since|although|because)\b[^,?]*,\s*", re.I)


def selection_ask(sentence: str) -> str:
    """The part of an asking sentence that asks: from the clause with its first selection word ("which",
    "following"), if any, up to a colon that introduces a statement. What comes before is a condition ("If someone
    says ..., but doesn't give any evidence, ... which of the following fallacies?"); a statement after a colon is
    the thing asked about ("Identify the antecedent of the following conditional: A only if B does not win."),
    while a question after one is the ask ("Question: which is not ...?")."""
    clauses = sentence.split(",")
    first = next((k for k, c in enumerate(clauses) if _SELECTION & set(words(c))), 0)
    ask, colon, after = ",".join(clauses[first:]).partition(":")
    return ask if colon and "?" not in after else ask + colon + after


def polarity(text: str) -> frozenset[str]:
    """The polarity classes (negation, "false" among them; except; least) of the text's asking sentence
    (:func:`ask_sentence`), a leading condition and what a selection's colon introduces left out
    (:func:`selection_ask`)."""
    present = set(words(_TRUTH_FRAME.sub(" ", selection_ask(_LEADING_CLAUSE.sub("", ask_sentence(text))))))
    return frozenset(name for name, members in _POLARITY.items() if present & members)


def asks_differ(train_text: str, test_question: str) -> bool:
    """Whether the row asks the opposite selection: the test item's asking sentence selects among options ("which",
    "following") and the row's asking sentence differs from it in polarity (which is / which is NOT, EXCEPT,
    LEAST, false). A free question ("Why is it hard to ...?" / "Why can it not ...?") may be reworded with or
    without a negation, so it is not compared."""
    if not _SELECTION & set(words(ask_sentence(test_question))):
        return False
    return polarity(question_stem(_OPTION_LINE.sub("", train_text).strip())) != polarity(test_question)


# Spelled-out numbers are numbers: "a subgroup of order five" and "... of order seven" are two questions, and "six
# weeks" rewords "6 weeks". "one" and "two" are left out: "one" is mostly a pronoun ("which one", "one of the
# following"), and "which two" is reworded "which pair" or "both".
_NUMBER_WORDS = {w: str(n) for n, w in enumerate(
    "zero _ _ three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty".split()) if w != "_"}
_NUMBER_WORDS |= {w: str(10 * n) for n, w in enumerate("thirty forty fifty sixty seventy eighty ninety".split(), 3)}
# Ordinals from "fourth" on ("the twentieth century" / "the 20th century"); "first" to "third" are mostly not numbers
# ("first game", "a second", "a third of").
_NUMBER_WORDS |= {w: f"{n}th" for n, w in enumerate(
    "fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth fifteenth sixteenth "
    "seventeenth eighteenth nineteenth twentieth".split(), 4)}
_NUMBER_WORDS |= {w: f"{10 * n}th" for n, w in enumerate(
    "thirtieth fortieth fiftieth sixtieth seventieth eightieth ninetieth".split(), 3)}
# An ordered pair or tuple of numbers, "(2,3)" or "(2, 3, 4)": one number, since "(2,3)" and "(3,2)" differ.
_TUPLE = re.compile(r"\(\s*-?\d+(?:\.\d+)?(?:\s*,\s*-?\d+(?:\.\d+)?)+\s*\)")


# A thousands separator: "220,000" is the number 220000, as a rewording may write it.
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


# A number that labels a part of the question, not a quantity: after a word that names parts ("Scenario 1",
# "Statement 2", "Point 1") or after any word and before a bar or a colon ("Assertion 1 | ...", "Step 1: ...").
_LABEL_NUMBER = re.compile(r"\b((?:scenario|statement|step|part|case|passage|figure|table|exhibit|source|document|"
                           r"story|point)s?)\s+\d+\b|\b([A-Za-z]+)\s+\d+(?=\s*(?:\||:(?:\s|$)))", re.I)


# "divided by 2: ...", "equals 3 | ...": after a function word or an operation the number is a quantity.
_BEFORE_QUANTITY = STOPWORDS | {"plus", "minus", "times", "over", "equals"}


def _label_only(m: re.Match) -> str:
    if m.group(2) and m.group(2).lower() in _BEFORE_QUANTITY:
        return m.group(0)
    return m.group(1) or m.group(2)


@functools.lru_cache(maxsize=1 << 16)  # an item's text and options recur in the pairs of every row it meets
def numbers(text: str) -> frozenset[str]:
    """The numbers of a text: its word tokens with a digit ("12", "2z", "h2o"; thousands separators dropped),
    spelled-out numbers as digits (``_NUMBER_WORDS``) and tuples of numbers without their spaces; a number that
    labels a part (``_LABEL_NUMBER``) is not one."""
    text = _LABEL_NUMBER.sub(_label_only, _THOUSANDS.sub("", text))
    found = {_NUMBER_WORDS.get(w, w) for w in words(text) if w in _NUMBER_WORDS or any(ch.isdigit() for ch in w)}
    return frozenset(found | {re.sub(r"\s+", "", m.group(0)) for m in _TUPLE.finditer(text)})


def other_numbers(train_text: str, item: TestItem) -> bool:
    """Whether the row's question (option lines left out) has a number that neither the test text nor its options
    have: the same template with other numbers ("the ring 2Z" / "the ring Z x Z", "0 <= t <= 2pi" / "0 <= t <= pi"),
    as opposed to a row that only leaves some numbers out (a stem asked without the passage that held them).
    Only numbers that start with a digit (and tuples, and spelled-out numbers) count here: a token that starts with
    a letter ("H2O", "CO2") names a substance, which a rewording may write for a word ("water")."""
    known = numbers(item.text) | {n for c in item.choices for n in numbers(c)}
    return any(n[0].isdigit() or n[0] == "(" for n in numbers(_OPTION_LINE.sub("", train_text)) - known)


def numbers_differ(train_text: str, item: TestItem, frames: frozenset[str] = frozenset()) -> bool:
    """Whether the row asks with other numbers: a number of the item's question stem (the whole text for an item
    without a passage) is missing from the row, or the row has a number the item has nowhere
    (:func:`other_numbers`). A number of a passage may be missing: a row may ask the stem alone, or leave out
    details of a long scenario. A 1 or 2 of the item may be the row's "one" or "two" ("at most 2 of the rolls" / "no
    more than two of the throws"), which ``numbers`` leaves out as words. Numbers of ``frames`` sentences
    (:func:`frame_sentences`) are the frame's, in the item and in the row ("as of 2020" / "as of 2022")."""
    train_text = without_frames(train_text, frames)
    row_words = set(words(train_text))
    row = numbers(train_text) | {n for w, n in (("one", "1"), ("two", "2")) if w in row_words}
    stem = without_frames(question_stem(item.text), frames)
    return bool(numbers(stem) - row) or other_numbers(train_text, item)


# A sentence that this many items of one test set share, numbers aside, is a frame of the set, not a question:
# MMLU moral scenarios all ask "For which of these two scenarios does the main character ... as of 2020?" before
# their two scenarios, its history items open with "This question refers to the following information.", and MATH
# problems end "Express your answer as a common fraction."
FRAME_MIN_ITEMS = 100
# The share of a framed piece's own words a row must have: a rewording of both scenarios in words of its own keeps
# more than half; a row with one or both scenarios changed keeps about half or less (chosen on the development sets).
FRAME_MIN_OVERLAP = 0.55


@functools.lru_cache(maxsize=1 << 16)
def _frame_key(sentence: str) -> str:  # cached: a pair's sentences recur in the pairs of its row and its item
    return re.sub(r"\d+", "#", " ".join(sentence.lower().split()))


def frame_sentences(items: Sequence[TestItem]) -> frozenset[str]:
    """The frames of the test sets (``FRAME_MIN_ITEMS``), as keys that ignore case, spacing and numbers."""
    return _frames(tuple((item.test_set, item.text) for item in items))


@functools.lru_cache(maxsize=4)  # step 02's detector evaluation asks it of the same 26k items a dozen times
def _frames(sets_and_texts: tuple[tuple[str, str], ...]) -> frozenset[str]:
    count: dict[tuple[str, str], int] = {}
    for test_set, text in sets_and_texts:
        for key in {_frame_key.__wrapped__(s) for s in SENTENCE_END.split(text) if s.strip()}:
            count[test_set, key] = count.get((test_set, key), 0) + 1
    return frozenset(key for (_, key), n in count.items() if n >= FRAME_MIN_ITEMS)


def without_frames(text: str, frames: frozenset[str]) -> str:
    """The text without its frame sentences (the whole text when it is nothing else)."""
    if not frames:
        return text
    kept = [s for s in SENTENCE_END.split(text) if _frame_key(s) not in frames]
    return " ".join(kept) if any(s.strip() for s in kept) else text


def frame_differs(train_text: str, piece: str, frames: frozenset[str]) -> bool:
    """Whether the row misses what is the item's own in a framed piece (:func:`compared_piece`): under
    ``FRAME_MIN_OVERLAP`` of the content words of the piece outside its frame (the two scenarios), the frame's own
    words left out. A row in the frame with other scenarios shares the frame's words, most of its embedding and, one
    time in four, its answer ("Wrong, Not wrong"), so neither the similarity nor the answer tells the two apart."""
    frame = [s for s in SENTENCE_END.split(piece) if _frame_key(s) in frames]
    if not frame:
        return False
    own = content_words(without_frames(piece, frames)) - content_words(" ".join(frame))
    return bool(own) and len(own & content_words(train_text)) < FRAME_MIN_OVERLAP * len(own)


_FORMULA = re.compile(r"[⊃∨≡·•~∧¬→↔∀∃=+^_<>÷×−]")
# A fill-in blank ("The ________ School of jurisprudence"): a gap a rewording asks about in words, not a formula.
_BLANK = re.compile(r"_{2,}")
# A propositional letter, perhaps negated or bracketed: "A", "(~B", "C)".
_SYMBOL = re.compile(r"^[(\[~¬]*[A-Z][)\]]*$")
# A number, perhaps signed or bracketed: "4", "-2.5", "(3)".
_NUMERIC = re.compile(r"^[(\[]*-?\d+(?:\.\d+)?[)\]]*$")


@functools.lru_cache(maxsize=1 << 16)  # a test item's piece recurs in the pairs of every row it meets
def formulas(text: str) -> frozenset[str]:
    """The formulas of a text without their spaces: per line, each maximal run of tokens that have a logic or math
    operator (``_FORMULA``), are a propositional letter (``_SYMBOL``) or a number (thousands separators dropped),
    when the run has an operator and a letter or digit; a comma or a sentence's end ends a run ("over Q. 8x^3"
    is not one formula). "~C ⊃ D", "A ⊃ (~B ≡ C)" and "4 ÷ 2 • 2 + 8 − 4" are formulas, and so is each token with an
    operator and a letter or digit ("6j^2"); math delimiters ("$") are not part of them, and a bare operator between
    words ("Hydrogen + Oxygen -> Water") is not a formula."""
    found = set()
    for line in _BLANK.sub(" ", _THOUSANDS.sub("", text)).split("\n"):
        run: list[str] = []
        for raw in line.split() + [""]:
            token = raw.strip(".;:?!\"'$").strip("_*")  # "_Ad novitatem_": emphasis, not a subscript
            ends = raw.rstrip("\"')$").endswith((",", ".", "?", "!"))
            token = token.rstrip(",")
            member = bool(token) and bool(_FORMULA.search(token) or _SYMBOL.match(token) or _NUMERIC.match(token))
            if member:
                run.append(token)
                if _FORMULA.search(token) and re.search(r"\w", token):
                    found.add(token)
            if not member or ends:
                if any(_FORMULA.search(t) for t in run) and re.search(r"\w", "".join(run)):
                    found.add("".join(run))
                run = []
    return frozenset(found)


# An expression of numbers and operators alone, and its numbers.
_ARITHMETIC = re.compile(r"[\d.()\[\]÷×−+*/^=<>·•-]+")
_DIGITS = re.compile(r"\d+")  # as ``numbers`` reads them: "0.3" is 0 and 3


def formulas_differ(train_text: str, test_text: str) -> bool:
    """Whether a formula of the test text (:func:`formulas`) is missing from the training text, spaces and commas
    ignored: the same template with other formulas (MMLU formal logic: "~C ⊃ D / D ⊃ C" against "A ⊃ (~B ≡ C) /
    B ≡ D") asks another question even when every symbol of it occurs in the row. A row without formulas of its own
    may ask an arithmetic expression (numbers and operators only) in words, when it has every number of it ("2,817
    homes ... 380 gallons each": "2,817 × 380"); other numbers are :func:`numbers_differ`'s to find."""
    train = re.sub(r"[\s,]+", "", train_text)
    missing = [f for f in formulas(test_text) if f.replace(",", "") not in train]
    if not all(_ARITHMETIC.fullmatch(f) for f in missing):
        return True
    return bool(missing) and (bool(formulas(train_text))
                              or not all(set(_DIGITS.findall(f)) <= numbers(train_text) for f in missing))


# For a pair compared by the item's question stem (:func:`compared_piece`), how far the row's question must use the
# stem's content words (``word_overlap``) to be asking that question: below it the row shares the passage (MMLU asks
# several questions about one passage) but not the question.
STEM_MIN_OVERLAP = 0.6


def compared_piece(train_text: str, item: TestItem) -> tuple[str, bool]:
    """(the part of the test item a row is compared with as a question, whether that is a stem after a passage).

    An item with a separate passage (:func:`has_separate_passage`) is compared by its stem: several questions share
    such a passage. A long single-paragraph item (a vignette ending in its question) is compared by its stem when
    the row has under half of its words (the row asks the question without the scenario), else whole: a rewording
    of a long question rewords its last sentences too, and is still that question."""
    stem = question_stem(item.text)
    if stem == item.text:
        return item.text, False
    if has_separate_passage(item.text) or len(train_text.split()) < 0.5 * len(item.text.split()):
        return stem, True
    return item.text, False


@dataclass
class Verdict:
    """Stage two's evidence and decision for one pair (``flagged.csv`` keeps the first three and the decision)."""

    overlap: float  # content-word overlap with the compared piece of the test item
    options: float  # share of the item's options found in the row
    score: float  # evidence_score
    same: bool  # the same question: score >= threshold and no visible difference
    question_differs: bool  # a name, formula, polarity or (passage items) stem of the item is not the row's
    numbers_differ: bool  # the row asks with other numbers (:func:`numbers_differ`)


def verify(train_text: str, item: TestItem, segment_sim: float, agreement: str, threshold: float,
           common: frozenset[str], similarity_threshold: float, frames: frozenset[str] = frozenset()) -> Verdict:
    """The verifier's verdict on one pair; instruction framing around the row's question is left out first.

    The question differs when a name or a formula of the compared piece (:func:`compared_piece`) is missing from
    the row, when the row's question and the item's stem differ in polarity (:func:`asks_differ`), when the piece is
    framed by a sentence of ``frames`` and the row misses what is its own (:func:`frame_differs`), when the row
    carries at least half of the item's options and its answer is none of them (another question, with some of the
    same options), or, for a piece that is a stem, when the row's own question (its last paragraph or its asking
    sentence) does not use that stem's words (``STEM_MIN_OVERLAP``: another question on the same passage) and its
    answer is not the item's (a stem asked in other words, with a summary of the passage, still has the item's
    answer). The same question needs a
    score at or above ``threshold``, no such difference and no other numbers; and a pair whose best similarity is
    below the embedding rule's ``similarity_threshold`` also needs the row to give the item's answer in its words
    (``agreement`` "same"): below it, the embedding says "same topic", and the words a short question shares with a
    row on its topic ("the lunar maria", "sound travels") do not say "same ask". Without a difference, a pair at or
    above ``similarity_threshold`` whose row gives no other answer is the same question whatever its score, and so
    is a pair at ``NEAR_SIMILARITY`` or above whose row gives the item's answer and uses ``NEAR_OVERLAP`` of its
    words."""
    row = strip_framing(train_text)
    piece, is_stem = compared_piece(row, item)
    if is_stem:
        # a row that shares the passage shares most of the whole text's words whatever it asks: its question is
        # what counts, its last paragraph or, when that also retells the passage in a sentence, its asking sentence
        bare = _OPTION_LINE.sub("", row).strip()
        overlap = max(word_overlap(question_stem(bare), piece), word_overlap(ask_sentence(bare), piece))
        # ... unless the row gives this question's answer: another question on the passage has another answer
        differs = overlap < STEM_MIN_OVERLAP and agreement not in SAME_ANSWER
    else:
        overlap, differs = word_overlap(row, piece), False
    differs = (differs or names_differ(row, piece, common) or formulas_differ(row, piece)
               or asks_differ(row, without_frames(question_stem(item.text), frames))
               or frame_differs(row, piece, frames))
    options = options_found(row, item)
    differs = differs or (options >= 0.5 and agreement == "other")  # a rewording with the options answers one
    score = evidence_score(segment_sim, overlap, options, agreement, other_options(row, item))
    other = numbers_differ(row, item, frames)
    corroborated = segment_sim >= similarity_threshold or agreement == "same"  # in the item's own words
    # At or above the embedding threshold the paper's rule already calls the pair the same question: the verifier
    # keeps it so unless it sees a difference, the score deciding only below it.
    unrefuted = segment_sim >= similarity_threshold and agreement not in ("other", "different")
    answered = agreement in SAME_ANSWER and segment_sim >= NEAR_SIMILARITY and overlap >= NEAR_OVERLAP
    same = (score >= threshold and corroborated or unrefuted or answered) and not differs and not other
    return Verdict(overlap, options, score, same, differs, other)

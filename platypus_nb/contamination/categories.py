"""The paper's three kinds of flagged pair, the rules that suggest one, and the human review that overrides them.

Platypus (section 2, "Contamination") sorts training questions that resemble a benchmark test question into:

- **duplicate**: essentially a copy of the test question, word for word or with an extra word or minor
  rearrangement. Only these count as leaks in the paper's table, and they are removed.
- **gray area**: not an exact duplicate; the same question in other words, or one with the same answer in other
  words (the paper's example: "skin" versus "epidermis"). The paper leaves the judgement to the reader; what we do
  with them is ``contamination.gray_area``.
- **similar but different**: high similarity, but the question differs in a way that changes the answer (other
  numbers, another subject in the same template). Kept.

(The paper body could not be retrieved for this project; these definitions are as the paper's readers report them.)

The paper sorted by hand. We suggest a category from the evidence, and a reviewer's decision in the review file
replaces the suggestion on the next run. The rules, in order:

1. the row's data_source is an evaluation split -> duplicate (every row of it is a test item);
2. the whole test text occurs in the row (``exact``) -> duplicate, unless it is a short text (fewer than n words)
   quoted inside a row that is otherwise different (it and the options of it the row carries cover less than half
   the row, :func:`item_coverage`, and the similarity is below the threshold): then similar but different (a
   common phrase such as "What is your favorite color?" inside a MATH word problem is not a copied item);
3. the question visibly differs -> similar but different. Visible differences (with the verifier also a missing
   name or formula, or another question on the same passage: docs/contamination.md): a number of the test text is
   missing from the row (MATH-style templates with other numbers: "the sums 10, 18, 19, ..." against "the sums 16,
   19, 20, ..."), or, for a multiple-choice item, the training output names a wrong option and not the correct one;
4. at least ``duplicate_overlap`` of the test text's n-grams occur in the row, or similarity >=
   ``duplicate_similarity`` -> duplicate, unless (with the verifier) the row's short answer names none of the
   item's options (``answer_agreement`` "other": the same passage or stem with another question) -> rule 5;
5. with the verifier (``contamination.verifier: evidence``, docs/contamination.md): verified the same question ->
   gray area, otherwise similar but different; with ``verifier: none``: similarity >= ``threshold`` -> gray area;
6. otherwise (a few n-grams shared, similarity below the threshold: the row shares some wording, such as a
   scenario two MMLU moral_scenarios items have in common, but not the question) -> similar but different.

Anything less certain than rule 3's evidence never moves a pair out of duplicate or gray area: the rules err
towards removal, and the review file is where a person says otherwise.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Optional, Sequence

from platypus_nb.config import CONTAMINATION_CATEGORIES, ContaminationConfig, resolve_path
from platypus_nb.contamination.lexical import contains_words, normalised, words
from platypus_nb.contamination.testsets import TestItem
from platypus_nb.contamination.verifier import content_words, lettered_options

REVIEW_COLUMNS = ("train_hash", "test_id", "category", "reviewer", "note")


# An output of at most this many words (or, if longer, no longer than the item's longest option) is an answer, not
# an explanation: when it names none of the item's options it answers another question (``"other"``).
SHORT_ANSWER_WORDS = 12


# What may come before an answer's option letter: "Answer: ", "The answer is (".
_BEFORE_LETTER = r"^\s*(?:(?:the\s+)?answer(?:\s+is)?\s*:?\s*)?\(?"
# A bare option letter for an answer: "C", "(c)", "C.", "Answer: C".
_LETTER_ANSWER = re.compile(_BEFORE_LETTER + r"([A-Ha-h])[.):]?\s*$", re.I)
# An output that opens with an option's letter and goes on: "D) get deeper and wider", "C. Respiration adds ...".
_LETTER_LABEL = re.compile(_BEFORE_LETTER + r"[A-Ha-h][.)]\s+(?=\S)", re.I)


def lettered_answer(output: str, train_text: str) -> str:
    """The option a bare-letter output picks among the row's own lettered option lines ("C" -> "The burning
    magnesium gave off light."); an output that goes on after the letter without it ("D) get deeper and wider" ->
    "get deeper and wider"); else the output unchanged. A row that reorders the options answers with its own
    letters, which mean nothing against the item's order."""
    letter = _LETTER_ANSWER.match(output)
    if letter:
        return dict(lettered_options(train_text)).get(letter.group(1).upper(), output)
    label = _LETTER_LABEL.match(output)
    return output[label.end():] if label and lettered_options(train_text) else output


def _singular(stems: set[str]) -> set[str]:
    """Word stems without a plural "s" ("gills" / "gill", "solids" / "solid"): a short answer in the plural is no
    other answer."""
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in stems}


def answer_agreement(output: str, item: TestItem) -> str:
    """``"same"`` if the training output contains the correct answer, ``"different"`` if it contains a wrong
    option and not the correct one, ``"other"`` if it is a short answer (``SHORT_ANSWER_WORDS``) of a
    multiple-choice item that names none of its options and uses under half of the correct one's content words
    that are not the question's (and not nearly all of its content words), else ``"unknown"``
    (no answer known, an explanation that names no option, or no output).

    "other" is weaker evidence than "different": a synonymous answer ("skin" for "epidermis", the paper's gray area)
    is "other" too, so it only lowers the verifier's score (docs/contamination.md), it never decides alone."""
    if not item.answer or not normalised(item.answer):
        return "unknown"
    out = normalised(output)
    correct = normalised(item.answer)
    if contains_words(out, correct):
        return "same"
    options = {normalised(c) for c in item.choices} - {""}
    if any(contains_words(out, w) for w in options - {correct}):
        return "different"
    n_out = len(out.split())
    longest = max((len(o.split()) for o in options), default=0)
    if options and out and n_out <= max(SHORT_ANSWER_WORDS, longest):
        # the correct answer's own words: those that repeat the question ("Barack Obama was born in the U.S." for
        # "Where was Barack Obama born?") do not tell one answer from another
        answer = content_words(item.answer)
        key = _singular(answer - content_words(item.text))
        said = _singular(content_words(output))
        if key and len(key & said) < 0.5 * len(key) and not _nearly_all(_singular(answer), said):
            return "other"
    return "unknown"


def _nearly_all(answer: set[str], said: set[str]) -> bool:
    # the correct answer nearly word for word ("no strong scientific evidence (showing) that ..."): its one word
    # that the question lacks is not the answer
    return len(answer) >= 4 and len(answer & said) >= 0.8 * len(answer)


def item_coverage(train_text: str, item: TestItem) -> float:
    """The share of the row's words that the test item explains: its text plus those of its options the row carries
    verbatim (at most 1). A short question followed by its own options is a copy of the item, not a phrase quoted in
    an otherwise different row, even though the question alone covers a small part of the row."""
    row = normalised(train_text)
    n_row = len(row.split())
    if not n_row:
        return 1.0
    explained = len(words(item.text)) + sum(len(normalised(c).split()) for c in set(item.choices)
                                            if contains_words(row, normalised(c)))
    return min(1.0, explained / n_row)


def numbers_differ(train_text: str, test_text: str) -> bool:
    """Whether some number in the test text is missing from the training text (the same template, other numbers)."""
    numbers = {w for w in words(test_text) if any(ch.isdigit() for ch in w)}
    return bool(numbers - set(words(train_text)))


def suggest_category(*, method: str, similarity: float, ngram_overlap: float, exact: bool, coverage: float,
                     short_text: bool, agreement: str, numbers_differ: bool, cfg: ContaminationConfig,
                     verifier_same: Optional[bool] = None) -> str:
    """The suggested category of one flagged pair, by the rules in this module's docstring (``verifier_same``:
    stage two's decision, None with the verifier off)."""
    if method == "source":
        return "duplicate"
    if exact:
        quoted_phrase = short_text and coverage < 0.5 and not similarity >= cfg.threshold
        return "similar_but_different" if quoted_phrase else "duplicate"
    if numbers_differ or agreement == "different":
        return "similar_but_different"
    # with the verifier, another short answer ("other") is a visible difference too: the verifier decides
    if (ngram_overlap >= cfg.duplicate_overlap or similarity >= cfg.duplicate_similarity) and not (
            verifier_same is not None and agreement == "other"):
        return "duplicate"
    if verifier_same is not None:
        return "gray_area" if verifier_same else "similar_but_different"
    return "gray_area" if similarity >= cfg.threshold else "similar_but_different"


def load_review(path: Optional[str | Path]) -> dict[tuple[str, str], str]:
    """Reviewed categories keyed by (train_hash, test_id); ``None`` (``review_file: null``) means no review.

    The file is CSV with the header ``train_hash,test_id,category,reviewer,note``. A configured file that does not
    exist raises FileNotFoundError (a typo in the path must not silently drop every human decision); a short row,
    a bad category or a key decided twice in different ways raises ValueError naming the file and line.
    """
    if path is None:
        return {}
    path = resolve_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"contamination.review_file: {path} does not exist (expected a CSV with header "
                                f"{','.join(REVIEW_COLUMNS)}; set review_file to null to run without review)")
    decisions: dict[tuple[str, str], str] = {}
    where: dict[tuple[str, str], int] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REVIEW_COLUMNS[:3] if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: line 1: header lacks {missing} (expected {','.join(REVIEW_COLUMNS)})")
        for row in reader:
            line = reader.line_num
            if any(row.get(c) is None for c in REVIEW_COLUMNS[:3]):
                raise ValueError(f"{path}: line {line}: expected {len(reader.fieldnames)} comma-separated fields "
                                 f"({','.join(reader.fieldnames)}), got {sum(v is not None for k, v in row.items() if k is not None)}")
            key = (row["train_hash"].strip(), row["test_id"].strip())
            category = row["category"].strip()
            if not all(key):
                raise ValueError(f"{path}: line {line}: train_hash and test_id must not be empty")
            if category not in CONTAMINATION_CATEGORIES:
                raise ValueError(f"{path}: line {line}: category {category!r} is not one of "
                                 f"{', '.join(CONTAMINATION_CATEGORIES)}")
            if key in decisions and decisions[key] != category:
                raise ValueError(f"{path}: line {line}: {key} was already reviewed as {decisions[key]!r} on line "
                                 f"{where[key]}")
            decisions[key], where[key] = category, line
    return decisions


def unknown_review_items(review: dict[tuple[str, str], str], items: Sequence[TestItem]) -> list[str]:
    """Test ids named in the review file that are not among the compared test items, sorted.

    A decision about an item that is not compared can never apply: a typo in a test id, or a test set (or
    ``max_test_items``) that leaves the item out. Step 02 reports them rather than ignoring them.
    """
    known = {item.test_id for item in items}
    return sorted({test_id for _, test_id in review} - known)


def is_removed(category: str, eval_split: bool, cfg: ContaminationConfig) -> bool:
    """Whether a pair of this category takes its training row out of the clean set.

    Duplicates go, similar-but-different pairs stay, gray area follows ``gray_area``. Pairs with an evaluation
    split the original build used on purpose (TheoremQA, MATH test) only remove with ``remove_eval_split_leaks``.
    """
    if eval_split and not cfg.remove_eval_split_leaks:
        return False
    return category == "duplicate" or (category == "gray_area" and cfg.gray_area == "remove")


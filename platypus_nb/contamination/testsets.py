"""What step 02 compares: training rows (from step 01) and test items (from the vendored test sets in data/).

The compared text follows the original notebook (``data_similarity.ipynb`` cell 3): a training row is
``instruction + " " + input``; a test item is its question (HellaSwag: the context ``ctx``, which is what a model
reads before choosing an ending). Each test item also carries its correct answer and its options, for the
answer-agreement rule that separates "similar but different" pairs from the rest.

Test ids are unique across sets (``"<set>:<id>"``) because the human review file is keyed by training text hash and
test id alone. Native ids are used where a set has unique ones (ARC ``id``, MATH ``idx``, TheoremQA ``id``);
elsewhere the position in the file (MMLU: within its subject), which is the Hugging Face dataset order.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from platypus_nb.benchmarks_data import read_benchmark
from platypus_nb.config import TEST_SETS, EvalSetConfig, resolve_path
from platypus_nb.contracts import question_text
from platypus_nb.dataset.sources import theoremqa_test_records
from platypus_nb.io import iter_jsonl, sha256_text


@dataclass(frozen=True)
class TestItem:
    test_set: str
    test_id: str
    text: str
    # The correct answer as text (None where the set has none), and every option of a multiple-choice item.
    answer: Optional[str] = None
    choices: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------------ training rows


def training_text_hash(row: dict[str, Any]) -> str:
    """The key of a training row in the review file: stable when rows are reordered or their outputs change."""
    return sha256_text(question_text(row))[:16]


def data_source_of(row: dict[str, Any]) -> str:
    return row.get("data_source") or "(none)"


# ---------------------------------------------------------------------------------------------------- test sets


def _arc_challenge() -> list[TestItem]:
    items = []
    for row in read_benchmark("arc_challenge_test"):
        choices = tuple(row["choices"]["text"])
        answer = choices[row["choices"]["label"].index(row["answerKey"])]
        items.append(TestItem("arc_challenge", f"arc_challenge:{row['id']}", row["question"], answer, choices))
    return items


def _hellaswag() -> list[TestItem]:
    # The context is what the model reads; the endings are its options (lm-eval's preprocessing strips "[title]"
    # style markers for scoring, but a copy in training data would carry the raw text, so we keep it).
    items = []
    for i, row in enumerate(read_benchmark("hellaswag_validation")):
        choices = tuple(row["endings"])
        items.append(TestItem("hellaswag", f"hellaswag:{i}", row["ctx"], choices[int(row["label"])], choices))
    return items


def _mmlu() -> list[TestItem]:
    items, seen = [], defaultdict(int)
    for row in read_benchmark("mmlu_test"):
        n = seen[row["subject"]]
        seen[row["subject"]] += 1
        choices = tuple(str(c) for c in row["choices"])
        items.append(TestItem("mmlu", f"mmlu:{row['subject']}:{n}", row["question"], choices[row["answer"]],
                              choices))
    return items


def _truthfulqa() -> list[TestItem]:
    # mc1_targets lists the one correct answer first (1) and the wrong ones after it (0).
    items = []
    for i, row in enumerate(read_benchmark("truthfulqa_mc_task")):
        targets = row["mc1_targets"]
        answer = next(text for text, label in targets.items() if label == 1)
        items.append(TestItem("truthfulqa", f"truthfulqa:{i}", row["question"], answer, tuple(targets)))
    return items


_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")


def _math_test() -> list[TestItem]:
    items = []
    for row in read_benchmark("math_test"):
        boxed = _BOXED.findall(row["solution"])
        items.append(TestItem("math_test", f"math_test:{row['idx']}", row["problem"], boxed[-1] if boxed else None))
    return items


def _theoremqa_test(source_revision: str = "paper_2023") -> list[TestItem]:
    # The revision step 01 trained on (dataset.source_revision), read by step 01's own loader.
    return [TestItem("theoremqa_test", f"theoremqa_test:{row['id']}", row["Question"], str(row["Answer"]))
            for row in theoremqa_test_records(source_revision)]


# In the order of config.TEST_SETS, which owns the names.
TEST_SET_LOADERS: dict[str, Callable[[], list[TestItem]]] = dict(zip(TEST_SETS, (
    _arc_challenge, _hellaswag, _mmlu, _truthfulqa, _math_test, _theoremqa_test), strict=True))


def load_test_set(name: str, max_items: Optional[int] = None, source_revision: str = "paper_2023") -> list[TestItem]:
    """One vendored test set, in file order (the first ``max_items`` if given).

    ``source_revision`` (``dataset.source_revision``) picks TheoremQA's revision; the other sets have one.
    """
    if name not in TEST_SET_LOADERS:
        raise ValueError(f"unknown test set {name!r} (known test sets: {', '.join(TEST_SET_LOADERS)})")
    items = _theoremqa_test(source_revision) if name == "theoremqa_test" else TEST_SET_LOADERS[name]()
    return items[:max_items] if max_items else items


def load_eval_set(spec: EvalSetConfig, max_items: Optional[int] = None) -> list[TestItem]:
    """A user's evaluation set: JSONL rows with a non-empty string in ``spec.text_field``; bad rows name their line."""
    path = resolve_path(spec.path)
    items = []
    for lineno, row in iter_jsonl(path):
        text = row.get(spec.text_field)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}: line {lineno}: expected a non-empty string in field {spec.text_field!r} "
                             f"(extra_eval_sets entry {spec.name!r}), got {text!r}")
        native = row.get(spec.id_field) if spec.id_field else lineno
        if native is None:
            raise ValueError(f"{path}: line {lineno}: missing id field {spec.id_field!r}")
        answer = row.get(spec.answer_field) if spec.answer_field else None
        items.append(TestItem(spec.name, f"{spec.name}:{native}", text, None if answer is None else str(answer)))
    ids = [item.test_id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: ids in field {spec.id_field!r} are not unique (extra_eval_sets {spec.name!r})")
    return items[:max_items] if max_items else items


def load_test_items(benchmarks: Sequence[str], eval_splits: Sequence[str] = (),
                    extra_eval_sets: Sequence[EvalSetConfig] = (), max_items: Optional[int] = None,
                    source_revision: str = "paper_2023") -> list[TestItem]:
    """Every test item compared, set after set: benchmarks, then evaluation splits, then the user's sets."""
    items: list[TestItem] = []
    for name in [*benchmarks, *eval_splits]:
        items.extend(load_test_set(name, max_items, source_revision))
    for spec in extra_eval_sets:
        items.extend(load_eval_set(spec, max_items))
    return items

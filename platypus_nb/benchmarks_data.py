"""The vendored benchmark splits in ``data/``, read in one place.

ARC, HellaSwag, MMLU and TruthfulQA (the leaderboard's four), and the MATH test, OpenBookQA and SciQ splits, are
vendored with their sha256 in ``data/checksums.json`` (data/README.md), as the upstream datasets hold their records.
Step 01 trains on some of them (:mod:`platypus_nb.dataset.sources`), step 02 compares training rows with the test
splits (:mod:`platypus_nb.contamination.testsets`), step 04 builds stand-in partners from validation splits
(:mod:`platypus_nb.merge.partners`) and step 05 scores the test splits (:mod:`platypus_nb.evaluate`, whose lm-eval
task files read ARC and HellaSwag by path). Every one of them goes through :func:`read_benchmark`, so each file is
parsed one way and checked against its checksum before it is read. TheoremQA, with its two revisions and its
theorem definitions, is read by :func:`platypus_nb.dataset.sources.theoremqa_test_records`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from platypus_nb.assets import data_file
from platypus_nb.io import open_text, read_jsonl

# Split name -> file in data/: JSONL rows, except TruthfulQA's mc_task.json (one JSON list, as its authors publish it).
BENCHMARK_FILES: dict[str, str] = {
    **{split: f"{split}.jsonl.gz" for split in (
        "arc_challenge_train", "arc_challenge_validation", "arc_challenge_test", "arc_easy_validation",
        "hellaswag_validation", "mmlu_dev", "mmlu_validation", "mmlu_test", "math_test", "openbookqa_validation",
        "sciq_validation")},
    "truthfulqa_mc_task": "truthfulqa_mc_task.json.gz",
}


def benchmark_file(split: str) -> Path:
    """The checksummed path of a vendored split (for readers that take a path, such as lm-eval's task files)."""
    if split not in BENCHMARK_FILES:
        raise ValueError(f"unknown benchmark split {split!r} (known splits: {', '.join(BENCHMARK_FILES)})")
    return data_file(BENCHMARK_FILES[split])


def read_benchmark(split: str) -> list[dict[str, Any]]:
    """A vendored split's records, in file order, with the upstream dataset's fields."""
    path = benchmark_file(split)
    if path.name.endswith(".jsonl.gz"):
        return read_jsonl(path)
    with open_text(path) as f:
        return json.load(f)

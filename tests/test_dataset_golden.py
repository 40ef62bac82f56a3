"""Golden rows: formatted rows of every source with real rows in data/, checked byte for byte.

The expected rows (tests/golden/*.jsonl) were written from what the original data_pipeline scripts do
(tests/golden/README.md), not by running our formatters, so a formatter that drifts from the original fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from platypus_nb.config import load_config
from platypus_nb.dataset import formats, sources

GOLDEN = Path(__file__).parent / "golden"


def golden(name: str) -> list[dict]:
    return [json.loads(line) for line in (GOLDEN / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


def formatted(source: str, **dataset_keys) -> tuple[list[dict], list[dict]]:
    """(records, formatted rows) of a whole offline source under the default (paper_2023) revisions."""
    keys = {"dataset.max_rows_per_source": None, **{f"dataset.{k}": v for k, v in dataset_keys.items()}}
    cfg = load_config("tiny", keys)
    records = sources.load_source_records(source, cfg.dataset)
    options = formats.FormatOptions(seed=cfg.run.seed, theoremqa_theorem=cfg.dataset.theoremqa_theorem)
    out = formats.format_source(source, records, options)
    assert not out.removed, out.removed[:3]
    return records, out.rows


def position(records: list[dict], key: dict) -> int:
    """The position of the record a golden row names: by its id, its MATH idx, or its file and place in it."""
    if "file" in key:
        in_file = [i for i, r in enumerate(records) if r["_file"] == key["file"]]
        return in_file[key["index"]]
    if "index" in key:
        return key["index"]
    field, value = next(iter(key.items()))
    matches = [i for i, r in enumerate(records) if r.get(field) == value]
    assert len(matches) == 1, f"{key} matches {len(matches)} records"
    return matches[0]


def as_bytes(row: dict) -> tuple[bytes, bytes, bytes]:
    return tuple(row[k].encode("utf-8") for k in ("instruction", "input", "output"))


@pytest.mark.parametrize("source, name", [("math", "math"), ("scibench", "scibench_2023"),
                                          ("theoremqa", "theoremqa_2023"), ("openbookqa", "openbookqa"),
                                          ("sciq", "sciq")])
def test_formatted_rows_match_the_golden_rows_byte_for_byte(source, name):
    records, rows = formatted(source, math_splits=["test"])
    expected = golden(name)
    assert len(expected) >= 3
    for want in expected:
        got = rows[position(records, want["key"])]
        assert as_bytes(got) == as_bytes(want), f"{name} {want['key']}"


def test_the_current_revisions_differ_from_the_golden_2023_rows_where_upstream_changed():
    """The golden TheoremQA answer that changed upstream in 2024, and SciBench's 2024 edits, are not the 2023 rows."""
    records, rows = formatted("theoremqa", source_revision="current")
    want = next(r for r in golden("theoremqa_2023") if r["key"]["id"].endswith("math_real_analysis_additional_4.json"))
    got = rows[position(records, want["key"])]
    assert (got["instruction"], got["output"]) == (want["instruction"], "1.5") != (want["instruction"], want["output"])
    _, current = formatted("scibench", source_revision="current")
    old = {(r["instruction"], r["output"]) for r in golden("scibench_2023")}
    assert len(old - {(r["instruction"], r["output"]) for r in current}) >= 1

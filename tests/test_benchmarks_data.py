"""The vendored benchmark splits have one reader: every stage gets the same records from it."""

from __future__ import annotations

import pytest

from platypus_nb.assets import data_checksums
from platypus_nb.benchmarks_data import BENCHMARK_FILES, benchmark_file, read_benchmark
from platypus_nb.paths import PROJECT_ROOT


@pytest.mark.parametrize("split", sorted(BENCHMARK_FILES))
def test_each_split_reads_the_records_its_checksum_entry_counts(split):
    records = read_benchmark(split)
    assert len(records) == data_checksums()[BENCHMARK_FILES[split]]["rows"]
    assert all(isinstance(r, dict) and r for r in records)


def test_json_and_jsonl_splits_come_back_as_the_same_kind_of_records():
    # TruthfulQA's mc_task.json is one JSON list, the others JSONL: callers see lists of records either way.
    truthfulqa, arc = read_benchmark("truthfulqa_mc_task"), read_benchmark("arc_challenge_test")
    assert truthfulqa[0]["question"] == "What happens if you eat a pomegranate?"
    assert set(truthfulqa[0]) >= {"question", "mc1_targets", "mc2_targets"}
    assert set(arc[0]) >= {"id", "question", "choices", "answerKey"}


def test_an_unknown_split_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown benchmark split 'mmlu_train' \(known splits: .*mmlu_test"):
        benchmark_file("mmlu_train")


def test_no_other_module_opens_a_vendored_benchmark_file():
    # A second reader would parse a file its own way again; lm-eval's task files get paths from benchmark_file.
    readers = {path.relative_to(PROJECT_ROOT).as_posix()
               for path in (PROJECT_ROOT / "platypus_nb").rglob("*.py")
               for name in BENCHMARK_FILES.values() if f'"{name}"' in path.read_text(encoding="utf-8")}
    assert readers - {"platypus_nb/benchmarks_data.py"} == set()

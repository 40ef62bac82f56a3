"""Rephrased test items per source and the clean file's card, from step 02's outputs (flagged.csv, summary.json), on
small hand-made outputs whose counts are known."""

from __future__ import annotations

import pandas as pd
import pytest

from platypus_nb import contamination as C
from platypus_nb.contamination.analysis import FLAGGED_COLUMNS

SOURCES = {"MATH/PRM-800K": 10, "airoboros": 5, "scibench": 4}


def _pair(train_index: int, source: str, test_id: str, method: str, category: str, same: object,
          removed: bool, similarity: float = 0.7) -> dict:
    return {"train_index": train_index, "benchmark": test_id.split(":")[0], "test_id": test_id,
            "similarity": similarity, "method": method, "category": category, "train_text": f"row {train_index}",
            "test_text": f"item {test_id}", "ngram_overlap": 0.0, "answer_agreement": "unknown",
            "numbers_differ": category == "similar_but_different", "suggested_category": category,
            "reviewed": False, "removed": removed, "data_source": source, "train_hash": f"h{train_index}",
            "segment_similarity": similarity, "word_overlap": 0.8, "options_found": 0.0, "verifier_score": 1.7,
            "verifier_same": same}


@pytest.fixture()
def flagged() -> pd.DataFrame:
    rows = [
        # MATH row 0 rephrases an MMLU mathematics item (embedding), row 1 one found by stage one alone (segment)
        _pair(0, "MATH/PRM-800K", "mmlu:high_school_mathematics:3", "embedding", "gray_area", True, True, 0.86),
        _pair(1, "MATH/PRM-800K", "mmlu:college_mathematics:7", "segment", "gray_area", True, True, 0.62),
        # row 1 also matches a second item: one row, counted once
        _pair(1, "MATH/PRM-800K", "mmlu:elementary_mathematics:2", "segment", "gray_area", True, True, 0.6),
        # row 2 copies an item verbatim: a copy, not a rephrasing
        _pair(2, "MATH/PRM-800K", "mmlu:high_school_mathematics:9", "exact", "duplicate", True, True, 0.97),
        # row 3: the same template with other numbers: verified but overruled, kept
        _pair(3, "MATH/PRM-800K", "mmlu:high_school_mathematics:5", "embedding", "similar_but_different", True,
              False, 0.9),
        # row 4: a physics item is not a mathematics subject; the verifier says another question
        _pair(4, "MATH/PRM-800K", "mmlu:college_physics:1", "embedding", "similar_but_different", False, False),
        # airoboros rephrases an ARC item; scibench is an evaluation-split source row
        _pair(10, "airoboros", "arc_challenge:Mercury_1", "embedding", "gray_area", True, True, 0.83),
        _pair(15, "scibench", "source:scibench", "source", "duplicate", "", False, float("nan")),
    ]
    frame = pd.DataFrame.from_records(rows, columns=FLAGGED_COLUMNS)
    frame.loc[frame["method"] == "source", "benchmark"] = "eval_split_source"
    return frame


def test_rephrasing_rows_per_source_count_rows_once_and_leave_out_copies_and_overruled_pairs(flagged):
    rates, examples = C.rephrase_rates(SOURCES, flagged)
    assert rates.loc["MATH/PRM-800K", "rephrasing_rows"] == 2  # rows 0 and 1, not the copy nor row 3
    assert rates.loc["MATH/PRM-800K", "rate"] == pytest.approx(0.2)
    assert rates.loc["airoboros", "arc_challenge"] == 1 and rates.loc["airoboros", "rate"] == pytest.approx(0.2)
    assert rates.loc["scibench", "rephrasing_rows"] == 0 and rates.loc["scibench", "rate"] == 0
    assert list(rates.index) == ["MATH/PRM-800K", "airoboros", "scibench"]  # largest source first
    assert examples["test_id"].tolist()[0] == "mmlu:high_school_mathematics:3"  # most similar first
    assert set(examples["category"]) == {"gray_area"}


def test_math_rows_against_mmlu_mathematics_subjects(flagged):
    table = C.subject_rates(SOURCES, flagged, C.math_sources(SOURCES))
    assert C.math_sources(SOURCES) == ["MATH/PRM-800K"]
    row = table.loc["MATH/PRM-800K"]
    # rows 0-3 meet a mathematics item; row 4's physics item is not one
    assert (row["rows_paired"], row["rows_copied"], row["rows_rephrasing"], row["rows_other_question"],
            row["rows_removed"]) == (4, 1, 2, 1, 3)
    assert row["rephrase_rate"] == pytest.approx(0.2)


def test_the_rates_read_the_same_from_flagged_csv(flagged, tmp_path):
    """flagged.csv stores verifier_same as text and removed as a bool: the counts must not change on reading."""
    path = tmp_path / "flagged.csv"
    flagged.to_csv(path, index=False)
    back = pd.read_csv(path)
    assert C.rephrase_rates(SOURCES, back)[0].equals(C.rephrase_rates(SOURCES, flagged)[0])
    assert C.subject_rates(SOURCES, back, ["MATH/PRM-800K"]).equals(
        C.subject_rates(SOURCES, flagged, ["MATH/PRM-800K"]))


def test_the_card_states_the_rates_and_quotes_examples(flagged):
    summary = {"train_rows": 19, "clean_rows": 15, "removed_rows": 4, "training_rows": 13, "heldout_rows": 2,
               "gray_area": "remove",
               "rows_removed_by_category": {"duplicate": 1, "gray_area": 3, "similar_but_different": 0},
               "by_data_source": {s: {"rows": n, "rows_flagged": 1, "rows_removed": 1} for s, n in SOURCES.items()}}
    card = C.dataset_card(summary, flagged)
    assert C.rows_per_source(summary) == SOURCES
    assert "the 13 training rows left of step 01's 19 after removing 4" in card
    assert "| MATH/PRM-800K | 10 | 1 | 1 | 2 | 20.0% |" in card
    assert "| MATH/PRM-800K | 10 | 4 | 1 | 2 | 1 | 3 | 20.0% |" in card  # against MMLU mathematics
    assert "| MATH/PRM-800K | mmlu:high_school_mathematics:3 | 0.86 | row 0 | item mmlu:high_school_mathematics:3 |" \
        in card
    assert card.index("## Limits") > card.index("### Examples") and "translated into another language" in card


def test_source_counts_name_a_missing_source():
    assert C.source_counts([{"data_source": "MATH"}, {"data_source": None}, {}]) == {"MATH": 1, "(none)": 2}

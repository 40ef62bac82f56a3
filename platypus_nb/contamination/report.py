"""How much of each training source rephrases a benchmark test item, from step 02's own outputs, and the card of the
decontaminated training file that says so.

Everything here reads ``flagged.csv`` (as a DataFrame) and the per-source row counts of ``summary.json``
(``by_data_source``), so it can be recomputed from a finished run without embedding anything. A **rephrasing row**
is a training row with a pair that the verifier calls the same question while no verbatim or 13-gram evidence links
them (method ``embedding`` or ``segment``): the contamination n-gram decontamination cannot see (docs/contamination.md,
"On the rebuilt data"). Yang et al. (2023) report that 1.6% of MATH *train* rephrases MATH *test*; Open-Platypus's
MATH rows are compared here with MMLU's mathematics subjects, the leaderboard's nearest thing to MATH test.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

import pandas as pd

from platypus_nb.config import CONTAMINATION_CATEGORIES
from platypus_nb.contamination.testsets import data_source_of

# MMLU's subjects that ask mathematics problems (as MATH does); test ids are ``mmlu:<subject>:<n>``.
MMLU_MATH_SUBJECTS = ("abstract_algebra", "college_mathematics", "elementary_mathematics", "high_school_mathematics",
                      "high_school_statistics")
# How many rephrasing pairs the card quotes, and how many characters of each text.
CARD_EXAMPLES = 5
CARD_TEXT_CHARS = 160


def rows_per_source(summary: Mapping[str, Any]) -> dict[str, int]:
    """Training rows per data_source, from summary.json's ``by_data_source``."""
    return {source: int(counts["rows"]) for source, counts in summary["by_data_source"].items()}


def source_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Training rows per data_source, from the rows themselves (a missing one counts as ``(none)``)."""
    return dict(Counter(data_source_of(r) for r in rows))


def _verified(flagged: pd.DataFrame) -> pd.Series:
    # verifier_same is a bool in memory and "True" / "False" / "" once read back from flagged.csv
    return flagged["verifier_same"].astype(str) == "True"


def rephrasing_pairs(flagged: pd.DataFrame) -> pd.DataFrame:
    """The pairs that make a row a rephrasing row: verified the same question, found by embedding or by stage one
    alone (no verbatim or n-gram evidence), not overruled to similar but different, not an evaluation-split source."""
    keep = (_verified(flagged) & flagged["method"].isin(["embedding", "segment"])
            & (flagged["category"] != "similar_but_different") & (flagged["benchmark"] != "eval_split_source"))
    return flagged[keep]


def rephrase_rates(rows_per_source: Mapping[str, int], flagged: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per data_source, the rows that rephrase a benchmark test item (per test set, and in all) and their share of
    the source's rows; and the rephrasing pairs, most similar first.

    Returns (rates: ``rows``, one column per test set, ``rephrasing_rows``, ``rate``, indexed by source, largest
    source first; examples: ``data_source, benchmark, test_id, segment_similarity, verifier_score, category,
    train_text, test_text``)."""
    pairs = rephrasing_pairs(flagged)
    sources = pd.Series(dict(rows_per_source), dtype="int64").sort_values(ascending=False, kind="stable")
    found = pairs.groupby(["data_source", "benchmark"])["train_index"].nunique().unstack(fill_value=0)
    rates = found.reindex(sources.index, fill_value=0)
    rates.insert(0, "rows", sources)
    rates["rephrasing_rows"] = pairs.groupby("data_source")["train_index"].nunique().reindex(sources.index,
                                                                                            fill_value=0)
    rates["rate"] = rates["rephrasing_rows"] / rates["rows"].where(rates["rows"] > 0)
    rates.index.name = "data_source"
    examples = pairs.sort_values(["segment_similarity", "test_id"], ascending=[False, True])[
        ["data_source", "benchmark", "test_id", "segment_similarity", "verifier_score", "category", "train_text",
         "test_text"]].reset_index(drop=True)
    return rates, examples


def subject_rates(rows_per_source: Mapping[str, int], flagged: pd.DataFrame, sources: Sequence[str],
                  benchmark: str = "mmlu", subjects: Sequence[str] = MMLU_MATH_SUBJECTS) -> pd.DataFrame:
    """The rows of ``sources`` against the test items of some subjects of one test set (default: MATH-like rows
    against MMLU's mathematics subjects): per source, how many rows have a flagged pair with such an item at all,
    how many are verbatim / n-gram copies (duplicate by lexical evidence), rephrasings (:func:`rephrasing_pairs`),
    other questions on the same template (similar but different: other numbers, another formula), and how many such
    rows are removed; ``rephrase_rate`` is rephrasings over the source's rows.

    A source of ``sources`` without rows in ``rows_per_source`` is left out."""
    wanted = {f"{benchmark}:{s}:" for s in subjects}
    of_subjects = flagged[(flagged["benchmark"] == benchmark)
                          & flagged["test_id"].map(lambda t: any(t.startswith(w) for w in wanted))]
    rephrased = set(rephrasing_pairs(of_subjects).index)
    records = []
    for source in sources:
        if source not in rows_per_source:
            continue
        mine = of_subjects[of_subjects["data_source"] == source]
        copies = mine[mine["method"].isin(["exact", "ngram"]) & (mine["category"] == "duplicate")]
        n_rephrased = mine.loc[mine.index.isin(rephrased), "train_index"].nunique()
        records.append({"data_source": source, "rows": int(rows_per_source[source]),
                        "rows_paired": mine["train_index"].nunique(), "rows_copied": copies["train_index"].nunique(),
                        "rows_rephrasing": n_rephrased,
                        "rows_other_question": mine.loc[mine["category"] == "similar_but_different",
                                                        "train_index"].nunique(),
                        "rows_removed": mine.loc[mine["removed"].astype(str) == "True", "train_index"].nunique(),
                        "rephrase_rate": n_rephrased / rows_per_source[source] if rows_per_source[source] else
                        float("nan")})
    columns = ["data_source", "rows", "rows_paired", "rows_copied", "rows_rephrasing", "rows_other_question",
               "rows_removed", "rephrase_rate"]
    return pd.DataFrame.from_records(records, columns=columns).set_index("data_source")


def math_sources(rows_per_source: Mapping[str, int]) -> list[str]:
    """The data sources of MATH problems (``MATH``, ``MATH/PRM-800K``, ...)."""
    return [s for s in rows_per_source if s.split("/")[0].upper() == "MATH"]


def _cell(text: Any) -> str:
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= CARD_TEXT_CHARS else flat[:CARD_TEXT_CHARS - 1] + "…"


def dataset_card(summary: Mapping[str, Any], flagged: pd.DataFrame) -> str:
    """README.md of step 02's output folder: the card of the decontaminated training file (clean.jsonl), with what
    was removed and, per source, the rate of rows that rephrase a test item (MATH against MMLU's mathematics
    subjects in particular), with examples."""
    sources = rows_per_source(summary)
    rates, examples = rephrase_rates(sources, flagged)
    lines = ["# Open-Platypus after decontamination (platypus-nb step 02)", "",
             f"`clean.jsonl`: the {summary.get('training_rows', summary['clean_rows']):,} training rows left of "
             f"step 01's {summary['train_rows']:,} after removing {summary['removed_rows']:,} that reproduce a "
             f"benchmark test item, less {summary.get('heldout_rows', 0):,} held out in `heldout.jsonl` (never "
             "trained on). Method, rules and measured detector quality: platypus-nb's docs/contamination.md; every "
             "flagged pair with its evidence is in `flagged.csv`.", "",
             "Rows removed by category: " + ", ".join(
                 f"{c.replace('_', ' ')} {summary['rows_removed_by_category'].get(c, 0):,}"
                 for c in CONTAMINATION_CATEGORIES) + f" (gray area: `{summary['gray_area']}`).", "",
             "## Rephrased test items per source", "",
             "A rephrasing row: the verifier calls it the same question as a test item while no verbatim text or "
             "13-gram links them (what n-gram decontamination cannot see). Counted before removal.", "",
             "| data_source | rows | rows flagged | rows removed | rephrasing rows | rate |", "|---|---:|---:|---:|---:|---:|"]
    by_source = summary["by_data_source"]
    for source, r in rates.iterrows():
        lines.append(f"| {source} | {int(r['rows']):,} | {by_source[source]['rows_flagged']:,} | "
                     f"{by_source[source]['rows_removed']:,} | {int(r['rephrasing_rows']):,} | {r['rate']:.1%} |")
    maths = math_sources(sources)
    if maths:
        table = subject_rates(sources, flagged, maths)
        lines += ["", "### MATH against MMLU's mathematics subjects", "",
                  f"MMLU subjects: {', '.join(MMLU_MATH_SUBJECTS)}. Rows with a flagged pair with one of their "
                  "items: verbatim or 13-gram copies, rephrasings, and other questions on the same template (other "
                  "numbers: kept).", "",
                  "| data_source | rows | paired | copies | rephrasings | other question | removed | rephrase rate |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in table.itertuples():
            lines.append(f"| {r.Index} | {r.rows:,} | {r.rows_paired:,} | {r.rows_copied:,} | {r.rows_rephrasing:,} | "
                         f"{r.rows_other_question:,} | {r.rows_removed:,} | {r.rephrase_rate:.1%} |")
    lines += ["", "### Examples", ""]
    if examples.empty:
        lines.append("No row rephrases a test item.")
    else:
        lines += ["| data_source | test item | similarity | training text | test text |", "|---|---|---:|---|---|"]
        for r in examples.head(CARD_EXAMPLES).itertuples():
            lines.append(f"| {r.data_source} | {r.test_id} | {r.segment_similarity:.2f} | {_cell(r.train_text)} | "
                         f"{_cell(r.test_text)} |")
    lines += ["", "## Limits", "",
              "Measured in platypus-nb's docs/contamination.md (\"Measured quality\"): on freely reworded questions "
              "written apart from the rules the detector finds fewer rewordings, and removes more same-topic "
              "questions, than on its evaluation set; test items translated into another language are not looked "
              "for (the embedding model, all-MiniLM-L6-v2, is English-only)."]
    return "\n".join(lines) + "\n"

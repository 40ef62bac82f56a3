"""The released ``garage-bAInd/Open-Platypus``: load it at a pinned revision, and compare a rebuild with it.

The card changed under the same name (24,343 rows at 7ba4746, 24,926 from fb44b9a on, the data_source column added
later, MATH replacing OpenBookQA in the table), so the revision is a config key (``dataset.release_revision``).
The release is Hub-only; ``dataset.release_file`` points at a local copy (JSONL or parquet) instead.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import pandas as pd

from platypus_nb.config import DatasetConfig, resolve_path
from platypus_nb.dataset.sources import SourceUnavailableError, read_records

RELEASE_HUB_ID = "garage-bAInd/Open-Platypus"
RELEASE_ROWS = 24_926  # the card's count from revision fb44b9a on


def load_release(dcfg: DatasetConfig) -> list[dict[str, Any]]:
    """Rows ``{instruction, input, output, data_source}`` of the release (a local copy when one is configured)."""
    if dcfg.release_file is not None:
        records = read_records(resolve_path(dcfg.release_file), "release")
        where = str(resolve_path(dcfg.release_file))
    else:
        where = f"{RELEASE_HUB_ID}@{dcfg.release_revision}"
        try:
            import datasets

            records = datasets.load_dataset(RELEASE_HUB_ID, split="train", revision=dcfg.release_revision).to_list()
        except Exception as e:  # no network, unknown revision, ...
            raise SourceUnavailableError(
                f"the released Open-Platypus ({where}) could not be loaded ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}). It is on the Hugging Face Hub only: connect to the "
                f"Hub, or set dataset.release_file to a local copy (JSONL or parquet), or set "
                f"dataset.use_release and dataset.compare_with_release to false to rebuild offline.") from e
    return [release_row(r, where, i) for i, r in enumerate(records)]


def release_row(record: Any, where: str, index: int) -> dict[str, Any]:
    """A release record in the training schema; early revisions had no ``data_source`` (it becomes "")."""
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("instruction", "output")):
        raise ValueError(f"{where}: row {index}: expected string fields 'instruction' and 'output', got "
                         f"{sorted(record) if isinstance(record, dict) else type(record).__name__}")
    return {"instruction": record["instruction"], "input": record.get("input") or "",
            "output": record["output"], "data_source": record.get("data_source") or ""}


def compare_with_release(rebuilt: Iterable[dict[str, Any]], release: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Per ``data_source``: rows in both (same instruction and input), only in the rebuild, only in the release.

    A question is matched on (instruction, input), wherever the other side files it; ``same_output`` counts the
    matched rows whose output is identical too (PRM800K's random completions and MATH's solutions may differ).
    """
    rebuilt, release = list(rebuilt), list(release)

    def key(row: dict[str, Any]) -> tuple[str, str]:
        return row["instruction"], row["input"]

    release_outputs = {key(r): r["output"] for r in release}
    rebuilt_outputs = {key(r): r["output"] for r in rebuilt}
    counts: dict[str, Counter] = {}
    for row in rebuilt:
        c = counts.setdefault(row["data_source"], Counter())
        c["rebuilt"] += 1
        if key(row) in release_outputs:
            c["in_both"] += 1
            c["same_output"] += release_outputs[key(row)] == row["output"]
        else:
            c["only_rebuilt"] += 1
    for row in release:
        c = counts.setdefault(row["data_source"], Counter())
        c["release"] += 1
        c["only_release"] += key(row) not in rebuilt_outputs
    columns = ["rebuilt", "release", "in_both", "same_output", "only_rebuilt", "only_release"]
    table = pd.DataFrame([{"data_source": s, **{col: c[col] for col in columns}} for s, c in sorted(counts.items())],
                         columns=["data_source", *columns])
    total = table[columns].sum().to_dict()
    return pd.concat([table, pd.DataFrame([{"data_source": "total", **total}])], ignore_index=True)


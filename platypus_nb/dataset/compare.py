"""Step 01 before and after the rebuild from the 2023 inputs: the same steps under the two sets of settings.

"Before" is how step 01 built the dataset until then (docs/dataset.md, "Before and after"): today's SciBench and
TheoremQA revisions, the theorem's name after "Relevant Theorem:", blank strings dropped as incomplete and exact
duplicates keyed on the (instruction, input) pair. "After" is the configuration as given, by default the original
build's inputs and keys. Each build is the ordinary :func:`~platypus_nb.dataset.build.build_dataset`; this module
only derives the "before" config and lays the two side by side.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

import pandas as pd

from platypus_nb.config import Config, apply_overrides, from_dict
from platypus_nb.dataset import dedup
from platypus_nb.dataset.build import DatasetBuild, build_dataset, composition
from platypus_nb.embeddings import EmbeddingCache

# The dataset keys whose values step 01 used before the 2023 inputs were pinned.
BEFORE = {"dataset.source_revision": "current", "dataset.theoremqa_theorem": "name",
          "dataset.incomplete_as_original": False, "dataset.exact_dedup_key_as_original": False}


def before_config(cfg: Config) -> Config:
    """``cfg`` with the "before" dataset keys, validated like any config."""
    return from_dict(apply_overrides(cfg.to_dict(), BEFORE, cfg.source), f"{cfg.source} + before")


def kept_by_source(build: DatasetBuild, threshold: float, block_size: int = 1024) -> Counter:
    """Rows per source the greedy near-duplicate pass keeps at ``threshold``, on the build's own embeddings."""
    if build.embeddings is None:
        raise ValueError("the build has no embeddings: run remove_near_duplicates first")
    kept = dedup.greedy_near_duplicates(build.embeddings, threshold, block_size).kept
    return Counter(source for source, k in zip(build.compared_sources, kept) if k)


def compare_builds(before: DatasetBuild, after: DatasetBuild, thresholds: Sequence[float] = (0.7,),
                   block_size: int = 1024) -> pd.DataFrame:
    """Per source, before and after: rows loaded, left after exact dedup, kept by the build, kept at ``thresholds``.

    The extra thresholds rerun the greedy pass on each build's cached embeddings (0.7 is the original code's).
    """
    tables = {"before": composition(before).set_index("source"), "after": composition(after).set_index("source")}
    extra = {(t, side): kept_by_source(build, t, block_size) for t in thresholds
             for side, build in (("before", before), ("after", after))}
    sources = list(dict.fromkeys([*after.loaded, *before.loaded]))
    records = []
    for source in sources:
        row: dict = {"source": source}
        for column, label in (("loaded", "loaded"), ("after_exact_dedup", "exact_dedup"), ("kept", "kept")):
            for side, table in tables.items():
                row[f"{label}_{side}"] = table[column].get(source, pd.NA) if column in table else pd.NA
        for t in thresholds:
            for side in ("before", "after"):
                row[f"kept_at_{t}_{side}"] = extra[(t, side)].get(source, 0)
        records.append(row)
    frame = pd.DataFrame(records)
    total = {"source": "total", **{c: frame[c].sum() for c in frame.columns[1:]}}
    return pd.concat([frame, pd.DataFrame([total])], ignore_index=True).astype(
        {c: "Int64" for c in frame.columns[1:]})


def revision_comparison(cfg: Config, after: DatasetBuild, thresholds: Sequence[float] = (0.7,),
                        cache: Optional[EmbeddingCache] = None) -> Optional[pd.DataFrame]:
    """Build the "before" dataset from ``cfg`` and compare it with ``after`` (None for the release, not rebuilt)."""
    if after.from_release:
        return None
    before = build_dataset(before_config(cfg), cache=cache, progress=False)
    return compare_builds(before, after, thresholds, cfg.embeddings.block_size)

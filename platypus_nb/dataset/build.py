"""Rebuilding Open-Platypus step by step, and writing what each step kept and removed.

The steps follow the original pipeline (``data_pipeline/`` at dc90c1a; docs/dataset.md): format every source, keep
STEM/logic questions by keyword where the original did, drop rows without an instruction or output, remove exact
duplicates keeping the longest output, then near-duplicates with all-MiniLM-L6-v2. A :class:`DatasetBuild` carries
the rows and every removal so far; each step returns a new one, so a notebook can show the dataset after every step.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from platypus_nb.config import Config
from platypus_nb.contracts import question_text
from platypus_nb.dataset import dedup, filters, formats, release, rows as rowlib
from platypus_nb.dataset.sources import SOURCE_INFO, load_source_records
from platypus_nb.embeddings import EmbeddingCache, embed_texts, text_key
from platypus_nb.io import atomic_path, atomic_write_json, atomic_write_text, sha256_file, write_jsonl


DATA_SOURCE_LICENCES = {info.data_source: info.licence for info in SOURCE_INFO.values()}


@dataclass
class DatasetBuild:
    """The dataset at some step: its rows, every removal so far, and what each source loaded."""

    rows: list[dict[str, Any]]
    removed: list[dict[str, Any]]
    loaded: dict[str, int]
    steps: list[str] = field(default_factory=list)
    # True when the rows are the released Open-Platypus: the rebuild steps then leave them as they are.
    from_release: bool = False
    # Filled by remove_near_duplicates: the vectors of the rows it compared, and the greedy result over them.
    embeddings: Optional[np.ndarray] = None
    near: Optional[dedup.NearDuplicates] = None
    # The source of each row the near-duplicate pass compared, aligned with ``embeddings``.
    compared_sources: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def step(self, name: str, kept: list[dict[str, Any]], removed: list[dict[str, Any]], **changes: Any):
        return replace(self, rows=kept, removed=self.removed + removed, steps=self.steps + [name], **changes)


# ------------------------------------------------------------------------------------------------- the steps


def load_sources(cfg: Config) -> dict[str, list[Any]]:
    """The raw records of every configured source; a source that cannot be loaded fails here, before any work."""
    return {name: load_source_records(name, cfg.dataset) for name in cfg.dataset.sources}


def format_sources(raw: dict[str, list[Any]], cfg: Config) -> DatasetBuild:
    """Every source through its formatter, in the configured order (PRM800K feeds MATH's solutions)."""
    options = formats.FormatOptions(seed=cfg.run.seed, on_bad_row=cfg.dataset.on_bad_row,
                                    math_unwrap_boxed=cfg.dataset.math_unwrap_boxed,
                                    theoremqa_theorem=cfg.dataset.theoremqa_theorem)
    prm, removed = None, []
    if "prm800k" in raw:
        prm, removed = formats.prm800k_solutions(raw["prm800k"], options)
    rows: list[dict[str, Any]] = []
    for name in raw:
        if name != "prm800k":
            formatted = formats.format_source(name, raw[name], options, prm=prm)
            rows += formatted.rows
            removed += formatted.removed
    loaded = {name: len(records) for name, records in raw.items()}
    return DatasetBuild(rows=[], removed=[], loaded=loaded).step("format", rows, removed)


def start_build(cfg: Config) -> DatasetBuild:
    """Load and format every source, or load the released dataset when ``dataset.use_release`` is set."""
    if cfg.dataset.use_release:
        return build_from_release(release.load_release(cfg.dataset))
    return format_sources(load_sources(cfg), cfg)


def build_from_release(release_rows: list[dict[str, Any]]) -> DatasetBuild:
    """The release as a build: its rows are grouped by their data_source tag and pass the steps unchanged."""
    rows = [dict(r, row_id=rowlib.row_id("release", i), source=r["data_source"] or "release")
            for i, r in enumerate(release_rows)]
    loaded = dict(Counter(r["source"] for r in rows))
    return DatasetBuild(rows=rows, removed=[], loaded=loaded, steps=["release"], from_release=True)


def apply_keyword_filter(build: DatasetBuild, cfg: Config) -> DatasetBuild:
    """Keyword selection of STEM/logic questions (airoboros, ReClor, guanaco), when ``dataset.keyword_filter``."""
    if build.from_release:
        return build
    if not cfg.dataset.keyword_filter:
        return build.step("keyword_filter", build.rows, [])
    keywords = filters.stem_keywords(as_original=cfg.dataset.keyword_list_as_original)
    return build.step("keyword_filter", *filters.keyword_filter(build.rows, keywords))


def drop_incomplete_rows(build: DatasetBuild, cfg: Config) -> DatasetBuild:
    """Rows without an instruction or output go (only None, or blank strings too: ``incomplete_as_original``)."""
    if build.from_release:
        return build
    return build.step("incomplete", *filters.drop_incomplete(build.rows, cfg.dataset.incomplete_as_original))


def remove_exact_duplicates(build: DatasetBuild, cfg: Config) -> DatasetBuild:
    """Put the rows in the configured order (sources, or seeded shuffle), then one row per instruction and input."""
    if build.from_release:
        return build
    ordered = filters.order_rows(build.rows, cfg.dataset.order, cfg.run.seed)
    return build.step("exact_dedup", *filters.exact_dedup(ordered, cfg.dataset.exact_dedup_key_as_original))


def remove_near_duplicates(build: DatasetBuild, cfg: Config, cache: Optional[EmbeddingCache] = None,
                           progress: bool = True) -> DatasetBuild:
    """Embed instruction (+ " " + input) with the configured model (cached) and run the greedy pass."""
    if build.from_release:
        return build
    texts = [question_text(r) for r in build.rows]
    cache = cache if cache is not None else EmbeddingCache(cfg.embeddings.model, backend=cfg.embeddings.backend)
    to_embed = len({t for t in texts if text_key(t) not in cache})
    started = time.perf_counter()
    embeddings = embed_texts(texts, cfg.embeddings.model, cfg.embeddings.batch_size, cache=cache,
                             show_progress=progress)
    embed_seconds = time.perf_counter() - started
    backend = dedup.choose_backend(cfg.dataset.dedup_backend, len(texts), cfg.dataset.faiss_min_rows)
    started = time.perf_counter()
    near = dedup.greedy_near_duplicates(embeddings, cfg.dataset.dedup_threshold, cfg.embeddings.block_size,
                                        backend)
    dedup_seconds = time.perf_counter() - started
    removed = [rowlib.removal(row["row_id"], row["source"], "near_dedup", "near_duplicate",
                              duplicate_of=build.rows[near.nearest[i]]["row_id"],
                              similarity=round(float(near.similarity[i]), 6), instruction=row["instruction"])
               for i, row in enumerate(build.rows) if not near.kept[i]]
    kept = [row for i, row in enumerate(build.rows) if near.kept[i]]
    stats = dict(build.stats, texts=len(texts), texts_embedded=to_embed, embed_seconds=round(embed_seconds, 3),
                 dedup_backend=backend, dedup_seconds=round(dedup_seconds, 3),
                 dedup_threshold=cfg.dataset.dedup_threshold)
    return build.step("near_dedup", kept, removed, embeddings=embeddings, near=near, stats=stats,
                      compared_sources=[row["source"] for row in build.rows])


def build_dataset(cfg: Config, cache: Optional[EmbeddingCache] = None, progress: bool = True) -> DatasetBuild:
    """Every step in order: what the notebook does, in one call."""
    build = start_build(cfg)
    build = apply_keyword_filter(build, cfg)
    build = drop_incomplete_rows(build, cfg)
    build = remove_exact_duplicates(build, cfg)
    return remove_near_duplicates(build, cfg, cache=cache, progress=progress)


# ------------------------------------------------------------------------------------------------- the tables


def removed_table(build: DatasetBuild) -> pd.DataFrame:
    return pd.DataFrame(build.removed, columns=list(rowlib.REMOVED_COLUMNS))


def kept_table(build: DatasetBuild) -> pd.DataFrame:
    """Line of open_platypus.jsonl (1-based) -> the source record it came from."""
    return pd.DataFrame([{"line": i + 1, "row_id": r["row_id"], "source": r["source"],
                          "data_source": r["data_source"]} for i, r in enumerate(build.rows)],
                        columns=["line", "row_id", "source", "data_source"])


def composition(build: DatasetBuild) -> pd.DataFrame:
    """Per source: rows loaded, left after each step done so far, and kept.

    PRM800K never becomes rows of its own: its usable samples replace MATH solutions (update_MATH.py), so its
    "format" column counts the samples merged into MATH rows and its later columns are empty.
    """
    removed = removed_table(build)
    per_step = removed.groupby(["source", "step"]).size() if len(removed) else pd.Series(dtype=int)
    kept = Counter(r["source"] for r in build.rows)
    records = []
    for source, loaded in build.loaded.items():
        row: dict[str, Any] = {"source": source, "data_source": _data_source(source), "loaded": loaded}
        left = loaded
        for step in build.steps:
            left -= int(per_step.get((source, step), 0))
            row[f"after_{step}"] = left if source != "prm800k" or step == "format" else np.nan
        row["kept"] = kept.get(source, 0)
        records.append(row)
    table = pd.DataFrame(records)
    total = {"source": "total", "data_source": "", **{c: table[c].sum() for c in table.columns[2:]}}
    table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    return table.astype({c: "Int64" for c in table.columns[2:]})


def _data_source(source: str) -> str:
    return SOURCE_INFO[source].data_source if source in SOURCE_INFO else source


def removal_reasons(build: DatasetBuild) -> pd.DataFrame:
    """Source x (step: reason) counts of removals, with the kept count: the composition figure's data."""
    removed = removed_table(build)
    sources = list(build.loaded)
    if len(removed):
        labels = (removed["step"] + ": " + removed["reason"]).rename("removed")
        table = pd.crosstab(removed["source"], labels).reindex(sources, fill_value=0)
        table.columns.name = None
    else:
        table = pd.DataFrame(index=sources)
    kept = Counter(r["source"] for r in build.rows)
    table.insert(0, "kept", [kept.get(s, 0) for s in sources])
    return table


def near_duplicate_pairs(build: DatasetBuild, limit: int = 10) -> pd.DataFrame:
    """The removed near-duplicates nearest the threshold, next to the kept row each one repeats."""
    removed = removed_table(build)
    near = removed[removed["step"] == "near_dedup"].sort_values("similarity").head(limit)
    text_of = {r["row_id"]: r["instruction"] for r in build.rows}
    return pd.DataFrame({"similarity": near["similarity"], "removed": near["row_id"],
                         "removed_instruction": near["instruction"], "kept": near["duplicate_of"],
                         "kept_instruction": [str(text_of.get(k, ""))[:200] for k in near["duplicate_of"]]})


def threshold_table(build: DatasetBuild, cfg: Config, thresholds=(0.7, 0.8, 0.9)) -> pd.DataFrame:
    """Rows the greedy pass keeps at other thresholds, on the same cached embeddings (0.7: the original's code)."""
    if build.embeddings is None:
        return pd.DataFrame(columns=["threshold", "kept", "removed"])
    kept = dedup.kept_counts(build.embeddings, list(thresholds), cfg.embeddings.block_size)
    return pd.DataFrame([{"threshold": t, "kept": k, "removed": len(build.embeddings) - k,
                          "this_run": t == cfg.dataset.dedup_threshold} for t, k in kept.items()])


# ------------------------------------------------------------------------------------------------ the outputs


def write_outputs(build: DatasetBuild, cfg: Config, out_dir: Path,
                  comparison: Optional[pd.DataFrame] = None) -> dict[str, Path]:
    """Write removed.csv, composition.csv, kept_rows.csv, open_platypus.jsonl, then summary.json (which records the
    training file's sha256) and the dataset card README.md.

    Every file is written atomically; the runner takes the step as finished only once every declared output exists
    (platypus_nb.contracts), so a kill between two writes re-runs the step.
    """
    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name in ("removed.csv", "composition.csv", "kept_rows.csv", "summary.json",
                                               "README.md", "open_platypus.jsonl")}
    _write_csv(removed_table(build), paths["removed.csv"])
    table = composition(build)
    _write_csv(table, paths["composition.csv"])
    _write_csv(kept_table(build), paths["kept_rows.csv"])
    if comparison is not None:
        paths["release_comparison.csv"] = out_dir / "release_comparison.csv"
        _write_csv(comparison, paths["release_comparison.csv"])
    write_jsonl(paths["open_platypus.jsonl"], (rowlib.training_row(r) for r in build.rows))
    summary = build_summary(build, cfg, sha256_file(paths["open_platypus.jsonl"]))
    atomic_write_json(paths["summary.json"], summary)
    atomic_write_text(paths["README.md"], dataset_card(build, cfg, table, summary))
    return paths


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def build_summary(build: DatasetBuild, cfg: Config, sha256: str) -> dict[str, Any]:
    return {"rows": len(build.rows), "rows_per_data_source": dict(Counter(r["data_source"] for r in build.rows)),
            "rows_per_source": dict(Counter(r["source"] for r in build.rows)), "removed": len(build.removed),
            "from_release": build.from_release,
            "release_revision": cfg.dataset.release_revision if build.from_release else None,
            "sources": list(build.loaded), "dedup_threshold": cfg.dataset.dedup_threshold,
            "source_revision": cfg.dataset.source_revision, "theoremqa_theorem": cfg.dataset.theoremqa_theorem,
            "order": cfg.dataset.order, "seed": cfg.run.seed, "embedding_model": cfg.embeddings.model,
            "open_platypus_sha256": sha256, "stats": build.stats}


def dataset_card(build: DatasetBuild, cfg: Config, table: pd.DataFrame, summary: dict[str, Any]) -> str:
    """A README.md next to the data: what it is, where each part came from, its licences, what was removed."""
    d = cfg.dataset
    revision = "the ones the 2023 build read" if d.source_revision == "paper_2023" else "edited since the 2023 build"
    incomplete = "only None dropped, as the original" if d.incomplete_as_original else "None and blank strings dropped"
    exact_key = ('the original\'s string f"{instruction}-{input}"' if d.exact_dedup_key_as_original
                 else "the (instruction, input) pair")
    lines = ["# Open-Platypus (platypus-nb build)", ""]
    if build.from_release:
        lines += [f"The released `garage-bAInd/Open-Platypus` at revision `{d.release_revision}`, unchanged "
                  f"({summary['rows']:,} rows).", ""]
    else:
        lines += [
            f"A rebuild of Open-Platypus (Platypus, arXiv 2308.07317) from its sources with the original "
            f"repository's formatting and filtering: {summary['rows']:,} rows from {len(build.loaded)} sources "
            f"(the release has {release.RELEASE_ROWS:,} from 11).", "",
            "Steps: per-source formatting; keyword selection of STEM/logic questions (airoboros, ReClor, guanaco"
            f"{'' if d.keyword_filter else ': switched off'}); rows without instruction or output dropped; exact "
            "duplicates of (instruction, input) removed keeping the longest output; near-duplicates removed with "
            f"all-MiniLM-L6-v2 (`{cfg.embeddings.model}`): a row is kept when its cosine similarity to every row "
            f"kept before it is at or below **{d.dedup_threshold}** (the card says \"above 80%\" was removed; the "
            f"original notebook's code used 0.7). Row order: `{d.order}` (seed {cfg.run.seed}).", "",
            f"Inputs: SciBench and TheoremQA at their `{d.source_revision}` revisions ({revision}); TheoremQA "
            f"instructions end with the theorem's {d.theoremqa_theorem}. Incomplete rows: {incomplete}; exact "
            f"duplicates keyed on {exact_key}. platypus-nb's docs/dataset.md lists each departure from the original "
            "and the key that decides it.", ""]
    if "openbookqa" in build.loaded:
        lines += ["OpenBookQA departs from the original: these are the 500 validation rows with an empty input; the "
                  "original read train, test and validation of the `additional` configuration with `fact1` as input.",
                  ""]
    lines += ["## Composition", "", "| source | data_source | licence | loaded | kept |", "|---|---|---|---:|---:|"]
    for _, r in table.iterrows():
        if r["source"] == "total":
            continue
        licence = DATA_SOURCE_LICENCES.get(r["data_source"], "see the release card")
        lines.append(f"| {r['source']} | {r['data_source']} | {licence} | {int(r['loaded']):,} | {int(r['kept']):,} |")
    lines += [f"| **total** | | | {int(table['loaded'].iloc[-1]):,} | {summary['rows']:,} |", "",
              "PRM800K rows are not rows of their own: its solved samples replace the solutions of the same MATH "
              "problems (data_source `MATH/PRM-800K`)." if "prm800k" in build.loaded else "",
              "", "## Files", "",
              "- `open_platypus.jsonl`: the training rows `{instruction, input, output, data_source}` "
              f"(sha256 `{summary['open_platypus_sha256']}`).",
              "- `kept_rows.csv`: for each line of the training file, the source record it came from (`row_id` = "
              "source and 0-based record number).",
              "- `removed.csv`: every removed record with step, reason, the kept row it duplicates and the similarity.",
              "- `composition.csv`: per source, rows loaded, left after each step, and kept.",
              "- `summary.json`: counts, settings and timings.", "",
              "## Licences and use", "",
              "Each row keeps its source's licence (table above). ScienceQA (CC BY-NC-SA 4.0), ReClor "
              "(non-commercial), airoboros (CC BY-NC 4.0 + OpenAI terms per the Data Provenance Initiative) and SciQ "
              "(CC BY-NC 3.0) restrict commercial use. TheoremQA (test split) and MATH test are in the data: do not "
              "evaluate a model trained on it on those sets.", ""]
    return "\n".join(lines)


def release_comparison(build: DatasetBuild, cfg: Config) -> Optional[pd.DataFrame]:
    """The per-source comparison with the release when ``dataset.compare_with_release`` is set, else None."""
    if not cfg.dataset.compare_with_release or build.from_release:
        return None
    return release.compare_with_release([rowlib.training_row(r) for r in build.rows],
                                        release.load_release(cfg.dataset))

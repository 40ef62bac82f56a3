"""Step 06: the paper's benchmark-delta tables and plots, regenerated from published scores and from this run.

The paper reports each merged model by its percent change over the model it was built from, per leaderboard
task: ``(merged - base) / base`` (e.g. Camel-Platypus2-70B over qCammel-70-x on ARC-Challenge,
(71.16 - 68.34) / 68.34 = +4.126%, which the paper prints as +4.12%). Its tables could not be retrieved
(PAPER.md section 5), so ``data/paper/`` vendors the scores behind them, each row with its source: the release
model cards and the Open LLM Leaderboard's values for the bases and partners. The same arithmetic is then applied
to this run's models (``05_evaluate/summary.csv``), with standard errors carried through.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from platypus_nb.assets import data_file
from platypus_nb.evaluate import TASKS
from platypus_nb.io import read_csv_checked

PUBLISHED_COLUMNS = ["model", "role", "compare_to", *TASKS, "average", "kind", "source"]
QUOTED_COLUMNS = ["model", "compare_to", "task", "quoted_pct_change", "source", "note"]
# Bars coloured per task, the same in every figure.
TASK_COLORS = dict(zip(TASKS, ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]))


# ------------------------------------------------------------------------------------------- published scores


def read_published_scores(path: Optional[Path] = None) -> pd.DataFrame:
    """The vendored scores (percent) of the Platypus models and their bases/partners, one source per row.

    The vendored file (the default) is checked against ``data/checksums.json`` first.
    """
    path = path or data_file("paper/published_scores.csv")
    table = _read_csv(path, PUBLISHED_COLUMNS)
    for task in TASKS:
        if table[task].isna().any() or not pd.api.types.is_numeric_dtype(table[task]):
            raise ValueError(f"{path}: column {task!r} must hold a number (percent) on every row")
    if table["source"].isna().any():
        raise ValueError(f"{path}: every row needs a source (rows without: "
                         f"{', '.join(table.loc[table['source'].isna(), 'model'])})")
    if table["model"].duplicated().any():
        raise ValueError(f"{path}: model names must be unique")
    return table


def read_quoted_deltas(path: Optional[Path] = None) -> pd.DataFrame:
    """The percent changes the paper's text itself quotes, to set beside the regenerated ones (checked as above)."""
    return _read_csv(path or data_file("paper/quoted_deltas.csv"), QUOTED_COLUMNS)


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    return read_csv_checked(path, columns, "it is vendored with the repository; see data/paper/README.md")


# ------------------------------------------------------------------------------------------------ deltas


def percent_change(new: float, base: float) -> float:
    """The paper's "% change" of a model over its base: relative, in percent, not a difference of points."""
    return math.nan if base == 0 else 100.0 * (new - base) / base


def percent_change_stderr(new: float, new_se: float, base: float, base_se: float) -> float:
    """Standard error of :func:`percent_change` by the delta method, the two scores taken as independent.

    Both models answer the same questions, so their errors are positively correlated and this overstates the
    uncertainty of the difference: the error bars are conservative.
    """
    if base == 0:
        return math.nan
    return 100.0 / base * math.sqrt(new_se ** 2 + (new / base) ** 2 * base_se ** 2)


def paper_deltas(published: pd.DataFrame) -> pd.DataFrame:
    """Percent change of every published model that names a comparison model present in the table (long form)."""
    scores = published.set_index("model")
    rows = []
    for _, r in published.iterrows():
        if pd.isna(r["compare_to"]) or r["compare_to"] not in scores.index:
            continue
        base = scores.loc[r["compare_to"]]
        for task in TASKS:
            rows.append({"model": r["model"], "compare_to": r["compare_to"], "task": task, "score": r[task],
                         "base_score": base[task], "pct_change": percent_change(r[task], base[task])})
    return pd.DataFrame(rows)


def uncomparable(published: pd.DataFrame) -> list[str]:
    """Published models whose comparison model has no vendored scores (said in the notebook, not hidden)."""
    known = set(published["model"])
    return [f"{r.model} (vs {r.compare_to})" for r in published.itertuples()
            if isinstance(r.compare_to, str) and r.compare_to not in known]


def run_deltas(summary: pd.DataFrame) -> pd.DataFrame:
    """Percent change of each of this run's models over its ``compare_to`` model, per task, with standard errors."""
    by_key = summary.set_index(["model", "task"])
    rows = []
    for r in summary.itertuples():
        if not isinstance(r.compare_to, str) or (r.compare_to, r.task) not in by_key.index:
            continue
        base = by_key.loc[(r.compare_to, r.task)]
        rows.append({"model": r.model, "compare_to": r.compare_to, "role": r.role, "task": r.task,
                     "score": r.score_pct, "base_score": base["score_pct"],
                     "pct_change": percent_change(r.score_pct, base["score_pct"]),
                     "pct_change_se": percent_change_stderr(r.score_pct, r.stderr_pct, base["score_pct"],
                                                            base["stderr_pct"])})
    return pd.DataFrame(rows)


def comparison_names(deltas: pd.DataFrame) -> pd.Series:
    """"<model> vs <compared model>", the row label of every delta table and figure."""
    return deltas["model"] + " vs " + deltas["compare_to"]


def delta_table(deltas: pd.DataFrame, quoted: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Comparisons as rows, tasks as columns (percent change, 2 decimals), with the paper's quotes beside them."""
    table = deltas.assign(comparison=comparison_names(deltas)).pivot(index="comparison", columns="task",
                                                                     values="pct_change")
    table = table[[t for t in TASKS if t in table.columns]].round(2)
    table.columns = [f"{TASKS[t].label} %" for t in table.columns]
    if quoted is not None:
        quotes = {f"{q.model} vs {q.compare_to}": f"{TASKS[q.task].label} {q.quoted_pct_change:+.2f}%"
                  for q in quoted.itertuples()}
        table["paper quotes"] = [quotes.get(c, "") for c in table.index]
    return table.loc[list(dict.fromkeys(comparison_names(deltas)))]


# ------------------------------------------------------------------------------------------------ figures


def plot_deltas(deltas: pd.DataFrame, title: str, quoted: Optional[pd.DataFrame] = None):
    """Grouped bars of percent change per comparison and task; error bars where ``pct_change_se`` is given,
    black diamonds where the paper quotes a figure."""
    import matplotlib.pyplot as plt

    deltas = deltas.assign(comparison=comparison_names(deltas))
    comparisons = list(dict.fromkeys(deltas["comparison"]))
    tasks = [t for t in TASKS if t in set(deltas["task"])]
    width = 0.8 / len(tasks)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(comparisons) + 2), 4.2))
    x = np.arange(len(comparisons))
    quote_label = "paper quotes"
    for i, task in enumerate(tasks):
        rows = deltas[deltas["task"] == task].set_index("comparison")
        values = [rows["pct_change"].get(c, np.nan) for c in comparisons]
        errors = ([rows["pct_change_se"].get(c, np.nan) for c in comparisons]
                  if "pct_change_se" in rows.columns else None)
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, values, width, yerr=errors, capsize=2, error_kw={"elinewidth": 1, "ecolor": "0.35"},
               color=TASK_COLORS[task], label=TASKS[task].label)
        for q in ([] if quoted is None else quoted[quoted["task"] == task].itertuples()):
            name = f"{q.model} vs {q.compare_to}"
            if name in comparisons:
                ax.plot(pos[comparisons.index(name)], q.quoted_pct_change, "kD", markersize=6, label=quote_label)
                quote_label = None
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [c.replace(" vs ", "\nvs ") for c in comparisons], fontsize=8)
    ax.set_ylabel("% change over the compared model")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=len(tasks) + 1, loc="best")
    fig.tight_layout()
    return fig


def plot_scores(summary: pd.DataFrame, title: str):
    """Grouped bars of every model's score per task with standard-error bars, and 4-choice chance marked."""
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(summary["model"]))
    tasks = [t for t in TASKS if t in set(summary["task"])]
    width = 0.8 / len(tasks)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(models) + 2), 4.2))
    x = np.arange(len(models))
    for i, task in enumerate(tasks):
        rows = summary[summary["task"] == task].set_index("model")
        ax.bar(x - 0.4 + width * (i + 0.5), [rows["score_pct"].get(m, np.nan) for m in models], width,
               yerr=[rows["stderr_pct"].get(m, np.nan) for m in models], capsize=3, color=TASK_COLORS[task],
               label=TASKS[task].label)
    ax.axhline(25, color="grey", linestyle="--", linewidth=1, label="chance, 4 choices (not TruthfulQA MC2)")
    ax.set_xticks(x, models, fontsize=8, rotation=15)
    ax.set_ylabel("score (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------- data overlap


def read_overlap(path: Path) -> Optional[pd.DataFrame]:
    """Step 04's ``overlap.csv`` (partner vs Open-Platypus training-data similarity), or None when absent."""
    if not Path(path).is_file():
        return None
    table = pd.read_csv(path)
    missing = [c for c in ("merge", "partner", "mean_best_cosine") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (written by step 04's "
                         f"write_overlap_table)")
    return table


def overlap_vs_deltas(overlap: pd.DataFrame, deltas: pd.DataFrame) -> pd.DataFrame:
    """Each merge's data overlap with Open-Platypus next to its mean percent change over its partner."""
    merges = deltas[deltas["role"] == "merge"]
    mean_change = merges.groupby("model").agg(
        mean_pct_change=("pct_change", "mean"),
        mean_pct_change_se=("pct_change_se", lambda se: math.sqrt((se ** 2).sum()) / len(se)))
    joined = overlap.merge(mean_change, left_on="merge", right_index=True, how="inner")
    return joined[["merge", "partner", "mean_best_cosine", "mean_pct_change", "mean_pct_change_se"]
                  + [c for c in ("share_at_or_above_threshold",) if c in joined.columns]]


def plot_overlap_vs_deltas(table: pd.DataFrame):
    """Scatter of training-data overlap against the merge's mean change: the README's "little to no overlap" claim."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(table["mean_best_cosine"], table["mean_pct_change"], yerr=table["mean_pct_change_se"], fmt="o",
                capsize=4)
    for r in table.itertuples():
        ax.annotate(r.merge, (r.mean_best_cosine, r.mean_pct_change), textcoords="offset points", xytext=(6, 4),
                    fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("partner data overlap: mean best cosine to Open-Platypus")
    ax.set_ylabel("merge's mean % change over its partner")
    ax.set_title("Data overlap vs merge gain")
    fig.tight_layout()
    return fig

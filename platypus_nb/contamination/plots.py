"""The step's figures: where the similarities lie, where the flagged rows come from, and the closest pairs."""

from __future__ import annotations

import textwrap
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from platypus_nb.contamination.testsets import TestItem


def similarity_distribution(items: Sequence[TestItem], nearest_similarity: np.ndarray, threshold: float):
    """Per test set, a histogram of each test item's similarity to its nearest training row (the original
    notebook's quantity), with the threshold marked and the number of items at or above it."""
    sets = list(dict.fromkeys(item.test_set for item in items))
    labels = np.array([item.test_set for item in items])
    cols = min(3, len(sets))
    rows = -(-len(sets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, sharex=True)
    bins = np.linspace(min(0.0, float(np.min(nearest_similarity, initial=0.0))), 1.0, 51)
    for ax, name in zip(axes.flat, sets):
        sims = nearest_similarity[labels == name]
        # float32 puts a verbatim copy at 1.0000001: clip so it lands in the last bin instead of off the plot
        ax.hist(np.minimum(sims, 1.0), bins=bins, color="tab:blue", alpha=0.8)
        ax.axvline(threshold, color="tab:red", linestyle="--")
        ax.set_yscale("log")
        ax.set_title(f"{name}: {int((sims >= threshold).sum())} of {len(sims)} >= {threshold:g}", fontsize=9)
        ax.set_xlabel("cosine similarity to nearest training row")
    for ax in list(axes.flat)[len(sets):]:
        ax.set_visible(False)
    fig.suptitle("Nearest-training-row similarity per test item (all-MiniLM-L6-v2)", fontsize=10)
    fig.tight_layout()
    return fig


def flagged_counts(flagged: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Distinct training rows flagged, and removed, per data_source x test set."""
    flagged_n = flagged.groupby(["data_source", "benchmark"])["train_index"].nunique().unstack(fill_value=0)
    removed_n = (flagged[flagged["removed"]].groupby(["data_source", "benchmark"])["train_index"].nunique()
                 .unstack(fill_value=0).reindex_like(flagged_n).fillna(0).astype(int))
    return flagged_n, removed_n


def flagged_heatmap(flagged: pd.DataFrame):
    """Heatmap of flagged rows per data_source x test set, each cell annotated "flagged (removed)"."""
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * max(1, flagged["benchmark"].nunique()),
                                    1.2 + 0.45 * max(1, flagged["data_source"].nunique())))
    if flagged.empty:
        ax.text(0.5, 0.5, "no flagged pairs", ha="center", va="center")
        ax.axis("off")
        return fig
    flagged_n, removed_n = flagged_counts(flagged)
    ax.imshow(flagged_n.to_numpy(), cmap="Reds", aspect="auto")
    ax.set_xticks(range(flagged_n.shape[1]), flagged_n.columns, rotation=30, ha="right")
    ax.set_yticks(range(flagged_n.shape[0]), flagged_n.index)
    peak = max(1, flagged_n.to_numpy().max())
    for i in range(flagged_n.shape[0]):
        for j in range(flagged_n.shape[1]):
            value = flagged_n.iat[i, j]
            ax.text(j, i, f"{value} ({removed_n.iat[i, j]})", ha="center", va="center", fontsize=8,
                    color="white" if value > peak / 2 else "black")
    ax.set_title("Training rows flagged (removed) per source and test set", fontsize=10)
    fig.tight_layout()
    return fig


def top_pairs(flagged: pd.DataFrame, benchmarks: Sequence[str], k: int = 12) -> pd.DataFrame:
    """The k most similar flagged pairs, pairs with ``benchmarks`` first (the evaluation splits' pairs, hundreds of
    exact copies by construction, would otherwise fill the table)."""
    pairs = flagged[flagged["method"] != "source"]
    # computed on the filtered frame: assigning a Series to an empty frame would adopt the Series' rows
    pairs = pairs.assign(_later=~pairs["benchmark"].isin(benchmarks))
    pairs = pairs.sort_values(["_later", "similarity"], ascending=[True, False]).head(k)
    return pairs[["benchmark", "similarity", "method", "category", "removed", "data_source", "train_text",
                  "test_text"]].reset_index(drop=True)


def top_pairs_table(flagged: pd.DataFrame, benchmarks: Sequence[str], k: int = 12, width: int = 90):
    """The top pairs as a figure (texts shortened), so the table also lands in figures/."""
    table = top_pairs(flagged, benchmarks, k)
    cells = [[row.benchmark, f"{row.similarity:.3f}", row.method, row.category,
              _plain(row.train_text, width), _plain(row.test_text, width)] for row in table.itertuples()]
    fig, ax = plt.subplots(figsize=(15, 0.5 + 0.25 * max(1, len(cells))))
    ax.axis("off")
    if not cells:
        ax.text(0.5, 0.5, "no flagged pairs", ha="center", va="center")
        return fig
    t = ax.table(cellText=cells, colLabels=["test set", "cosine", "method", "category", "training text",
                                            "test text"],
                 loc="center", cellLoc="left", colWidths=[0.08, 0.05, 0.06, 0.1, 0.355, 0.355])
    t.auto_set_font_size(False)
    t.set_fontsize(7)
    ax.set_title(f"Top {len(cells)} flagged pairs by similarity", fontsize=10)
    fig.tight_layout()
    return fig


def _plain(text: str, width: int) -> str:
    """Shortened to one line, with "$" escaped so matplotlib does not parse LaTeX from MATH problems as mathtext."""
    return textwrap.shorten(text, width).replace("$", r"\$")

"""Figures of the dataset step: what each source kept and lost, row lengths, and near-duplicate similarities."""

from __future__ import annotations

from collections import defaultdict
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from platypus_nb.dataset.dedup import NearDuplicates, similarity_to_kept


def plot_composition(reasons: pd.DataFrame, title: str = "Open-Platypus rebuild: kept and removed rows per source"):
    """Stacked horizontal bars per source: kept rows, then removals by step and reason (``removal_reasons``)."""
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(reasons) + 2))
    left = np.zeros(len(reasons))
    colours = plt.get_cmap("tab20").colors
    for k, column in enumerate(reasons.columns):
        values = reasons[column].to_numpy(dtype=float)
        if column != "kept" and not values.any():
            continue
        ax.barh(reasons.index, values, left=left, label=column,
                color="#2b8a3e" if column == "kept" else colours[k % len(colours)])
        left += values
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def plot_lengths(rows: Sequence[dict], title: str = "Lengths of kept rows (words)"):
    """Histograms of instruction and output lengths in words, per data_source, on a log scale."""
    lengths: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"instruction": [], "output": []})
    for row in rows:
        for part in ("instruction", "output"):
            lengths[row["data_source"]][part].append(len(str(row[part]).split()))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, part in zip(axes, ("instruction", "output")):
        longest = max((max(v[part]) for v in lengths.values() if v[part]), default=1)
        bins = np.logspace(0, np.log10(max(longest, 2)) + 0.05, 30)
        for source, v in sorted(lengths.items()):
            ax.hist(np.maximum(v[part], 1), bins=bins, histtype="step", linewidth=1.5, label=source)
        ax.set_xscale("log")
        ax.set_xlabel(f"{part} length (words)")
        ax.set_title(part)
    axes[0].set_ylabel("rows")
    axes[1].legend(fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_similarity(near: Optional[NearDuplicates], thresholds: Sequence[float], chosen: Optional[float] = None,
                    title: str = "Similarity of each row to its nearest earlier kept row"):
    """Histogram of the greedy pass's nearest-kept similarities, with the thresholds marked."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    if near is None:
        ax.text(0.5, 0.5, "no near-duplicate pass (the released dataset was loaded)", ha="center", va="center")
        ax.set_axis_off()
        return fig
    sims = similarity_to_kept(near)
    sims = sims[~np.isnan(sims)]
    ax.hist(sims, bins=np.linspace(min(sims.min(initial=0.0), 0.0), 1.0, 51), color="#4c6ef5")
    for t in thresholds:
        ax.axvline(t, color="#e03131" if t == chosen else "#868e96", linestyle="--",
                   label=f"threshold {t}" + (" (this run)" if t == chosen else ""))
    ax.set_xlabel("cosine similarity (all-MiniLM-L6-v2)")
    ax.set_ylabel("rows")
    ax.set_title(title)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig

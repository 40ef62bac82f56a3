"""How much a partner's fine-tuning data overlaps Open-Platypus, measured with the paper's embedding model.

The original README: "Before we fine-tune, we search for possible models to merge with and the datasets used to
create them ... Our most successful merges have little to no overlap in fine-tuning data." The paper leaves
"overlap" qualitative; here it is the cosine similarity (all-MiniLM-L6-v2, as in the paper's dedup and
contamination checks) between each partner training question and its closest Open-Platypus question. Step 06 puts
these numbers next to each merge's score change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from platypus_nb.config import EmbeddingsConfig
from platypus_nb.contracts import question_text
from platypus_nb.embeddings import best_matches, embed_texts
from platypus_nb.io import atomic_write_text, read_jsonl
from platypus_nb.merge.partners import Partner


def _excerpt(text: str, limit: int = 160) -> str:
    return " ".join(text.split())[:limit]


def training_data_overlap(platypus_rows: Sequence[dict[str, Any]], partners: Sequence[Partner],
                          embeddings: EmbeddingsConfig, threshold: float):
    """One table row per partner, and each partner's best-match similarities (for the figure).

    Partners without local training data (Hub models: their data is not fetched) get a row saying so.
    """
    import pandas as pd

    if not platypus_rows:
        raise ValueError("Open-Platypus rows are empty: expected step 02's clean.jsonl to hold the training rows")
    platypus_texts = [question_text(r) for r in platypus_rows]
    platypus_vectors = embed_texts(platypus_texts, embeddings.model, embeddings.batch_size)
    rows, best_by_partner = [], {}
    for partner in partners:
        row = {"partner": partner.name, "merge": partner.spec.merged_name,
               "stands_in_for": partner.spec.stands_in_for, "platypus_rows": len(platypus_texts),
               "threshold": threshold}
        if partner.train_rows_file is None:
            rows.append({**row, "partner_rows": 0, "note": "training data not available locally"})
            continue
        texts = [question_text(r) for r in read_jsonl(partner.train_rows_file)]
        vectors = embed_texts(texts, embeddings.model, embeddings.batch_size)
        idx, best = best_matches(vectors, platypus_vectors, embeddings.block_size)
        top = int(np.argmax(best))
        best_by_partner[partner.name] = best
        rows.append({**row, "partner_rows": len(texts), "mean_best_cosine": float(best.mean()),
                     "median_best_cosine": float(np.median(best)), "max_best_cosine": float(best[top]),
                     "share_at_or_above_threshold": float((best >= threshold).mean()),
                     "closest_partner_question": _excerpt(texts[top]),
                     "closest_platypus_question": _excerpt(platypus_texts[int(idx[top])]), "note": ""})
    return pd.DataFrame(rows), best_by_partner


def overlap_figure(best_by_partner: dict[str, np.ndarray], threshold: float):
    """Distribution of each partner question's best cosine match in Open-Platypus, with the threshold marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(-0.1, 1.0, 45)
    for name, best in best_by_partner.items():
        ax.hist(best, bins=bins, histtype="step", linewidth=2, density=True,
                label=f"{name} (mean {best.mean():.2f}, n={len(best)})")
    ax.axvline(threshold, color="grey", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel("cosine similarity to the closest Open-Platypus question (all-MiniLM-L6-v2)")
    ax.set_ylabel("density of partner questions")
    ax.set_title("Fine-tuning data overlap: partner vs Open-Platypus")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_overlap_table(table, path: Path) -> Path:
    """``overlap.csv``, which step 06 reads to plot overlap next to each merge's score change."""
    return atomic_write_text(path, table.to_csv(index=False))

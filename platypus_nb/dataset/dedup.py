"""Near-duplicate removal with the original's greedy semantics, vectorised and blocked.

The original (``data_similarity.ipynb`` cell 1) walks the rows in order and keeps a row when its cosine
similarity to every row kept so far is at or below the threshold: the first-seen row wins, and a row is compared
only with kept rows (a row removed as a duplicate removes nothing else). It calls scikit-learn's
``cosine_similarity`` once per row against the growing kept list, which is O(n^2) Python-level work.

:func:`greedy_near_duplicates` gives exactly that kept set a block of rows at a time: each block is compared
with everything kept before it in one matrix product (or one FAISS inner-product search), then the greedy rule
is resolved inside the block, where only rows with an in-block conflict need a Python step. Memory is
O(n x block), never n x n. :func:`greedy_near_duplicates_original` is the original loop, kept as the reference the
tests and the benchmark compare against. docs/dataset.md ("Filters and deduplication") records the facts.

Similarities are computed in float32 (the embeddings' dtype). float32 rounding moves a 384-dimensional similarity
by up to about 1e-6, and in an order that depends on the BLAS routine, so a pair that close to the threshold could
be decided differently by two float32 paths. Every pair within ``EXACT_MARGIN`` (1e-5) of the threshold is
therefore decided again in float64, as the cosine of the two float32 vectors (exact to about 1e-15), and compared
with the threshold as a float64 number, which is how the original's ``np.max(...) <= 0.7`` compared under NumPy 1
in 2023. A similarity equal to the threshold is kept, as ``<=`` in the original. The reference loop given float64
embeddings makes the same decisions, which is what the tests check on rows built to sit at the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

# Pairs whose float32 similarity is this close to the threshold are decided in float64.
EXACT_MARGIN = 1e-5


@dataclass
class NearDuplicates:
    """Per row, in the order given: kept or not, and its most similar row among those kept before it."""

    kept: np.ndarray  # bool (n,)
    nearest: np.ndarray  # int64 (n,): index of the most similar earlier kept row, -1 for none
    similarity: np.ndarray  # float32 (n,): that similarity, -inf for none

    @property
    def kept_indices(self) -> np.ndarray:
        return np.flatnonzero(self.kept)


class _KeptMatrix:
    """The kept rows so far, searched with a matrix product (numpy backend)."""

    def __init__(self, n: int, dim: int):
        self.vectors = np.empty((n, dim), dtype=np.float32)
        self.indices = np.empty(n, dtype=np.int64)
        self.size = 0

    def best(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sims = queries @ self.vectors[:self.size].T
        j = sims.argmax(axis=1)
        return self.indices[j], sims[np.arange(len(j)), j]

    def add(self, vectors: np.ndarray, indices: np.ndarray) -> None:
        self.vectors[self.size:self.size + len(indices)] = vectors
        self.indices[self.size:self.size + len(indices)] = indices
        self.size += len(indices)


class _KeptFaissIndex:
    """The kept rows so far in an exact FAISS inner-product index (faiss backend, for large n)."""

    def __init__(self, n: int, dim: int):
        import faiss

        self.index = faiss.IndexFlatIP(dim)
        self.indices = np.empty(n, dtype=np.int64)
        self.size = 0

    def best(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sims, j = self.index.search(np.ascontiguousarray(queries), 1)
        return self.indices[j[:, 0]], sims[:, 0]

    def add(self, vectors: np.ndarray, indices: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(vectors))
        self.indices[self.size:self.size + len(indices)] = indices
        self.size += len(indices)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(backend: str, n: int, faiss_min_rows: int) -> str:
    """"auto" is FAISS from ``faiss_min_rows`` rows up when faiss-cpu is installed, numpy otherwise."""
    if backend == "faiss" and not faiss_available():
        raise ImportError("dataset.dedup_backend is 'faiss' but faiss is not installed: pip install faiss-cpu, "
                          "or set dataset.dedup_backend to 'numpy' or 'auto'")
    if backend == "auto":
        return "faiss" if n >= faiss_min_rows and faiss_available() else "numpy"
    return backend


def greedy_near_duplicates(embeddings: np.ndarray, threshold: float, block_size: int = 1024,
                           backend: str = "numpy", exact_margin: float = EXACT_MARGIN) -> NearDuplicates:
    """Keep row i iff cos(i, j) <= threshold for every row j < i already kept; rows are unit vectors.

    Pairs within ``exact_margin`` of the threshold are decided in float64 (module docstring); 0 decides every pair
    in float32.
    """
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    check_unit_rows(emb)
    n = len(emb)
    t = float(threshold)
    kept = np.zeros(n, dtype=bool)
    nearest = np.full(n, -1, dtype=np.int64)
    similarity = np.full(n, -np.inf, dtype=np.float32)
    if n == 0:
        return NearDuplicates(kept, nearest, similarity)
    search = _KeptFaissIndex(n, emb.shape[1]) if backend == "faiss" else _KeptMatrix(n, emb.shape[1])
    for start in range(0, n, block_size):
        block = emb[start:start + block_size]
        stop = start + len(block)
        if search.size:
            nearest[start:stop], similarity[start:stop] = search.best(block)
        candidates = similarity[start:stop] <= t
        for r in np.flatnonzero(np.abs(similarity[start:stop] - t) < exact_margin):
            # The best float32 match is too close to call: compare in float64 with every row kept so far.
            candidates[r] = exact_cosine(block[r:r + 1], emb[:start][kept[:start]]).max() <= t
        block_kept = _resolve_block(block, candidates, t, exact_margin)
        _nearest_in_block(block, block_kept, start, nearest, similarity)
        kept[start:stop] = block_kept
        search.add(block[block_kept], np.flatnonzero(block_kept) + start)
    return NearDuplicates(kept, nearest, similarity)


def exact_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarities of the rows of ``a`` and ``b`` in float64: a product of two float32 numbers is exact in
    float64, so this is the similarity of the vectors as stored, to about 1e-15."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a64 = a64 / np.linalg.norm(a64, axis=1, keepdims=True)
    b64 = b64 / np.linalg.norm(b64, axis=1, keepdims=True)
    return a64 @ b64.T


def _resolve_block(block: np.ndarray, candidates: np.ndarray, t: float, exact_margin: float) -> np.ndarray:
    """The greedy rule inside one block, for rows that no earlier block's kept row already rules out.

    Only a kept row removes later rows, so it suffices to walk, in order, the candidates that conflict with a
    later candidate: each that is still standing is kept and removes the later candidates it conflicts with.
    """
    keep = candidates.copy()
    sims = block @ block.T
    conflicts = np.triu(sims > t, k=1)
    for i, j in zip(*np.nonzero(np.triu(np.abs(sims - t) < exact_margin, k=1))):
        conflicts[i, j] = exact_cosine(block[i:i + 1], block[j:j + 1])[0, 0] > t
    conflicts &= candidates[:, None] & candidates[None, :]
    for i in np.flatnonzero(conflicts.any(axis=1)):
        if keep[i]:
            keep &= ~conflicts[i]
    return keep


def _nearest_in_block(block: np.ndarray, block_kept: np.ndarray, start: int, nearest: np.ndarray,
                      similarity: np.ndarray) -> None:
    """Update each row's most similar earlier kept row with the kept rows before it in the same block."""
    if not block_kept.any():
        return
    kept_local = np.flatnonzero(block_kept)
    sims = block[kept_local] @ block.T  # (kept in block) x (block)
    earlier = kept_local[:, None] < np.arange(len(block))[None, :]
    sims = np.where(earlier, sims, -np.inf)
    best = sims.argmax(axis=0)
    best_sim = sims[best, np.arange(len(block))]
    better = best_sim > similarity[start:start + len(block)]
    rows = np.flatnonzero(better)
    nearest[start + rows] = kept_local[best[rows]] + start
    similarity[start + rows] = best_sim[rows]


def greedy_near_duplicates_original(embeddings: np.ndarray, threshold: float) -> np.ndarray:
    """The original notebook's loop, verbatim in behaviour: the reference for tests and the benchmark.

    Returns the kept row indices. As in ``data_similarity.ipynb``: the first row is kept; every later row is
    compared with ``sklearn.metrics.pairwise.cosine_similarity`` against the list of kept embeddings and kept when
    the maximum is ``<= threshold``, a Python float (compared in float64, as NumPy 1 did in 2023). The similarities
    are computed in the embeddings' dtype: pass float64 embeddings for the exact decisions near the threshold.
    """
    from sklearn.metrics.pairwise import cosine_similarity

    t = float(threshold)
    kept_indices: list[int] = []
    kept_embeddings: list[np.ndarray] = []
    for i, vector in enumerate(embeddings):
        if not kept_indices or float(np.max(cosine_similarity([vector], kept_embeddings))) <= t:
            kept_indices.append(i)
            kept_embeddings.append(vector)
    return np.asarray(kept_indices, dtype=np.int64)


def kept_counts(embeddings: np.ndarray, thresholds: list[float], block_size: int = 1024,
                backend: str = "numpy") -> dict[float, int]:
    """How many rows the greedy pass keeps at each threshold (e.g. the code's 0.7 against the card's 0.8)."""
    return {t: int(greedy_near_duplicates(embeddings, t, block_size, backend).kept.sum()) for t in thresholds}


def similarity_to_kept(result: NearDuplicates) -> np.ndarray:
    """Each row's similarity to its most similar earlier kept row (NaN for the first row), for a histogram."""
    sims = result.similarity.astype(np.float64)
    sims[~np.isfinite(sims)] = np.nan
    return sims


def check_unit_rows(embeddings: np.ndarray, tolerance: float = 1e-3, name: Optional[str] = None) -> None:
    """Cosine similarity is a dot product only for unit vectors; embed_texts normalises, others must too."""
    norms = np.linalg.norm(embeddings, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1) > tolerance)
    if len(bad):
        raise ValueError(f"{name or 'embeddings'}: row {bad[0]} has norm {norms[bad[0]]:.4f}; expected unit vectors "
                         f"(cosine similarity is computed as a dot product; embed_texts returns unit rows)")

"""Sentence embeddings with an on-disk cache, and blocked cosine-similarity search.

Both near-duplicate removal (01) and contamination analysis (02) use all-MiniLM-L6-v2, as the paper did. Embedding
the ~26k benchmark texts takes minutes on 2 CPU cores, so vectors are cached by (model, sha256 of text): a re-run
embeds nothing it has embedded before. Search works in blocks of query rows so memory stays O(block x corpus),
never a full n x m matrix.
"""

from __future__ import annotations

import functools
import hashlib
import re
import warnings
import zipfile
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from platypus_nb.assets import embedding_model_path
from platypus_nb.io import atomic_path, file_sha256
from platypus_nb.paths import cache_dir


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=4)
def _load_encoder(model_path: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_path, device="cpu")


def _model_cache_name(model_name: str) -> str:
    """A folder name that changes when the model's weights change, so stale vectors are never reused: keyed by the
    weights' content, since a fine-tuned copy of the same model has the same size and file names."""
    path = Path(embedding_model_path(model_name))
    weights = path / "model.safetensors"
    suffix = ""
    if weights.is_file():
        suffix = file_sha256(weights)[:12]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name) + (f"-{suffix}" if suffix else "")


def _read_shard(shard: Path) -> Optional[tuple[list[str], np.ndarray]]:
    """A shard's (keys, vectors), or None with a warning naming the file when it is unreadable or inconsistent.

    Shards are written atomically, but a disk-full copy, a crash of the file system or a hand-edited cache can still
    leave a truncated file; np.load's error for it names no file, and a silently short shard would hand out wrong
    rows. Every vector must be finite and of unit length, as ``embed_texts`` stores them.
    """
    problem = None
    try:
        with np.load(shard, allow_pickle=False) as z:
            keys, vectors = z["keys"].tolist(), z["vectors"]
        norms = np.linalg.norm(vectors, axis=1) if vectors.ndim == 2 else None
        if norms is None or len(keys) != len(vectors) or not np.all(np.abs(norms - 1) < 1e-3):
            problem = f"{len(keys)} keys for vectors of shape {vectors.shape}, or vectors not unit-length"
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        problem = f"{type(e).__name__}: {e}"
    if problem:
        warnings.warn(f"embedding cache shard {shard} is unreadable ({problem}); removing it, its texts will be "
                      f"embedded again", stacklevel=3)
        return None
    return keys, vectors


class EmbeddingCache:
    """Vectors keyed by text hash, stored as append-only ``.npz`` shards under the asset cache."""

    def __init__(self, model_name: str, root: Optional[Path] = None):
        self.dir = (root or cache_dir() / "embeddings") / _model_cache_name(model_name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._vectors: dict[str, np.ndarray] = {}
        for shard in sorted(self.dir.glob("*.npz")):
            loaded = _read_shard(shard)
            if loaded is None:
                # Its texts are simply not cached any more: the next embed_texts re-embeds and re-writes them.
                shard.unlink()
                continue
            self._vectors.update(zip(*loaded))

    def __contains__(self, key: str) -> bool:
        return key in self._vectors

    def __len__(self) -> int:
        return len(self._vectors)

    def get(self, key: str) -> np.ndarray:
        return self._vectors[key]

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        shard = self.dir / f"{text_key(''.join(keys))[:16]}.npz"
        with atomic_path(shard) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, keys=np.array(keys), vectors=vectors.astype(np.float32))
        for k, v in zip(keys, vectors):
            self._vectors[k] = v


def embed_texts(texts: Sequence[str], model_name: str = "all-MiniLM-L6-v2", batch_size: int = 64,
                cache: Optional[EmbeddingCache] = None, show_progress: bool = True) -> np.ndarray:
    """Unit-normalised float32 embeddings, one row per text, reusing cached vectors.

    Returns an array of shape ``(len(texts), dim)``; cosine similarity is then a dot product.
    """
    cache = cache if cache is not None else EmbeddingCache(model_name)
    keys = [text_key(t) for t in texts]
    todo: dict[str, str] = {}
    for k, t in zip(keys, texts):
        if k not in cache and k not in todo:
            todo[k] = t
    if todo:
        encoder = _load_encoder(embedding_model_path(model_name))
        new = encoder.encode(list(todo.values()), batch_size=batch_size, convert_to_numpy=True,
                             normalize_embeddings=True, show_progress_bar=show_progress)
        cache.add(list(todo.keys()), np.asarray(new, dtype=np.float32))
    if not keys:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([cache.get(k) for k in keys]).astype(np.float32, copy=False)


def iter_similarity_blocks(queries: np.ndarray, corpus: np.ndarray,
                           block_size: int = 1024) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, sims)`` with ``sims = queries[start:start+block] @ corpus.T``: O(block x m) memory."""
    for start in range(0, len(queries), block_size):
        yield start, queries[start:start + block_size] @ corpus.T


def pairs_at_or_above(queries: np.ndarray, corpus: np.ndarray, threshold: float,
                      block_size: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query row, corpus row) pair with cosine >= threshold, as three aligned arrays (q, c, sim)."""
    qs, cs, ss = [], [], []
    for start, sims in iter_similarity_blocks(queries, corpus, block_size):
        q, c = np.nonzero(sims >= threshold)
        qs.append(q + start)
        cs.append(c)
        ss.append(sims[q, c])
    if not qs:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, np.float32)
    return np.concatenate(qs), np.concatenate(cs), np.concatenate(ss)


def best_matches(queries: np.ndarray, corpus: np.ndarray, block_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the index of its most similar corpus row and that similarity."""
    idx = np.zeros(len(queries), dtype=np.int64)
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    if len(corpus) == 0:
        return idx, best
    for start, sims in iter_similarity_blocks(queries, corpus, block_size):
        j = sims.argmax(axis=1)
        idx[start:start + len(j)] = j
        best[start:start + len(j)] = sims[np.arange(len(j)), j]
    return idx, best

"""Sentence embeddings with an on-disk cache, and blocked cosine-similarity search.

Both near-duplicate removal (01) and contamination analysis (02) use all-MiniLM-L6-v2, as the paper did. Embedding
the ~26k benchmark texts takes minutes on 2 CPU cores, so vectors are cached by (model, backend, sha256 of text): a
re-run embeds nothing it has embedded before. Search works in blocks of query rows so memory stays O(block x corpus),
never a full n x m matrix.

Two backends run the same weights (``EmbeddingCache(..., backend=)``): ``torch``, the pipeline's (sentence-transformers
as published), and ``onnx`` (the transformer exported once from the packaged safetensors into the asset cache and run
by ONNX Runtime; tokenizer, pooling and normalisation stay sentence-transformers' own). ``onnx`` is not the default:
on 2 shared CPU cores it was 1.4x faster per CPU-second, not the 2x that would pay for a second code path
(benchmarks/README.md, "Embedding backends").
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
import warnings
import zipfile
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from platypus_nb.assets import AssetError, embedding_model_path, is_valid_model_dir, write_model_marker
from platypus_nb.config import EMBEDDING_BACKENDS
from platypus_nb.io import atomic_directory, atomic_path, file_sha256
from platypus_nb.paths import cache_dir

BACKENDS = EMBEDDING_BACKENDS
# What each non-torch backend imports, and the pinned package that provides it (requirements.txt): onnx runs
# the model with onnxruntime and exports / fuses it with onnx.
BACKEND_PACKAGES = {"onnx": {"onnxruntime": "onnxruntime==1.32.0", "onnx": "onnx==1.23.2"}}
ONNX_FILE = "model.onnx"
_ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# An export is kept only when it reproduces the torch vectors of these texts to this cosine.
_EXPORT_CHECK = ["What is the capital of France?", "A ball is thrown upward at 12 m/s. How high does it rise?",
                 "Which of the following best describes the function of mitochondria in a cell? " * 12]
_EXPORT_MIN_COSINE = 0.999


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_backend(backend: str) -> None:
    """Fail before any work when the backend is unknown or its package is not installed, naming what to install."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown embedding backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    missing = [req for module, req in BACKEND_PACKAGES.get(backend, {}).items()
               if importlib.util.find_spec(module) is None]
    if missing:
        raise AssetError(f"the {backend} embedding backend needs {', '.join(r.split('==')[0] for r in missing)}, "
                         f"not installed: pip install {' '.join(missing)} (or use the torch backend, the default)")


def _load_encoder(model_path: str, backend: str = "torch"):
    """The encoder of a model folder for a backend, loaded once per process (also when called without a backend,
    as a benchmark's warm-up does)."""
    return _cached_encoder(model_path, backend)


@functools.lru_cache(maxsize=4)
def _cached_encoder(model_path: str, backend: str):
    from sentence_transformers import SentenceTransformer

    check_backend(backend)
    model = SentenceTransformer(model_path, device="cpu")
    if backend == "onnx":
        return OnnxEncoder(model, onnx_model_file(model_path, model))
    return model


def _model_cache_name(model_name: str, backend: str = "torch") -> str:
    """A folder name that changes when the model's weights or the backend change, so stale vectors are never reused:
    keyed by the weights' content, since a fine-tuned copy of the same model has the same size and file names, and
    by the backend, whose vectors agree with torch's to cosine 0.9999999 but not bit for bit. torch keeps the name it
    always had, so existing caches stay valid."""
    path = Path(embedding_model_path(model_name))
    weights = path / "model.safetensors"
    suffix = ""
    if weights.is_file():
        suffix = file_sha256(weights)[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name) + (f"-{suffix}" if suffix else "")
    return name if backend == "torch" else f"{name}-{backend}"


# ------------------------------------------------------------------------------------------------ onnx backend


def onnx_model_dir(model_path: str) -> Path:
    """Where the export of the model at ``model_path`` lives: keyed by its weights' sha256, like the vectors."""
    weights = Path(model_path) / "model.safetensors"
    if not weights.is_file():
        raise AssetError(f"the onnx backend exports from safetensors weights, and {weights} does not exist; set "
                         f"embeddings.backend: torch for this model")
    return cache_dir() / "models" / f"onnx-{Path(model_path).name}-{file_sha256(weights)[:12]}"


def onnx_model_file(model_path: str, model=None) -> Path:
    """The ONNX export of a sentence-transformers model's transformer, made once from the local safetensors.

    The export is written under a temporary name and renamed into place with a marker recording its sha256 (and
    its source's), so an interrupted export is never used and an altered file is re-exported; it is kept only if
    it reproduces the torch vectors of a few texts (``_EXPORT_MIN_COSINE``).
    """
    out = onnx_model_dir(model_path)
    if is_valid_model_dir(out):
        return out / ONNX_FILE
    if model is None:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(model_path, device="cpu")
    with atomic_directory(out) as tmp:
        export_onnx(model, tmp / ONNX_FILE)
        got = OnnxEncoder(model, tmp / ONNX_FILE).encode(_EXPORT_CHECK, normalize_embeddings=True)
        want = model.encode(_EXPORT_CHECK, normalize_embeddings=True, convert_to_numpy=True)
        cosine = float((got * want).sum(axis=1).min())
        if cosine < _EXPORT_MIN_COSINE:
            raise AssetError(f"the ONNX export of {model_path} disagrees with torch (cosine {cosine:.6f} < "
                             f"{_EXPORT_MIN_COSINE}); set embeddings.backend: torch")
        write_model_marker(tmp, source=Path(model_path) / "model.safetensors")
    return out / ONNX_FILE


def export_onnx(model, path: Path, fuse: bool = True) -> None:
    """Export the transformer of a sentence-transformers model (token embeddings, dynamic batch and length) with
    torch's TorchScript exporter, which needs neither onnxscript nor the Hub.

    Exported with eager attention, whose graph ONNX Runtime's transformer optimizer recognises: ``fuse`` then
    replaces attention, embedding + LayerNorm, GELU and residual + LayerNorm by ONNX Runtime's fused CPU kernels
    (with torch's default attention nothing but GELU and LayerNorm fuses). The fused file runs only on ONNX Runtime.
    """
    import torch

    transformer = model[0].auto_model.eval()

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                    token_type_ids=token_type_ids).last_hidden_state

    features = _features(model, ["an example", "a second, longer example"])
    dynamic = {name: {0: "batch", 1: "tokens"} for name in (*_ONNX_INPUTS, "token_embeddings")}
    attention = transformer.config._attn_implementation
    raw = path.with_name(f".{path.name}.raw") if fuse else path
    try:
        transformer.set_attn_implementation("eager")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(TokenEmbeddings().eval(), tuple(features[k] for k in _ONNX_INPUTS), str(raw),
                              input_names=list(_ONNX_INPUTS), output_names=["token_embeddings"],
                              dynamic_axes=dynamic, opset_version=17, dynamo=False)
    finally:
        transformer.set_attn_implementation(attention)
    if fuse:
        from onnxruntime.transformers.optimizer import optimize_model

        config = transformer.config
        optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads,
                       hidden_size=config.hidden_size, opt_level=1).save_model_to_file(str(path))
        raw.unlink()


def _features(model, texts: Sequence[str]) -> dict:
    """The model's own tokenisation (truncated to its ``max_seq_length``), as its ``encode`` does it."""
    return model.preprocess(list(texts)) if hasattr(model, "preprocess") else model.tokenize(list(texts))


class OnnxEncoder:
    """``encode`` as sentence-transformers does it, with the transformer run by ONNX Runtime.

    Tokenisation, truncation (``max_seq_length``), pooling and normalisation are the model's own modules, so only
    the transformer's arithmetic differs from torch. Threads follow torch's setting (2 on this machine), without
    spinning: on a shared machine a spinning thread burns CPU another process needs.
    """

    def __init__(self, model, onnx_file: Path):
        import onnxruntime as ort
        import torch

        self.model = model
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        self.onnx_file = Path(onnx_file)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Token embeddings of one tokenised batch."""
        return self.session.run(None, inputs)[0]

    def encode(self, texts: Sequence[str], batch_size: int = 32, normalize_embeddings: bool = True,
               show_progress_bar: bool = False, **_: object) -> np.ndarray:
        import torch

        # longest first, as sentence-transformers sorts, so a batch pads little
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out: Optional[np.ndarray] = None
        starts = range(0, len(texts), batch_size)
        if show_progress_bar:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="Batches")
        for start in starts:
            idx = order[start:start + batch_size]
            features = _features(self.model, [texts[i] for i in idx])
            tokens = self.run({k: features[k].numpy() for k in _ONNX_INPUTS})
            features["token_embeddings"] = torch.from_numpy(tokens)
            for module in list(self.model)[1:]:  # pooling, then Normalize where the model has it
                features = module(features)
            vectors = features["sentence_embedding"].numpy()
            if normalize_embeddings:
                vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            if out is None:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[idx] = vectors
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)


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
    """Vectors keyed by text hash, stored as append-only ``.npz`` shards under the asset cache, one folder per
    (model weights, backend); ``embed_texts`` embeds what is missing with this cache's backend."""

    def __init__(self, model_name: str, root: Optional[Path] = None, backend: str = "torch"):
        check_backend(backend)
        self.backend = backend
        self.dir = (root or cache_dir() / "embeddings") / _model_cache_name(model_name, backend)
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
                cache: Optional[EmbeddingCache] = None, show_progress: bool = True,
                backend: Optional[str] = None) -> np.ndarray:
    """Unit-normalised float32 embeddings, one row per text, reusing cached vectors.

    The backend is the cache's (``backend`` only chooses one when no cache is given, default torch); what is not
    cached is embedded in batches of ``batch_size`` texts at the model's full window (:func:`encode_by_tokens`).
    Returns an array of shape ``(len(texts), dim)``; cosine similarity is then a dot product.
    """
    if cache is not None and backend not in (None, cache.backend):
        raise ValueError(f"embed_texts: backend {backend!r} differs from the cache's {cache.backend!r} ({cache.dir})")
    cache = cache if cache is not None else EmbeddingCache(model_name, backend=backend or "torch")
    keys = [text_key(t) for t in texts]
    todo: dict[str, str] = {}
    for k, t in zip(keys, texts):
        if k not in cache and k not in todo:
            todo[k] = t
    if todo:
        encoder = _load_encoder(embedding_model_path(model_name), cache.backend)
        cache.add(list(todo.keys()), encode_by_tokens(encoder, list(todo.values()), batch_size, show_progress))
    if not keys:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([cache.get(k) for k in keys]).astype(np.float32, copy=False)


def token_batches(lengths: Sequence[int], batch_size: int, window: int) -> list[np.ndarray]:
    """Text indices, longest first by word pieces, cut into batches of at most ``batch_size x window`` word pieces
    once padded to their longest (``batch_size`` texts at the full window, more when shorter; one text at least)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        n = max(1, batch_size * window // max(1, int(lengths[order[start]])))
        batches.append(order[start:start + n])
        start += n
    return batches


def encode_by_tokens(encoder, texts: Sequence[str], batch_size: int, show_progress: bool = False) -> np.ndarray:
    """Unit-normalised vectors of ``texts`` from a sentence-transformers model (or :class:`OnnxEncoder`), fed to its
    ``encode`` one batch at a time: longest first by word pieces, ``batch_size`` texts per batch at the model's full
    window and more of shorter ones (:func:`token_batches`).

    ``encode`` sorts a call's texts by characters, a poor proxy for word pieces on benchmark text (numbers, formulas,
    names): in its batches of 16, a fifth of the positions step 02 computed for the test sets were padding. And a
    fixed number of texts per batch is either many long ones, whose attention scores (texts x 12 heads x 256 x 256)
    spill out of the CPU's caches, or few short ones, a forward pass each. Both cost time: on 2 CPU cores this
    embeds test texts and answer options 1.2x faster (benchmarks/README.md, "Embedding backends"). A text's vector
    is the one ``encode`` gives it, to float rounding (2.5e-7), and step 02 decides the same.
    """
    from tqdm.auto import tqdm

    model = getattr(encoder, "model", encoder)  # OnnxEncoder keeps the sentence-transformers model for its tokenizer
    ids = model.tokenizer(list(texts), truncation=True, max_length=model.max_seq_length)["input_ids"]
    out = np.zeros((len(texts), 0), dtype=np.float32)
    batches = token_batches([len(x) for x in ids], batch_size, model.max_seq_length)
    for n, idx in enumerate(tqdm(batches, desc="Embedding", unit="batch", disable=not show_progress)):
        vectors = encoder.encode([texts[i] for i in idx], batch_size=len(idx), convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False)
        if n == 0:
            out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        out[idx] = vectors
    return out


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

"""Step 01 benchmark: the blocked greedy near-duplicate pass vs the original loop, and the embedding cache.

Part 1, dedup: the original ``data_similarity.ipynb`` loop (scikit-learn ``cosine_similarity`` of each row against
the growing list of kept rows) against ``platypus_nb.dataset.dedup.greedy_near_duplicates`` (numpy blocks, and the
FAISS backend), on the same embeddings, at n = 2k, 10k and 25k, threshold 0.8 (the card's), checking that the kept
sets are identical. Rows: real all-MiniLM-L6-v2 embeddings of real texts from data/ (TheoremQA, SciBench, SciQ,
OpenBookQA questions and MATH test problems: 4,000 texts), and beyond those, perturbed copies of them (Gaussian
noise of a random size, renormalised, so each copy's similarity to its original falls between 0.6 and 1.0): the
same mix of unique rows and near-duplicates at every size, without embedding 25k texts on 2 CPU cores.

Part 2, beyond 100k rows: FAISS (exact inner-product index) against numpy blocks on synthetic unit vectors.

Part 3, the tiny config's near-duplicate step: embedding throughput with an empty cache (texts/s, model already
loaded), and the same step again on the now-filled cache.

Run: ``.venv/bin/python benchmarks/bench_dedup.py`` (about 10-15 minutes on 2 busy cores, most of it the original
loop at 25k and the first embedding of the 4,000 texts, which is cached afterwards). Writes
``benchmarks/results/dedup.json`` and prints the markdown table of ``benchmarks/README.md``'s dedup section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from platypus_nb.assets import data_file, embedding_model_path
from platypus_nb.benchmarks_data import read_benchmark
from platypus_nb.config import load_config
from platypus_nb.dataset import build as dataset_build
from platypus_nb.dataset.dedup import greedy_near_duplicates, greedy_near_duplicates_original
from platypus_nb.embeddings import EmbeddingCache, _load_encoder, embed_texts
from platypus_nb.io import atomic_write_json, open_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "dedup.json"
THRESHOLD = 0.8
REAL_TEXTS = 4000


def real_texts(limit: int = REAL_TEXTS) -> list[str]:
    """Questions from the vendored data, shortest sources first, up to ``limit`` distinct texts."""
    texts = [r["Question"] for r in json.load(open_text(data_file("theoremqa_test.json.gz")))]
    for book in ("atkins", "calculus", "chemmc", "class", "diff", "fund", "matter", "quan", "stat", "thermo"):
        for stem in (book, f"{book}_sol"):
            texts += [r["problem_text"] for r in json.load(open_text(data_file(f"scibench/{stem}.json.gz")))]
    texts += [r["question"] for r in read_benchmark("sciq_validation")]
    texts += [r["question_stem"] for r in read_benchmark("openbookqa_validation")]
    texts += [r["problem"] for r in read_benchmark("math_test")]
    return list(dict.fromkeys(texts))[:limit]


def rows_of_size(base: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit rows: the real embeddings first, then perturbed copies (cosine to the original in [0.6, 1.0])."""
    if n <= len(base):
        return base[:n]
    source = base[rng.integers(0, len(base), n - len(base))]
    cosine = rng.uniform(0.6, 1.0, size=(len(source), 1))
    noise = rng.normal(size=source.shape)
    noise -= (noise * source).sum(axis=1, keepdims=True) * source  # orthogonal to the original
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    copies = cosine * source + np.sqrt(1 - cosine ** 2) * noise
    rows = np.concatenate([base, copies.astype(np.float32)])
    return rows[rng.permutation(n)]


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def bench_dedup(base: np.ndarray, sizes: list[int], block_size: int) -> list[dict]:
    rng = np.random.default_rng(0)
    results = []
    for n in sizes:
        rows = rows_of_size(base, n, rng)
        reference, t_original = timed(greedy_near_duplicates_original, rows, THRESHOLD)
        blocked, t_blocked = timed(greedy_near_duplicates, rows, THRESHOLD, block_size, "numpy")
        faiss_result, t_faiss = timed(greedy_near_duplicates, rows, THRESHOLD, block_size, "faiss")
        results.append({"n": n, "kept": int(len(reference)), "original_s": round(t_original, 3),
                        "blocked_numpy_s": round(t_blocked, 3), "faiss_s": round(t_faiss, 3),
                        "speedup_numpy": round(t_original / t_blocked, 1),
                        "speedup_faiss": round(t_original / t_faiss, 1),
                        "identical_numpy": bool(np.array_equal(blocked.kept_indices, reference)),
                        "identical_faiss": bool(np.array_equal(faiss_result.kept_indices, reference))})
        print(f"n={n}: {results[-1]}", flush=True)
    return results


def bench_large(n: int, dim: int, block_size: int) -> dict:
    """Synthetic unit vectors, a third of them near-duplicates of another row: FAISS against numpy blocks."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=(n - n // 3, dim)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    rows = rows_of_size(base, n, rng)
    faiss_result, t_faiss = timed(greedy_near_duplicates, rows, THRESHOLD, block_size, "faiss")
    blocked, t_blocked = timed(greedy_near_duplicates, rows, THRESHOLD, block_size, "numpy")
    result = {"n": n, "dim": dim, "kept": int(faiss_result.kept.sum()), "faiss_s": round(t_faiss, 3),
              "blocked_numpy_s": round(t_blocked, 3),
              "identical": bool(np.array_equal(faiss_result.kept, blocked.kept))}
    print(f"large: {result}", flush=True)
    return result


def bench_tiny_embedding() -> dict:
    """The tiny config's near-duplicate step with an empty embedding cache, then again on the filled cache."""
    cfg = load_config("tiny")
    build = dataset_build.remove_exact_duplicates(dataset_build.drop_incomplete_rows(
        dataset_build.apply_keyword_filter(dataset_build.start_build(cfg), cfg), cfg), cfg)
    _load_encoder(embedding_model_path(cfg.embeddings.model))  # model loading is not embedding
    with tempfile.TemporaryDirectory() as tmp:
        cold, t_cold = timed(dataset_build.remove_near_duplicates, build, cfg,
                             EmbeddingCache(cfg.embeddings.model, root=Path(tmp)), False)
        warm, t_warm = timed(dataset_build.remove_near_duplicates, build, cfg,
                             EmbeddingCache(cfg.embeddings.model, root=Path(tmp)), False)
    texts = cold.stats["texts"]
    result = {"texts": texts, "cold_embed_s": cold.stats["embed_seconds"],
              "texts_per_s": round(texts / cold.stats["embed_seconds"], 1), "cold_step_s": round(t_cold, 3),
              "cached_texts_embedded": warm.stats["texts_embedded"], "cached_step_s": round(t_warm, 3),
              "kept": int(warm.near.kept.sum()), "same_result": bool(np.array_equal(cold.near.kept, warm.near.kept))}
    print(f"tiny: {result}", flush=True)
    return result


def markdown(results: dict) -> str:
    lines = ["| rows | kept | original loop (s) | blocked numpy (s) | FAISS (s) | speed-up numpy / FAISS | "
             "identical kept set |", "|---:|---:|---:|---:|---:|---:|---|"]
    for r in results["dedup"]:
        lines.append(f"| {r['n']:,} | {r['kept']:,} | {r['original_s']:.1f} | {r['blocked_numpy_s']:.2f} | "
                     f"{r['faiss_s']:.2f} | {r['speedup_numpy']}x / {r['speedup_faiss']}x | "
                     f"{'yes' if r['identical_numpy'] and r['identical_faiss'] else 'NO'} |")
    big = results["large"]
    lines += ["", f"Beyond 100k rows ({big['n']:,} synthetic unit vectors, d = {big['dim']}, kept {big['kept']:,}): "
                  f"FAISS {big['faiss_s']:.1f} s, numpy blocks {big['blocked_numpy_s']:.1f} s, identical kept set: "
                  f"{'yes' if big['identical'] else 'NO'}.", ""]
    tiny = results["tiny_embedding"]
    lines += [f"Tiny config ({tiny['texts']} texts, model loaded): first embedding {tiny['cold_embed_s']:.1f} s "
              f"({tiny['texts_per_s']} texts/s), whole near-duplicate step {tiny['cold_step_s']:.1f} s; re-run on "
              f"the cache {tiny['cached_step_s']:.2f} s, {tiny['cached_texts_embedded']} texts embedded."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 25000])
    parser.add_argument("--large", type=int, default=120_000, help="rows for the FAISS part")
    parser.add_argument("--block-size", type=int, default=1024)
    args = parser.parse_args()

    import faiss
    import sklearn

    tiny = bench_tiny_embedding()
    texts = real_texts()
    started = time.perf_counter()
    base = embed_texts(texts, show_progress=True)  # the user's cache: embedded once, reused on a re-run
    print(f"embedded {len(texts)} real texts in {time.perf_counter() - started:.1f} s", flush=True)
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg(),
                    "numpy": np.__version__, "scikit-learn": sklearn.__version__, "faiss-cpu": faiss.__version__},
        "threshold": THRESHOLD, "block_size": args.block_size, "real_texts": len(texts),
        "tiny_embedding": tiny,
        "dedup": bench_dedup(base, args.sizes, args.block_size),
        "large": bench_large(args.large, base.shape[1], args.block_size),
    }
    atomic_write_json(RESULTS, results)
    print(markdown(results))


if __name__ == "__main__":
    main()

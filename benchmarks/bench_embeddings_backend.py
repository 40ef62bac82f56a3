"""Embedding backends for all-MiniLM-L6-v2: PyTorch against ONNX Runtime (and OpenVINO when installed), same weights.

Embedding the ~26k test texts is nearly all of step 02's first run, so a faster backend leaves room for the
verifier. Every backend embeds the same real texts, two kinds in turn, each taken evenly across its list: ``--texts``
of the pieces step 02 embeds for the four leaderboard test sets (whole items and passage-stripped stems,
``verifier.test_pieces``), and ``--texts`` of the test items' answer options (the short texts stage two embeds to
read an answer given in other words); batch size as configs/tiny.yaml, 2 threads each. The texts are cut into ``--rounds``
slices and each slice runs through every backend in turn (the order rotating per slice), so a change of load on
this shared machine falls on all of them alike. Measured per backend: texts per CPU-second of this process (the
main measure, little affected by other processes) and texts per wall second beside it, tokens per CPU-second, and
the cosine of each vector to the baseline's (min and mean). ``uptime``'s load is recorded before and after.

- ``torch, batched by characters`` (the baseline): sentence-transformers' ``encode`` over the whole slice in
  batches of 16, which sorts texts by characters before batching, as step 02 ran until 2026-12-04;
- ``torch``: the same model fed one batch at a time, longest first by word pieces, ``batch_size`` texts per batch
  at the full window and more of shorter ones (``embeddings.encode_by_tokens``), as step 02 runs now;
- ``onnx``: ``platypus_nb.embeddings.OnnxEncoder`` on the package's export (eager attention, ONNX Runtime's fused
  transformer kernels), made once from the packaged safetensors into the asset cache, batched by word pieces;
- ``openvino``: the same export without ONNX Runtime's fusion pass (OpenVINO reads plain ONNX only), compiled by
  OpenVINO; only when ``openvino`` is installed (not a dependency).

``--detector POOL`` instead runs the detector evaluation set (data/contamination_detector_eval.jsonl.gz, as
benchmarks/bench_detector.py does) with vectors from each backend against the rows' own test items plus the first
POOL items of each set (0: all 26k), and compares what the paper's rule and step 02 (verifier off and on) remove.

    .venv/bin/python benchmarks/bench_embeddings_backend.py [--texts 2000] [--rounds 4] [--detector POOL]

Writes benchmarks/results/embeddings_backend.json (the detector comparison: embeddings_backend_detector.json) and
prints the table of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from platypus_nb import contamination as C
from platypus_nb.assets import embedding_model_path, model_marker
from platypus_nb.config import load_config
from platypus_nb.contamination.verifier import test_pieces
from platypus_nb.embeddings import ONNX_FILE, OnnxEncoder, _features, encode_by_tokens, export_onnx, onnx_model_file
from platypus_nb.io import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "embeddings_backend.json"
DETECTOR_RESULT = ROOT / "benchmarks" / "results" / "embeddings_backend_detector.json"
THREADS = 2
# sentence-transformers' encode over the whole list, which batches texts in order of characters: step 02 until
# 2026-12-04. The other rows batch by word pieces (embeddings.encode_by_tokens), as step 02 does now.
BASELINE = "torch, batched by characters"
BASELINE_BATCH_SIZE = 16  # configs/tiny.yaml's embeddings.batch_size until then


class OpenVinoEncoder(OnnxEncoder):
    """OnnxEncoder's tokenisation and pooling around an OpenVINO-compiled copy of the unfused export."""

    def __init__(self, model, onnx_file: Path):
        import openvino as ov

        self.model = model
        self.onnx_file = onnx_file
        self.compiled = ov.Core().compile_model(str(onnx_file), "CPU", {"INFERENCE_NUM_THREADS": THREADS})

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.compiled(inputs)[0]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def sample_texts(n: int) -> dict[str, list[str]]:
    """``n`` of step 02's test pieces, evenly spaced over the list (every benchmark, whole items and stems), and
    ``n`` of the test items' answer options (short texts, which stage two embeds to read answers in other words)."""
    items = C.load_test_items(load_config("tiny").contamination.benchmarks)
    pieces, _ = test_pieces(items)
    options = sorted({c.strip() for item in items for c in item.choices if c.strip()})
    return {kind: texts[::max(1, len(texts) // n)][:n] for kind, texts in
            (("test pieces", pieces), ("answer options", options))}


def run(n_texts: int, rounds: int) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(THREADS)
    batch_size = load_config("tiny").embeddings.batch_size
    model_path = embedding_model_path()
    model = SentenceTransformer(model_path, device="cpu")
    t0 = time.perf_counter()
    onnx_file = onnx_model_file(model_path, model)  # exported on first use; cached after
    export_s = time.perf_counter() - t0
    encoders: dict[str, Callable[[list[str]], np.ndarray]] = {
        BASELINE: lambda t: model.encode(t, batch_size=BASELINE_BATCH_SIZE, normalize_embeddings=True,
                                         convert_to_numpy=True),
        "torch": lambda t: encode_by_tokens(model, t, batch_size),
    }
    onnx = OnnxEncoder(model, onnx_file)
    encoders["onnx"] = lambda t: encode_by_tokens(onnx, t, batch_size)
    if importlib.util.find_spec("openvino") is not None:
        plain = Path(tempfile.mkdtemp(prefix="bench_embeddings_")) / "plain.onnx"
        export_onnx(model, plain, fuse=False)
        openvino = OpenVinoEncoder(model, plain)
        encoders["openvino"] = lambda t: encode_by_tokens(openvino, t, batch_size)
    samples = sample_texts(n_texts)
    for encode in encoders.values():  # warm-up: first-call allocations are not embedding
        encode(samples["test pieces"][:16])
    load_before = uptime()
    kinds = {kind: _time(encoders, texts, rounds, model) for kind, texts in samples.items()}
    marker = model_marker(onnx_file.parent)
    return {"rounds": rounds, "batch_size": batch_size, "baseline_batch_size": BASELINE_BATCH_SIZE,
            "threads": THREADS, "onnx_file": str(onnx_file), "onnx_sha256": marker["files"][ONNX_FILE],
            "source_sha256": marker["source_sha256"], "export_s_if_not_cached": round(export_s, 1),
            "load_before": load_before, "load_after": uptime(), "kinds": kinds}


def _time(encoders: dict[str, Callable[[list[str]], np.ndarray]], texts: list[str], rounds: int, model) -> dict:
    """Every encoder on ``texts``, cut into ``rounds`` slices, each slice through every encoder in turn (the order
    rotating), and their speed and vectors against the baseline's."""
    tokens = sum(int(_features(model, texts[i:i + 256])["attention_mask"].sum()) for i in range(0, len(texts), 256))
    names = list(encoders)
    wall = dict.fromkeys(names, 0.0)
    cpu = dict.fromkeys(names, 0.0)
    vectors: dict[str, list[np.ndarray]] = {n: [] for n in names}
    bounds = np.linspace(0, len(texts), rounds + 1).astype(int)
    for r in range(rounds):
        chunk = texts[bounds[r]:bounds[r + 1]]
        for name in names[r % len(names):] + names[:r % len(names)]:
            c0, w0 = time.process_time(), time.perf_counter()
            vectors[name].append(np.asarray(encoders[name](chunk), dtype=np.float32))
            cpu[name] += time.process_time() - c0
            wall[name] += time.perf_counter() - w0
            print(f"round {r} {name}: {wall[name]:.1f} s wall, {cpu[name]:.1f} CPU-s so far", flush=True)
    ref = np.concatenate(vectors[BASELINE])
    backends = {}
    for name in names:
        v = np.concatenate(vectors[name])
        cos = (v * ref).sum(axis=1)
        backends[name] = {"texts_per_cpu_s": round(len(texts) / cpu[name], 2),
                          "tokens_per_cpu_s": round(tokens / cpu[name], 1),
                          "texts_per_wall_s": round(len(texts) / wall[name], 2), "cpu_s": round(cpu[name], 1),
                          "wall_s": round(wall[name], 1), "cosine_min": float(cos.min()),
                          "cosine_mean": float(cos.mean()), "max_abs_diff": float(np.abs(v - ref).max()),
                          "cpu_speedup_vs_baseline": round(cpu[BASELINE] / cpu[name], 2),
                          "wall_speedup_vs_baseline": round(wall[BASELINE] / wall[name], 2)}
    return {"texts": len(texts), "tokens": tokens, "backends": backends}


def detector_agreement(pool: int) -> dict:
    """The detector evaluation through each backend's vectors: every detector's removals (training row -> test ids)
    and step 02's categories per flagged pair, compared with torch's."""
    from platypus_nb.contamination import detector_eval as D
    from platypus_nb.embeddings import EmbeddingCache
    from platypus_nb.io import read_jsonl

    load_before = uptime()
    tiny = load_config("tiny", {"contamination.review_file": None})
    cfg, batch_size = tiny.contamination, tiny.embeddings.batch_size
    off = load_config("tiny", {"contamination.review_file": None, "contamination.verifier": "none"}).contamination
    rows = read_jsonl(ROOT / "data" / "contamination_detector_eval.jsonl.gz")
    items = C.load_test_items(cfg.benchmarks)
    if pool:
        named = {r["test_id"] for r in rows}
        firsts = {i.test_id for i in C.load_test_items(cfg.benchmarks, max_items=pool)}
        items = [i for i in items if i.test_id in named | firsts]
    texts = [C.question_text(r) for r in rows]
    decisions, tables, seconds = {}, {}, {}
    for backend in ("torch", "onnx"):
        t0 = time.perf_counter()
        pieces = C.embed_pieces(texts, items, "all-MiniLM-L6-v2", batch_size,
                                EmbeddingCache("all-MiniLM-L6-v2", backend=backend), show_progress=False)
        table, flagged = D.evaluate(rows, items, pieces, cfg, off)
        nearest, nearest_sim = D.nearest_training_rows(pieces.train_whole, pieces.test_whole)
        removed = {"paper": D.paper_removals(items, nearest, nearest_sim, cfg.threshold)}
        removed |= {name: D.removals(f) for name, f in flagged.items()}
        categories = {name: sorted(zip(f["train_index"].astype(int), f["test_id"], f["category"].astype(str)))
                      for name, f in flagged.items()}
        decisions[backend] = (removed, categories)
        tables[backend] = table
        seconds[backend] = round(time.perf_counter() - t0, 1)  # embedding what is not cached, then evaluating
        print(f"{backend}: {seconds[backend]} s", flush=True)
    (rt, ct), (ro, co) = decisions["torch"], decisions["onnx"]
    return {"rows": len(rows), "test_items": len(items), "pool": pool or "all",
            "removed_rows": {name: {"torch": len(rt[name]), "onnx": len(ro[name]),
                                    "identical": {k: sorted(v) for k, v in rt[name].items()}
                                    == {k: sorted(v) for k, v in ro[name].items()}} for name in rt},
            "flagged_pairs": {name: {"torch": len(ct[name]), "onnx": len(co[name]),
                                     "identical_with_categories": ct[name] == co[name]} for name in ct},
            "score_tables_identical": tables["torch"].equals(tables["onnx"]),  # NaN-aware, unlike ==
            "embed_and_evaluate_s": seconds,
            "load_before": load_before, "load_after": uptime()}


def markdown(result: dict) -> str:
    lines = []
    for kind, k in result["kinds"].items():
        lines += ["", f"{kind}: {k['texts']} texts, {k['tokens']} word pieces", "",
                  "| backend | texts / CPU-s | tokens / CPU-s | texts / s (wall) | speed-up vs the first row: CPU / "
                  "wall | cosine to the first row: min / mean |", "|---|---|---|---|---|---|"]
        for name, b in k["backends"].items():
            lines.append(f"| {name} | {b['texts_per_cpu_s']} | {b['tokens_per_cpu_s']} | {b['texts_per_wall_s']} | "
                         f"{b['cpu_speedup_vs_baseline']}x / {b['wall_speedup_vs_baseline']}x | "
                         f"{b['cosine_min']:.6f} / {b['cosine_mean']:.6f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=2000, help="how many test pieces to embed (default 2000)")
    parser.add_argument("--rounds", type=int, default=4, help="slices, each run through every backend in turn")
    parser.add_argument("--detector", type=int, default=None, metavar="POOL",
                        help="compare the detector evaluation's decisions instead (POOL items per set; 0: all)")
    args = parser.parse_args()
    if args.detector is not None:
        agreement = detector_agreement(args.detector)
        atomic_write_json(DETECTOR_RESULT, agreement)
        print(json.dumps(agreement, indent=1))
        raise SystemExit(0)
    result = run(args.texts, args.rounds)
    atomic_write_json(RESULT, result)
    print(markdown(result))
    print(result["load_before"], "->", result["load_after"], sep="\n")

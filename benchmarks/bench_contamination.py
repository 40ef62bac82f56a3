"""Benchmark step 02 against the original notebook's contamination filter, on the same inputs, in one run.

Baseline: ``data_similarity.ipynb`` cell 3 of the original repository, re-implemented: embed every training row and
every test question with all-MiniLM-L6-v2 (no cache: the original re-embedded on every run), then for each test
question compute its cosine similarity to all training rows, take the argmax, and remove that one row when the
similarity is >= 0.8.

Ours: ``platypus_nb.contamination`` as the notebook calls it (embed with the on-disk cache, blocked search for every
pair, lexical matching, stage-one recall and the verifier, categories, outputs), once with an empty cache ("first
run") and once again ("cached run"); and once with ``contamination.verifier: none`` and its own empty cache (whole
texts only: step 02 before the verifier), so the verifier's extra cost on a first run is measured in the same run.

Inputs: the four leaderboard test sets in full (the original compared with those, not with the evaluation splits)
and a training file built from vendored rows (MATH test, TheoremQA, SciBench, as the tiny run's sources) with planted
copies of test questions, one of them copied twice. The embedding model is loaded before timing for both.

    .venv/bin/python benchmarks/bench_contamination.py [--max-test-items N] [--train-rows-per-source N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from platypus_nb import contamination as C  # noqa: E402
from platypus_nb.assets import data_file, embedding_model_path  # noqa: E402
from platypus_nb.benchmarks_data import read_benchmark  # noqa: E402
from platypus_nb.config import Config, load_config  # noqa: E402
from platypus_nb.contracts import read_training_rows  # noqa: E402
from platypus_nb.embeddings import EmbeddingCache, embed_texts  # noqa: E402
from platypus_nb.io import atomic_write_json, open_text, read_jsonl, write_jsonl  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "contamination.json"


def build_training_file(path: Path, per_source: int) -> dict[str, list[int]]:
    """Real rows from the tiny run's sources, plus planted copies; returns the planted rows' indices."""
    rows = []
    with open_text(data_file("theoremqa_test.json.gz")) as f:
        rows += [{"instruction": f"{r['Question']}\nRelevant Theorem: {r['theorem']}", "input": "",
                  "output": str(r["Answer"]), "data_source": "theoremqa"} for r in json.load(f)[:per_source]]
    with open_text(data_file("scibench/atkins.json.gz")) as f:
        rows += [{"instruction": r["problem_text"], "input": "", "output": r["answer_number"],
                  "data_source": "scibench"} for r in json.load(f)[:per_source]]
    rows += [{"instruction": r["problem"], "input": "", "output": r["solution"], "data_source": "MATH/PRM-800K"}
             for r in read_benchmark("math_test")[:per_source]]
    arc = C.load_test_set("arc_challenge", 1)[0]
    mmlu = C.load_test_set("mmlu", 1)[0]
    hellaswag = C.load_test_set("hellaswag", 3)[2]
    planted = {"copied_twice": [len(rows), len(rows) + 1], "diluted": [len(rows) + 2, len(rows) + 3]}
    rows += [{"instruction": arc.text, "input": "", "output": arc.answer, "data_source": "planted"},
             {"instruction": arc.text, "input": "", "output": "C", "data_source": "planted"},
             {"instruction": mmlu.text + "\n" + "\n".join(f"{l}. {c}" for l, c in zip("ABCD", mmlu.choices)),
              "input": "", "output": "B", "data_source": "planted"},
             {"instruction": "Complete the description with the most likely continuation.", "input": hellaswag.text,
              "output": hellaswag.answer, "data_source": "planted"}]
    write_jsonl(path, rows)
    return planted


def run_original(train_path: Path, benchmarks: list[str], max_items: int | None, model, threshold: float) -> dict:
    """The original notebook's loop: per test question, argmax over training rows, remove it at >= threshold."""
    from sentence_transformers import util

    start = time.perf_counter()
    rows = read_jsonl(train_path)
    items = C.load_test_items(benchmarks, max_items=max_items)
    train_emb = model.encode([f"{r['instruction']} {r['input']}" for r in rows], convert_to_tensor=True)
    test_emb = model.encode([i.text for i in items], convert_to_tensor=True)
    embedded = time.perf_counter()
    removed = set()
    for i in range(len(items)):
        sims = util.cos_sim(test_emb[i], train_emb)[0]
        best = int(torch.argmax(sims))
        if float(sims[best]) >= threshold:
            removed.add(best)
    kept = [r for i, r in enumerate(rows) if i not in removed]
    end = time.perf_counter()
    return {"seconds": end - start, "embedding_seconds": embedded - start, "search_and_rest_seconds": end - embedded,
            "removed": sorted(removed), "kept_rows": len(kept), "pairs_reported": len(removed)}


def run_ours(train_path: Path, cfg: Config, cache_root: Path, out_dir: Path) -> dict:
    """Step 02 as the notebook runs it, timed end to end (reading inputs to writing outputs)."""
    start = time.perf_counter()
    cc, ec = cfg.contamination, cfg.embeddings
    rows = read_training_rows(train_path)
    items = C.load_test_items(cc.benchmarks, cc.eval_splits, cc.extra_eval_sets, cc.max_test_items)
    train_texts, test_texts = [C.question_text(r) for r in rows], [i.text for i in items]
    cache = EmbeddingCache(ec.model, root=cache_root)
    if cc.verifier == "none":  # the whole texts only, as before the verifier
        pieces = None
        train_emb = embed_texts(train_texts, ec.model, ec.batch_size, cache, show_progress=False)
        test_emb = embed_texts(test_texts, ec.model, ec.batch_size, cache, show_progress=False)
    else:
        pieces = C.embed_pieces(train_texts, items, ec.model, ec.batch_size, cache, show_progress=False)
        train_emb, test_emb = pieces.train_whole, pieces.test_whole
    embedded = time.perf_counter()
    semantic = C.semantic_pairs(train_emb, test_emb, cc.threshold, ec.block_size)
    nearest, nearest_sim = C.nearest_training_rows(train_emb, test_emb, ec.block_size)
    lexical = C.lexical_pairs(train_texts, test_texts, cc.ngram_n, cc.lexical_min_words, cc.lexical_max_test_items)
    flagged = C.flag_pairs(rows, items, semantic, lexical, train_emb, test_emb, cc, {}, pieces)
    original = C.original_rule_removals(items, nearest, nearest_sim, cc.threshold, cc.benchmarks)
    clean, removed = C.split_rows(rows, flagged)
    C.write_outputs(out_dir, clean, flagged, C.summarize(rows, items, flagged, cc, {}, original))
    end = time.perf_counter()
    return {"seconds": end - start, "embedding_seconds": embedded - start, "search_and_rest_seconds": end - embedded,
            "removed": removed, "kept_rows": len(clean), "pairs_reported": len(flagged),
            "test_items": len(items), "train_rows": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-test-items", type=int, default=None, help="first N per test set (default: all)")
    parser.add_argument("--train-rows-per-source", type=int, default=120)
    args = parser.parse_args()
    benchmarks = ["arc_challenge", "hellaswag", "mmlu", "truthfulqa"]
    # Read once, before anything is timed (the original compared with the benchmark test strings only).
    cfg = load_config("tiny", {"contamination.benchmarks": benchmarks, "contamination.eval_splits": [],
                               "contamination.max_test_items": args.max_test_items})
    threshold = cfg.contamination.threshold

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_path = tmp / "train.jsonl"
        planted = build_training_file(train_path, args.train_rows_per_source)
        # Load the model before any timing, for both: the original's own instance, and ours (loaded once per
        # process) by embedding one text into a throwaway cache.
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(embedding_model_path("all-MiniLM-L6-v2"), device="cpu")
        embed_texts(["warm-up"], cache=EmbeddingCache("all-MiniLM-L6-v2", root=tmp / "warm"), show_progress=False)
        original = run_original(train_path, benchmarks, args.max_test_items, model, threshold)
        print(f"original loop: {original['seconds']:.1f} s", flush=True)
        off = load_config("tiny", {"contamination.benchmarks": benchmarks, "contamination.eval_splits": [],
                                   "contamination.max_test_items": args.max_test_items,
                                   "contamination.verifier": "none"})
        before = run_ours(train_path, off, tmp / "cache_off", tmp / "out0")
        print(f"ours without the verifier, first run: {before['seconds']:.1f} s", flush=True)
        first = run_ours(train_path, cfg, tmp / "cache", tmp / "out1")
        print(f"ours, first run: {first['seconds']:.1f} s", flush=True)
        cached = run_ours(train_path, cfg, tmp / "cache", tmp / "out2")
    load_after = os.getloadavg()

    def caught(removed: list[int]) -> dict:
        return {kind: sum(i in set(removed) for i in idx) for kind, idx in planted.items()}

    result = {
        "inputs": {"train_rows": first["train_rows"], "test_items": first["test_items"], "benchmarks": benchmarks,
                   "max_test_items": args.max_test_items, "threshold": threshold,
                   "planted": {k: len(v) for k, v in planted.items()}},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch_threads": torch.get_num_threads(), "loadavg_before": load_before,
                    "loadavg_after": load_after},
        "original_loop": run_summary(original, caught),
        "ours_verifier_off_first_run": run_summary(before, caught),
        "ours_first_run": run_summary(first, caught),
        "ours_cached_run": run_summary(cached, caught),
    }
    assert first["removed"] == cached["removed"], "a cached run must decide exactly as a first run"
    atomic_write_json(RESULTS, result)
    print(markdown_table(result))


def run_summary(run: dict, caught) -> dict:
    return {"seconds": round(run["seconds"], 2), "embedding_seconds": round(run["embedding_seconds"], 2),
            "search_and_rest_seconds": round(run["search_and_rest_seconds"], 2), "rows_removed": len(run["removed"]),
            "pairs_reported": run["pairs_reported"], "planted_removed": caught(run["removed"])}


def markdown_table(result: dict) -> str:
    inp = result["inputs"]
    load = result["machine"]
    lines = [f"{inp['train_rows']} training rows (4 planted copies: one question twice, two diluted) x "
             f"{inp['test_items']} test items ({', '.join(inp['benchmarks'])}), threshold {inp['threshold']}; "
             f"load average before/after {load['loadavg_before'][0]:.1f} / {load['loadavg_after'][0]:.1f}",
             "",
             "| method | seconds | of which embedding | rows removed | pairs reported | planted copies removed |",
             "|---|---|---|---|---|---|"]
    for key, name in (("original_loop", "original notebook loop (no cache)"),
                      ("ours_verifier_off_first_run", "ours, verifier off (as before), first run"),
                      ("ours_first_run", "ours, first run"), ("ours_cached_run", "ours, cached run")):
        r = result[key]
        planted = sum(r["planted_removed"].values())
        total = sum(inp["planted"].values())
        lines.append(f"| {name} | {r['seconds']:.1f} | {r.get('embedding_seconds', '-')} | {r['rows_removed']} | "
                     f"{r['pairs_reported']} | {planted} of {total} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

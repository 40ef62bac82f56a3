"""Detector quality of step 02 on the detector evaluation set, and the verifier's cost.

Three detectors on the same rows (data/contamination_detector_eval.jsonl.gz) against every item of the four
leaderboard test sets (26k, vectors from the embedding cache):

- ``paper``: the original notebook's rule (each test item's nearest training row, removed at cosine >= 0.8);
- ``step02_before``: step 02 with ``contamination.verifier: off`` (every pair at >= 0.8, lexical matching, the
  category rules);
- ``step02_verifier``: step 02 as configured (stage one recall + the evidence verifier).

A positive counts as found only when a pair with its own test item removes it. Precision, recall and F1 overall, per
benchmark, per kind and per split (dev: where the verifier's weights and threshold were chosen; heldout: not
looked at while choosing). ``--sweep`` prints F1 on dev for a range of verifier thresholds. ``--build`` rebuilds the
set from the vendored data and rewrites the file (then update data/checksums.json).

    .venv/bin/python benchmarks/bench_detector.py [--build] [--sweep]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from platypus_nb import contamination as C
from platypus_nb.config import load_config
from platypus_nb.contamination import detector_eval as D
from platypus_nb.contamination.verifier import embed_pieces, recall_candidates
from platypus_nb.embeddings import EmbeddingCache, embed_texts
from platypus_nb.io import read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
EVAL_FILE = ROOT / "data" / "contamination_detector_eval.jsonl.gz"
RESULT = ROOT / "benchmarks" / "results" / "detector.json"


def load_rows() -> list[dict]:
    return read_jsonl(EVAL_FILE)


def run(args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()
    cfg = load_config("tiny", {"contamination.review_file": None}).contamination
    off = load_config("tiny", {"contamination.review_file": None, "contamination.verifier": "off"}).contamination
    cache = EmbeddingCache("all-MiniLM-L6-v2")
    if args.build:
        rows = D.build_eval_set(lambda texts: embed_texts(texts, batch_size=16, cache=cache, show_progress=False))
        write_jsonl(EVAL_FILE.with_suffix(""), rows)
        with open(EVAL_FILE.with_suffix(""), "rb") as f, gzip.GzipFile(EVAL_FILE, "wb", mtime=0) as g:
            g.write(f.read())
        EVAL_FILE.with_suffix("").unlink()
    rows = load_rows()
    items = C.load_test_items(cfg.benchmarks)
    texts = [C.training_text(r) for r in rows]
    t0 = time.perf_counter()
    pieces = embed_pieces(texts, items, "all-MiniLM-L6-v2", 16, cache, show_progress=False)
    t_embed = time.perf_counter() - t0
    train_emb, test_emb = pieces.train_whole, pieces.test_whole
    t0 = time.perf_counter()
    semantic = C.semantic_pairs(train_emb, test_emb, cfg.threshold)
    lexical = C.lexical_pairs(texts, [i.text for i in items], cfg.ngram_n, cfg.lexical_min_words,
                              cfg.lexical_max_test_items)
    t_pairs = time.perf_counter() - t0
    t0 = time.perf_counter()
    before = C.flag_pairs(rows, items, semantic, lexical, train_emb, test_emb, off)
    t_before = time.perf_counter() - t0
    t0 = time.perf_counter()
    after = C.flag_pairs(rows, items, semantic, lexical, train_emb, test_emb, cfg, pieces=pieces)
    t_after = time.perf_counter() - t0
    nearest, nearest_sim = C.nearest_training_rows(train_emb, test_emb)
    paper = C.original_rule_removals(items, nearest, nearest_sim, cfg.threshold, cfg.benchmarks)
    # the paper's rule removes a row for the test item it is nearest to
    paper_with: dict[int, set[str]] = {}
    for t, (r, s) in enumerate(zip(nearest, nearest_sim)):
        if s >= cfg.threshold:
            paper_with.setdefault(int(r), set()).add(items[t].test_id)

    def removing(flagged) -> tuple[set[int], dict[int, set[str]]]:
        gone = flagged[flagged["removed"]]
        with_ids: dict[int, set[str]] = {}
        for r, t in zip(gone["train_index"], gone["test_id"]):
            with_ids.setdefault(int(r), set()).add(t)
        return set(with_ids), with_ids

    detectors = {"paper": (paper, paper_with), "step02_before": removing(before), "step02_verifier": removing(after)}
    result: dict = {"rows": len(rows), "test_items": len(items), "detectors": {}}
    groups = {"all": lambda r: True}
    groups |= {f"split={s}": (lambda r, s=s: r["split"] == s) for s in ("dev", "heldout")}
    groups |= {f"benchmark={b}": (lambda r, b=b: r["benchmark"] == b) for b in sorted({r["benchmark"] for r in rows})}
    groups |= {f"kind={k}": (lambda r, k=k: r["kind"] == k) for k in D.KINDS}
    for name, (removed, removed_with) in detectors.items():
        result["detectors"][name] = {}
        for group, keep in groups.items():
            idx = [i for i, r in enumerate(rows) if keep(r)]
            sub = [rows[i] for i in idx]
            remap = {old: new for new, old in enumerate(idx)}
            result["detectors"][name][group] = D.scores(
                sub, {remap[i] for i in removed if i in remap},
                {remap[i]: v for i, v in removed_with.items() if i in remap})
    candidates = int((after["method"] != "source").sum())
    recalled = recall_candidates(pieces, cfg.recall_top_k, cfg.recall_floor)
    verified = len(pd.concat([semantic, lexical, recalled])[["train_index", "test_index"]].drop_duplicates())
    result["timing"] = {
        "embed_pieces_s": round(t_embed, 2), "pairs_s": round(t_pairs, 2),
        "flag_without_verifier_s": round(t_before, 3), "flag_with_verifier_s": round(t_after, 3),
        "pairs_verified": verified, "pairs_kept": candidates,
        "verifier_ms_per_pair": round(1000 * (t_after - t_before) / max(1, verified), 3),
        "load_average_before": load_before, "load_average_after": os.getloadavg()}
    if args.sweep:
        low = load_config("tiny", {"contamination.review_file": None,
                                   "contamination.verifier_threshold": 0.01}).contamination
        everything = C.flag_pairs(rows, items, semantic, lexical, train_emb, test_emb, low, pieces=pieces)
        sweep = {}
        for theta in np.arange(0.9, 2.01, 0.05):
            f = everything.copy()
            gray = f["category"] == "gray_area"
            f["removed"] = (f["category"] == "duplicate") & ~f["benchmark"].isin(["eval_split_source"]) \
                | gray & (f["verifier_score"] >= theta)
            removed, with_ids = removing(f)
            dev = [i for i, r in enumerate(rows) if r["split"] == "dev"]
            remap = {old: new for new, old in enumerate(dev)}
            sweep[f"{theta:.2f}"] = D.scores([rows[i] for i in dev], {remap[i] for i in removed if i in remap},
                                             {remap[i]: v for i, v in with_ids.items() if i in remap})
        result["sweep_dev"] = sweep
        for k, v in sweep.items():
            print(k, f"P {v['precision']:.3f} R {v['recall']:.3f} F1 {v['f1']:.3f} neg {v['negatives_removed']:.3f}")
    if args.judge:
        # candidate pairs the evidence verifier had to decide (not settled by the lexical or number rules)
        low = load_config("tiny", {"contamination.review_file": None,
                                   "contamination.verifier_threshold": 0.01}).contamination
        everything = C.flag_pairs(rows, items, semantic, lexical, train_emb, test_emb, low, pieces=pieces)
        decided = everything[(everything["category"] == "gray_area")]
        rng = np.random.default_rng(0)
        pick = decided.iloc[rng.permutation(len(decided))[:args.judge]]
        labels = [int(rows[r]["label"] == 1 and rows[r]["test_id"] == t)
                  for r, t in zip(pick["train_index"], pick["test_id"])]
        result["smollm2_judge"] = judge(list(zip(pick["train_text"], pick["test_text"], labels)))
        evidence_pred = pick["verifier_score"].to_numpy() >= cfg.verifier_threshold
        lab = np.array(labels)
        tp, fp = int((evidence_pred & (lab == 1)).sum()), int((evidence_pred & (lab == 0)).sum())
        fn = int((~evidence_pred & (lab == 1)).sum())
        result["evidence_on_judge_pairs"] = {"f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0, "tp": tp, "fp": fp,
                                             "fn": fn}
        print(result["smollm2_judge"], result["evidence_on_judge_pairs"])
    return result


def judge(pairs: list[tuple[str, str, int]]) -> dict:
    """SmolLM2-135M-Instruct as a judge: log P("Yes") - log P("No") after a same-question prompt, per pair; the
    best F1 over thresholds on these pairs (an upper bound for this judge) and its time per pair."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from platypus_nb.assets import DEFAULT_BASE_MODEL, resolve_model

    path = resolve_model(DEFAULT_BASE_MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    yes, no = tok.encode("Yes", add_special_tokens=False)[0], tok.encode("No", add_special_tokens=False)[0]
    margins = []
    t0 = time.perf_counter()
    for train_text, test_text, _ in pairs:
        prompt = tok.apply_chat_template([{"role": "user", "content": (
            f"Question A: {train_text[:1200]}\n\nQuestion B: {test_text[:1200]}\n\nDo A and B ask the same "
            f"question (perhaps in other words)? Answer Yes or No.")}], tokenize=False, add_generation_prompt=True)
        with torch.no_grad():
            logits = model(**tok(prompt, return_tensors="pt")).logits[0, -1]
        margins.append(float(torch.log_softmax(logits, -1)[yes] - torch.log_softmax(logits, -1)[no]))
    per_pair = (time.perf_counter() - t0) / max(1, len(pairs))
    labels = np.array([p[2] for p in pairs])
    best = {"f1": 0.0}
    for theta in sorted(set(margins)):
        pred = np.array(margins) >= theta
        tp, fp, fn = int((pred & (labels == 1)).sum()), int((pred & (labels == 0)).sum()), \
            int((~pred & (labels == 1)).sum())
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        if f1 > best["f1"]:
            best = {"f1": f1, "threshold": theta, "tp": tp, "fp": fp, "fn": fn}
    return {"pairs": len(pairs), "positives": int(labels.sum()), "best_f1": best, "s_per_pair": round(per_pair, 3)}


def table(result: dict) -> str:
    lines = ["| group | rows (pos / neg) | paper P / R / F1 | step 02 before P / R / F1 | step 02 + verifier "
             "P / R / F1 | negatives removed (before / verifier) |", "|---|---|---|---|---|---|"]
    d = result["detectors"]
    for group, s in d["step02_verifier"].items():
        cells = [f"{d[n][group]['precision']:.3f} / {d[n][group]['recall']:.3f} / {d[n][group]['f1']:.3f}"
                 .replace("nan", "–") for n in ("paper", "step02_before", "step02_verifier")]
        neg = f"{d['step02_before'][group]['negatives_removed']:.1%} / {s['negatives_removed']:.1%}".replace("nan%",
                                                                                                           "–")
        lines.append(f"| {group} | {s['positives']} / {s['negatives']} | " + " | ".join(cells) + f" | {neg} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", action="store_true", help="rebuild the evaluation set from data/")
    parser.add_argument("--sweep", action="store_true", help="F1 on dev over a range of verifier thresholds")
    parser.add_argument("--judge", type=int, default=0, help="also measure SmolLM2 as a judge on N candidate pairs")
    result = run(parser.parse_args())
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(table(result))
    print(json.dumps(result["timing"], indent=1))

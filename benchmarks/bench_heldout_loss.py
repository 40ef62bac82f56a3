"""Step 05 benchmark: the held-out loss, one unpadded row per forward pass against padded batches.

Baseline: what step 05 did before, rows sorted longest first in batches of ``evaluate.batch_size`` (8), right-padded
with an attention mask, logits at every position. Now (``heldout_loss.row_losses``): one row per forward pass, no
padding and no mask, logits only where a response token is predicted (``logits_to_keep``). Both score the tiny run's
own held-out rows (``02_contamination/heldout.jsonl`` and the partners' rows, one call per domain as step 05 makes
them) under the tiny run's models (``04_merge/models.json``, loaded as step 05 loads them), taking turns model by
model with the order alternating.
Accuracy: each row's loss against a float64 forward pass of the same row (no mask, every logit), on the first model.
The machine's load average is recorded before and after.

Run after ``make reproduce``: ``.venv/bin/python benchmarks/bench_heldout_loss.py [--models N]`` (about 3 minutes on
2 idle cores for all 6 models). Writes ``benchmarks/results/heldout_loss.json`` and prints the table of
``benchmarks/README.md``'s "Held-out loss" section.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "heldout_loss.json"


def padded_batches(model: Any, examples: Sequence[dict], batch_size: int, pad_token_id: int) -> list[tuple[int, float]]:
    """The baseline: step 05's held-out loss before (batches longest first, right-padded, attention mask)."""
    import torch
    import torch.nn.functional as F

    from platypus_nb.finetune.data import IGNORE_INDEX, n_targets

    order = sorted((i for i, e in enumerate(examples) if n_targets(e) > 0),
                   key=lambda i: -len(examples[i]["input_ids"]))
    out: list[tuple[int, float]] = [(0, math.nan)] * len(examples)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[start:start + batch_size]]
            width = max(len(e["input_ids"]) for e in batch)
            pads = [width - len(e["input_ids"]) for e in batch]
            ids = torch.tensor([e["input_ids"] + [pad_token_id] * p for e, p in zip(batch, pads)])
            mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * p for e, p in zip(batch, pads)])
            labels = torch.tensor([e["shift_labels"] + [IGNORE_INDEX] * p for e, p in zip(batch, pads)])
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
            keep = labels != IGNORE_INDEX
            for j, i in enumerate(order[start:start + batch_size]):
                out[i] = (int(keep[j].sum()), float(nll[j][keep[j]].mean()))
    return out


def float64_losses(model: Any, examples: Sequence[dict]) -> list[float]:
    import torch
    import torch.nn.functional as F

    from platypus_nb.finetune.data import IGNORE_INDEX

    wide = copy.deepcopy(model).double()
    out = []
    with torch.inference_mode():
        for e in examples:
            labels = torch.tensor(e["shift_labels"])
            keep = labels != IGNORE_INDEX
            logits = wide(input_ids=torch.tensor([e["input_ids"]])).logits[0]
            out.append(float(F.cross_entropy(logits[keep], labels[keep])) if keep.any() else math.nan)
    return out


def run(n_models: int) -> dict:
    import torch

    from platypus_nb import heldout_loss as H
    from platypus_nb.assets import load_tokenizer
    from platypus_nb.config import load_config
    from platypus_nb.evaluate import load_for_eval, quiet_library_progress, read_models

    torch.set_num_threads(2)
    cfg = load_config("tiny")
    run_dir = cfg.run_dir()
    models_file = run_dir / "04_merge" / "models.json"
    if not models_file.is_file():
        raise SystemExit(f"{models_file} does not exist: run `make reproduce` (the tiny run) first")
    sets, _ = H.heldout_sets(cfg, run_dir / "02_contamination" / "heldout.jsonl")
    tokenizer = load_tokenizer(cfg.model.base)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    domains = H.tokenize_sets(sets, tokenizer, cfg.finetune)
    examples = [e for rows in domains.values() for e in rows]
    # each domain's rows in one call, as step 05 scores them (heldout_loss.heldout_losses)
    methods = {"padded batches of 8 (before)": lambda m: [x for rows in domains.values() for x in padded_batches(
                   m, rows, cfg.evaluate.batch_size, pad)],
               "one row per pass, targets only (now)": lambda m: [x for rows in domains.values()
                                                                  for x in H.row_losses(m, rows)]}
    wall, cpu = dict.fromkeys(methods, 0.0), dict.fromkeys(methods, 0.0)
    errors: dict[str, float] = {}
    load_before = os.getloadavg()
    for k, entry in enumerate(read_models(models_file)[:n_models]):
        with quiet_library_progress():
            model, _ = load_for_eval(entry, cfg.evaluate)
        names = list(methods) if k % 2 == 0 else list(methods)[::-1]
        got = {}
        for name in names:
            c0, w0 = time.process_time(), time.perf_counter()
            got[name] = methods[name](model)
            wall[name] += time.perf_counter() - w0
            cpu[name] += time.process_time() - c0
        if k == 0:
            reference = float64_losses(model, examples)
            errors = {name: max(abs(loss - ref) for (_, loss), ref in zip(losses, reference) if not math.isnan(ref))
                      for name, losses in got.items()}
        print(f"{entry.name}: " + ", ".join(f"{n} {wall[n]:.1f} s" for n in methods), flush=True)
    baseline = list(methods)[0]
    return {"models": min(n_models, len(read_models(models_file))), "rows": len(examples),
            "tokens": sum(len(e["input_ids"]) for e in examples),
            "target_tokens": sum(sum(t != -100 for t in e["shift_labels"]) for e in examples),
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "methods": {n: {"wall_s": round(wall[n], 1), "cpu_s": round(cpu[n], 1),
                            "speedup_wall": round(wall[baseline] / wall[n], 2),
                            "speedup_cpu": round(cpu[baseline] / cpu[n], 2),
                            "max_abs_diff_vs_float64": errors[n]} for n in methods}}


def markdown(result: dict) -> str:
    lines = ["| method | wall s | CPU s | speed-up wall / CPU | max abs loss difference to float64 (first model) |",
             "|---|---|---|---|---|"]
    for name, m in result["methods"].items():
        lines.append(f"| {name} | {m['wall_s']} | {m['cpu_s']} | {m['speedup_wall']}x / {m['speedup_cpu']}x | "
                     f"{m['max_abs_diff_vs_float64']:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=6, help="how many of the tiny run's models to score")
    result = run(parser.parse_args().models)
    from platypus_nb.io import atomic_write_text

    atomic_write_text(RESULTS, json.dumps(result, indent=1) + "\n")
    print(markdown(result))

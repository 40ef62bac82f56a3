"""Step 05 benchmark: evaluation throughput of our settings against lm-eval's defaults, same model and questions.

lm-eval's ``HFLM`` defaults to ``batch_size=1`` and the checkpoint's dtype (``dtype="auto"``; float32 for the
converted SmolLM2). Step 05 batches requests (``evaluate.batch_size``) and can score in bfloat16
(``evaluate.dtype``). Every variant scores the real SmolLM2-135M on the same generated tasks (the chosen config's
tasks, shots, ``limit`` and MMLU subjects), in one process, variants taking turns task by task; per task we record
the wall time, the number of loglikelihood requests lm-eval ran and the score, so that a speed-up that changed the
scores shows. The machine's load average is recorded before and after: the cores may be shared.

Run: ``.venv/bin/python benchmarks/bench_evaluate.py [--limit N]`` (about 5 minutes on 2 idle cores at 16). Writes
``benchmarks/results/evaluate.json`` and prints the markdown table of ``benchmarks/README.md``'s "Evaluation"
section.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "evaluate.json"
# (label, batch_size, dtype); None takes the config's value. The first is lm-eval's default.
VARIANTS = [("lm-eval default", 1, "auto"), ("batched, float32", None, "float32"),
            ("batched, bfloat16", None, "bfloat16")]


def run_variants(cfg, plan, tasks, model) -> list[dict]:
    """Load every variant's model, then score task by task, variants in turn, so that load from other work on the
    machine falls on all variants alike rather than on whichever ran last."""
    from platypus_nb.evaluate import load_for_eval, make_lm, score_task

    variants = []
    for label, batch_size, dtype in VARIANTS:
        ecfg = dataclasses.replace(cfg.evaluate, batch_size=batch_size or cfg.evaluate.batch_size, dtype=dtype)
        lm, tokenizer = load_for_eval(model, ecfg)
        variants.append({"label": label, "batch_size": ecfg.batch_size, "dtype": ecfg.dtype, "tasks": {},
                         "chosen": (ecfg.batch_size, ecfg.dtype) == (cfg.evaluate.batch_size, cfg.evaluate.dtype),
                         "lm": make_lm(lm, tokenizer, ecfg)})
    for task in plan.task_names:
        for v in variants:
            s = score_task(v["lm"], task, plan, tasks, cfg.run.seed)
            v["tasks"][task] = {"seconds": s["seconds"], "requests": s["requests"], "score": s["score"],
                                "requests_per_s": s["requests"] / s["seconds"]}
            print(f"  {v['label']:>18} {task:>15}: {s['seconds']:7.1f} s, {s['requests']} requests", flush=True)
    for v in variants:
        del v["lm"]
        v["seconds"] = sum(t["seconds"] for t in v["tasks"].values())
        v["requests"] = sum(t["requests"] for t in v["tasks"].values())
        v["requests_per_s"] = v["requests"] / v["seconds"]
    return variants


def markdown(result: dict) -> str:
    variants = result["variants"]
    base = variants[0]
    tasks = list(base["tasks"])
    head = ("| settings | batch | dtype | " + " | ".join(f"{t} s" for t in tasks)
            + " | total s | requests/s | speed-up | max score change |")
    lines = [head, "|" + "---|" * (len(tasks) + 7)]
    for v in variants:
        change = max(abs(v["tasks"][t]["score"] - base["tasks"][t]["score"]) * 100 for t in tasks)
        cells = " | ".join(f"{v['tasks'][t]['seconds']:.1f}" for t in tasks)
        chosen = " (chosen)" if v.get("chosen") else ""
        lines.append(f"| {v['label']}{chosen} | {v['batch_size']} | {v['dtype']} | {cells} | {v['seconds']:.1f} | "
                     f"{v['requests_per_s']:.2f} | {base['seconds'] / v['seconds']:.2f}x | {change:.2f} pts |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help="config whose evaluate section sets tasks, shots, limit")
    parser.add_argument("--model", default="smollm2-135m", help="model folder or name (default: the real base)")
    parser.add_argument("--limit", type=int, default=None,
                        help="questions per task (per MMLU subject) instead of the config's evaluate.limit: more "
                             "requests than the tiny config's few give steadier timings")
    args = parser.parse_args()

    import torch

    from platypus_nb.config import load_config
    from platypus_nb.evaluate import ModelToEvaluate, load_tasks, prepare_tasks
    from platypus_nb.io import atomic_write_json

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    cfg = load_config(args.config, {} if args.limit is None else {"evaluate.limit": args.limit})
    model = ModelToEvaluate(name="bench", path=args.model, adapter=None, role="base", compare_to=None,
                            stands_in_for="")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        plan = prepare_tasks(cfg.evaluate, Path(tmp) / "tasks")
        tasks = load_tasks(plan)
        variants = run_variants(cfg, plan, tasks, model)
    result = {
        "benchmark": "evaluate",
        "model": args.model,
        "config": args.config,
        "settings": {"tasks": cfg.evaluate.tasks, "num_fewshot": plan.num_fewshot, "limits": plan.limits,
                     "mmlu_subjects": [n.removeprefix("mmlu_") for n in plan.task_names.get("mmlu", [])]},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "load_average_1_5_15_min_before": load_before, "load_average_after": os.getloadavg()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "variants": variants,
    }
    atomic_write_json(RESULTS, result)
    print(markdown(result))


if __name__ == "__main__":
    main()

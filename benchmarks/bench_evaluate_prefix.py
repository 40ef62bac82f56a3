"""Step 05 benchmark: the prefix-caching scorer against plain lm-eval ``HFLM`` on the same requests.

Both scorers wrap the same loaded SmolLM2-135M (the config's dtype and batch size, no BOS, as step 05 runs them).
Per task, lm-eval builds the requests once (the config's shots; ``--limit`` questions per task, per MMLU subject;
few-shot seed 1234), then the two scorers take turns on the identical list (``--repeats`` times, alternating which
goes first, so that load from other work falls on both alike). Recorded per task: requests, wall and CPU seconds,
requests/s for each, the speed-up and the largest absolute difference of any log-likelihood and whether any greedy
flag differs. The load average is recorded before and after: the cores may be shared, so compare ratios, not seconds.

Run: ``.venv/bin/python benchmarks/bench_evaluate_prefix.py [--limit N] [--config NAME]`` (``--limit 24``: the tiny
config's own setting, the first table of ``benchmarks/README.md``; ``--limit 4``: its second, the setting first
measured). Writes ``benchmarks/results/evaluate_prefix.json`` (``evaluate_prefix_<config>_limit<N>.json`` for other
settings) and prints the markdown table of ``benchmarks/README.md``'s "Prefix caching" section.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_requests(task, limit):
    """lm-eval's own loglikelihood Instances of one task object, as ``simple_evaluate`` would build them."""
    from platypus_nb.evaluate import LEADERBOARD_FEWSHOT_SEED

    task.set_fewshot_seed(LEADERBOARD_FEWSHOT_SEED)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return list(task.instances)


def time_scorer(lm, requests):
    """Wall seconds, CPU seconds of this process (all threads) and the answers of one pass over the requests.

    CPU seconds are the steadier measure on shared cores: waiting for a core counts in wall time only.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    out = lm.loglikelihood([r for r in requests])
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--limit", type=int, default=None, help="questions per task (default: the config's)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch

    from platypus_nb.config import load_config
    from platypus_nb.evaluate import ModelToEvaluate, load_for_eval, load_tasks, make_lm, prepare_tasks
    from platypus_nb.evaluate import quiet_library_progress
    from platypus_nb.io import atomic_write_json
    from platypus_nb.prefix_lm import PrefixCachingHFLM

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    cfg = load_config(args.config, {} if args.limit is None else {"evaluate.limit": args.limit})
    ecfg = cfg.evaluate
    load_before = os.getloadavg()
    tasks_result = {}
    with tempfile.TemporaryDirectory() as tmp, quiet_library_progress():
        plan = prepare_tasks(ecfg, Path(tmp) / "tasks")
        tasks = load_tasks(plan)
        model = ModelToEvaluate("bench", cfg.model.base, None, "base", None, "")
        lm, tokenizer = load_for_eval(model, ecfg)
        plain = make_lm(lm, tokenizer, ecfg, scorer="hflm")
        fast = make_lm(lm, tokenizer, ecfg, scorer="prefix_cache")
        assert type(fast) is PrefixCachingHFLM
        for task, objs in tasks.by_task.items():
            requests = [r for obj in objs for r in build_requests(obj, plan.limits[task])]
            times = {"hflm": [], "prefix_cache": []}
            cpu = {"hflm": [], "prefix_cache": []}
            outs = {}
            for rep in range(args.repeats):
                order = [("hflm", plain), ("prefix_cache", fast)]
                for name, scorer in (order if rep % 2 == 0 else order[::-1]):
                    seconds, cpu_seconds, outs[name] = time_scorer(scorer, requests)
                    times[name].append(seconds)
                    cpu[name].append(cpu_seconds)
            diff = max(abs(a[0] - b[0]) for a, b in zip(outs["hflm"], outs["prefix_cache"]))
            greedy_differs = any(a[1] != b[1] for a, b in zip(outs["hflm"], outs["prefix_cache"]))
            best = {k: min(v) for k, v in times.items()}
            best_cpu = {k: min(v) for k, v in cpu.items()}
            tasks_result[task] = {"requests": len(requests), "seconds": times, "best_seconds": best,
                                  "cpu_seconds": cpu, "best_cpu_seconds": best_cpu,
                                  "requests_per_s": {k: len(requests) / v for k, v in best.items()},
                                  "speedup": best["hflm"] / best["prefix_cache"],
                                  "cpu_speedup": best_cpu["hflm"] / best_cpu["prefix_cache"],
                                  "max_abs_loglikelihood_diff": diff, "greedy_flag_differs": greedy_differs}
            print(f"{task:>15}: {len(requests)} requests, HFLM {best['hflm']:.1f} s, prefix cache "
                  f"{best['prefix_cache']:.1f} s ({tasks_result[task]['speedup']:.2f}x wall, "
                  f"{tasks_result[task]['cpu_speedup']:.2f}x CPU), max |diff| {diff:.2e}", flush=True)
    total = {k: sum(t["best_seconds"][k] for t in tasks_result.values()) for k in ("hflm", "prefix_cache")}
    total_cpu = {k: sum(t["best_cpu_seconds"][k] for t in tasks_result.values()) for k in ("hflm", "prefix_cache")}
    n = sum(t["requests"] for t in tasks_result.values())
    result = {
        "benchmark": "evaluate_prefix", "model": cfg.model.base, "config": args.config,
        "settings": {"num_fewshot": plan.num_fewshot, "limits": plan.limits, "dtype": ecfg.dtype,
                     "batch_size": ecfg.batch_size,
                     "mmlu_subjects": [t.removeprefix("mmlu_") for t in plan.task_names.get("mmlu", [])]},
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "load_average_1_5_15_min_before": load_before, "load_average_after": os.getloadavg()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tasks": tasks_result,
        "total": {"requests": n, "best_seconds": total, "best_cpu_seconds": total_cpu,
                  "requests_per_s": {k: n / v for k, v in total.items()},
                  "speedup": total["hflm"] / total["prefix_cache"],
                  "cpu_speedup": total_cpu["hflm"] / total_cpu["prefix_cache"]},
    }
    name = "evaluate_prefix.json" if args.config == "tiny" and args.limit == 4 else \
        f"evaluate_prefix_{args.config}_limit{args.limit}.json"
    atomic_write_json(ROOT / "benchmarks" / "results" / name, result)
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = ["| task | requests | HFLM s | prefix cache s | HFLM req/s | prefix cache req/s | speed-up (wall) "
             "| HFLM CPU s | prefix cache CPU s | speed-up (CPU) | max abs loglik diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = {**result["tasks"], "total": {**result["total"], "max_abs_loglikelihood_diff": max(
        t["max_abs_loglikelihood_diff"] for t in result["tasks"].values())}}
    for task, t in rows.items():
        s, r, c = t["best_seconds"], t["requests_per_s"], t["best_cpu_seconds"]
        lines.append(f"| {task} | {t['requests']} | {s['hflm']:.1f} | {s['prefix_cache']:.1f} | {r['hflm']:.2f} | "
                     f"{r['prefix_cache']:.2f} | {t['speedup']:.2f}x | {c['hflm']:.1f} | {c['prefix_cache']:.1f} | "
                     f"{t['cpu_speedup']:.2f}x | {t['max_abs_loglikelihood_diff']:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

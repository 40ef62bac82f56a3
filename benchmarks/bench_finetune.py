"""Step 03 benchmark: fine-tuning throughput of the 2023 recipe, TRL's padding-free mode, HF's flattening collator,
the package's former step loop and the Trainer engine with our plug-ins, in one run.

Variants, all on the same rows in the same order per optimizer step, the same model and LoRA initialisation (loaded
by the same code), the same hyperparameters and the same loss (``loss_weighting: token``, the mean over a global
batch's target tokens, which HF Trainer >= 4.46 and TRL optimise), no warm-up (so that every step after the first
has updated the adapter and the loss comparison means something):
- **2023 recipe**: the original ``finetune.py`` approach on today's HF ``Trainer``: micro-batch 1 with gradient
  accumulation, each micro-batch padded by ``DataCollatorForSeq2Seq(pad_to_multiple_of=8)``, ``adamw_torch``.
- **TRL 1.16 ``SFTTrainer``, ``padding_free=True``**: the global batch's examples flattened into one row per
  forward (position ids restart per example), the same pre-tokenized rows and labels.
- **HF Trainer + ``DataCollatorWithFlattening``**: the same flattening with transformers' own collator.
- **former loop**: ``benchmarks/baselines/own_loop.py``, the package's own step loop before the Trainer (git
  7b56f7e): packed rows attended one example at a time, the LM head on target positions only.
- **Trainer engine**: ``platypus_nb.finetune.train_lora``, the Trainer with the recipe's plug-ins (the same packing,
  attention and loss as the former loop).

Every variant runs ``--steps`` optimizer steps from the same initialisation, ``--rounds`` times, interleaved in a
rotated order; the first step of each block is not timed.

Time: the machine is shared and its load swings within minutes, so throughput is tokens per **CPU second** of the
process, which counts the work and not the waiting. With one thread (the default) that is clean; with ``--threads
2`` it includes OpenMP threads spinning while they wait for each other. Wall-clock tokens/s are reported beside it.

MFU: model FLOPs (``platypus_nb.finetune.model.training_flops_per_token``: forward + input-gradient backward of
the frozen base, full backward of LoRA, attention, the LM head on target tokens; padding is not counted) per CPU
second, divided by the best GEMM rate per CPU second in the compute dtype measured in the same run; with one thread,
the fraction of one core's peak. On a GPU, ``--precision bf16`` and ``--precision nf4`` give the table for a bf16 and
a 4-bit base (time is then wall-clock: read those columns).

Run: ``.venv/bin/python benchmarks/bench_finetune.py [--threads 2]`` (about 10 minutes on 2 idle cores). Writes the
run into ``benchmarks/results/finetune.json`` (one entry per thread count) and prints the markdown table of
``benchmarks/README.md``'s fine-tuning section.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig

from platypus_nb.assets import DEFAULT_BASE_MODEL, load_tokenizer, resolve_model
from platypus_nb.benchmarks_data import read_benchmark
from platypus_nb.config import FinetuneConfig
from platypus_nb.finetune import train_lora
from platypus_nb.finetune.data import IGNORE_INDEX, count_steps, n_targets, plan_steps, tokenize_rows
from platypus_nb.finetune.model import (lm_head_flops_per_target, load_lora_model, resolve_precision,
                                        training_flops_per_token)
from platypus_nb.io import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines.own_loop import train_own_loop  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "finetune.json"
SEED = 42


def bench_rows(n: int) -> list[dict]:
    """Real MATH test problems with worked solutions, as step 01 formats them (Alpaca rows without input)."""
    problems = read_benchmark("math_test")[:n]
    return [{"instruction": p["problem"], "input": "", "output": p["solution"]} for p in problems]


def matmul_peak_flops(dtype: torch.dtype, repeats: int = 5) -> float:
    """The best GEMM rate in the training's compute dtype: per CPU second of this process on the CPU (the same
    clock as the training throughput, so that other work on the machine cancels out), per second on a GPU."""
    cuda = torch.cuda.is_available()
    clock = time.perf_counter if cuda else time.process_time
    sizes = (4096, 8192) if cuda else (1024, 1536, 2048)
    best = 0.0
    for n in sizes:
        a, b = (torch.randn(n, n, dtype=dtype, device="cuda" if cuda else "cpu") for _ in range(2))
        a @ b
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
            t = clock()
            a @ b
            if cuda:
                torch.cuda.synchronize()
            best = max(best, 2 * n ** 3 / (clock() - t))
    return best


# ------------------------------------------------------------------------------------------------ variants


def run_engine(rows: list[dict], cfg: FinetuneConfig, model: str, steps: int, work: Path) -> list[dict]:
    result = train_lora(rows, cfg, model, Path(tempfile.mkdtemp(dir=work)), SEED, max_steps=steps)
    return [{"seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"], "tokens": r["tokens"],
             "target_tokens": r["target_tokens"], "token_loss": r["token_loss"], "forwards": r["forwards_per_process"]}
            for r in result.metrics["loss_per_step"]]


def run_own_loop(rows: list[dict], cfg: FinetuneConfig, model: str, steps: int, work: Path) -> list[dict]:
    return [{**s, "forwards": 1} for s in train_own_loop(rows, cfg, model, steps, SEED)]


def run_hf(rows: list[dict], cfg: FinetuneConfig, model_name: str, steps: int, work: Path, kind: str) -> list[dict]:
    """The Trainer-based variants: ``padded`` (the 2023 recipe, micro-batch ``cfg.micro_batch_size``), ``flattening``
    (``DataCollatorWithFlattening``) and ``trl`` (``SFTTrainer``, ``padding_free=True``), the last two with the
    whole global batch in one flattened forward."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, Trainer, TrainerCallback
    from transformers import TrainingArguments
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(model_name)
    examples, _ = tokenize_rows(rows, tokenizer, cfg)
    plan = plan_steps(len(examples), steps, cfg.global_batch_size, SEED)
    ordered = [examples[i] for step in plan for i in step]  # our plan's order, read sequentially by the Trainer
    records = [{"input_ids": e["input_ids"], "labels": [IGNORE_INDEX] + e["shift_labels"][:-1]}  # the model shifts
               for e in ordered]
    cuda = torch.cuda.is_available()
    precision = resolve_precision(cfg, cuda)
    model = load_lora_model(model_name, cfg, precision, torch.device("cuda" if cuda else "cpu"), SEED)
    per_forward = cfg.micro_batch_size if kind == "padded" else cfg.global_batch_size
    common = dict(
        output_dir=str(Path(tempfile.mkdtemp(dir=work))), per_device_train_batch_size=per_forward,
        gradient_accumulation_steps=cfg.global_batch_size // per_forward, warmup_steps=cfg.warmup_steps,
        max_steps=steps, learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler,
        weight_decay=cfg.weight_decay, optim="adamw_torch", logging_steps=1, save_strategy="no", report_to=[],
        seed=SEED, train_sampling_strategy="sequential", use_cpu=not cuda,
        bf16=precision["mixed_precision"] == "bf16", fp16=precision["mixed_precision"] == "fp16",
        dataloader_num_workers=0, disable_tqdm=True, log_level="error")
    steps_log: list[dict] = []

    def recorded(base: type) -> type:
        class Recorded(base):
            """Each micro-batch's share of the step's mean token loss, at full precision (the log rounds)."""

            def training_step(self, model, inputs, num_items_in_batch=None):
                loss = super().training_step(model, inputs, num_items_in_batch)
                steps_log[-1]["token_loss"] += float(loss)
                return loss
        return Recorded

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            steps_log.append({"token_loss": 0.0, "started": (time.perf_counter(), time.process_time())})

        def on_step_end(self, args, state, control, **kw):
            wall, cpu = steps_log[-1].pop("started")
            steps_log[-1].update(seconds=time.perf_counter() - wall, cpu_seconds=time.process_time() - cpu)

    dataset = Dataset.from_list(records)
    if kind == "trl":
        trainer = recorded(SFTTrainer)(model=model, args=SFTConfig(**common, padding_free=True, max_length=None),
                                       train_dataset=dataset, processing_class=tokenizer, callbacks=[StepTimer()])
    else:
        collator = (DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, padding=True, return_tensors="pt")
                    if kind == "padded" else DataCollatorWithFlattening())
        trainer = recorded(Trainer)(model=model, args=TrainingArguments(**common), train_dataset=dataset,
                                    data_collator=collator, callbacks=[StepTimer()])
    trainer.train()
    for s, step in zip(steps_log, plan):
        s["tokens"] = sum(len(examples[i]["input_ids"]) for i in step)
        s["target_tokens"] = sum(n_targets(examples[i]) for i in step)
        s["forwards"] = cfg.global_batch_size // per_forward
    return steps_log


RUNNERS = {"own": run_own_loop, "engine": run_engine}


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per block (the first is not timed)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--global-batch", type=int, default=4)
    p.add_argument("--cutoff", type=int, default=2048,
                   help="longer than every row (as the paper's 4096 is for most Open-Platypus rows)")
    p.add_argument("--model", default=DEFAULT_BASE_MODEL, help="a Llama-family model folder (default: SmolLM2-135M)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: with one thread, CPU time measures the work alone, whatever "
                        "else shares the machine; 0 keeps torch's default of one per core)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "nf4"],
                   help="base precision for every variant (bf16 / nf4 are meant for a GPU)")
    p.add_argument("--out", type=Path, default=RESULTS, help="the results file (default: %(default)s)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # before any work: the thread pool is fixed at first use

    model = args.model
    base = FinetuneConfig(precision=args.precision, cutoff_len=args.cutoff, global_batch_size=args.global_batch,
                          micro_batch_size=1, warmup_steps=0, loss_weighting="token", gradient_checkpointing=False,
                          save_steps=10_000, resume=False, report_to=[])
    packed = dataclasses.replace(base, packing=True)
    variants = {
        "2023 recipe: HF Trainer, micro-batch 1, padded": ("padded", base),
        "TRL 1.16 SFTTrainer, padding_free=True": ("trl", base),
        "HF Trainer + DataCollatorWithFlattening": ("flattening", base),
        "former loop (git 7b56f7e): packed, per-example SDPA, LM head on targets": ("own", packed),
        "Trainer engine + plug-ins (this package)": ("engine", packed),
    }
    rows = bench_rows(args.rows)
    tokenizer = load_tokenizer(model)
    examples, _ = tokenize_rows(rows, tokenizer, base)
    count_steps(len(examples), base, args.steps)
    model_config = AutoConfig.from_pretrained(resolve_model(model))

    compute_dtype = getattr(torch, resolve_precision(base, torch.cuda.is_available())["compute_dtype"])
    load_before = os.getloadavg()
    peak = matmul_peak_flops(compute_dtype)
    measured: dict[str, list[list[dict]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        names = list(variants)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotated: no variant always runs last
                kind, cfg = variants[name]
                if kind in RUNNERS:
                    block = RUNNERS[kind](rows, cfg, model, args.steps, Path(tmp))
                else:
                    block = run_hf(rows, cfg, model, args.steps, Path(tmp), kind)
                measured[name].append(block)
                print(f"{name}: {[round(s['seconds'], 1) for s in measured[name][-1]]} s/step", flush=True)
    peak = max(peak, matmul_peak_flops(compute_dtype))
    load_after = os.getloadavg()

    plan = plan_steps(len(examples), args.steps, base.global_batch_size, SEED)
    timed_steps = [plan[k] for k in range(1, args.steps)]
    seen = [len(examples[i]["input_ids"]) for step in timed_steps for i in step]
    context = sum(n * n for n in seen) / sum(seen)
    # r x (in + out) for each of gate, up and down projection in every layer
    lora_params = (3 * base.lora_r * (model_config.hidden_size + model_config.intermediate_size)
                   * model_config.num_hidden_layers)
    per_token = training_flops_per_token(model_config, lora_params, context)

    results = {}
    for name, blocks in measured.items():
        timed = [s for block in blocks for s in block[1:]]
        seconds = sum(s["seconds"] for s in timed)
        cpu_seconds = sum(s["cpu_seconds"] for s in timed)
        tokens = sum(s["tokens"] for s in timed)
        targets = sum(s["target_tokens"] for s in timed)
        flops = tokens * per_token + targets * lm_head_flops_per_target(model_config)
        results[name] = {
            "tokens_per_second": tokens / seconds, "tokens_per_cpu_second": tokens / cpu_seconds,
            "seconds_per_step": seconds / len(timed), "cpu_seconds_per_step": cpu_seconds / len(timed),
            "model_flops_per_cpu_second": flops / cpu_seconds, "mfu": flops / cpu_seconds / peak,
            "forwards_per_step": statistics.mean(s["forwards"] for s in timed),
            "token_loss_per_step": [[round(s["token_loss"], 5) for s in block] for block in blocks],
            "step_seconds": [[round(s["seconds"], 2) for s in block] for block in blocks],
            "step_cpu_seconds": [[round(s["cpu_seconds"], 2) for s in block] for block in blocks],
        }
    baseline = results[next(iter(results))]
    for r in results.values():
        r["speedup"] = r["tokens_per_cpu_second"] / baseline["tokens_per_cpu_second"]
        r["wall_speedup"] = r["tokens_per_second"] / baseline["tokens_per_second"]
        r["max_rel_loss_diff_vs_original"] = max(
            abs(a - b) / b for ra, rb in zip(r["token_loss_per_step"], baseline["token_loss_per_step"])
            for a, b in zip(ra, rb))

    engine, former = (results[name]["tokens_per_cpu_second"] for name in list(results)[-1:-3:-1])
    record = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available(), "loadavg_before": load_before, "loadavg_after": load_after},
        "model": model, "precision": resolve_precision(base, torch.cuda.is_available()), "rows": "MATH test (vendored), first %d" % args.rows,
        "settings": {"steps_per_block": args.steps, "rounds": args.rounds, "global_batch_size": args.global_batch,
                     "cutoff_len": args.cutoff, "timed_steps": len(timed_steps) * args.rounds,
                     "tokens_per_step": statistics.mean(sum(len(examples[i]["input_ids"]) for i in s)
                                                        for s in timed_steps),
                     "lora": "r=16 alpha=16 dropout=0.05 on gate/up/down_proj"},
        "matmul_peak_flops": peak,
        "model_flops_per_token": per_token,
        "variants": results,
        "engine_vs_former_loop_tokens_per_cpu_second": engine / former,
    }
    runs = json.loads(args.out.read_text()).get("runs", {}) if args.out.is_file() else {}
    runs[f"{torch.get_num_threads()} thread(s)"] = record
    atomic_write_json(args.out, {"runs": runs})
    print(markdown_table(record))


def markdown_table(record: dict) -> str:
    lines = [f"{record['machine']['threads']} thread(s). Matmul peak ({record['precision']['compute_dtype']} GEMM): "
             f"{record['matmul_peak_flops'] / 1e9:.1f} GFLOP per CPU-second. Load average before/after: "
             f"{record['machine']['loadavg_before'][0]:.1f} / {record['machine']['loadavg_after'][0]:.1f}. Trainer "
             f"engine / former loop: {record['engine_vs_former_loop_tokens_per_cpu_second']:.3f}x tokens per "
             f"CPU-second.", "",
             "| variant | forwards / step | tokens / CPU-s | speed-up | tokens / wall-s | speed-up (wall) "
             "| model GFLOP / CPU-s | MFU | max loss diff vs original |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in record["variants"].items():
        lines.append(f"| {name} | {r['forwards_per_step']:.1f} | {r['tokens_per_cpu_second']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['tokens_per_second']:.1f} | {r['wall_speedup']:.2f}x | "
                     f"{r['model_flops_per_cpu_second'] / 1e9:.2f} | {100 * r['mfu']:.1f}% | "
                     f"{100 * r['max_rel_loss_diff_vs_original']:.3f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

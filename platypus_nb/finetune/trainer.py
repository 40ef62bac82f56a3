"""The recipe on ``transformers.Trainer``: one code path for one process, DDP, FSDP and DeepSpeed.

The Trainer runs the steps (AdamW "adamw_torch" with HF defaults as the original, warm-up + cosine, clipping,
accumulation, mixed precision, checkpoints, resume, logging, ``report_to``). The recipe's plug-ins, and why each is
needed (docs/training.md, "The engine and its plug-ins"): the plan's batch sampler and the packing collator
(``data``), per-example attention (``attention``), ``compute_loss`` (response tokens only, per-example weights), an
exact per-step ``log``, a stop on divergence, and the atomic checkpoint commit (``checkpoints``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from platypus_nb.config import FinetuneConfig
from platypus_nb.finetune.checkpoints import CHECKPOINTS, commit, list_checkpoints
from platypus_nb.finetune.data import (PackingCollator, count_steps, load_train_rows, plan_steps, planned_examples,
                                       step_batches, tokenize_rows)
from platypus_nb.finetune.model import (lm_head_flops_per_target, load_lora_model, resolve_precision,
                                        training_flops_per_token)
from platypus_nb.io import atomic_write_json
from platypus_nb.model_card import adapter_card, write_card

WORK_DIR = "trainer"  # the Trainer's output_dir: checkpoints while they are written, TensorBoard logs (runs/)
_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
_STEP_LOG = ("loss", "token_loss", "learning_rate", "grad_norm", "target_tokens", "tokens", "forwards_per_process",
             "seconds", "cpu_seconds")


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm stopped being a finite number."""


class RecipeTrainer(Trainer):
    """``Trainer`` with the plan's batches, the recipe's loss and an exact per-step record."""

    loss_is_scaled_for_ga = True  # the loss weights already normalise over the whole global batch

    def __init__(self, *args: Any, batches: list[list[int]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.batches = batches
        self.sums = torch.zeros(4, dtype=torch.float64, device=self.args.device)
        self.forwards, self.clock = 0, None

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        # A generator of its own: creating the loader's iterator then leaves the global RNG (dropout) untouched.
        return torch.utils.data.DataLoader(self.train_dataset, batch_sampler=self.batches,
                                           collate_fn=self.data_collator,
                                           generator=torch.Generator().manual_seed(self.args.seed))

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        self.clock = self.clock or (time.perf_counter(), time.process_time())
        if inputs["input_ids"].numel() == 0:  # an unused forward of a packed step (see step_batches)
            return torch.zeros((), device=self.args.device)
        self.forwards += 1
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """Weighted cross-entropy of the positions that have a target. With one row per forward (packed, or the
        original's micro-batch 1) the LM head runs on those positions only (``logits_to_keep``): the prompt's
        49k-way logits would be masked out of the loss anyway."""
        keep, targets, weights = inputs.pop("keep"), inputs.pop("targets"), inputs.pop("weights")
        if keep.shape[0] == 1:
            outputs = model(**inputs, use_cache=False, logits_to_keep=keep[0].nonzero().squeeze(1))
            logits = outputs.logits.squeeze(0)  # squeeze, not [0]: a select's backward zero-fills (targets x vocab)
        else:
            outputs = model(**inputs, use_cache=False)
            logits = outputs.logits[keep]
        ce = F.cross_entropy(logits.float(), targets, reduction="none")
        objective = (ce * weights).sum()
        tokens = inputs["attention_mask"].sum() if "attention_mask" in inputs else inputs["input_ids"].numel()
        self.sums += torch.stack([objective.detach(), ce.detach().sum(), torch.tensor(ce.numel(), device=ce.device),
                                  torch.as_tensor(tokens, device=ce.device)]).to(self.sums)
        loss = objective * self.accelerator.num_processes  # DDP averages gradients over processes
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        if "loss" in logs:  # a step's log (logging_steps 1): its exact sums over every process
            objective, ce, targets, tokens = self.accelerator.reduce(self.sums, reduction="sum").tolist()
            logs.update(loss=objective, token_loss=ce / targets, target_tokens=int(targets), tokens=int(tokens),
                        forwards_per_process=self.forwards, seconds=time.perf_counter() - self.clock[0],
                        cpu_seconds=time.process_time() - self.clock[1])
            self.sums.zero_()
            self.forwards, self.clock = 0, None
        super().log(logs, start_time)


class StopOnNonFinite(TrainerCallback):
    """A NaN or infinite loss or gradient norm ends the run with an error before anything more is saved (the
    Trainer's ``logging_nan_inf_filter`` would only hide it from the log)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Optional[dict] = None, **kwargs: Any) -> None:
        bad = [f"{k} {logs[k]}" for k in ("loss", "grad_norm")
               if isinstance((logs or {}).get(k), float) and not math.isfinite(logs[k])]
        if bad:
            raise TrainingDivergedError(f"fine-tuning diverged at step {state.global_step} ({', '.join(bad)}); no "
                                        f"adapter was written: lower finetune.learning_rate or check the rows")


class CommitCheckpoints(TrainerCallback):
    """Once every process has written a checkpoint, move it into ``checkpoints/`` (see ``checkpoints.commit``) and
    keep the newest ``save_total_limit`` (the original's 2)."""

    def __init__(self, checkpoints: Path, record: dict[str, Any], keep: int):
        self.checkpoints, self.record, self.keep = checkpoints, record, keep

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from accelerate import PartialState

        PartialState().wait_for_everyone()
        if state.is_world_process_zero:
            name = f"checkpoint-{state.global_step}"
            commit(Path(args.output_dir) / name, self.checkpoints / name, self.record)
            for old in list_checkpoints(self.checkpoints)[:-self.keep]:
                shutil.rmtree(old)
        PartialState().wait_for_everyone()


def training_arguments(cfg: FinetuneConfig, out_dir: Path, seed: int, n_steps: int,
                       mixed_precision: str) -> TrainingArguments:
    """The recipe as Trainer arguments: the original's optimiser and schedule, a log every step (as the original's
    ``logging_steps=1``), checkpoints every ``save_steps``."""
    return TrainingArguments(
        output_dir=str(out_dir / WORK_DIR), max_steps=n_steps, per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.global_batch_size // cfg.micro_batch_size // cfg.world_size,
        learning_rate=cfg.learning_rate, lr_scheduler_type=_SCHEDULERS[cfg.lr_scheduler],
        warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        optim="adamw_torch", bf16=mixed_precision == "bf16", fp16=mixed_precision == "fp16",
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=1, logging_nan_inf_filter=False, save_strategy="steps", save_steps=cfg.save_steps,
        report_to=list(cfg.report_to), seed=seed, use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False, remove_unused_columns=False, dataloader_num_workers=0)


def run_training(job: dict[str, Any]) -> None:
    """Train (or resume) and write ``adapter/``, ``metrics.json`` and ``train_args.json``.

    ``job`` is plain data (``accelerate launch`` passes it to every process as a JSON file): ``rows_path``,
    ``finetune`` (the section as a dict), ``base_model``, ``out_dir``, ``seed``, ``max_steps``,
    ``trust_remote_code``, ``fingerprint``, ``resume_from`` and ``resumed_from_steps`` (see ``checkpoints``)."""
    from platypus_nb.assets import load_tokenizer

    cfg, out_dir, seed = FinetuneConfig(**job["finetune"]), Path(job["out_dir"]), job["seed"]
    precision = resolve_precision(cfg, torch.cuda.is_available())
    tokenizer = load_tokenizer(job["base_model"], trust_remote_code=job["trust_remote_code"])
    rows = load_train_rows(job["rows_path"])
    examples, kept = tokenize_rows(rows, tokenizer, cfg)
    n_steps = count_steps(len(examples), cfg, job["max_steps"])
    plan = plan_steps(len(examples), n_steps, cfg.global_batch_size, seed)
    args = training_arguments(cfg, out_dir, seed, n_steps, precision["mixed_precision"])
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"  # set by accelerate launch
    model = load_lora_model(job["base_model"], cfg, precision, args.device, seed, job["trust_remote_code"], fsdp)
    lora_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dataset = planned_examples(examples, plan, cfg.loss_weighting)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # original: pad_token_id = 0
    trainer = RecipeTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=PackingCollator(cfg.packing, pad_id),
        batches=step_batches(dataset, cfg, args.process_index, args.world_size),
        callbacks=[StopOnNonFinite(), CommitCheckpoints(out_dir / CHECKPOINTS, {
            "fingerprint": job["fingerprint"], "resumed_from_steps": job["resumed_from_steps"]},
            cfg.save_total_limit)])
    trainer.train(resume_from_checkpoint=job["resume_from"])

    if trainer.is_fsdp_enabled:  # the adapter as one file, not shards (PEFT's FSDP guide)
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out_dir / ".adapter.partial"))
    if trainer.is_world_process_zero():
        log = [h for h in trainer.state.log_history if "token_loss" in h]
        model_config = trainer.accelerator.unwrap_model(model).config
        metrics = _summarise(log, examples, plan, model_config, lora_params) | {
            "train_rows": len(examples), "rows_without_targets_dropped": len(rows) - len(kept),
            "world_size": args.world_size, "precision": precision, "resumed_from_steps": job["resumed_from_steps"],
            "loss_per_step": [{"step": r["step"], **{"lr" if k == "learning_rate" else k: r.get(k) for k in _STEP_LOG}}
                              for r in log]}
        write_card(out_dir / ".adapter.partial", adapter_card(job["base_model"], cfg, {
            "training rows": metrics["train_rows"], "optimizer steps": metrics["steps"],
            "tokens seen": metrics["tokens_seen"], "loss (first -> last step)":
                f"{metrics['first_loss']:.4f} -> {metrics['final_loss']:.4f}", "seed": seed}))
        commit(out_dir / ".adapter.partial", out_dir / "adapter")
        atomic_write_json(out_dir / "metrics.json", metrics)
        atomic_write_json(out_dir / "train_args.json", _train_args(job, cfg, precision, args))
    trainer.accelerator.wait_for_everyone()


def _summarise(log: list[dict], examples: list, plan: list, model_config: Any, lora_params: int) -> dict[str, Any]:
    """Totals of the per-step log for ``metrics.json``: speed, model FLOPs (``model.training_flops_per_token``)."""
    tokens, targets = sum(r["tokens"] for r in log), sum(r["target_tokens"] for r in log)
    seen = [i for step in plan[:len(log)] for i in step]
    lengths = [len(examples[i]["input_ids"]) for i in seen]
    context = sum(n * n for n in lengths) / max(1, sum(lengths))
    flops = (tokens * training_flops_per_token(model_config, lora_params, context)
             + targets * lm_head_flops_per_target(model_config))
    seconds = sum(r["seconds"] for r in log)
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux reports KiB
    return {
        "steps": len(log), "examples_seen": len(seen), "tokens_seen": tokens, "target_tokens_seen": targets,
        "train_seconds": seconds, "tokens_per_second": tokens / seconds if seconds else None,
        "model_flops": flops, "model_flops_per_second": flops / seconds if seconds else None,
        "peak_memory_bytes": int(peak), "first_loss": log[0]["loss"] if log else None,
        "final_loss": log[-1]["loss"] if log else None, "trainable_parameters": lora_params}


def _train_args(job: dict[str, Any], cfg: FinetuneConfig, precision: dict, args: TrainingArguments) -> dict[str, Any]:
    import accelerate
    import peft
    import transformers

    return {
        "base_model": job["base_model"], "train_rows": job["rows_path"], "seed": job["seed"],
        "max_steps": args.max_steps, "world_size": args.world_size,
        # As the original computed it (batch_size // micro_batch_size // world_size); with packing the same
        # examples may go through fewer, longer forwards (metrics.json forwards_per_process).
        "gradient_accumulation_steps": args.gradient_accumulation_steps, "effective_precision": precision,
        "finetune": dataclasses.asdict(cfg), "training_arguments": json.loads(args.to_json_string()),
        "versions": {m.__name__: m.__version__ for m in (torch, transformers, peft, accelerate)},
    }

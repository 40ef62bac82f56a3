"""The training loop: one code path for one process, DDP, FSDP and DeepSpeed (through accelerate).

Reads top to bottom like the recipe: tokenize, plan the steps, load the base + LoRA, AdamW ("adamw_torch", HF
defaults as the original: betas (0.9, 0.999), eps 1e-8, grad-norm clip 1.0) with a warm-up + cosine schedule, then
for each optimizer step: this process's share of the global batch, grouped into (packed) micro-batches, gradients
accumulated, synchronised once, clipped, stepped. Every ``save_steps`` a complete checkpoint (LoRA weights,
optimizer, scheduler, every process's RNG state, the loss log) is written under a temporary name and renamed, so
a kill at any moment leaves only complete checkpoints; a new run resumes from the newest one.

Departure from the original: our own loop instead of HF Trainer, because packing needs per-token loss weights and
position-id resets that the Trainer's collator/loss do not provide; the objective is the same (see
``data.token_weights``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from platypus_nb.config import FinetuneConfig
from platypus_nb.finetune.data import (collate, count_steps, load_train_rows, micro_batches, plan_steps,
                                       rank_share, token_weights, tokenize_rows)
from platypus_nb.finetune.model import (lm_head_flops_per_target, load_lora_model, resolve_precision,
                                        training_flops_per_token)
from platypus_nb.io import atomic_directory, atomic_write_json

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


@dataclass
class TrainJob:
    """Everything a training process needs, as plain data (written to JSON for ``accelerate launch``)."""

    rows_path: str
    finetune: dict[str, Any]
    base_model: str
    out_dir: str
    seed: int
    max_steps: Optional[int] = None
    trust_remote_code: bool = False

    @property
    def cfg(self) -> FinetuneConfig:
        return FinetuneConfig(**self.finetune)

    def save(self, path: Path) -> Path:
        return atomic_write_json(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> "TrainJob":
        return cls(**json.loads(Path(path).read_text()))


def run_training(job: TrainJob) -> dict[str, Any]:
    """Train (or resume) and write ``adapter/``, ``metrics.json`` and ``train_args.json``; return the metrics."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import get_scheduler, set_seed

    from platypus_nb.assets import load_tokenizer

    cfg, out_dir = job.cfg, Path(job.out_dir)
    cuda = torch.cuda.is_available()
    precision = resolve_precision(cfg, cuda)
    # cpu=True makes a torchrun-launched CPU job a gloo process group (accelerate's MULTI_CPU).
    accelerator = Accelerator(cpu=not cuda, mixed_precision=precision.mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes

    tokenizer = load_tokenizer(job.base_model, trust_remote_code=job.trust_remote_code)
    rows = load_train_rows(job.rows_path)
    examples, kept_rows = tokenize_rows(rows, tokenizer, cfg)
    dropped = len(rows) - len(kept_rows)
    n_steps = count_steps(len(examples), cfg, job.max_steps)
    plan = plan_steps(len(examples), n_steps, cfg.global_batch_size, job.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # original: pad_token_id = 0

    fsdp_plugin = getattr(accelerator.state, "fsdp_plugin", None)
    model = load_lora_model(job.base_model, cfg, precision, accelerator.device, job.seed, job.trust_remote_code,
                            fsdp=fsdp_plugin is not None)
    if fsdp_plugin is not None:
        from peft.utils.other import fsdp_auto_wrap_policy

        # Frozen and trainable (LoRA) weights in separate FSDP units (PEFT's FSDP guide, use_orig_params false).
        fsdp_plugin.auto_wrap_policy = fsdp_auto_wrap_policy(model)
    lora_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if fsdp_plugin is not None:  # FSDP flattens the weights: the optimizer must see the wrapped model's parameters
        model = accelerator.prepare(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(_SCHEDULERS[cfg.lr_scheduler], optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=n_steps)
    if fsdp_plugin is not None:
        optimizer = accelerator.prepare(optimizer)
    else:  # DeepSpeed needs both at once
        model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped by us once per optimizer step, not by accelerate
    _checkpoint_only_trainable_weights(accelerator)

    set_seed(job.seed + rank)  # dropout streams; a resume restores every process's RNG from the checkpoint
    checkpoints = out_dir / CHECKPOINTS
    fingerprint = {"n_examples": len(examples), "n_steps": n_steps, "global_batch_size": cfg.global_batch_size,
                   "seed": job.seed, "world_size": world}
    state = _resume(accelerator, checkpoints, fingerprint) if cfg.resume else None
    if state is None:
        if accelerator.is_main_process:
            shutil.rmtree(checkpoints, ignore_errors=True)
        state = {"step": 0, "log": [], "train_seconds": 0.0, "resumed_from": []}
    accelerator.wait_for_everyone()

    model.train()
    bar = tqdm(total=n_steps, initial=state["step"], desc="fine-tune", disable=not accelerator.is_main_process)
    for step in range(state["step"], n_steps):
        started, cpu_started = time.perf_counter(), time.process_time()
        weights = token_weights(plan[step], examples, cfg.loss_weighting)
        groups = micro_batches(rank_share(plan[step], examples, rank, world), examples, cfg)
        batches = [collate(group, examples, weights, cfg.packing, pad_id) for group in groups]
        sums = _accumulate_gradients(accelerator, model, batches, world)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)  # None: DeepSpeed clips
        lr = scheduler.get_last_lr()[0]  # the rate this step uses (0 on the first warm-up step, as in HF Trainer)
        optimizer.step()
        if not accelerator.optimizer_step_was_skipped:  # fp16 loss scaling skipped an overflowing step
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        totals = accelerator.reduce(sums, reduction="sum").tolist()
        seconds = time.perf_counter() - started
        state["train_seconds"] += seconds
        state["log"].append({"step": step + 1, "loss": totals[0], "token_loss": totals[1] / totals[2],
                             "lr": lr,
                             "grad_norm": None if grad_norm is None else float(grad_norm),
                             "target_tokens": int(totals[2]), "tokens": int(totals[3]),
                             "forwards_per_process": len(groups), "seconds": seconds,
                             "cpu_seconds": time.process_time() - cpu_started})
        state["step"] = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{totals[0]:.3f}")
        if state["step"] % cfg.save_steps == 0 and state["step"] < n_steps:
            _save_checkpoint(accelerator, checkpoints, state, fingerprint, cfg.save_total_limit)
    bar.close()

    metrics = _summarise(state, cfg, precision, world, dropped, len(examples), lora_params,
                         accelerator.unwrap_model(model).config, examples, plan)
    _save_adapter(accelerator, model, out_dir / "adapter")
    if accelerator.is_main_process:
        atomic_write_json(out_dir / "metrics.json", metrics)
        atomic_write_json(out_dir / "train_args.json", _train_args(job, cfg, precision, world, n_steps))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


# ---------------------------------------------------------------------------------------------- one step


def _accumulate_gradients(accelerator: Any, model: Any, batches: list[dict[str, torch.Tensor]],
                          world: int) -> torch.Tensor:
    """Forward and backward every micro-batch of this process's share of one optimizer step.

    Returns this process's [objective, cross-entropy sum, target tokens, tokens] (padding excluded).
    """
    sums = torch.zeros(4, dtype=torch.float64, device=accelerator.device)
    for k, cpu_batch in enumerate(batches):
        batch = {name: t.to(accelerator.device) for name, t in cpu_batch.items()}
        with _accumulating(accelerator, model, sync=k == len(batches) - 1):
            ce = _token_losses(model, batch)
            objective = (ce * batch["weights"]).sum()
            # DDP averages gradients over processes; the weights already normalise over the global batch.
            accelerator.backward(objective * world)
        tokens = batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
        sums += torch.tensor([objective.item(), ce.sum().item(), ce.numel(), float(tokens)], dtype=torch.float64,
                             device=accelerator.device)
    return sums


def _token_losses(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of every position that has a target, and only those.

    With one row per forward (packed, or the original's micro-batch 1) the LM head runs only on target positions
    (``logits_to_keep``): prompt tokens are masked out of the loss, so their 49k-way logits are wasted work.
    Packed rows pass no attention mask: the attention finds the examples from the position-id resets (one SDPA call
    per example, FlashAttention-2's variable-length kernel, or transformers' block-diagonal mask for ``eager``),
    so no token attends across an example boundary.
    """
    keep = batch["keep"]
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False,
              "attention_mask": batch.get("attention_mask")}
    if keep.shape[0] == 1:
        # squeeze, not [0]: a select's backward zero-fills a (targets x vocab) gradient (~4% of a CPU step)
        logits = model(**inputs, logits_to_keep=keep[0].nonzero().squeeze(1)).logits.squeeze(0)
    else:
        logits = model(**inputs).logits[keep]
    return F.cross_entropy(logits.float(), batch["targets"], reduction="none")


class _accumulating:
    """Gradient accumulation over a variable number of micro-batches: synchronise only on the last one.

    ``no_sync`` skips DDP/FSDP's all-reduce; DeepSpeed instead reads accelerate's ``sync_gradients`` flag to know
    the accumulation boundary (``DeepSpeedEngineWrapper.backward``), which ``accelerator.accumulate`` would set from
    a fixed micro-batch count that packing does not have.
    """

    def __init__(self, accelerator: Any, model: Any, sync: bool):
        self.accelerator, self.model, self.sync = accelerator, model, sync
        self.ctx = None

    def __enter__(self):
        self.accelerator.gradient_state._set_sync_gradients(self.sync)
        if not self.sync:
            self.ctx = self.accelerator.no_sync(self.model)
            self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)
        self.accelerator.gradient_state._set_sync_gradients(True)
        return False


# ---------------------------------------------------------------------------------------------- checkpoints


def _checkpoint_only_trainable_weights(accelerator: Any) -> None:
    """Checkpoints hold the LoRA weights only: the frozen base is reloaded from its own files (538 MB for the
    135M model, 26 GB for 13B, per checkpoint otherwise)."""

    def keep_trainable(models: list, weights: list, output_dir: str) -> None:
        for model, state_dict in zip(models, weights):
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            for name in [n for n in state_dict if n not in trainable]:
                del state_dict[name]

    accelerator.register_save_state_pre_hook(keep_trainable)


def list_checkpoints(checkpoints: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint is complete once its state file is in a renamed folder)."""
    if not checkpoints.is_dir():
        return []
    done = [p for p in checkpoints.glob("step-*") if (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _save_checkpoint(accelerator: Any, checkpoints: Path, state: dict, fingerprint: dict, keep: int) -> None:
    partial = checkpoints / f".step-{state['step']}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # model (LoRA), optimizer, scheduler, RNG of every process
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(partial / STATE_FILE, {**state, "fingerprint": fingerprint})
        final = checkpoints / f"step-{state['step']}"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for old in list_checkpoints(checkpoints)[:-keep]:  # save_total_limit, as the original's 2
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _resume(accelerator: Any, checkpoints: Path, fingerprint: dict) -> Optional[dict]:
    """Load the newest complete checkpoint, or return None when there is none."""
    done = list_checkpoints(checkpoints)
    if not done:
        return None
    latest = done[-1]
    state = json.loads((latest / STATE_FILE).read_text())
    saved = state.pop("fingerprint")
    if saved != fingerprint:
        raise RuntimeError(f"checkpoint {latest} belongs to a different run ({saved}) than this one "
                           f"({fingerprint}); set finetune.resume: false to start over")
    accelerator.load_state(str(latest), strict=False)  # strict=False: the frozen base is not in checkpoints
    state["resumed_from"] = state.get("resumed_from", []) + [state["step"]]
    return state


# ---------------------------------------------------------------------------------------------- outputs


def _save_adapter(accelerator: Any, model: Any, adapter_dir: Path) -> None:
    state_dict = accelerator.get_state_dict(model)  # collective under FSDP / ZeRO-3: every process calls it
    if accelerator.is_main_process:
        with atomic_directory(adapter_dir) as tmp:
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    accelerator.wait_for_everyone()


def _peak_memory_bytes() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _summarise(state: dict, cfg: FinetuneConfig, precision: Any, world: int, dropped: int, n_examples: int,
               lora_params: int, model_config: Any, examples: list, plan: list) -> dict[str, Any]:
    log = state["log"]
    tokens = sum(r["tokens"] for r in log)
    targets = sum(r["target_tokens"] for r in log)
    seen = [i for step in plan[:state["step"]] for i in step]
    context = sum(len(examples[i]) ** 2 for i in seen) / max(1, sum(len(examples[i]) for i in seen))
    flops = (tokens * training_flops_per_token(model_config, lora_params, context)
             + targets * lm_head_flops_per_target(model_config))
    seconds = state["train_seconds"]
    return {
        "steps": state["step"],
        "examples_seen": len(seen),
        "tokens_seen": tokens,
        "target_tokens_seen": targets,
        "train_seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds else None,
        "model_flops": flops,
        "model_flops_per_second": flops / seconds if seconds else None,
        "peak_memory_bytes": _peak_memory_bytes(),
        "first_loss": log[0]["loss"] if log else None,
        "final_loss": log[-1]["loss"] if log else None,
        "trainable_parameters": lora_params,
        "train_rows": n_examples,
        "rows_without_targets_dropped": dropped,
        "world_size": world,
        "precision": precision.as_dict(),
        "resumed_from_steps": state["resumed_from"],
        "loss_per_step": log,
    }


def _train_args(job: TrainJob, cfg: FinetuneConfig, precision: Any, world: int, n_steps: int) -> dict[str, Any]:
    import accelerate
    import peft
    import transformers

    return {
        "base_model": job.base_model,
        "train_rows": job.rows_path,
        "seed": job.seed,
        "max_steps": n_steps,
        "world_size": world,
        # As the original computed it (batch_size // micro_batch_size // world_size); with packing the same
        # examples go through fewer, longer forwards (see metrics.json forwards_per_process).
        "gradient_accumulation_steps": cfg.global_batch_size // cfg.micro_batch_size // world,
        "effective_precision": precision.as_dict(),
        "finetune": dataclasses.asdict(cfg),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "accelerate": accelerate.__version__},
    }

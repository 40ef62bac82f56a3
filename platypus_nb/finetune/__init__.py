"""Step 03: LoRA / QLoRA fine-tuning with the Platypus recipe (docs/training.md), on ``transformers.Trainer``.

The notebook and other stages call :func:`train_lora`; it checks everything that can be checked before any model is
loaded (rows, cutoff vs template, LoRA targets, batch divisibility), decides whether a checkpoint may be resumed,
then trains in this process (``world_size: 1``) or through ``accelerate launch`` (``world_size > 1``: DDP, FSDP or
DeepSpeed from an accelerate config file).

Modules: ``data`` (tokenization, masking, step plan, batch sampler, collator), ``attention`` (per-example SDPA),
``model`` (precisions, LoRA), ``trainer`` (the Trainer and its plug-ins), ``checkpoints`` (atomic commit, resume
rule), ``launch`` (multi-process), ``report`` (tables, figures and generations for the notebook).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from platypus_nb.config import FinetuneConfig, from_dict
from platypus_nb.finetune.checkpoints import CHECKPOINTS, resume_point, run_fingerprint
from platypus_nb.finetune.data import (TrainingDataError, check_cutoff_fits_template, count_steps, load_train_rows,
                                       plan_steps, tokenize_rows)
from platypus_nb.finetune.launch import launch_processes
from platypus_nb.finetune.model import ModelSetupError, check_target_modules
from platypus_nb.finetune.trainer import WORK_DIR, TrainingDivergedError, TrainJob, run_training
from platypus_nb.io import write_jsonl

__all__ = ["TrainResult", "train_lora", "rows_seen", "TrainingDataError", "ModelSetupError", "TrainingDivergedError",
           "load_train_rows"]


@dataclass
class TrainResult:
    """What a finished training run left behind: the adapter folder and its metrics (also in metrics.json)."""

    adapter_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    out_dir: Optional[Path] = None


def train_lora(train_rows: list[dict] | str | Path, cfg: FinetuneConfig, base_model: str, out_dir: Path, seed: int,
               *, max_steps: Optional[int] = None, trust_remote_code: bool = False, force: bool = False) -> TrainResult:
    """Fine-tune a LoRA adapter on Alpaca-style rows ``{instruction, input, output}`` (a list or a JSONL path).

    Writes ``out_dir/adapter/`` (peft safetensors + adapter_config.json), ``out_dir/metrics.json`` and
    ``out_dir/train_args.json``; ``max_steps`` overrides ``cfg.max_steps``. With ``cfg.resume`` a re-run continues
    from the newest checkpoint in ``out_dir/checkpoints`` that this very run (settings, base model, tokenizer, rows)
    wrote; ``force`` always trains from step 0.
    """
    out_dir = Path(out_dir)
    cfg = _validated(cfg)
    rows = load_train_rows(train_rows)
    n_steps = _check_before_training(rows, cfg, base_model, max_steps, trust_remote_code)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_path = write_jsonl(out_dir / "train_rows.jsonl", rows) if isinstance(train_rows, list) else train_rows
    fingerprint = run_fingerprint(rows, cfg, base_model, seed, n_steps)
    resume_from, resumed_from, why_not = resume_point(out_dir / CHECKPOINTS, fingerprint)
    if resume_from is not None and (force or not cfg.resume):
        why_not = f"{resume_from} not resumed ({'--force' if force else 'finetune.resume: false'}): training from step 0"
        resume_from, resumed_from = None, []
    if why_not:
        print(why_not)
    if resume_from is None:
        shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    for partial in (out_dir / WORK_DIR).glob("checkpoint-*"):  # left by a kill while it was being written
        shutil.rmtree(partial)
    job = TrainJob(rows_path=str(Path(rows_path).resolve()), finetune=dataclasses.asdict(cfg), base_model=base_model,
                   out_dir=str(out_dir.resolve()), seed=seed, max_steps=max_steps,
                   trust_remote_code=trust_remote_code, fingerprint=fingerprint,
                   resume_from=str(resume_from) if resume_from else None, resumed_from_steps=resumed_from)
    if cfg.world_size == 1:
        run_training(job)
    else:
        launch_processes(job, cfg)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    return TrainResult(adapter_dir=out_dir / "adapter", metrics=metrics, out_dir=out_dir)


def rows_seen(rows: list[dict], cfg: FinetuneConfig, tokenizer: Any, seed: int,
              max_steps: Optional[int] = None) -> list[int]:
    """Indices of the rows the run trains on, in training order (the step plan, recomputed; for held-in examples)."""
    _, kept = tokenize_rows(rows, tokenizer, cfg)
    n_steps = count_steps(len(kept), cfg, max_steps)
    return [kept[i] for step in plan_steps(len(kept), n_steps, cfg.global_batch_size, seed) for i in step]


def _validated(cfg: FinetuneConfig) -> FinetuneConfig:
    """Callers may build or ``dataclasses.replace`` a section; validate it as if it came from a YAML file."""
    return from_dict({"finetune": dataclasses.asdict(cfg)}, source="train_lora(cfg)").finetune


def _check_before_training(rows: list[dict], cfg: FinetuneConfig, base_model: str, max_steps: Optional[int],
                           trust_remote_code: bool) -> int:
    """Everything that can fail before a model is loaded; returns the number of optimizer steps."""
    from platypus_nb.assets import load_tokenizer

    tokenizer = load_tokenizer(base_model, trust_remote_code=trust_remote_code)
    check_cutoff_fits_template(tokenizer, cfg)
    _, kept = tokenize_rows(rows, tokenizer, cfg)
    if not kept:
        raise TrainingDataError(f"no row has a response token within finetune.cutoff_len = {cfg.cutoff_len}")
    n_steps = count_steps(len(kept), cfg, max_steps)
    check_target_modules(base_model, cfg.lora_target_modules, trust_remote_code)
    return n_steps

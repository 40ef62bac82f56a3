"""Step 03: LoRA / QLoRA fine-tuning with the Platypus recipe (docs/training.md), on ``transformers.Trainer``.

The notebook and other stages call :func:`train_lora`; it checks everything that can be checked before any model is
loaded (rows, cutoff vs template, LoRA targets, batch divisibility), decides whether a checkpoint may be resumed,
then trains in this process (``world_size: 1``) or through ``accelerate launch`` (``world_size > 1``: DDP, FSDP or
DeepSpeed from an accelerate config file; without CUDA a gloo group on the CPU, which is how the tests check DDP).

Modules: ``data`` (tokenization, masking, step plan, batch sampler, collator), ``attention`` (per-example SDPA),
``model`` (precisions, LoRA), ``trainer`` (the Trainer and its plug-ins), ``checkpoints`` (atomic commit, resume
rule), ``report`` (tables, figures and generations for the notebook).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from platypus_nb.config import FinetuneConfig, from_dict, resolve_path
from platypus_nb.finetune.checkpoints import CHECKPOINTS, resume_point, run_fingerprint
from platypus_nb.finetune.data import (TrainingDataError, check_cutoff_fits_template, count_steps, load_train_rows,
                                       plan_steps, tokenize_rows)
from platypus_nb.finetune.model import ModelSetupError, check_target_modules
from platypus_nb.finetune.trainer import WORK_DIR, TrainingDivergedError, run_training
from platypus_nb.io import atomic_write_json, write_jsonl
from platypus_nb.paths import CONFIGS_DIR, PROJECT_ROOT

__all__ = ["TrainResult", "train_lora", "rows_seen", "TrainingDataError", "ModelSetupError", "TrainingDivergedError",
           "load_train_rows"]


@dataclass
class TrainResult:
    """What a finished training run left behind: the adapter folder and its metrics (also in metrics.json)."""

    adapter_dir: Path
    metrics: dict[str, Any]
    out_dir: Path


def train_lora(train_rows: list[dict] | str | Path, cfg: FinetuneConfig, base_model: str, out_dir: Path, seed: int,
               *, max_steps: Optional[int] = None, trust_remote_code: bool = False, force: bool = False) -> TrainResult:
    """Fine-tune a LoRA adapter on Alpaca-style rows ``{instruction, input, output}`` (a list or a JSONL path).

    Writes ``out_dir/adapter/`` (peft safetensors + adapter_config.json), ``out_dir/metrics.json`` and
    ``out_dir/train_args.json``; ``max_steps`` overrides ``cfg.max_steps``. With ``cfg.resume`` a re-run continues
    from the newest checkpoint in ``out_dir/checkpoints`` that this very run (settings, base model, tokenizer, rows)
    wrote; ``force`` always trains from step 0.
    """
    from platypus_nb.assets import load_tokenizer

    out_dir = Path(out_dir)
    # Callers may build or dataclasses.replace a section: validate it as if it came from a YAML file.
    cfg = from_dict({"finetune": dataclasses.asdict(cfg)}, source="train_lora(cfg)").finetune
    rows = load_train_rows(train_rows)
    # Everything that can fail before a model is loaded.
    tokenizer = load_tokenizer(base_model, trust_remote_code=trust_remote_code)
    check_cutoff_fits_template(tokenizer, cfg)
    _, kept = tokenize_rows(rows, tokenizer, cfg)
    if not kept:
        raise TrainingDataError(f"no row has a response token within finetune.cutoff_len = {cfg.cutoff_len}")
    n_steps = count_steps(len(kept), cfg, max_steps)
    check_target_modules(base_model, cfg.lora_target_modules, trust_remote_code)

    out_dir.mkdir(parents=True, exist_ok=True)
    rows_path = write_jsonl(out_dir / "train_rows.jsonl", rows) if isinstance(train_rows, list) else train_rows
    fingerprint = run_fingerprint(rows, cfg, base_model, seed, n_steps)
    resume_from, resumed_from, why_not = resume_point(out_dir / CHECKPOINTS, fingerprint)
    if resume_from is not None and (force or not cfg.resume):
        why_not = (f"{resume_from} not resumed ({'--force' if force else 'finetune.resume: false'}): training from "
                   f"step 0")
        resume_from, resumed_from = None, []
    if why_not:
        print(why_not)
    if resume_from is None:
        shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    for partial in (out_dir / WORK_DIR).glob("checkpoint-*"):  # left by a kill while it was being written
        shutil.rmtree(partial)
    job = {"rows_path": str(Path(rows_path).resolve()), "finetune": dataclasses.asdict(cfg), "base_model": base_model,
           "out_dir": str(out_dir.resolve()), "seed": seed, "max_steps": max_steps,
           "trust_remote_code": trust_remote_code, "fingerprint": fingerprint,
           "resume_from": str(resume_from) if resume_from else None, "resumed_from_steps": resumed_from}
    if cfg.world_size == 1:
        run_training(job)
    else:
        _launch(job, cfg)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    return TrainResult(adapter_dir=out_dir / "adapter", metrics=metrics, out_dir=out_dir)


def rows_seen(rows: list[dict], cfg: FinetuneConfig, tokenizer: Any, seed: int,
              max_steps: Optional[int] = None) -> list[int]:
    """Indices of the rows the run trains on, in training order (the step plan, recomputed; for held-in examples)."""
    _, kept = tokenize_rows(rows, tokenizer, cfg)
    n_steps = count_steps(len(kept), cfg, max_steps)
    return [kept[i] for step in plan_steps(len(kept), n_steps, cfg.global_batch_size, seed) for i in step]


def _launch(job: dict[str, Any], cfg: FinetuneConfig) -> None:
    """Run the job in ``cfg.world_size`` processes (``python -m platypus_nb.finetune <job.json>`` each) with
    ``finetune.accelerate_config`` (configs/accelerate/README.md) or plain DDP; their output goes to
    ``out_dir/launch.log``. A free port for the process group, so parallel runs on one machine do not collide."""
    out_dir = Path(job["out_dir"])
    job_path = atomic_write_json(out_dir / "train_job.json", job)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config_file = resolve_path(cfg.accelerate_config) if cfg.accelerate_config else CONFIGS_DIR / "accelerate/ddp.yaml"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
               "--num_processes", str(cfg.world_size), "--main_process_port", str(port),
               "-m", "platypus_nb.finetune", str(job_path)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])))
    with open(out_dir / "launch.log", "w") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"accelerate launch with {cfg.world_size} processes failed (exit {proc.returncode}); "
                           f"full log in {out_dir / 'launch.log'}; its end:\n"
                           f"{(out_dir / 'launch.log').read_text()[-4000:]}")

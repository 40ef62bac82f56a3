"""Checkpoints that a kill cannot leave half-written, resumed only by the run that wrote them.

The Trainer writes each checkpoint (LoRA weights as safetensors, optimizer, scheduler and RNG states,
``trainer_state.json``) into its working folder ``trainer/checkpoint-N``; :func:`commit` then drops its
``training_args.bin`` (a pickle of the arguments, never read back: they are in ``train_args.json``), records the run's
fingerprint and every file's sha256 in ``checkpoint.json``, and renames the folder into ``checkpoints/``. A folder
there is complete by construction.

A checkpoint is resumed only when its fingerprint (the resolved training settings, the base model's weight and
tokenizer files, the training rows) is this run's and its files still hash to what was recorded, so a planted or
damaged file is never handed to a loader; the Trainer loads the states with ``torch.load(weights_only=True)``, which
cannot run code either. Anything else starts over and says so in one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from platypus_nb.assets import model_folder
from platypus_nb.config import FinetuneConfig
from platypus_nb.io import atomic_write_json, file_sha256, sha256_file, sha256_text

CHECKPOINTS = "checkpoints"
COMMIT_FILE = "checkpoint.json"
# Settings that change when and where checkpoints are written, not what is trained.
NOT_TRAINING = ("resume", "save_steps", "save_total_limit", "report_to")
_TOKENIZER_FILES = ("tokenizer", "special_tokens", "vocab", "merges", "added_tokens", "chat_template")


def run_fingerprint(rows: list[dict], cfg: FinetuneConfig, base_model: str, seed: int, n_steps: int) -> dict:
    """What a checkpoint must have been trained with to be resumed by this run."""
    folder = model_folder(base_model)  # for a Hub name, the files the training process will load
    files = {p.name: file_sha256(p) for p in sorted(folder.iterdir())
             if p.is_file() and p.suffix in (".json", ".safetensors", ".model", ".txt", ".jinja")}
    tokenizer = {n: h for n, h in files.items() if n.startswith(_TOKENIZER_FILES) or n.endswith(".model")}
    return {"finetune": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_TRAINING},
            "steps": n_steps, "seed": seed,
            "base model": {n: h for n, h in files.items() if n not in tokenizer}, "tokenizer": tokenizer,
            "training rows": sha256_text(json.dumps(rows, sort_keys=True, ensure_ascii=False))}


def list_checkpoints(folder: Path) -> list[Path]:
    """Committed checkpoints, oldest first."""
    done = [p for p in folder.glob("checkpoint-*") if (p / COMMIT_FILE).is_file()] if folder.is_dir() else []
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def commit(written: Path, final: Path, record: Optional[dict[str, Any]] = None) -> None:
    """Move a folder the Trainer has finished writing to ``final`` in one rename; with ``record``, first write it
    and the sha256 of every file into ``checkpoint.json``."""
    (written / "training_args.bin").unlink(missing_ok=True)
    if record is not None:
        files = {str(p.relative_to(written)): sha256_file(p) for p in sorted(written.rglob("*")) if p.is_file()}
        atomic_write_json(written / COMMIT_FILE, {**record, "files": files})
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(written, final)


def resume_point(folder: Path, fingerprint: dict) -> tuple[Optional[Path], list[int], Optional[str]]:
    """The newest checkpoint this run may resume, the steps its run had resumed from, and, when there are
    checkpoints but none may be resumed, the one line that says why."""
    done = list_checkpoints(folder)
    if not done:
        return None, [], None
    latest = done[-1]
    record = json.loads((latest / COMMIT_FILE).read_text())
    saved, now = record["fingerprint"], fingerprint
    changed = ([f"finetune.{k}" for k in sorted(set(saved["finetune"]) | set(now["finetune"]))
                if saved["finetune"].get(k) != now["finetune"].get(k)]
               + [k for k in now if k != "finetune" and saved.get(k) != now[k]])
    if changed:
        return None, [], f"{latest} was trained with other {', '.join(changed)} than this run: training from step 0"
    files = {str(p.relative_to(latest)) for p in latest.rglob("*") if p.is_file()} - {COMMIT_FILE}
    damaged = sorted((files ^ set(record["files"]))
                     | {n for n in files & set(record["files"]) if sha256_file(latest / n) != record["files"][n]})
    if damaged:
        return None, [], (f"{latest}: {', '.join(damaged)} changed since the checkpoint was written: training "
                          f"from step 0")
    return latest, record["resumed_from_steps"] + [int(latest.name.split("-")[1])], None

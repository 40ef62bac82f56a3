"""Merge partners: the other fine-tunes of the same base that the Platypus adapter is merged into.

The paper's partners are Hub models (StableBeluga-13B, qCammel-70-x, OpenOrcaxOpenChat-Preview2-13B); with the Hub,
:func:`fetch_partner` downloads one (safetensors preferred, PyPI-era ``.bin`` checkpoints converted shard by shard).
Offline there is no such model for a 135M base, so :func:`build_partner` makes a stand-in: a short LoRA fine-tune of
the base on real vendored data (step 03's ``train_lora``), merged into the base with the streamed merge. A broad
general-instruction mix stands in for StableBeluga; MMLU's medical subjects stand in for qCammel's clinical data.
The medical rows come from MMLU's *validation* split; step 05 scores MMLU's *test* split, so no evaluated question
is trained on, but the subjects are the same, which is exactly the kind of overlap a domain partner brings.

Built partners are cached under ``<cache>/partners/`` by a key over the base model's weight hashes and everything
that shapes the build (data, rows, steps, fine-tuning config, seed): a re-run reuses them once every file the build
recorded (adapter and merged model) hashes as recorded; a truncated or altered one is named and rebuilt.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from platypus_nb.assets import model_folder
from platypus_nb.benchmarks_data import read_benchmark
from platypus_nb.config import PARTNER_DATA_NAMES, FinetuneConfig, PartnerConfig
from platypus_nb.contracts import question_text
from platypus_nb.io import (atomic_directory, atomic_write_json, changed_file, read_jsonl, sha256_file, sha256_text,
                            write_jsonl)
from platypus_nb.merge.errors import MergeInputError
from platypus_nb.merge.lora import merge_lora_into
from platypus_nb.merge.safetensors_files import folder_hashes, weight_shards
from platypus_nb.paths import cache_dir

PARTNER_RECORD = "partner.json"
# MMLU subjects of a clinical/medical model's training data (qCammel: clinical dialogues and medical QA).
MEDICAL_SUBJECTS = ("anatomy", "clinical_knowledge", "college_medicine", "medical_genetics", "nutrition",
                    "professional_medicine", "virology")
LETTERS = "ABCDEFGHIJ"


# --------------------------------------------------------------------------------------- stand-in training data


def _multiple_choice_row(question: str, choices: list[str], answer: int, source: str,
                         explanation: str = "") -> dict[str, str]:
    """An Alpaca-style row: the question as instruction, lettered options as input, the lettered answer as output."""
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    output = f"{LETTERS[answer]}. {choices[answer]}"
    if explanation.strip():
        output += f"\n\n{explanation.strip()}"
    return {"instruction": question.strip(), "input": options, "output": output, "data_source": source}


def _arc_easy_rows(seed: int) -> list[dict[str, str]]:
    rows = []
    for r in read_benchmark("arc_easy_validation"):
        labels = r["choices"]["label"]
        rows.append(_multiple_choice_row(r["question"], r["choices"]["text"], labels.index(r["answerKey"]),
                                         "arc_easy_validation"))
    return rows


def _openbookqa_rows(seed: int) -> list[dict[str, str]]:
    rows = []
    for r in read_benchmark("openbookqa_validation"):
        labels = r["choices"]["label"]
        rows.append(_multiple_choice_row(r["question_stem"], r["choices"]["text"], labels.index(r["answerKey"]),
                                         "openbookqa_validation"))
    return rows


def _sciq_rows(seed: int) -> list[dict[str, str]]:
    """SciQ has the answer and three distractors; they are shuffled per question with the run's seed."""
    rows = []
    for i, r in enumerate(read_benchmark("sciq_validation")):
        choices = [r["correct_answer"], r["distractor1"], r["distractor2"], r["distractor3"]]
        random.Random(f"{seed}-sciq-{i}").shuffle(choices)
        rows.append(_multiple_choice_row(r["question"], choices, choices.index(r["correct_answer"]),
                                         "sciq_validation", explanation=r.get("support", "")))
    return rows


def _mmlu_medical_rows(seed: int) -> list[dict[str, str]]:
    return [_multiple_choice_row(r["question"], r["choices"], r["answer"], f"mmlu_validation/{r['subject']}")
            for r in read_benchmark("mmlu_validation") if r["subject"] in MEDICAL_SUBJECTS]


# A partner's build_data sources, in the order of config.PARTNER_DATA_NAMES, which owns the names.
PARTNER_DATA: dict[str, Callable[[int], list[dict[str, str]]]] = dict(zip(PARTNER_DATA_NAMES, (
    _arc_easy_rows, _openbookqa_rows, _sciq_rows, _mmlu_medical_rows), strict=True))


def _partner_pool(spec: PartnerConfig, seed: int) -> list[dict[str, str]]:
    """Every row of a stand-in's sources, pooled and shuffled with ``seed``: its training rows come first."""
    rows = [row for source in spec.build_data for row in PARTNER_DATA[source](seed)]
    random.Random(f"{seed}-{spec.name}").shuffle(rows)
    return rows


def partner_training_rows(spec: PartnerConfig, seed: int) -> list[dict[str, str]]:
    """The stand-in's training rows: its sources pooled, shuffled with ``seed`` and cut to ``build_rows``."""
    return _partner_pool(spec, seed)[:spec.build_rows]


def partner_heldout_rows(spec: PartnerConfig, seed: int, n: int) -> list[dict[str, str]]:
    """``n`` rows of the stand-in's own domain that did not build it: the next rows of the same seeded pool after
    its ``build_rows``, skipping any whose question is also among those (a question present in two sources).

    Step 05 measures every model's loss on them, to see whether a merge keeps its partner's skill.
    """
    pool = _partner_pool(spec, seed)
    used = {question_text(r) for r in pool[:spec.build_rows]}
    rows = [r for r in pool[spec.build_rows:] if question_text(r) not in used][:n]
    if len(rows) < n:
        raise MergeInputError(f"merge.partners ({spec.name!r}): evaluate.partner_heldout_rows = {n} rows of its own "
                              f"domain asked for, but its build_data {spec.build_data} has {len(pool)} rows and "
                              f"build_rows = {spec.build_rows} of them build it, leaving {len(rows)} with a question "
                              f"it was not built on; lower build_rows or evaluate.partner_heldout_rows")
    return rows


# ------------------------------------------------------------------------------------------------- partners


@dataclass
class Partner:
    """A merge partner ready to merge into: a full safetensors model folder, and how it came to be."""

    spec: PartnerConfig
    model_dir: Path
    source: str  # "built" (a stand-in fine-tuned here), "hub" or "local"
    adapter_dir: Optional[Path] = None  # built stand-ins: the LoRA adapter that made it from the base
    train_rows_file: Optional[Path] = None
    cached: bool = False
    report: Optional[dict[str, Any]] = None

    @property
    def name(self) -> str:
        return self.spec.name

    def summary(self) -> dict[str, Any]:
        rows = len(read_jsonl(self.train_rows_file)) if self.train_rows_file else None
        return {"partner": self.name, "stands_in_for": self.spec.stands_in_for, "source": self.source,
                "build_data": ", ".join(self.spec.build_data) or None, "training_rows": rows,
                "reused_from_cache": self.cached, "merged_name": self.spec.merged_name,
                "model_dir": str(self.model_dir)}


def safetensors_copy_of_bin_model(model_dir: Path, out_dir: Path) -> Path:
    """Convert a PyTorch ``.bin`` checkpoint to safetensors one shard at a time (memory: one shard), atomically."""
    import torch
    from safetensors.torch import save_file

    index = model_dir / "pytorch_model.bin.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
        else ["pytorch_model.bin"]
    renamed = {s: s.replace("pytorch_model", "model").removesuffix(".bin") + ".safetensors" for s in shards}
    weight_map = {}
    with atomic_directory(out_dir) as tmp:
        for shard in shards:
            state = torch.load(model_dir / shard, map_location="cpu", mmap=True, weights_only=True)
            # Tied weights share storage in a .bin file; safetensors stores each tensor on its own.
            save_file({k: v.contiguous().clone() for k, v in state.items()}, tmp / renamed[shard],
                      metadata={"format": "pt"})
            weight_map.update({k: renamed[shard] for k in state})
            del state
        if len(shards) > 1:
            atomic_write_json(tmp / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
        for p in model_dir.iterdir():
            if p.is_file() and not p.name.endswith((".bin", ".bin.index.json")):
                shutil.copyfile(p, tmp / p.name)
    return out_dir


def fetch_partner(spec: PartnerConfig, cache_root: Optional[Path] = None) -> Partner:
    """A partner given as a Hub id or local folder (the paper configs), as a safetensors folder."""
    folder = model_folder(spec.model, spec.revision, offline=f"give merge.partners {spec.name!r} build_data in "
                                                             f"place of model, to build a stand-in")
    source = "local" if Path(spec.model).expanduser().is_dir() else "hub"
    if not any(folder.glob("*.safetensors")):
        key = sha256_text(json.dumps([spec.model, spec.revision, sorted(p.name for p in folder.iterdir())]))[:16]
        converted = (cache_root or cache_dir() / "partners") / f"{spec.name}-safetensors-{key}"
        if not converted.is_dir():
            safetensors_copy_of_bin_model(folder, converted)
        folder = converted
    return Partner(spec, folder, source)


def partner_build_key(spec: PartnerConfig, base_dir: Path, finetune: FinetuneConfig, seed: int,
                      rows: list[dict[str, str]]) -> str:
    """What a built partner depends on: base weights, its rows, the fine-tuning recipe and the seed."""
    spec_fields = {"build_data": spec.build_data, "build_rows": spec.build_rows, "build_steps": spec.build_steps,
                   "build_batch_size": spec.build_batch_size, "build_cutoff_len": spec.build_cutoff_len}
    payload = {"base": folder_hashes(base_dir, weight_shards(base_dir)), "spec": spec_fields,
               "rows": sha256_text(json.dumps(rows, sort_keys=True)), "finetune": dataclasses.asdict(finetune),
               "seed": seed}
    return sha256_text(json.dumps(payload, sort_keys=True))[:16]


def build_partner(spec: PartnerConfig, base_model: str, finetune: FinetuneConfig, seed: int, *,
                  trust_remote_code: bool = False, cache_root: Optional[Path] = None) -> Partner:
    """Fine-tune a stand-in partner from the base (LoRA, step 03's recipe, ``build_steps`` steps) and merge it.

    The partner's fine-tuning config is the run's ``finetune`` section with the partner's cutoff, batch size (one
    micro-batch per step, one process) and steps: same rank and targets as the Platypus adapter, so the two can
    also be combined with TIES or DARE (which need adapters of one rank). The build is complete when
    ``partner.json`` exists; an interrupted build resumes (train_lora resumes from its checkpoints, a finished
    adapter is not retrained). A cached build whose adapter or model files no longer hash as recorded is named and
    rebuilt.
    """
    from platypus_nb.finetune import train_lora

    base_dir = model_folder(base_model)
    rows = partner_training_rows(spec, seed)
    recipe = dataclasses.replace(finetune, cutoff_len=spec.build_cutoff_len, max_steps=spec.build_steps,
                                 global_batch_size=spec.build_batch_size, micro_batch_size=spec.build_batch_size,
                                 world_size=1)
    key = partner_build_key(spec, base_dir, recipe, seed, rows)
    folder = (cache_root or cache_dir() / "partners") / f"{spec.name}-{key}"
    damaged = damaged_partner_file(folder)
    cached = damaged is None
    if damaged is not None and (folder / PARTNER_RECORD).is_file():
        print(f"cached partner {spec.name}: {damaged}; rebuilding it")
        (folder / PARTNER_RECORD).unlink()
        shutil.rmtree(folder / "adapter", ignore_errors=True)  # rebuilt whole: damage is rare
    if not cached:
        write_jsonl(folder / "train_rows.jsonl", rows)
        if not (folder / "adapter" / "adapter_config.json").is_file():
            trained = train_lora(rows, recipe, base_model, folder / "train", seed, max_steps=spec.build_steps,
                                 trust_remote_code=trust_remote_code)
            with atomic_directory(folder / "adapter") as tmp:
                shutil.copytree(trained.adapter_dir, tmp, dirs_exist_ok=True)
                atomic_write_json(tmp / "train_metrics.json", trained.metrics)
        report = merge_lora_into(base_dir, folder / "adapter", folder / "model", dtype="auto",
                                 notes={"partner": spec.name, "stands_in_for": spec.stands_in_for})
        files = {str(p.relative_to(folder)): sha256_file(p) for sub in ("adapter", "model")
                 for p in sorted((folder / sub).rglob("*")) if p.is_file()}
        atomic_write_json(folder / PARTNER_RECORD, {"spec": dataclasses.asdict(spec), "base_model": base_model,
                                                    "seed": seed, "key": key, "merge_report": report,
                                                    "files": files})
        shutil.rmtree(folder / "train", ignore_errors=True)
    record = json.loads((folder / PARTNER_RECORD).read_text())
    return Partner(spec, folder / "model", "built", adapter_dir=folder / "adapter",
                   train_rows_file=folder / "train_rows.jsonl", cached=cached, report=record["merge_report"])


def damaged_partner_file(folder: Path) -> Optional[str]:
    """Why a cached stand-in cannot be reused as it is, naming the file; None when every file its build recorded
    (adapter and merged model) still has its sha256, as the base model is checked in :mod:`platypus_nb.assets`."""
    record_path = folder / PARTNER_RECORD
    if not record_path.is_file():
        return f"{record_path} not written (never built, or the build was interrupted)"
    try:
        files = json.loads(record_path.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{record_path} records no file hashes to verify the build by"
    rel = changed_file(folder, files)
    return None if rel is None else f"{folder / rel} is missing or no longer matches its recorded sha256"

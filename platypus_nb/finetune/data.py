"""Training rows to batches: the original tokenization and masking (docs/training.md, "What finetune.py actually
did"), the step plan, packing. Labels are kept *shifted* (``shift_labels[i]`` is what position ``i`` predicts), so
examples can be concatenated into one row without any position learning to predict the next example's first token.

Which examples make each optimizer step is fixed once, from the seed (:func:`plan_steps`); :func:`step_batches`
splits every step the same way whatever the number of processes, and :class:`PackingCollator` turns each forward's
examples into tensors: the Trainer's ordinary plug-ins (a batch sampler and a data collator).
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from platypus_nb.config import FinetuneConfig
# Bad rows, and settings that leave them nothing to train on: the message names the file, row or key.
from platypus_nb.contracts import TrainingRowsError as TrainingDataError, check_training_rows, read_training_rows
from platypus_nb.prompts import render_prompt

IGNORE_INDEX = -100
PAD_TO_MULTIPLE_OF = 8  # DataCollatorForSeq2Seq(pad_to_multiple_of=8) in the original


def load_train_rows(source: list[dict] | str | Path) -> list[dict[str, Any]]:
    """Rows ``{instruction, input, output, ...}`` from a list or a JSONL file, checked before any training starts
    by the one schema and reader of steps 02, 03 and 04 (:mod:`platypus_nb.contracts`)."""
    return check_training_rows(source, "train_rows") if isinstance(source, list) else read_training_rows(source)


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
    if add_eos and ids and ids[-1] != tokenizer.eos_token_id and len(ids) < cfg.cutoff_len:
        ids = ids + [tokenizer.eos_token_id]
    return list(ids)


def tokenize_row(row: dict[str, Any], tokenizer: Any, cfg: FinetuneConfig) -> dict[str, list[int]]:
    """One row as the original tokenized it: ``input_ids`` and ``shift_labels`` (-100: not trained on)."""
    instruction, input_, output = row["instruction"], row.get("input") or "", row["output"]
    ids = _tokenize(tokenizer, render_prompt(instruction, input_, output, cfg.prompt_template), cfg,
                    cfg.add_eos_token)
    labels = list(ids)
    if not cfg.train_on_inputs:
        prompt = render_prompt(instruction, input_, template=cfg.prompt_template)
        prompt_len = len(_tokenize(tokenizer, prompt, cfg, add_eos=False))
        labels[:prompt_len] = [IGNORE_INDEX] * min(prompt_len, len(labels))
    return {"input_ids": ids, "shift_labels": labels[1:] + [IGNORE_INDEX]}


def n_targets(example: dict[str, list[int]]) -> int:
    return sum(t != IGNORE_INDEX for t in example["shift_labels"])


def tokenize_rows(rows: Sequence[dict[str, Any]], tokenizer: Any,
                  cfg: FinetuneConfig) -> tuple[list[dict[str, list[int]]], list[int]]:
    """Tokenize every row; return the examples that have something to learn and their row indices.

    Rows whose prompt fills the whole cutoff are left out: the original kept them with all labels -100, which a
    per-example mean loss turns into NaN.
    """
    examples = [tokenize_row(r, tokenizer, cfg) for r in rows]
    kept = [i for i, e in enumerate(examples) if n_targets(e) > 0]
    return [examples[i] for i in kept], kept


def count_steps(n_examples: int, cfg: FinetuneConfig, max_steps: Optional[int] = None) -> int:
    """Optimizer steps: ``max_steps`` when set, else full global batches in ``num_epochs`` passes (a last partial
    batch is not stepped, as HF Trainer did for the original: 24,926 / 16 -> 1,557 steps)."""
    steps = max_steps or cfg.max_steps or math.floor(n_examples * cfg.num_epochs) // cfg.global_batch_size
    if steps < 1:
        raise TrainingDataError(f"{n_examples} trainable rows x num_epochs {cfg.num_epochs} do not fill one global "
                                f"batch of finetune.global_batch_size = {cfg.global_batch_size}; expected at least "
                                f"{math.ceil(cfg.global_batch_size / cfg.num_epochs)} rows")
    return steps


def plan_steps(n_examples: int, n_steps: int, global_batch_size: int, seed: int) -> list[list[int]]:
    """Example indices of every optimizer step: one seeded shuffle per epoch, as many epochs as the steps need
    (the original shuffled without a seed; seeding makes runs reproducible and resumable)."""
    order: list[int] = []
    epoch = 0
    while len(order) < n_steps * global_batch_size:
        perm = list(range(n_examples))
        random.Random(seed + epoch).shuffle(perm)
        order.extend(perm)
        epoch += 1
    return [order[s * global_batch_size:(s + 1) * global_batch_size] for s in range(n_steps)]


def planned_examples(examples: Sequence[dict], plan: list[list[int]], loss_weighting: str) -> list[dict[str, Any]]:
    """The plan laid out flat, the Trainer's dataset: item ``j`` is the example at position ``j % G`` of step
    ``j // G`` with its loss weight, which depends on the step's other examples (see :func:`loss_weights`)."""
    return [{**examples[i], "example": i, "weight": w} for step in plan
            for i, w in zip(step, loss_weights([n_targets(examples[i]) for i in step], loss_weighting))]


def loss_weights(targets_per_example: list[int], loss_weighting: str) -> list[float]:
    """Weight of each target token of each example so that a step's loss is the intended mean.

    ``example``: each example's mean token loss, averaged over the global batch (what the original optimised: HF
    Trainer 4.31, micro-batch 1). ``token``: the mean over all target tokens of the global batch (HF Trainer >=
    4.46). Both are independent of how examples are grouped into forwards and processes.
    """
    if loss_weighting == "example":
        return [1.0 / (n * len(targets_per_example)) for n in targets_per_example]
    return [1.0 / sum(targets_per_example)] * len(targets_per_example)


def step_batches(items: Sequence[dict], cfg: FinetuneConfig, rank: int, world_size: int) -> list[list[int]]:
    """This process's forwards, step after step: the Trainer's batch sampler over :func:`planned_examples`.

    Every step yields the original's gradient accumulation count of lists (global batch / micro-batch / processes),
    from this process's equal share of the step, longest first. ``packing``: first-fit-decreasing into forwards of at
    most ``micro_batch_size x cutoff_len`` tokens, never more than that count (docs/training.md); the unused lists
    are empty and come first, so the step's last forward, where DDP synchronises, has work. Otherwise
    ``micro_batch_size`` examples per forward.
    """
    g, per_forward = cfg.global_batch_size, cfg.micro_batch_size
    lengths = [len(item["input_ids"]) for item in items]
    batches: list[list[int]] = []
    for start in range(0, len(items), g):  # ties by example, so that the order is the examples', not the plan's
        share = sorted(range(start, start + g), key=lambda j: (-lengths[j], items[j]["example"]))[rank::world_size]
        if cfg.packing:
            forwards = _first_fit_decreasing(share, lengths, per_forward * cfg.cutoff_len)
            batches += [[]] * (g // per_forward // world_size - len(forwards)) + forwards
        else:  # longest first (padding only; group_by_length adds nothing)
            batches += [share[k:k + per_forward] for k in range(0, len(share), per_forward)]
    return batches


def _first_fit_decreasing(share: list[int], lengths: Sequence[int], capacity: int) -> list[list[int]]:
    bins: list[list[int]] = []
    for j in share:  # already longest first
        fit = next((b for b in bins if sum(lengths[k] for k in b) + lengths[j] <= capacity), None)
        if fit is None:
            bins.append(fit := [])
        fit.append(j)
    return bins


class PackingCollator:
    """Tensors for one forward: ``input_ids``, ``position_ids`` and the ``keep`` mask of positions that have a
    target, with their ``targets`` and loss ``weights``.

    ``packing``: the examples concatenated into one padding-free row, position ids restarting at every example
    (how transformers' Llama, FlashAttention-2 and our per-example SDPA find the boundaries). Otherwise one row per
    example, right-padded with ``pad_token_id`` to a multiple of 8 (the original's collator) with an attention mask.
    """

    def __init__(self, packing: bool, pad_token_id: int):
        self.packing, self.pad_token_id = packing, pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.packing or not features:
            rows = [[t for f in features for t in f["input_ids"]]]
            positions = [[p for f in features for p in range(len(f["input_ids"]))]]
            labels = [[t for f in features for t in f["shift_labels"]]]
            weights = [[f["weight"] for f in features for _ in f["input_ids"]]]
            mask = None
        else:
            width = -(-max(len(f["input_ids"]) for f in features) // PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF
            pads = [width - len(f["input_ids"]) for f in features]
            rows = [f["input_ids"] + [self.pad_token_id] * p for f, p in zip(features, pads)]
            positions = [list(range(len(f["input_ids"]))) + [0] * p for f, p in zip(features, pads)]
            labels = [f["shift_labels"] + [IGNORE_INDEX] * p for f, p in zip(features, pads)]
            weights = [[f["weight"]] * width for f in features]
            mask = [[1] * len(f["input_ids"]) + [0] * p for f, p in zip(features, pads)]
        targets = torch.tensor(labels, dtype=torch.long)
        keep = targets != IGNORE_INDEX
        batch = {"input_ids": torch.tensor(rows, dtype=torch.long),
                 "position_ids": torch.tensor(positions, dtype=torch.long), "keep": keep,
                 "targets": targets[keep], "weights": torch.tensor(weights, dtype=torch.float32)[keep]}
        if mask is not None:
            batch["attention_mask"] = torch.tensor(mask, dtype=torch.long)
        return batch

"""The package's own step loop before step 03 moved onto ``transformers.Trainer`` (platypus_nb/finetune/loop.py at
git 7b56f7e), kept for ``bench_finetune.py`` only: its single-process path, step for step the same work.

Per optimizer step it weighted the step's examples, split them into (packed) forwards, ran each forward with the
LM head on target positions only, back-propagated the weighted cross-entropy, clipped the gradient norm, stepped
AdamW and the schedule. Checkpoints, resume, multi-process accumulation (through a private accelerate flag) and
logging are left out: they are what the Trainer now does. The batches come from the same plan, sampler and collator
as the Trainer's (``platypus_nb.finetune.data``; the per-step losses of the two engines are equal, see
``tests/test_finetune.py``).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from platypus_nb.assets import load_tokenizer
from platypus_nb.config import FinetuneConfig
from platypus_nb.finetune.data import (PackingCollator, count_steps, plan_steps, planned_examples, step_batches,
                                       tokenize_rows)
from platypus_nb.finetune.model import load_lora_model, resolve_precision


def train_own_loop(rows: list[dict], cfg: FinetuneConfig, base_model: str, steps: int, seed: int) -> list[dict]:
    """Train ``steps`` optimizer steps; per step: seconds, CPU seconds, tokens, target tokens, mean token loss."""
    from transformers import get_scheduler, set_seed

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    tokenizer = load_tokenizer(base_model)
    examples, _ = tokenize_rows(rows, tokenizer, cfg)
    plan = plan_steps(len(examples), count_steps(len(examples), cfg, steps), cfg.global_batch_size, seed)
    dataset = planned_examples(examples, plan, cfg.loss_weighting)
    forwards = step_batches(dataset, cfg, 0, 1)
    per_step = len(forwards) // len(plan)
    collate = PackingCollator(cfg.packing, tokenizer.pad_token_id)
    model = load_lora_model(base_model, cfg, resolve_precision(cfg, cuda), device, seed).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=len(plan))
    set_seed(seed)
    model.train()
    log = []
    for step in range(len(plan)):
        started, cpu_started = time.perf_counter(), time.process_time()
        sums = torch.zeros(4, dtype=torch.float64)
        for group in forwards[step * per_step:(step + 1) * per_step]:
            if not group:
                continue
            batch = {k: t.to(device) for k, t in collate([dataset[j] for j in group]).items()}
            ce = _token_losses(model, batch)
            objective = (ce * batch["weights"]).sum()
            objective.backward()
            tokens = batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
            sums += torch.tensor([objective.item(), ce.sum().item(), ce.numel(), float(tokens)], dtype=torch.float64)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        log.append({"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started,
                    "loss": sums[0].item(), "token_loss": (sums[1] / sums[2]).item(),
                    "target_tokens": int(sums[2]), "tokens": int(sums[3])})
    return log


def _token_losses(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    keep = batch["keep"]
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False,
              "attention_mask": batch.get("attention_mask")}
    if keep.shape[0] == 1:
        logits = model(**inputs, logits_to_keep=keep[0].nonzero().squeeze(1)).logits.squeeze(0)
    else:
        logits = model(**inputs).logits[keep]
    return F.cross_entropy(logits.float(), batch["targets"], reduction="none")

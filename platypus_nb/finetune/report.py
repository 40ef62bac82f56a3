"""What the notebook shows about a fine-tune: the data it sees, the loss and learning-rate curves, and answers of the
base and the fine-tuned model side by side for questions it trained on (held-in) and questions it did not
(held-out)."""

from __future__ import annotations

import dataclasses
import random
import statistics
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import torch

from platypus_nb.assets import load_model, load_tokenizer
from platypus_nb.benchmarks_data import read_benchmark
from platypus_nb.config import FinetuneConfig
from platypus_nb.finetune.data import (IGNORE_INDEX, check_cutoff_fits_template, count_steps, n_targets, tokenize_row,
                                       tokenize_rows)
from platypus_nb.prompts import render_prompt, response_of


def recipe_table(cfg: FinetuneConfig) -> pd.DataFrame:
    """This run's recipe next to the paper's (the config defaults: README table + what finetune.py really did)."""
    paper = FinetuneConfig()
    rows = [(f.name, getattr(cfg, f.name), getattr(paper, f.name),
             "" if getattr(cfg, f.name) == getattr(paper, f.name) else "changed") for f in dataclasses.fields(cfg)]
    return pd.DataFrame(rows, columns=["key", "this run", "paper (13B)", ""]).set_index("key")


def masked_view(row: dict, cfg: FinetuneConfig, base_model: str) -> pd.DataFrame:
    """One training example split into the part masked out of the loss and the part trained on."""
    tokenizer = load_tokenizer(base_model)
    example = tokenize_row(row, tokenizer, cfg)
    first_target = next(i for i, t in enumerate(example["shift_labels"]) if t != IGNORE_INDEX) + 1
    prompt, trained = example["input_ids"][:first_target], example["input_ids"][first_target:]
    return pd.DataFrame([("prompt (label -100)", len(prompt), tokenizer.decode(prompt)),
                         ("response + EOS (in the loss)", len(trained), tokenizer.decode(trained))],
                        columns=["part", "tokens", "text"]).set_index("part")


def data_summary(rows: list[dict], cfg: FinetuneConfig, base_model: str,
                 max_steps: Optional[int] = None) -> pd.DataFrame:
    """Rows, tokens per example, the share of tokens trained on (the rest is the masked prompt) and the steps."""
    tokenizer = load_tokenizer(base_model)
    template_tokens = check_cutoff_fits_template(tokenizer, cfg)
    examples, kept = tokenize_rows(rows, tokenizer, cfg)
    lengths = [len(e["input_ids"]) for e in examples]
    steps = count_steps(len(examples), cfg, max_steps)
    return pd.DataFrame([
        ("rows in the training file", len(rows)),
        ("rows with a response token within the cutoff", len(kept)),
        ("tokens per example: mean / max", f"{statistics.mean(lengths):.0f} / {max(lengths)}"),
        ("examples cut at cutoff_len", sum(n == cfg.cutoff_len for n in lengths)),
        ("share of tokens in the loss (response + EOS)",
         f"{sum(map(n_targets, examples)) / sum(lengths):.1%}"),
        ("tokens of the empty prompt template", template_tokens),
        ("optimizer steps (global batch %d)" % cfg.global_batch_size, steps),
        ("examples trained on", steps * cfg.global_batch_size),
    ], columns=["", "value"]).set_index("")


def metrics_table(metrics: dict[str, Any]) -> pd.DataFrame:
    gib = metrics["peak_memory_bytes"] / 2 ** 30
    return pd.DataFrame([
        ("optimizer steps", metrics["steps"]),
        ("examples / tokens seen", f"{metrics['examples_seen']} / {metrics['tokens_seen']}"),
        ("tokens in the loss", metrics["target_tokens_seen"]),
        ("loss: first step -> last step", f"{metrics['first_loss']:.3f} -> {metrics['final_loss']:.3f}"),
        ("training time (s)", f"{metrics['train_seconds']:.0f}"),
        ("tokens / s", f"{metrics['tokens_per_second']:.0f}"),
        ("model GFLOP / s", f"{metrics['model_flops_per_second'] / 1e9:.2f}"),
        ("peak memory (GiB, process RSS on CPU)", f"{gib:.2f}"),
        ("trainable (LoRA) parameters", metrics["trainable_parameters"]),
        ("processes", metrics["world_size"]),
        ("precision used", metrics["precision"]["name"] + (
            f" ({metrics['precision']['quantization']} base)" if metrics["precision"]["quantization"] else "")),
        ("resumed from step", ", ".join(map(str, metrics["resumed_from_steps"])) or "-"),
    ], columns=["", "value"]).set_index("")


def plot_loss_and_lr(metrics: dict[str, Any]):
    import matplotlib.pyplot as plt

    log = pd.DataFrame(metrics["loss_per_step"])
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 3.6))
    ax_loss.plot(log["step"], log["loss"], marker=".", label="training objective")
    ax_loss.plot(log["step"], log["token_loss"], alpha=0.6, label="mean loss per response token")
    ax_loss.set(xlabel="optimizer step", ylabel="cross-entropy (nats)", title="Training loss")
    ax_loss.legend()
    ax_lr.plot(log["step"], log["lr"], color="tab:green")
    ax_lr.set(xlabel="optimizer step", ylabel="learning rate", title="Learning rate (warm-up, cosine)")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- generations


def generation_questions(rows: list[dict], seen: list[int], n: int = 3, seed: int = 0) -> list[dict[str, str]]:
    """``n`` held-in questions (rows trained on) and ``n`` held-out ones: rows of the file the run did not reach,
    or, when it saw every row, ARC-Challenge test questions (the evaluation's science questions)."""
    held_in = [rows[i] for i in dict.fromkeys(seen)][:n]
    unseen = [r for i, r in enumerate(rows) if i not in set(seen)]
    if len(unseen) >= n:
        held_out = random.Random(seed).sample(unseen, n)
    else:
        held_out = _arc_questions(n, seed)
    return ([{"kind": "held-in", **_question(r)} for r in held_in]
            + [{"kind": "held-out", **_question(r)} for r in held_out])


def _question(row: dict) -> dict[str, str]:
    return {"instruction": row["instruction"], "input": row.get("input") or "", "reference": row["output"]}


def _arc_questions(n: int, seed: int) -> list[dict]:
    picked = random.Random(seed).sample(read_benchmark("arc_challenge_test"), n)
    return [{"instruction": q["question"] + "\n" + "\n".join(f"{label}. {text}" for label, text in
                                                           zip(q["choices"]["label"], q["choices"]["text"])),
             "output": q["answerKey"]} for q in picked]


def compare_generations(base_model: str, adapter_dir: Path, questions: list[dict[str, str]], template: str = "alpaca",
                        max_new_tokens: int = 96) -> pd.DataFrame:
    """Greedy answers of the base and of base + adapter to the same Alpaca prompts (one model, adapter on/off)."""
    from peft import PeftModel

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    tokenizer = load_tokenizer(base_model)
    tokenizer.padding_side = "left"  # batched generation continues every prompt from its last token
    model = PeftModel.from_pretrained(load_model(base_model, dtype=dtype), str(adapter_dir)).eval()
    if torch.cuda.is_available():
        model.to("cuda")
    prompts = [render_prompt(q["instruction"], q["input"], template=template) for q in questions]
    with model.disable_adapter():
        base = _generate(model, tokenizer, prompts, max_new_tokens)
    tuned = _generate(model, tokenizer, prompts, max_new_tokens)
    return pd.DataFrame({"kind": [q["kind"] for q in questions],
                         "question": [q["instruction"] + (f"\n{q['input']}" if q["input"] else "") for q in questions],
                         "reference": [q["reference"] for q in questions],
                         "base model": [response_of(p + b, template) for p, b in zip(prompts, base)],
                         "fine-tuned": [response_of(p + t, template) for p, t in zip(prompts, tuned)]})


def _generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

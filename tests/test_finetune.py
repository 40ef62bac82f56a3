"""Step 03: the Platypus recipe's template and masking, exact packing, resumable checkpoints, 2-process DDP, and a
clear error for each kind of bad input before training starts. Real MATH rows, a random 2-layer Llama with
SmolLM2's tokenizer (``tiny_llama_dir``)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from platypus_nb.assets import data_file
from platypus_nb.config import ConfigError, FinetuneConfig, load_config
from platypus_nb.finetune import ModelSetupError, TrainingDataError, train_lora
from platypus_nb.finetune.data import (IGNORE_INDEX, collate, micro_batches, plan_steps, rank_share, token_weights,
                                       tokenize_row, tokenize_rows)
from platypus_nb.finetune.attention import SEGMENT_SDPA, register_segment_sdpa, segment_bounds
from platypus_nb.finetune.loop import _token_losses, list_checkpoints
from platypus_nb.paths import PROJECT_ROOT
from platypus_nb.prompts import render_prompt, response_of

# The paper's recipe at test scale: small batches, short cutoff, a high learning rate so a few steps show learning.
RECIPE = FinetuneConfig(precision="fp32", cutoff_len=160, global_batch_size=4, micro_batch_size=2, warmup_steps=1,
                        learning_rate=5e-3, save_steps=2, gradient_checkpointing=False)
STEPS = 10


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_process():
    """Tiny models on a shared 2-core machine: one thread per process avoids OpenMP threads waiting on each other
    (small ops ran ~17x slower with 2 threads under load); the subprocesses get the same through OMP_NUM_THREADS."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def math_rows() -> list[dict]:
    """Real MATH problems with short worked solutions, as Alpaca rows (how step 01 formats MATH)."""
    with gzip.open(data_file("math_test.jsonl.gz"), "rt") as f:
        problems = [json.loads(line) for line in f]
    short = [p for p in problems if len(p["problem"]) + len(p["solution"]) < 300]
    return [{"instruction": p["problem"], "input": "", "output": p["solution"]} for p in short[:24]]


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


# ------------------------------------------------------------------------------------------------ template


def test_alpaca_template_is_the_original_character_for_character():
    assert render_prompt("Add 2 and 3.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n")
    assert render_prompt("Add them.", "2 and 3", "5") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd them.\n\n"
        "### Input:\n2 and 3\n\n### Response:\n5")
    assert render_prompt("Add 2 and 3.", "", "5").endswith("### Response:\n5")  # empty input: no Input block
    assert response_of(render_prompt("Add 2 and 3.", output="The sum is 5.")) == "The sum is 5."


# ------------------------------------------------------------------------------------------------ masking


def test_prompt_tokens_are_masked_and_eos_is_appended(math_rows, tokenizer):
    row = math_rows[0]
    example = tokenize_row(row, tokenizer, dataclasses.replace(RECIPE, cutoff_len=1024))
    prompt_len = len(tokenizer(render_prompt(row["instruction"]))["input_ids"])
    # Position i predicts token i+1: nothing before the last prompt token predicts anything.
    assert set(example.targets[:prompt_len - 1]) == {IGNORE_INDEX}
    trained = [t for t in example.targets if t != IGNORE_INDEX]
    assert trained[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(trained[:-1]) == row["output"]
    assert example.targets[-1] == IGNORE_INDEX  # the last position has nothing to predict


def test_train_on_inputs_and_add_eos_token_switches(math_rows, tokenizer):
    cfg = dataclasses.replace(RECIPE, cutoff_len=1024)
    with_inputs = tokenize_row(math_rows[0], tokenizer, dataclasses.replace(cfg, train_on_inputs=True))
    assert with_inputs.n_targets == len(with_inputs) - 1
    no_eos = tokenize_row(math_rows[0], tokenizer, dataclasses.replace(cfg, add_eos_token=False))
    assert no_eos.input_ids[-1] != tokenizer.eos_token_id
    assert len(no_eos) == len(with_inputs) - 1


def test_truncated_rows_get_no_eos_and_prompt_only_rows_are_dropped(math_rows, tokenizer):
    long_row = {"instruction": math_rows[0]["instruction"], "output": " ".join(["seven"] * 400)}
    cut = tokenize_row(long_row, tokenizer, RECIPE)
    assert len(cut) == RECIPE.cutoff_len and cut.input_ids[-1] != tokenizer.eos_token_id  # as the original
    prompt_only = {"instruction": "word " * 300, "output": "5"}
    examples, kept = tokenize_rows([prompt_only, math_rows[0]], tokenizer, RECIPE)
    assert kept == [1] and len(examples) == 1


# ------------------------------------------------------------------------------------------------ plan, packing


def test_step_plan_is_seeded_and_split_across_processes(math_rows, tokenizer):
    examples, _ = tokenize_rows(math_rows, tokenizer, RECIPE)
    plan = plan_steps(len(examples), 8, 4, seed=7)
    assert plan == plan_steps(len(examples), 8, 4, seed=7) != plan_steps(len(examples), 8, 4, seed=8)
    assert sorted(i for step in plan[:len(examples) // 4] for i in step) == list(range(len(examples)))  # epoch 1
    shares = [rank_share(plan[0], examples, r, 2) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(plan[0]) and len(shares[0]) == len(shares[1]) == 2
    cfg = dataclasses.replace(RECIPE, micro_batch_size=1)
    for group in micro_batches(plan[0], examples, cfg):
        assert sum(len(examples[i]) for i in group) <= cfg.cutoff_len


def test_loss_weights_average_examples_or_tokens(math_rows, tokenizer):
    examples, _ = tokenize_rows(math_rows, tokenizer, RECIPE)
    step = [0, 1, 2, 3]
    for mode in ("example", "token"):
        w = token_weights(step, examples, mode)
        assert sum(w[i] * examples[i].n_targets for i in step) == pytest.approx(1.0)
    w = token_weights(step, examples, "example")
    assert w[0] * examples[0].n_targets == pytest.approx(0.25)


@pytest.mark.parametrize("attention", ["sdpa", SEGMENT_SDPA])
def test_packed_row_attends_within_each_example_only(attention, math_rows, tokenizer, tiny_llama_dir):
    """One padding-free packed row gives the same per-token losses as the original's padded micro-batches, with
    transformers' dense block-diagonal mask and with our per-example SDPA alike."""
    from transformers import AutoModelForCausalLM

    register_segment_sdpa()
    examples, _ = tokenize_rows(math_rows[:3], tokenizer, RECIPE)
    weights = token_weights([0, 1, 2], examples, "token")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32,
                                                 attn_implementation=attention).eval()
    with torch.no_grad():
        packed = _token_losses(model, collate([0, 1, 2], examples, weights, True, tokenizer.pad_token_id))
        padded = torch.cat([_token_losses(model, collate([i], examples, weights, False, tokenizer.pad_token_id))
                            for i in range(3)])
        batched = _token_losses(model, collate([0, 1, 2], examples, weights, False, tokenizer.pad_token_id))
    assert packed.shape == padded.shape == (sum(e.n_targets for e in examples),)
    torch.testing.assert_close(packed, padded, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(batched, padded, rtol=1e-4, atol=1e-4)


def test_segment_bounds_follow_position_resets():
    assert segment_bounds(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])) == [(0, 3), (3, 5), (5, 9)]
    assert segment_bounds(torch.tensor([[0, 1, 2, 3]])) == [(0, 4)]


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_training_files_fail_before_training(tmp_path, tiny_llama_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TrainingDataError, match="no training rows"):
        train_lora(empty, RECIPE, str(tiny_llama_dir), tmp_path / "out", 0)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output\n')
    with pytest.raises(TrainingDataError, match="broken.jsonl: line 2: not valid JSON"):
        train_lora(broken, RECIPE, str(tiny_llama_dir), tmp_path / "out", 0)
    no_output = tmp_path / "no_output.jsonl"
    no_output.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "input": ""}\n')
    with pytest.raises(TrainingDataError, match="line 2: missing key 'output'"):
        train_lora(no_output, RECIPE, str(tiny_llama_dir), tmp_path / "out", 0)
    with pytest.raises(TrainingDataError, match="does not exist"):
        train_lora(tmp_path / "missing.jsonl", RECIPE, str(tiny_llama_dir), tmp_path / "out", 0)
    assert not (tmp_path / "out").exists()


def test_bad_settings_fail_before_training(tmp_path, math_rows, tiny_llama_dir):
    out = tmp_path / "out"
    with pytest.raises(TrainingDataError, match=r"cutoff_len = 20 is not longer than the empty 'alpaca' prompt"):
        train_lora(math_rows, dataclasses.replace(RECIPE, cutoff_len=20), str(tiny_llama_dir), out, 0)
    with pytest.raises(ModelSetupError, match=r"\['q_proj_typo'\] not found .* gate_proj"):
        train_lora(math_rows, dataclasses.replace(RECIPE, lora_target_modules=["q_proj_typo"]),
                   str(tiny_llama_dir), out, 0)
    with pytest.raises(ConfigError, match="global_batch_size: expected a multiple of micro_batch_size x world_size"):
        train_lora(math_rows, dataclasses.replace(RECIPE, global_batch_size=6, micro_batch_size=4),
                   str(tiny_llama_dir), out, 0)
    with pytest.raises(ConfigError, match="global_batch_size: expected a multiple"):
        load_config("tiny", {"finetune.world_size": 3})
    with pytest.raises(TrainingDataError, match="do not fill one global batch"):
        train_lora(math_rows[:3], RECIPE, str(tiny_llama_dir), out, 0)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ training


def _losses(metrics: dict) -> list[float]:
    return [r["loss"] for r in metrics["loss_per_step"]]


@pytest.fixture(scope="module")
def uninterrupted(math_rows, tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return train_lora(math_rows, RECIPE, str(tiny_llama_dir), out, seed=3, max_steps=STEPS)


def test_training_writes_the_adapter_metrics_and_args_and_learns(uninterrupted):
    out = uninterrupted.out_dir
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == ["down_proj", "gate_proj", "up_proj"]
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (16, 16)
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == STEPS == len(m["loss_per_step"]) and m["examples_seen"] == STEPS * 4
    assert m["tokens_seen"] > m["target_tokens_seen"] > 0 and m["tokens_per_second"] > 0
    assert m["peak_memory_bytes"] > 0
    losses = _losses(m)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.05  # the loss goes down (a random 2-layer model learns slowly)
    args = json.loads((out / "train_args.json").read_text())
    assert args["gradient_accumulation_steps"] == 2 and args["finetune"]["lora_target_modules"] == [
        "gate_proj", "up_proj", "down_proj"]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-6", "step-8"]  # save_total_limit 2


@pytest.mark.parametrize("precision", ["nf4", "int8"])
def test_quantized_bases_train_on_cpu(precision, math_rows, tiny_llama_dir, tmp_path):
    """QLoRA (4-bit NF4, double quantisation) and the original's LLM.int8 base, with the real bitsandbytes."""
    cfg = dataclasses.replace(RECIPE, precision=precision, bnb_4bit_compute_dtype="bfloat16", save_steps=100)
    result = train_lora(math_rows, cfg, str(tiny_llama_dir), tmp_path, seed=1, max_steps=2)
    args = json.loads((tmp_path / "train_args.json").read_text())
    assert args["effective_precision"]["quantization"] == precision
    assert args["effective_precision"]["compute_dtype"] == "float32"  # no CUDA: 16-bit compute runs as fp32
    assert result.metrics["steps"] == 2 and all(math.isfinite(x) for x in _losses(result.metrics))
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_a_killed_run_resumes_from_its_last_checkpoint(math_rows, tiny_llama_dir, tmp_path, uninterrupted):
    """Kill -9 a training process after its first checkpoint; the re-run continues and ends like an
    uninterrupted run (same steps, same losses: optimizer, scheduler and dropout RNG were restored)."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in math_rows))
    out = tmp_path / "run"
    script = (f"from platypus_nb.finetune import train_lora; from platypus_nb.config import FinetuneConfig; "
              f"train_lora({str(rows)!r}, FinetuneConfig(**{dataclasses.asdict(RECIPE)!r}), "
              f"{str(tiny_llama_dir)!r}, {str(out)!r}, 3, max_steps={STEPS})")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        while not list_checkpoints(out / "checkpoints") and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "metrics.json").exists()
    killed_at = int(list_checkpoints(out / "checkpoints")[-1].name.split("-")[1])
    assert killed_at < STEPS

    resumed = train_lora(rows, RECIPE, str(tiny_llama_dir), out, seed=3, max_steps=STEPS)
    assert resumed.metrics["steps"] == STEPS and resumed.metrics["resumed_from_steps"] == [killed_at]
    assert _losses(resumed.metrics) == pytest.approx(_losses(uninterrupted.metrics), rel=1e-5)


def test_two_processes_follow_the_one_process_loss_curve(math_rows, tiny_llama_dir, tmp_path):
    """DDP over 2 gloo processes with the same global batch optimises the same objective on the same examples.

    Without dropout both runs are deterministic and differ only in floating-point summation order (gradients are
    summed across processes instead of within one backward), so the per-step losses agree to ~1e-6 relative; 1e-4
    leaves room for that error compounding over 10 Adam steps and nothing else: a wrong loss normalisation (a
    factor of 2) or wrong data split shows as a difference of 1e-2 or more.
    """
    cfg = dataclasses.replace(RECIPE, lora_dropout=0.0, save_steps=100)
    one = train_lora(math_rows, cfg, str(tiny_llama_dir), tmp_path / "one", seed=5, max_steps=STEPS)
    two = train_lora(math_rows, dataclasses.replace(cfg, world_size=2), str(tiny_llama_dir), tmp_path / "two",
                     seed=5, max_steps=STEPS)
    assert two.metrics["world_size"] == 2 and two.metrics["steps"] == STEPS
    assert two.metrics["tokens_seen"] == one.metrics["tokens_seen"]
    assert _losses(two.metrics) == pytest.approx(_losses(one.metrics), rel=1e-4)
    assert _losses(one.metrics)[-1] < _losses(one.metrics)[0]


# ------------------------------------------------------------------------------------------------ notebook


@pytest.mark.slow
def test_notebook_trains_on_the_contamination_steps_output(math_rows, tiny_llama_dir, tmp_path, figures_override,
                                                          monkeypatch):
    """Notebook 03 headless: reads 02's clean.jsonl, trains, plots, and compares 3 held-in + 3 held-out answers."""
    from platypus_nb.io import write_jsonl
    from platypus_nb.paths import NOTEBOOKS_DIR
    from platypus_nb.runner import execute_notebook

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the notebook's kernel process
    run = tmp_path / "run"
    write_jsonl(run / "02_contamination" / "clean.jsonl", [{**r, "data_source": "MATH"} for r in math_rows])
    overrides = {**figures_override, "model.base": str(tiny_llama_dir), "finetune.cutoff_len": 160,
                 "finetune.global_batch_size": 4, "finetune.micro_batch_size": 2}
    execute_notebook(NOTEBOOKS_DIR / "03_finetune.ipynb", tmp_path / "03.ipynb",
                     {"config": "tiny", "run_dir": str(run), "overrides": overrides, "max_steps": 3,
                      "max_new_tokens": 4})
    out = run / "03_finetune"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3
    assert (out / "train_args.json").is_file() and (out / "figures" / "03_training_loss_lr.png").is_file()
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [g["kind"] for g in generations] == ["held-in"] * 3 + ["held-out"] * 3
    held_in = {g["question"] for g in generations[:3]}
    assert held_in <= {r["instruction"] for r in math_rows}

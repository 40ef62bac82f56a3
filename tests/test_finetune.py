"""Step 03: the Platypus recipe's template and masking, exact packing, per-step losses equal to the loop the Trainer
replaced, atomic and fingerprinted checkpoints that never unpickle freely, 2-process DDP, a stop on divergence, and a
clear error for each kind of bad input before training starts. Real MATH rows, a random 2-layer Llama with
SmolLM2's tokenizer (``tiny_llama_dir``)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from platypus_nb.assets import data_file
from platypus_nb.config import ConfigError, FinetuneConfig, load_config
from platypus_nb.finetune import ModelSetupError, TrainingDataError, TrainingDivergedError, train_lora
from platypus_nb.finetune.attention import SEGMENT_SDPA, register_segment_sdpa, segment_bounds
from platypus_nb.finetune.checkpoints import COMMIT_FILE, list_checkpoints
from platypus_nb.finetune.data import (IGNORE_INDEX, PackingCollator, loss_weights, n_targets, plan_steps,
                                       planned_examples, step_batches, tokenize_row, tokenize_rows)
from platypus_nb.io import sha256_file
from platypus_nb.merge.adapter import target_kinds
from platypus_nb.paths import PROJECT_ROOT
from platypus_nb.prompts import render_prompt, response_of

# The paper's recipe at test scale: small batches, short cutoff, a high learning rate so a few steps show learning.
RECIPE = FinetuneConfig(precision="fp32", cutoff_len=160, global_batch_size=4, micro_batch_size=2, warmup_steps=1,
                        learning_rate=5e-3, save_steps=2, gradient_checkpointing=False)
STEPS = 10
# Per-step losses of the package's own step loop (git 7b56f7e) that the Trainer replaced, on these rows and model.
OWN_LOOP = json.loads((Path(__file__).parent / "fixtures" / "finetune_own_loop_losses.json").read_text())


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
    assert set(example["shift_labels"][:prompt_len - 1]) == {IGNORE_INDEX}
    trained = [t for t in example["shift_labels"] if t != IGNORE_INDEX]
    assert trained[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(trained[:-1]) == row["output"]
    assert example["shift_labels"][-1] == IGNORE_INDEX  # the last position has nothing to predict


def test_train_on_inputs_and_add_eos_token_switches(math_rows, tokenizer):
    cfg = dataclasses.replace(RECIPE, cutoff_len=1024)
    with_inputs = tokenize_row(math_rows[0], tokenizer, dataclasses.replace(cfg, train_on_inputs=True))
    assert n_targets(with_inputs) == len(with_inputs["input_ids"]) - 1
    no_eos = tokenize_row(math_rows[0], tokenizer, dataclasses.replace(cfg, add_eos_token=False))
    assert no_eos["input_ids"][-1] != tokenizer.eos_token_id
    assert len(no_eos["input_ids"]) == len(with_inputs["input_ids"]) - 1


def test_truncated_rows_get_no_eos_and_prompt_only_rows_are_dropped(math_rows, tokenizer):
    long_row = {"instruction": math_rows[0]["instruction"], "output": " ".join(["seven"] * 400)}
    cut = tokenize_row(long_row, tokenizer, RECIPE)
    assert len(cut["input_ids"]) == RECIPE.cutoff_len and cut["input_ids"][-1] != tokenizer.eos_token_id
    prompt_only = {"instruction": "word " * 300, "output": "5"}
    examples, kept = tokenize_rows([prompt_only, math_rows[0]], tokenizer, RECIPE)
    assert kept == [1] and len(examples) == 1


# ------------------------------------------------------------------------------------------------ plan, packing


def test_step_plan_is_seeded_and_split_across_processes(math_rows, tokenizer):
    examples, _ = tokenize_rows(math_rows, tokenizer, RECIPE)
    plan = plan_steps(len(examples), 8, 4, seed=7)
    assert plan == plan_steps(len(examples), 8, 4, seed=7) != plan_steps(len(examples), 8, 4, seed=8)
    assert sorted(i for step in plan[:len(examples) // 4] for i in step) == list(range(len(examples)))  # epoch 1
    items = planned_examples(examples, plan, "example")
    lengths = [len(e["input_ids"]) for e in items]
    two = [step_batches(items, dataclasses.replace(RECIPE, world_size=2), rank, 2) for rank in range(2)]
    # Each process: one forward of its 2 examples per step (global 4 / micro 2 / 2 processes), every example once.
    assert len(two[0]) == len(two[1]) == 8 and sorted(j for b in two[0] + two[1] for j in b) == list(range(32))
    assert all(len(b) == 2 for b in two[0] + two[1])
    one = step_batches(items, dataclasses.replace(RECIPE, micro_batch_size=1), 0, 1)
    assert len(one) == 8 * 4  # 4 forwards a step, the unused ones (packing fills fewer) empty and first
    for step in range(8):
        forwards = one[4 * step:4 * step + 4]
        assert sorted(j for b in forwards for j in b) == list(range(4 * step, 4 * step + 4))
        assert all(sum(lengths[j] for j in b) <= RECIPE.cutoff_len for b in forwards)
        assert [bool(b) for b in forwards] == sorted(bool(b) for b in forwards)


def test_loss_weights_average_examples_or_tokens():
    targets = [10, 30, 20, 40]
    for mode in ("example", "token"):
        assert sum(w * n for w, n in zip(loss_weights(targets, mode), targets)) == pytest.approx(1.0)
    assert loss_weights(targets, "example")[0] * 10 == pytest.approx(0.25)
    assert loss_weights(targets, "token") == [0.01] * 4


def _token_losses(model, batch: dict) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                   attention_mask=batch.get("attention_mask"), use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits[batch["keep"]], batch["targets"], reduction="none")


@pytest.mark.parametrize("attention", ["sdpa", SEGMENT_SDPA])
def test_packed_row_attends_within_each_example_only(attention, math_rows, tokenizer, tiny_llama_dir):
    """One padding-free packed row gives the same per-token losses as the original's padded micro-batches, with
    transformers' dense block-diagonal mask and with our per-example SDPA alike."""
    from transformers import AutoModelForCausalLM

    register_segment_sdpa()
    examples, _ = tokenize_rows(math_rows[:3], tokenizer, RECIPE)
    features = planned_examples(examples, [[0, 1, 2]], "token")
    packed, padded = PackingCollator(True, tokenizer.pad_token_id), PackingCollator(False, tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32,
                                                 attn_implementation=attention).eval()
    with torch.no_grad():
        one_row = _token_losses(model, packed(features))
        one_each = torch.cat([_token_losses(model, padded([f])) for f in features])
        batched = _token_losses(model, padded(features))
    assert packed(features)["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples))
    assert one_row.shape == one_each.shape == (sum(map(n_targets, examples)),)
    torch.testing.assert_close(one_row, one_each, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(batched, one_each, rtol=1e-4, atol=1e-4)


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
    with pytest.raises(ModelSetupError, match=r"^finetune.lora_target_modules: 'mlp' names a LlamaMLP in .* not a "
                                              r"Linear layer; its Linear layers are: down_proj, gate_proj, k_proj, "
                                              r"o_proj, q_proj, up_proj, v_proj$"):
        train_lora(math_rows, dataclasses.replace(RECIPE, lora_target_modules=["up_proj", "mlp"]),
                   str(tiny_llama_dir), out, 0)
    with pytest.raises(ConfigError, match="global_batch_size: should be a multiple of micro_batch_size x world_size"):
        train_lora(math_rows, dataclasses.replace(RECIPE, global_batch_size=6, micro_batch_size=4),
                   str(tiny_llama_dir), out, 0)
    with pytest.raises(ConfigError, match="global_batch_size: should be a multiple"):
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
    assert not list((out / "adapter").glob("*.bin"))  # no pickle anywhere among the outputs
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
    assert args["training_arguments"]["optim"] == "adamw_torch"
    checkpoints = list_checkpoints(out / "checkpoints")
    assert [p.name for p in checkpoints] == ["checkpoint-8", "checkpoint-10"]  # save_total_limit 2
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))
    assert list((out / "trainer" / "runs").rglob("events.out.tfevents.*"))  # report_to: tensorboard


def test_all_linear_adapts_attention_and_mlp_not_the_output_and_merges_as_peft_does(math_rows, tiny_llama_dir,
                                                                                   tmp_path):
    """peft's "all-linear" (QLoRA's targets, the paper adapted the MLP only): the saved adapter names every Linear
    layer but lm_head, and step 04's streamed merge of it equals peft's merge_and_unload."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from platypus_nb.merge.lora import merge_lora_into
    from platypus_nb.merge.pipeline import adapter_summary

    result = train_lora(math_rows, dataclasses.replace(RECIPE, lora_target_modules=["all-linear"]),
                        str(tiny_llama_dir), tmp_path / "out", seed=0, max_steps=2)
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    # peft saves the expansion: every Linear layer by its full name, 7 per decoder layer, lm_head not among them.
    targets = adapter_config["target_modules"]
    assert len(targets) == 2 * 7 and {t.rsplit(".", 1)[1] for t in targets} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert adapter_summary(result.adapter_dir)["target_modules"] == (
        "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj")  # step 04's table and cards: the kinds
    merge_lora_into(tiny_llama_dir, result.adapter_dir, tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    expected = PeftModel.from_pretrained(base, str(result.adapter_dir)).merge_and_unload().state_dict()
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    original = load_file(tiny_llama_dir / "model.safetensors")
    for name, tensor in merged.items():
        assert (tensor - expected[name]).abs().max().item() <= 1e-6, name
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           original["model.layers.0.self_attn.q_proj.weight"])


def test_per_step_losses_equal_the_own_loop_the_trainer_replaced(uninterrupted, tiny_llama_dir):
    """The Trainer with the recipe's plug-ins optimises exactly what the package's own step loop did: the same
    per-step losses on the same rows and model, dropout included (recorded from that loop before it was removed)."""
    assert sha256_file(tiny_llama_dir / "model.safetensors") == OWN_LOOP["model_sha256"]
    reference = OWN_LOOP["variants"]["recipe"]
    assert [r["tokens"] for r in uninterrupted.metrics["loss_per_step"]] == reference["tokens"]
    assert _losses(uninterrupted.metrics) == pytest.approx(reference["loss"], abs=1e-4)
    assert [r["grad_norm"] for r in uninterrupted.metrics["loss_per_step"]] == pytest.approx(reference["grad_norm"],
                                                                                             rel=1e-3)


@pytest.mark.parametrize("variant", ["no_dropout_token", "no_dropout_padded"])
def test_token_weighting_and_padded_batches_match_the_own_loop(variant, math_rows, tiny_llama_dir, tmp_path):
    reference = OWN_LOOP["variants"][variant]
    cfg = FinetuneConfig(**{**dataclasses.asdict(FinetuneConfig()), **reference["finetune"]})
    result = train_lora(math_rows, cfg, str(tiny_llama_dir), tmp_path, seed=3, max_steps=STEPS)
    assert _losses(result.metrics) == pytest.approx(reference["loss"], abs=1e-4)


@pytest.mark.parametrize("precision, targets", [("nf4", ["all-linear"]), ("int8", RECIPE.lora_target_modules)])
def test_quantized_bases_train_on_cpu(precision, targets, math_rows, tiny_llama_dir, tmp_path):
    """QLoRA (4-bit NF4, double quantisation, every Linear layer as QLoRA adapted) and the original's LLM.int8 base
    with the recipe's MLP targets, with the real bitsandbytes."""
    cfg = dataclasses.replace(RECIPE, precision=precision, bnb_4bit_compute_dtype="bfloat16", save_steps=100,
                              lora_target_modules=targets)
    result = train_lora(math_rows, cfg, str(tiny_llama_dir), tmp_path, seed=1, max_steps=2)
    args = json.loads((tmp_path / "train_args.json").read_text())
    assert args["effective_precision"]["quantization"] == precision
    assert args["effective_precision"]["compute_dtype"] == "float32"  # no CUDA: 16-bit compute runs as fp32
    assert result.metrics["steps"] == 2 and all(math.isfinite(x) for x in _losses(result.metrics))
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    saved = json.loads((result.adapter_dir / "adapter_config.json").read_text())["target_modules"]
    assert len(target_kinds(saved)) == (7 if targets == ["all-linear"] else 3)


def _checkpoint_is_intact(folder: Path) -> bool:
    recorded = json.loads((folder / COMMIT_FILE).read_text())["files"]
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {COMMIT_FILE}
    return present == set(recorded) and all(sha256_file(folder / n) == h for n, h in recorded.items())


def test_a_killed_run_resumes_from_its_last_complete_checkpoint(math_rows, tiny_llama_dir, tmp_path, uninterrupted):
    """Kill -9 a training process while it writes its second checkpoint: only complete checkpoints are in
    checkpoints/; the re-run continues from the newest and ends like an uninterrupted run (same losses: optimizer,
    scheduler and dropout RNG were restored)."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in math_rows))
    out = tmp_path / "run"
    script = (f"from platypus_nb.finetune import train_lora; from platypus_nb.config import FinetuneConfig; "
              f"train_lora({str(rows)!r}, FinetuneConfig(**{dataclasses.asdict(RECIPE)!r}), "
              f"{str(tiny_llama_dir)!r}, {str(out)!r}, 3, max_steps={STEPS})")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:  # while the Trainer writes step 4's checkpoint in its working folder (or just after it is committed)
        while proc.poll() is None and not any((out / d / "checkpoint-4").exists() for d in ("trainer", "checkpoints")):
            time.sleep(0.005)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "metrics.json").exists()
    done = list_checkpoints(out / "checkpoints")
    assert done and all(_checkpoint_is_intact(c) for c in done)
    killed_at = int(done[-1].name.split("-")[1])
    assert killed_at < STEPS

    resumed = train_lora(rows, RECIPE, str(tiny_llama_dir), out, seed=3, max_steps=STEPS)
    assert resumed.metrics["steps"] == STEPS and resumed.metrics["resumed_from_steps"] == [killed_at]
    assert _losses(resumed.metrics) == pytest.approx(_losses(uninterrupted.metrics), rel=1e-5)
    assert not list((out / "trainer").glob("checkpoint-*"))


@pytest.fixture
def finished_run(uninterrupted, tmp_path) -> Path:
    """A copy of a completed run's folder, checkpoints included, to re-run in."""
    return Path(shutil.copytree(uninterrupted.out_dir, tmp_path / "run"))


def test_a_rerun_with_a_changed_setting_trains_anew(finished_run, math_rows, tiny_llama_dir, uninterrupted, capsys):
    adapter = (finished_run / "adapter" / "adapter_model.safetensors").read_bytes()
    changed = train_lora(math_rows, dataclasses.replace(RECIPE, learning_rate=1e-3), str(tiny_llama_dir),
                         finished_run, seed=3, max_steps=STEPS)
    said = [line for line in capsys.readouterr().out.splitlines() if "step 0" in line]  # besides the step logs
    assert said == [f"{finished_run / 'checkpoints' / 'checkpoint-10'} was trained with other "
                    f"finetune.learning_rate than this run: training from step 0"]
    assert changed.metrics["resumed_from_steps"] == [] and changed.metrics["steps"] == STEPS
    assert (finished_run / "adapter" / "adapter_model.safetensors").read_bytes() != adapter
    again = train_lora(math_rows, dataclasses.replace(RECIPE, learning_rate=1e-3), str(tiny_llama_dir),
                       finished_run, seed=3, max_steps=STEPS + 2)  # more steps: a new schedule, not a failure
    assert again.metrics["resumed_from_steps"] == [] and again.metrics["steps"] == STEPS + 2
    assert "other finetune.max_steps" not in capsys.readouterr().out  # the override is in "steps"


def test_rows_with_other_content_train_anew_and_force_always_does(finished_run, math_rows, tiny_llama_dir,
                                                                   uninterrupted, capsys):
    same = train_lora(math_rows, RECIPE, str(tiny_llama_dir), finished_run, seed=3, max_steps=STEPS)
    assert same.metrics["resumed_from_steps"] == [STEPS] and _losses(same.metrics) == _losses(uninterrupted.metrics)
    edited = [dict(r) for r in math_rows]
    edited[5]["output"] = edited[5]["output"].replace("=", "is", 1)
    fresh = train_lora(edited, RECIPE, str(tiny_llama_dir), finished_run, seed=3, max_steps=2)
    assert fresh.metrics["resumed_from_steps"] == [] and "other steps, training rows than" in capsys.readouterr().out
    forced = train_lora(edited, RECIPE, str(tiny_llama_dir), finished_run, seed=3, max_steps=2, force=True)
    assert forced.metrics["resumed_from_steps"] == [] and "not resumed (--force)" in capsys.readouterr().out


class _Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_resume_never_runs_a_pickle_planted_in_a_checkpoint(finished_run, math_rows, tiny_llama_dir, tmp_path,
                                                            capsys):
    marker = tmp_path / "payload-ran"
    latest = list_checkpoints(finished_run / "checkpoints")[-1]
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "custom_checkpoint_0.pkl"):
        (latest / name).write_bytes(pickle.dumps(_Payload(marker)))
    result = train_lora(math_rows, RECIPE, str(tiny_llama_dir), finished_run, seed=3, max_steps=STEPS)
    assert (f"{latest}: custom_checkpoint_0.pkl, optimizer.pt, rng_state.pth, scheduler.pt, training_args.bin changed "
            f"since the checkpoint was written: training from step 0") in capsys.readouterr().out
    assert result.metrics["resumed_from_steps"] == [] and not marker.exists()

    # Even with its record forged to match, the planted file only reaches torch.load(weights_only=True).
    latest = list_checkpoints(finished_run / "checkpoints")[-1]
    (latest / "optimizer.pt").write_bytes(pickle.dumps(_Payload(marker)))
    record = json.loads((latest / COMMIT_FILE).read_text())
    record["files"]["optimizer.pt"] = sha256_file(latest / "optimizer.pt")
    (latest / COMMIT_FILE).write_text(json.dumps(record))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train_lora(math_rows, RECIPE, str(tiny_llama_dir), finished_run, seed=3, max_steps=STEPS)
    assert not marker.exists()


def test_a_diverging_run_stops_with_a_clear_error(math_rows, tiny_llama_dir, tmp_path):
    """A learning rate far too large (finite: the config accepts it) drives the loss to NaN; the run stops there."""
    with pytest.raises(TrainingDivergedError, match=r"diverged at step \d+ \(loss nan, grad_norm nan\); no adapter"):
        train_lora(math_rows, dataclasses.replace(RECIPE, learning_rate=1e30), str(tiny_llama_dir), tmp_path,
                   seed=3, max_steps=STEPS)
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "metrics.json").exists()


def test_two_processes_follow_the_one_process_loss_curve(math_rows, tiny_llama_dir, tmp_path):
    """DDP over 2 gloo processes with the same global batch optimises the same objective on the same examples.

    Without dropout both runs are deterministic and differ only in floating-point summation order (gradients are
    summed across processes instead of within one backward), so the per-step losses agree to ~1e-6 relative; 1e-4
    leaves room for that error compounding over 10 Adam steps and nothing else: a wrong loss normalisation (a
    factor of 2) or wrong data split shows as a difference of 1e-2 or more.
    """
    cfg = dataclasses.replace(RECIPE, lora_dropout=0.0, save_steps=100)
    one = train_lora(math_rows, cfg, str(tiny_llama_dir), tmp_path / "one", seed=3, max_steps=STEPS)
    two = train_lora(math_rows, dataclasses.replace(cfg, world_size=2), str(tiny_llama_dir), tmp_path / "two",
                     seed=3, max_steps=STEPS)
    assert two.metrics["world_size"] == 2 and two.metrics["steps"] == STEPS
    assert two.metrics["tokens_seen"] == one.metrics["tokens_seen"]
    assert _losses(two.metrics) == pytest.approx(_losses(one.metrics), rel=1e-4)
    assert _losses(one.metrics)[-1] < _losses(one.metrics)[0]
    assert _losses(one.metrics) == pytest.approx(OWN_LOOP["variants"]["no_dropout"]["loss"], abs=1e-4)


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
    # The adapter carries its own Hugging Face card (not peft's blank template): base, dataset, recipe, this run.
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "adapter" / "README.md")
    assert card.data.library_name == "peft" and card.data.datasets == ["garage-bAInd/Open-Platypus"]
    assert "| optimizer steps | 3 |" in card.text and "| `lora_r` | 16 |" in card.text
    assert (out / "train_args.json").is_file() and (out / "figures" / "03_training_loss_lr.png").is_file()
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [g["kind"] for g in generations] == ["held-in"] * 3 + ["held-out"] * 3
    held_in = {g["question"] for g in generations[:3]}
    assert held_in <= {r["instruction"] for r in math_rows}

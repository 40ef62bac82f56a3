"""Step 05: leaderboard evaluation with lm-eval over the vendored test sets, offline."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math

import pandas as pd
import pytest
import yaml

from platypus_nb import evaluate as ev
from platypus_nb.assets import data_file
from platypus_nb.config import ConfigError, load_config
from platypus_nb.paths import NOTEBOOKS_DIR
from platypus_nb.runner import execute_notebook

SUBJECT = "college_physics"


class _IgnoreTags(yaml.SafeLoader):
    """Reads a generated YAML without importing the ``!function`` it names."""


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix} {node.value}")


def tiny_eval_config(**changes):
    cfg = load_config("tiny", {"evaluate.limit": 2, "evaluate.task_limits": {}, "evaluate.mmlu_subjects": [SUBJECT]})
    return dataclasses.replace(cfg.evaluate, **changes) if changes else cfg.evaluate


def write_models(path, entries):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    return path


def entry(name, path, role="base", compare_to=None, adapter=None):
    return {"name": name, "path": str(path), "adapter": adapter, "role": role, "compare_to": compare_to,
            "stands_in_for": ""}


@pytest.fixture(scope="module")
def platypus_adapter(tmp_path_factory, tiny_llama_dir):
    """A LoRA adapter in the paper's shape (MLP targets, r = alpha = 16) with random B, so merging changes weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapter")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    lora = LoraConfig(r=16, lora_alpha=16, target_modules=["gate_proj", "up_proj", "down_proj"],
                      init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------------- config and tasks


def test_unknown_task_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"evaluate\.tasks\[0\].*arc_easy"):
        load_config("tiny", {"evaluate.tasks": ["arc_easy"]})


def test_unknown_task_passed_directly_is_rejected_before_any_file_is_written(tmp_path):
    with pytest.raises(ev.EvaluationError, match="unknown task.*'winogrande'.*known tasks: arc_challenge"):
        ev.prepare_tasks(tiny_eval_config(tasks=["winogrande"]), tmp_path / "tasks")
    assert not (tmp_path / "tasks").exists()


def test_a_task_without_a_shot_count_is_a_config_error():
    with pytest.raises(ConfigError, match="num_fewshot.*missing 'hellaswag'"):
        load_config("tiny", {"evaluate.num_fewshot": {"arc_challenge": 25, "mmlu": 5, "truthfulqa_mc2": 0}})


def test_unknown_mmlu_subject_names_the_known_ones():
    with pytest.raises(ev.EvaluationError, match="unknown subject.*'quantum_cooking'.*abstract_algebra"):
        ev.mmlu_subjects(["college_physics", "quantum_cooking"])
    assert len(ev.mmlu_subjects()) == 57


def test_paper_settings_are_the_defaults():
    cfg = load_config("platypus2-13b").evaluate
    assert cfg.num_fewshot == {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0}
    assert {t: ev.TASKS[t].metric for t in cfg.tasks} == {
        "arc_challenge": "acc_norm", "hellaswag": "acc_norm", "mmlu": "acc", "truthfulqa_mc2": "acc"}
    assert cfg.limit is None and cfg.mmlu_subjects is None


def test_generated_yamls_read_the_vendored_data_by_absolute_path(tmp_path):
    ecfg = tiny_eval_config(num_fewshot={"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0})
    plan = ev.prepare_tasks(ecfg, tmp_path / "tasks")
    assert plan.task_names == {"arc_challenge": ["arc_challenge"], "hellaswag": ["hellaswag"],
                               "mmlu": [f"mmlu_{SUBJECT}"], "truthfulqa_mc2": ["truthfulqa_mc2"]}
    arc = yaml.load((tmp_path / "tasks" / "arc_challenge.yaml").read_text(), Loader=_IgnoreTags)
    assert arc["dataset_path"] == "json" and arc["num_fewshot"] == 25 and arc["fewshot_split"] == "train"
    assert arc["dataset_kwargs"]["data_files"] == {
        split: str(data_file(f"arc_challenge_{split}.jsonl.gz")) for split in ("train", "validation", "test")}
    # Each YAML includes lm-eval's own definition and changes only where the data is read (and the shots).
    assert arc["include"].endswith("lm_eval/tasks/arc/arc_challenge.yaml") and "doc_to_text" not in arc
    hellaswag = yaml.load((tmp_path / "tasks" / "hellaswag.yaml").read_text(), Loader=_IgnoreTags)
    assert hellaswag["num_fewshot"] == 10 and hellaswag["include"].endswith("lm_eval/tasks/hellaswag/hellaswag.yaml")
    # lm-eval leaves the asked question out of its own few-shot examples only when both splits are the same.
    assert hellaswag["training_split"] is None and hellaswag["fewshot_split"] == "validation"
    mmlu = yaml.load((tmp_path / "tasks" / "mmlu" / f"mmlu_{SUBJECT}.yaml").read_text(), Loader=_IgnoreTags)
    assert mmlu["num_fewshot"] == 5 and mmlu["include"].endswith("lm_eval/tasks/mmlu/default/_default_template_yaml")
    assert mmlu["description"] == ("The following are multiple choice questions (with answers) about "
                                   "college physics.\n\n")
    files = mmlu["dataset_kwargs"]["data_files"]
    assert [len(open(files[s]).readlines()) for s in ("test", "dev")] == [102, 5]
    truthfulqa = yaml.load((tmp_path / "tasks" / "truthfulqa_mc2.yaml").read_text(), Loader=_IgnoreTags)
    assert truthfulqa["num_fewshot"] == 0
    for spec in (arc, hellaswag, mmlu, truthfulqa):
        for path in spec["dataset_kwargs"]["data_files"].values():
            assert path.startswith("/") and open(path, "rb").read(1)


def test_truthfulqa_targets_become_choices_and_labels_in_the_same_order():
    rows = ev.truthfulqa_mc_rows()
    with gzip.open(data_file("truthfulqa_mc_task.json.gz"), "rt") as f:
        raw = json.load(f)
    assert len(rows) == len(raw) == 817
    first = rows[0]["mc2_targets"]
    assert first["choices"] == list(raw[0]["mc2_targets"])
    assert first["labels"] == [1, 1, 1, 0, 0, 0]
    assert all(r["mc1_targets"]["labels"].count(1) == 1 for r in rows)


def test_lm_eval_builds_the_paper_prompts_from_the_generated_tasks(tmp_path):
    plan = ev.prepare_tasks(tiny_eval_config(), tmp_path / "tasks")
    tasks = ev.load_tasks(plan).by_task
    arc = tasks["arc_challenge"][0]
    doc = arc.eval_docs[0]
    assert len(arc.eval_docs) == 1172
    assert arc.doc_to_text(doc) == f"Question: {doc['question']}\nAnswer:"
    assert arc.doc_to_choice(doc)[arc.doc_to_target(doc)] == "Planetary days will become shorter."
    hellaswag = tasks["hellaswag"][0]
    assert len(hellaswag.eval_docs) == 10042
    assert hellaswag.doc_to_text(hellaswag.eval_docs[0]) == "Roof shingle removal: A man is sitting on a roof. He"
    mmlu = tasks["mmlu"][0]
    assert mmlu.doc_to_text(mmlu.eval_docs[0]).endswith("\nD. " + mmlu.eval_docs[0]["choices"][3] + "\nAnswer:")
    assert len(tasks["truthfulqa_mc2"][0].eval_docs) == 817
    # What the included definitions bring: HellaSwag scored on validation, MMLU's first-n dev shots.
    assert hellaswag.config.test_split is None and hellaswag.config.validation_split == "validation"
    assert mmlu.config.fewshot_config.sampler == "first_n" and mmlu.config.fewshot_split == "dev"


def test_arc_shots_are_drawn_from_the_train_split_with_the_leaderboard_seed(tmp_path):
    plan = ev.prepare_tasks(tiny_eval_config(tasks=["arc_challenge"], num_fewshot={"arc_challenge": 3}),
                            tmp_path / "tasks")
    arc = ev.load_tasks(plan).by_task["arc_challenge"][0]
    assert len(arc.fewshot_docs()) == 1119
    train = {r["question"] for r in arc.fewshot_docs()}
    held = {r["question"] for r in arc.dataset["validation"]} | {r["question"] for r in arc.eval_docs}
    arc.set_fewshot_seed(ev.LEADERBOARD_FEWSHOT_SEED)
    context = arc.fewshot_context(arc.eval_docs[0], num_fewshot=3)
    shots = [block.split("\nAnswer:")[0].removeprefix("Question: ") for block in context.split("\n\n")[:-1]]
    assert len(shots) == 3 and all(q in train and q not in held for q in shots)
    arc.set_fewshot_seed(42)
    assert arc.fewshot_context(arc.eval_docs[0], num_fewshot=3) != context


def test_contexts_get_no_bos_even_from_a_tokenizer_that_adds_one(smollm2_dir, tiny_llama_dir):
    """Llama-2's tokenizer prepends <s>; the leaderboard's harness encoded contexts without it."""
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir, add_bos_token=True)
    text = "Question: Which gas do plants take in?\nAnswer:"
    plain = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer(text).input_ids == [tokenizer.bos_token_id, *plain]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert HFLM(pretrained=model, tokenizer=tokenizer).tok_encode(text)[0] == tokenizer.bos_token_id
    lm = ev.make_lm(model, tokenizer, tiny_eval_config())
    assert lm.tok_encode(text) == plain
    context, continuation = lm._encode_pair(text, " Carbon dioxide.")
    assert context == plain and tokenizer.bos_token_id not in context


def test_departures_list_every_difference_from_the_leaderboard():
    tiny = ev.departures(load_config("tiny").evaluate)
    assert list(tiny["what"]) == ["harness", "data", "HellaSwag shots", "TruthfulQA order", "shots", "questions",
                                  "MMLU subjects", "dtype"]
    assert "arc_challenge 1 (leaderboard 25)" in tiny.set_index("what").loc["shots", "here"]
    paper = ev.departures(load_config("platypus2-13b").evaluate)
    assert list(paper["what"]) == ["harness"]


def test_the_mean_is_called_the_leaderboard_average_only_in_the_leaderboard_setting():
    full = pd.DataFrame([{"model": "m", "task": t, "num_fewshot": ev.LEADERBOARD_SHOTS[t],
                          "n": ev.LEADERBOARD_QUESTIONS[t], "score_pct": 50.0 + i} for i, t in enumerate(ev.TASKS)])
    assert ev.is_leaderboard_setting(full)
    assert ev.scores_wide(full)[ev.LEADERBOARD_AVERAGE].item() == pytest.approx(51.5)
    for change in ({"n": 4}, {"num_fewshot": 1}):
        subset = full.copy()
        subset.loc[0, list(change)] = list(change.values())
        assert not ev.is_leaderboard_setting(subset)
        assert list(ev.scores_wide(subset).columns)[-1] == ev.SUBSET_AVERAGE
    assert not ev.is_leaderboard_setting(full[full["task"] != "mmlu"])


# ------------------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("bad, message", [
    ({"path": "/nonexistent/model-folder"}, r"entry 0 \('m'\): model folder /nonexistent/model-folder does not exist"),
    ({"path": "runs/nonexistent/04_merge/m"}, r"model folder .*runs/nonexistent/04_merge/m does not exist"),
    ({"role": "teacher"}, "role must be one of base, platypus, partner, merge"),
    ({"adapter": "/nonexistent/adapter"}, "adapter folder /nonexistent/adapter does not exist"),
    ({"compare_to": "ghost"}, "compare_to 'ghost' is not the name of a model"),
    ({"name": "a/b"}, "name must be letters"),
])
def test_a_bad_models_json_entry_is_a_clear_error(tmp_path, tiny_llama_dir, bad, message):
    path = write_models(tmp_path / "models.json", [{**entry("m", tiny_llama_dir), **bad}])
    with pytest.raises(ev.EvaluationError, match=message):
        ev.read_models(path)


def test_models_json_missing_a_key_or_repeating_a_name_is_an_error(tmp_path, tiny_llama_dir):
    no_role = {k: v for k, v in entry("m", tiny_llama_dir).items() if k != "role"}
    with pytest.raises(ev.EvaluationError, match="missing key.*role"):
        ev.read_models(write_models(tmp_path / "a.json", [no_role]))
    with pytest.raises(ev.EvaluationError, match="more than one entry"):
        ev.read_models(write_models(tmp_path / "b.json", [entry("m", tiny_llama_dir)] * 2))


def test_model_names_are_kept_and_folders_are_checked(tmp_path, tiny_llama_dir):
    models = ev.read_models(write_models(tmp_path / "models.json", [
        entry("base", "smollm2-135m"), entry("mine", tiny_llama_dir, "partner", "base")]))
    assert [m.path for m in models] == ["smollm2-135m", str(tiny_llama_dir)]
    assert models[1].compare_to == "base"


def test_without_step_04_the_base_and_step_03_adapter_are_evaluated(tmp_path, figures_override, platypus_adapter):
    from platypus_nb.stages import open_stage

    stage = open_stage("05_evaluate", "tiny", str(tmp_path / "run"), figures_override)
    models, origin = ev.models_for_run(stage)
    assert [(m.name, m.role) for m in models] == [("smollm2-135m", "base")]
    assert "models.json not found" in origin and "only" in origin
    adapter = stage.output_of("03_finetune") / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text((platypus_adapter / "adapter_config.json").read_text())
    models, origin = ev.models_for_run(stage)
    assert [(m.name, m.role, m.compare_to, m.adapter) for m in models] == [
        ("smollm2-135m", "base", None, None), ("smollm2-135m-platypus", "platypus", "smollm2-135m", str(adapter))]


# ------------------------------------------------------------------------------------------------ scoring


def test_mmlu_is_the_unweighted_mean_of_subjects_with_combined_stderr():
    score, stderr = ev.mean_of_scores([0.2, 0.4, 0.9], [0.03, 0.04, 0.12])
    assert score == pytest.approx(0.5)
    assert stderr == pytest.approx(math.sqrt(0.03 ** 2 + 0.04 ** 2 + 0.12 ** 2) / 3)


def test_a_4bit_model_is_loaded_and_scored(tmp_path, tiny_llama_dir):
    """bitsandbytes 0.50 quantizes to nf4 on CPU too; the loaded model goes to lm-eval as HFLM(pretrained=model)."""
    ecfg = tiny_eval_config(tasks=["arc_challenge"], quantization="nf4")
    plan = ev.prepare_tasks(ecfg, tmp_path / "tasks")
    model = ev.ModelToEvaluate("tiny-nf4", str(tiny_llama_dir), None, "base", None, "")
    lm, _ = ev.load_for_eval(model, ecfg)
    assert type(lm.model.layers[0].mlp.gate_proj).__name__ == "Linear4bit"
    del lm
    result = ev.evaluate_model(model, plan, ev.load_tasks(plan), ecfg, 42, tmp_path)
    assert result["settings"]["quantization"] == "nf4"
    assert 0.0 <= result["scores"]["arc_challenge"]["score"] <= 1.0
    assert (tmp_path / "tiny-nf4.json").is_file()


def test_hflm_cannot_load_a_4bit_model_itself(tiny_llama_dir):
    """Why load_for_eval quantizes and HFLM gets the loaded model: HFLM's own 4-bit options fail on this stack.

    If a new lm-eval or transformers makes either work, this fails and load_for_eval can hand HFLM a path instead.
    """
    from lm_eval.models.huggingface import HFLM
    from transformers import BitsAndBytesConfig

    with pytest.raises(TypeError, match="load_in_4bit"):
        HFLM(pretrained=str(tiny_llama_dir), device="cpu", load_in_4bit=True)
    with pytest.raises(TypeError, match="quantization_config"):
        HFLM(pretrained=str(tiny_llama_dir), device="cpu",
             quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"))


def test_lm_eval_collects_its_environment_report_once_per_scoring(tmp_path, tiny_llama_dir, monkeypatch):
    """Two models scored inside ``environment_report_once``: torch's report is collected once, both results carry
    it, and lm-eval's own function is back afterwards."""
    import lm_eval.evaluator
    import torch.utils.collect_env as collect_env

    calls = []
    real = collect_env.get_pretty_env_info
    monkeypatch.setattr(collect_env, "get_pretty_env_info", lambda: calls.append(1) or real())
    original = lm_eval.evaluator.add_env_info
    kept = []
    monkeypatch.setattr(lm_eval, "simple_evaluate",
                        lambda *a, _real=lm_eval.simple_evaluate, **k: kept.append(_real(*a, **k)) or kept[-1])
    ecfg = tiny_eval_config(tasks=["truthfulqa_mc2"])
    plan = ev.prepare_tasks(ecfg, tmp_path / "tasks")
    tasks = ev.load_tasks(plan)
    with ev.environment_report_once():
        for name in ("first", "second"):
            ev.evaluate_model(ev.ModelToEvaluate(name, str(tiny_llama_dir), None, "base", None, ""), plan, tasks,
                              ecfg, 42, tmp_path)
    assert len(calls) == 1 and len(kept) == 2
    assert kept[0]["pretty_env_info"] == kept[1]["pretty_env_info"] == real()
    assert lm_eval.evaluator.add_env_info is original


def test_every_model_sees_the_same_prompts(tmp_path, tiny_llama_dir):
    """Tasks are built once per run and re-seeded per call: the same weights under two names score identically."""
    ecfg = tiny_eval_config(tasks=["truthfulqa_mc2"])
    plan = ev.prepare_tasks(ecfg, tmp_path / "tasks")
    tasks = ev.load_tasks(plan)
    first, second = (ev.evaluate_model(ev.ModelToEvaluate(name, str(tiny_llama_dir), None, "base", None, ""),
                                       plan, tasks, ecfg, 42, tmp_path) for name in ("first", "second"))
    assert first["scores"] == {t: {**s, "seconds": first["scores"][t]["seconds"]}
                               for t, s in second["scores"].items()}


def test_notebook_05_scores_every_model_offline(tmp_path, tiny_llama_dir, platypus_adapter, figures_override):
    """The whole step on a random tiny Llama: the base, and the base with the Platypus adapter merged in."""
    run = tmp_path / "run"
    write_models(run / "04_merge" / "models.json", [
        entry("base", tiny_llama_dir),
        entry("platypus", tiny_llama_dir, "platypus", "base", adapter=str(platypus_adapter))])
    execute_notebook(NOTEBOOKS_DIR / "05_evaluate.ipynb", tmp_path / "05_evaluate.ipynb",
                     {"run_dir": str(run), "overrides": figures_override, "limit": 2})
    out = run / "05_evaluate"
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == ev.SUMMARY_COLUMNS
    assert len(summary) == 2 * 4 and set(summary["task"]) == set(ev.TASKS)
    assert summary["score_pct"].between(0, 100).all() and (summary["stderr_pct"] >= 0).all()
    assert dict(zip(summary["task"], summary["n"])) == {"arc_challenge": 2, "hellaswag": 2, "mmlu": 2 * 2,
                                                         "truthfulqa_mc2": 2}
    base = json.loads((out / "base.json").read_text())
    assert base["versions"]["lm_eval"] == "0.4.13"
    assert base["settings"]["limits"]["arc_challenge"] == 2 and base["settings"]["num_fewshot"]["arc_challenge"] == 1
    assert set(base["scores"]["mmlu"]["subjects"]) == {"college_physics", "high_school_mathematics"}
    assert all(s["requests"] > 0 and s["seconds"] > 0 for s in base["scores"].values())
    platypus = json.loads((out / "platypus.json").read_text())
    # The merged adapter changes the model, so TruthfulQA's MC2 (a probability mass, not a 0/1 accuracy) moves.
    assert platypus["scores"]["truthfulqa_mc2"]["score"] != base["scores"]["truthfulqa_mc2"]["score"]
    assert platypus["adapter"] == str(platypus_adapter)
    assert (tmp_path / "figures" / "05_scores.png").is_file()
    assert (out / "tasks" / "arc_challenge.yaml").is_file()
    # No step 02 in this run folder: the held-out loss covers the tiny config's two stand-in partners' own rows.
    losses = pd.read_csv(out / "heldout_loss.csv")
    assert len(losses) == 2 * 2 * 12 and set(losses["domain"]) == {"partner:general-partner", "partner:medical-partner"}
    # A random model spreads its probability nearly evenly: about ln(49,152) = 10.8 nats per token. A row whose
    # prompt fills the tiny cutoff (a long clinical vignette) has no response token and no loss.
    scored = losses["tokens"] > 0
    assert scored.sum() > 40 and losses.loc[scored, "loss"].between(9, 13).all()
    assert losses.loc[~scored, "loss"].isna().all()
    # The executed notebook shows our one progress bar, not the libraries' dozens per model.
    cells = json.loads((tmp_path / "05_evaluate.ipynb").read_text())["cells"]
    stderr = "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", [])
                     if o.get("name") == "stderr")
    assert "models:" in stderr
    for noise in ("Running loglikelihood requests", "Tokenizing inputs", "Generating test split", "Loading weights",
                  "Overwriting default num_fewshot", "`pretrained` model kwarg is not of type"):
        assert noise not in stderr, noise

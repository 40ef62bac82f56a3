"""The config is validated before any work: errors name the file and the dotted key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest
from pydantic import Strict

from platypus_nb.assets import data_file
from platypus_nb.config import Config, ConfigError, from_dict, load_config, parse_overrides, resolve_path


def write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_shipped_configs_load_with_paper_defaults():
    tiny = load_config("tiny")
    assert tiny.model.base == "smollm2-135m"
    paper = load_config("platypus2-13b")
    # The paper's recipe (original README table): LoRA r=alpha=16 on the MLP only, lr 4e-4 (13B) / 3e-4 (70B).
    assert (paper.finetune.lora_r, paper.finetune.lora_alpha) == (16, 16)
    assert paper.finetune.lora_target_modules == ["gate_proj", "up_proj", "down_proj"]
    assert paper.finetune.learning_rate == pytest.approx(4e-4)
    assert load_config("platypus2-70b").finetune.learning_rate == pytest.approx(3e-4)
    assert paper.finetune.global_batch_size == 16 and paper.finetune.micro_batch_size == 1


def test_unknown_key_names_file_and_dotted_key(tmp_path):
    p = write(tmp_path, "finetune:\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'finetune\.lerning_rate'"):
        load_config(p)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'finetuning'"):
        load_config(write(tmp_path, "finetuning: {}\n"))


@pytest.mark.parametrize("text, match", [
    ("finetune:\n  learning_rate: -1\n", r"finetune\.learning_rate: should be greater than 0, got int -1"),
    ("finetune:\n  learning_rate: fast\n", r"finetune\.learning_rate: should be a valid number, got str"),
    ("finetune:\n  lora_r: 8.5\n", r"finetune\.lora_r: should be a valid integer, got float"),
    ("contamination:\n  threshold: 1.2\n", r"contamination\.threshold: should be less than or equal to 1, got float"),
    ("dataset:\n  dedup_threshold: -0.1\n", r"dataset\.dedup_threshold: should be greater than or equal to 0"),
    ("finetune:\n  precision: int4\n", r"finetune\.precision: should be 'fp32', 'bf16', .* or 'nf4', got str 'int4'"),
    ("finetune:\n  global_batch_size: 10\n  micro_batch_size: 4\n", r"finetune\.global_batch_size: should be a multiple"),
    ("contamination:\n  review_file: data/contamination_reveiw.csv\n",
     r"contamination\.review_file: should be an existing file, but .*contamination_reveiw\.csv does not exist"),
    ("contamination:\n  extra_eval_sets: [{name: x, path: no/such/file.jsonl}]\n",
     r"extra_eval_sets\[0\]\.path: should be an existing file"),
    ("run:\n  seed: true\n", r"run\.seed: should be a valid integer, got bool True"),
])
def test_impossible_values_fail_naming_the_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


def test_yaml_ints_are_accepted_as_floats(tmp_path):
    cfg = load_config(write(tmp_path, "finetune:\n  learning_rate: 1\n"))
    assert cfg.finetune.learning_rate == 1.0 and isinstance(cfg.finetune.learning_rate, float)


def test_dotted_overrides_from_strings_and_dicts():
    cfg = load_config("tiny", ["finetune.learning_rate=1e-4", "run.name=other", "evaluate.limit=null"])
    assert cfg.finetune.learning_rate == pytest.approx(1e-4)
    assert cfg.run.name == "other"
    assert cfg.evaluate.limit is None
    cfg = load_config("tiny", {"dataset.sources": ["math"]})
    assert cfg.dataset.sources == ["math"]
    assert "overrides" in cfg.source


def test_lora_targets_take_peft_all_linear_alone_as_a_string_or_a_list():
    for value in ("all-linear", ["all-linear"]):
        assert load_config("tiny", {"finetune.lora_target_modules": value}).finetune.lora_target_modules == [
            "all-linear"]
    with pytest.raises(ConfigError, match=r"finetune\.lora_target_modules: should be 'all-linear' alone or a list of "
                                          r"module names, not both, got list \['all-linear', 'q_proj'\]"):
        load_config("tiny", {"finetune.lora_target_modules": ["all-linear", "q_proj"]})
    with pytest.raises(ConfigError, match=r"finetune\.lora_target_modules: should be a valid list, got str 'q_proj'"):
        load_config("tiny", {"finetune.lora_target_modules": "q_proj"})


def test_bad_override_is_named():
    with pytest.raises(ConfigError, match="unknown key 'finetune.nope'"):
        load_config("tiny", ["finetune.nope=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["finetune.learning_rate"])


def test_missing_config_lists_known_ones():
    with pytest.raises(ConfigError, match="config file not found: nope .*tiny"):
        load_config("nope")


def test_nested_partner_list_is_typed_and_validated(tmp_path):
    ok = load_config(write(tmp_path, "merge:\n  partners:\n    - {name: p, model: some/model}\n"))
    assert ok.merge.partners[0].model == "some/model"
    with pytest.raises(ConfigError, match=r"merge\.partners\[0\]\.name: should be a name of letters.*, got str \'\'"):
        load_config(write(tmp_path, "merge:\n  partners:\n    - {model: some/model}\n"))


def test_cli_bad_key_is_a_one_line_error():
    proc = subprocess.run([sys.executable, "-m", "platypus_nb.cli", "config", "-p", "finetune.lerning_rate=1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key 'finetune.lerning_rate'" in lines[0]


@pytest.mark.parametrize("text, match", [
    ("finetune:\n  learning_rate: .inf\n", r"c\.yaml: finetune\.learning_rate: should be a finite number, got float inf"),
    ("finetune:\n  weight_decay: -.inf\n", r"finetune\.weight_decay: should be a finite number, got float -inf"),
    ("contamination:\n  threshold: .nan\n", r"contamination\.threshold: should be a finite number, got float nan"),
    ("merge:\n  adapter_weights: [1.0, .inf]\n", r"merge\.adapter_weights\[1\]: should be a finite number"),
    ("finetune:\n  learning_rate: '1e999'\n", r"finetune\.learning_rate: should be a finite number"),
])
def test_non_finite_numbers_are_rejected_naming_the_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


def test_non_finite_override_is_rejected():
    with pytest.raises(ConfigError, match=r"\(with overrides finetune\.max_grad_norm\): finetune\.max_grad_norm: "
                                          r"should be a finite number"):
        load_config("tiny", ["finetune.max_grad_norm=.nan"])


@pytest.mark.parametrize("key, name", [
    ("run.name", ".."), ("run.name", "."), ("run.name", "../escape"), ("run.name", "a/b"), ("run.name", "a\\b"),
    ("run.name", "''"), ("run.name", "-flag"), ("merge.partners", [{"name": "..", "model": "some/model"}]),
    ("merge.partners", [{"name": "p", "model": "some/model", "merge_name": "../x"}]),
    ("contamination.extra_eval_sets", [{"name": "..", "path": "configs/tiny.yaml"}]),
])
def test_names_that_become_folders_are_plain_names(key, name):
    with pytest.raises(ConfigError, match=r"name: should be a name of letters, digits"):
        load_config("tiny", {key: name})


def test_a_plain_run_name_stays_under_the_runs_folder():
    cfg = load_config("tiny", ["run.name=my-run_2.b"])
    assert cfg.run_dir().resolve() == resolve_path("runs").resolve() / "my-run_2.b"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "{}\n"])
def test_an_empty_config_file_is_an_error_naming_the_file(tmp_path, text):
    with pytest.raises(ConfigError, match=r"c\.yaml: .*no settings"):
        load_config(write(tmp_path, text))


def test_a_config_with_one_section_takes_defaults_for_the_rest(tmp_path):
    cfg = load_config(write(tmp_path, "run:\n  name: only-run\n"))
    assert cfg.run.name == "only-run" and cfg.finetune.lora_r == 16 and cfg.merge.partners == []


@pytest.mark.parametrize("text, match", [
    ("model:\n  base: 135\n", r"model\.base: should be a valid string, got int 135"),
    ("finetune:\n  packing: 1\n", r"finetune\.packing: should be a valid boolean, got int 1"),
    ("finetune:\n  max_steps: 2.0\n", r"finetune\.max_steps: should be a valid integer, got float 2\.0"),
    ("finetune:\n  learning_rate: false\n", r"finetune\.learning_rate: should be a valid number, got bool False"),
    ("finetune: [1, 2]\n", r"c\.yaml: finetune: should be a dictionary or an instance of FinetuneConfig, got list"),
    ("finetune:\n", r"c\.yaml: finetune: should be a dictionary or an instance of FinetuneConfig, got NoneType"),
    ("dataset:\n  sources: math\n", r"dataset\.sources: should be a valid list, got str 'math'"),
    ("dataset:\n  source_files: {nope: x.jsonl}\n", r"dataset\.source_files\.nope: should be 'prm800k', 'math'.*, got str 'nope'"),
    ("evaluate:\n  num_fewshot: {arc_challenge: -1}\n", r"evaluate\.num_fewshot\.arc_challenge: should be greater "
                                                         r"than or equal to 0, got int -1"),
    ("merge:\n  partners:\n    - {name: p, model: m, lerning: 1}\n",
     r"unknown key 'merge\.partners\[0\]\.lerning' \(known keys here: name, stands_in_for, model"),
    ("merge:\n  method: slerp\n", r"merge\.method: should be 'linear', 'cat', 'ties'.*, got str 'slerp'"),
    ("source: x\n", r"unknown key 'source' \(known keys here: run, model"),
])
def test_type_errors_name_the_dotted_key_and_what_was_given(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(write(tmp_path, text))
    assert "\n" not in str(e.value)


def test_yaml_scientific_strings_are_read_as_numbers(tmp_path):
    # PyYAML reads "1e-4" (no dot) as a string under YAML 1.1; it means a number.
    cfg = load_config(write(tmp_path, "finetune:\n  learning_rate: 1e-4\n  max_grad_norm: 2E+0\n"))
    assert cfg.finetune.learning_rate == pytest.approx(1e-4) and cfg.finetune.max_grad_norm == 2.0


def _sources_named_in(origin: str, reads: list[str]) -> bool:
    return bool(reads) and all(read in origin or read.split("/")[0] in origin for read in reads)


def test_each_source_states_the_origin_its_loader_reads(monkeypatch):
    # SOURCE_INFO (origin, data_source tag, licence) and the loaders are built from config.DATASET_SOURCES in its
    # order: a reordered list would hand a source another source's facts, which this catches for every source that
    # loads offline or asks the Hub (the Hub made unreachable).
    from platypus_nb.benchmarks_data import BENCHMARK_FILES
    from platypus_nb.dataset import sources

    dcfg = load_config("tiny", {"dataset.math_splits": ["train", "test"], "dataset.source_files": {}}).dataset
    reads: list[str] = []
    monkeypatch.setattr(sources, "data_file", lambda rel: reads.append(rel) or data_file(rel))
    monkeypatch.setattr(sources, "read_benchmark", lambda split: reads.append(BENCHMARK_FILES[split]) or [])

    def unreachable(hub_id: str, **kwargs):
        reads.append(hub_id)
        raise ConnectionError("offline")

    monkeypatch.setattr(sources, "_hub_rows", unreachable)
    checked = []
    for name, info in sources.SOURCE_INFO.items():
        reads.clear()
        if info.offline:
            sources.load_source_records(name, dcfg)
        elif "Hub: " in info.origin:
            with pytest.raises(sources.SourceUnavailableError, match=f"source '{name}' could not be loaded from"):
                sources.load_source_records(name, dcfg)
        else:
            continue  # PRM800K (GitHub) and ARB (its API) are not asked here
        assert _sources_named_in(info.origin, reads), (name, info.origin, reads)
        checked.append(name)
    assert len(checked) == len(sources.SOURCE_INFO) - 2


def test_each_evaluation_task_is_labelled_with_its_own_name():
    # evaluate.TASKS is built from config.EVAL_TASKS in its order; the paper's column label names the task.
    from platypus_nb.evaluate import TASKS

    assert all(task.startswith(spec.label.lower()) for task, spec in TASKS.items())


def test_a_resolved_config_round_trips_through_plain_data():
    cfg = load_config("platypus2-70b")
    again = from_dict(cfg.to_dict(), source="round trip")
    assert again == cfg and again.to_dict() == cfg.to_dict() and again.source == "round trip"
    assert again.merge.partners[0].merged_name == "camel-platypus2-70b"


def _loose_keys(tp, key: str):
    """Keys whose scalar type is not strict (pydantic would coerce "3" or true into an int there)."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        for f in dataclasses.fields(tp):
            if f.init:
                yield from _loose_keys(hints[f.name], f"{key}{f.name}.")
    elif typing.get_origin(tp) is typing.Annotated and typing.get_args(tp)[0] in (int, str, bool, float):
        if not any(isinstance(m, Strict) for m in typing.get_args(tp)[1:]):
            yield key.rstrip(".")
    elif tp in (int, str, bool, float):
        yield key.rstrip(".")
    elif typing.get_origin(tp) is typing.Annotated:
        yield from _loose_keys(typing.get_args(tp)[0], key)
    else:
        for arg in typing.get_args(tp):
            yield from _loose_keys(arg, key)


def test_every_scalar_key_is_strict():
    # A key added as plain int / str / bool / float would accept `true` for 1 or "3" for 3: use Int, Str, Bool, Number.
    assert sorted(set(_loose_keys(Config, ""))) == []

"""The config is validated before any work: errors name the file and the dotted key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from platypus_nb.config import ConfigError, load_config, parse_overrides


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
    ("finetune:\n  learning_rate: -1\n", r"finetune\.learning_rate: expected a positive number"),
    ("finetune:\n  learning_rate: fast\n", r"finetune\.learning_rate: expected a number, got str"),
    ("finetune:\n  lora_r: 8.5\n", r"finetune\.lora_r: expected int, got float"),
    ("contamination:\n  threshold: 1.2\n", r"contamination\.threshold: expected a number in \[0, 1\]"),
    ("dataset:\n  dedup_threshold: -0.1\n", r"dataset\.dedup_threshold: expected a number in \[0, 1\]"),
    ("finetune:\n  precision: int4\n", r"finetune\.precision: expected one of"),
    ("finetune:\n  global_batch_size: 10\n  micro_batch_size: 4\n", r"finetune\.global_batch_size: expected a multiple"),
    ("contamination:\n  extra_eval_sets: [{name: x, path: no/such/file.jsonl}]\n",
     r"extra_eval_sets\[0\]\.path: expected an existing file"),
    ("run:\n  seed: true\n", r"run\.seed: expected int, got bool"),
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
    with pytest.raises(ConfigError, match=r"merge\.partners\[0\]\.name: expected a non-empty name"):
        load_config(write(tmp_path, "merge:\n  partners:\n    - {model: some/model}\n"))


def test_cli_bad_key_is_a_one_line_error():
    proc = subprocess.run([sys.executable, "-m", "platypus_nb.cli", "config", "-p", "finetune.lerning_rate=1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key 'finetune.lerning_rate'" in lines[0]

"""Offline assets: GGUF conversion with verification, the integrity check, data hash checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from platypus_nb import assets
from platypus_nb.io import atomic_directory


@pytest.mark.slow
def test_gguf_conversion_is_verified_and_atomic(tmp_path):
    out = tmp_path / "smollm2"
    assets.convert_gguf_model(out)  # raises unless the converted model answers "Paris"
    marker = json.loads((out / "platypus_nb_asset.json").read_text())
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(marker["files"])
    assert assets.is_valid_model_dir(out)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # dequantized weights, a plain model folder
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert not list(tmp_path.glob(".*partial"))  # no temporary folder left behind

    # Integrity: an altered file or a missing marker makes the folder invalid, so it would be converted again.
    (out / "tokenizer_config.json").write_text("{}")
    assert not assets.is_valid_model_dir(out)
    (out / "platypus_nb_asset.json").unlink()
    assert not assets.is_valid_model_dir(out)


def test_real_converted_model_answers(smollm2_dir):
    model = assets.load_model(str(smollm2_dir))
    tok = assets.load_tokenizer(str(smollm2_dir))
    assert "Paris" in assets.greedy_chat_answer(model, tok, "What is the capital of France?")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576


def test_unreachable_model_names_the_offline_default():
    # A fresh process, because huggingface_hub reads HF_HUB_OFFLINE at import time.
    code = "from platypus_nb.assets import load_tokenizer; load_tokenizer('no-such-org/no-such-model')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode != 0
    assert "AssetError" in proc.stderr and "offline default model.base: smollm2-135m" in proc.stderr


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("killed midway")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_data_files_are_hash_checked(tmp_path, monkeypatch):
    name = "arc_challenge_validation.jsonl.gz"
    assert assets.data_file(name).is_file()
    monkeypatch.setattr(assets, "DATA_DIR", tmp_path)
    with pytest.raises(assets.AssetError, match=f"data file .*{name} is missing"):
        assets.data_file(name)
    shutil.copy(assets.DATA_CHECKSUMS.parent / name, tmp_path / name)
    assert assets.data_file(name) == tmp_path / name
    with open(tmp_path / name, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(assets.AssetError, match="has been altered"):
        assets.data_file(name)
    with pytest.raises(assets.AssetError, match="unknown data file 'nope.csv'"):
        assets.data_file("nope.csv")


def test_every_vendored_file_is_checksummed_and_documented():
    readme = (assets.DATA_CHECKSUMS.parent / "README.md").read_text()
    for name, entry in assets.data_checksums().items():
        assets.data_file(name)
        assert f"`{name}`" in readme and entry["licence"] and entry["origin"]


def test_atomic_files_get_normal_permissions(tmp_path):
    from platypus_nb.io import atomic_write_text

    path = atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask

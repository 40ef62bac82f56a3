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


def test_a_missing_or_broken_checksums_file_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "DATA_CHECKSUMS", tmp_path / "checksums.json")
    assets.data_checksums.cache_clear()
    try:
        with pytest.raises(assets.AssetError, match=r"checksums.json is missing: .*git checkout -- "
                                                    r"data/checksums.json"):
            assets.data_file("mmlu_test.jsonl.gz")
        (tmp_path / "checksums.json").write_text('{"mmlu_test.jsonl.gz": {"rows": 3}}')
        with pytest.raises(assets.AssetError, match="entry 'mmlu_test.jsonl.gz' has no sha256"):
            assets.data_checksums()
    finally:
        assets.data_checksums.cache_clear()


def test_every_data_file_but_the_human_review_is_checksummed():
    data = assets.DATA_CHECKSUMS.parent
    on_disk = {str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()}
    unchecked = {"checksums.json", "contamination_review.csv"} | {f for f in on_disk if f.endswith("README.md")
                                                                  or f.startswith("licenses/")}
    assert on_disk - unchecked == set(assets.data_checksums())


def test_paper_scores_are_hash_checked_when_read(tmp_path, monkeypatch):
    from platypus_nb import results

    (tmp_path / "paper").mkdir()
    for name in ("published_scores.csv", "quoted_deltas.csv"):
        shutil.copy(assets.DATA_CHECKSUMS.parent / "paper" / name, tmp_path / "paper" / name)
    monkeypatch.setattr(assets, "DATA_DIR", tmp_path)
    assert results.read_published_scores().loc[0, "model"] == "Platypus2-13B"
    edited = tmp_path / "paper" / "published_scores.csv"
    edited.write_text(edited.read_text().replace("61.26", "91.26", 1))
    with pytest.raises(assets.AssetError, match=r"data file .*paper/published_scores.csv has been altered"):
        results.read_published_scores()
    (tmp_path / "paper" / "quoted_deltas.csv").write_text("model,compare_to,task,quoted_pct_change,source,note\n")
    with pytest.raises(assets.AssetError, match=r"paper/quoted_deltas.csv has been altered"):
        results.read_quoted_deltas()

"""The ONNX Runtime embedding backend: same vectors as torch, its own cache, a clear error when not installed."""

from __future__ import annotations

import importlib.util

import pytest

import platypus_nb.embeddings as E
from platypus_nb import contamination as C
from platypus_nb.assets import AssetError, embedding_model_path, model_marker
from platypus_nb.io import sha256_file


def test_onnx_vectors_match_torch_on_real_test_items(tmp_path):
    pytest.importorskip("onnxruntime")
    items = C.load_test_set("mmlu", max_items=6) + C.load_test_set("hellaswag", max_items=4)
    texts = [i.text for i in items] + ["short", "What is the capital of France?"]
    torch_vectors = E.embed_texts(texts, cache=E.EmbeddingCache("all-MiniLM-L6-v2", root=tmp_path),
                                  show_progress=False, batch_size=4)
    onnx_vectors = E.embed_texts(texts, cache=E.EmbeddingCache("all-MiniLM-L6-v2", root=tmp_path, backend="onnx"),
                                 show_progress=False, batch_size=4)
    assert onnx_vectors.shape == torch_vectors.shape == (len(texts), 384)
    assert (onnx_vectors * torch_vectors).sum(axis=1).min() >= 0.999
    # the export is recorded with its hash and its source's, and the file on disk is the one recorded
    onnx_file = E.onnx_model_file(embedding_model_path())
    marker = model_marker(onnx_file.parent)
    assert marker["files"][E.ONNX_FILE] == sha256_file(onnx_file)
    assert marker["source_sha256"] == sha256_file(f"{embedding_model_path()}/model.safetensors")


def test_cache_folder_differs_by_backend_and_torch_keeps_its_name(tmp_path):
    pytest.importorskip("onnxruntime")
    torch_cache = E.EmbeddingCache("all-MiniLM-L6-v2", root=tmp_path)
    onnx_cache = E.EmbeddingCache("all-MiniLM-L6-v2", root=tmp_path, backend="onnx")
    assert torch_cache.dir != onnx_cache.dir
    assert onnx_cache.dir.name == f"{torch_cache.dir.name}-onnx"
    assert torch_cache.dir.name == E._model_cache_name("all-MiniLM-L6-v2")  # existing caches stay valid
    with pytest.raises(ValueError, match="differs from the cache's 'onnx'"):
        E.embed_texts(["a"], cache=onnx_cache, backend="torch", show_progress=False)


def test_missing_backend_package_fails_before_any_work_naming_the_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(AssetError, match=r"pip install onnxruntime==1\.32\.0"):
        E.EmbeddingCache("all-MiniLM-L6-v2", root=tmp_path, backend="onnx")
    assert not any(tmp_path.iterdir())  # not even the cache folder was made
    with pytest.raises(ValueError, match="unknown embedding backend 'openvino'"):
        E.check_backend("openvino")


def test_the_backend_is_a_checked_config_key_defaulting_to_torch():
    from platypus_nb.config import ConfigError, load_config

    assert load_config("tiny").embeddings.backend == "torch"
    assert load_config("tiny", {"embeddings.backend": "onnx"}).embeddings.backend == "onnx"
    with pytest.raises(ConfigError, match=r"embeddings\.backend: .*'torch' or 'onnx'"):
        load_config("tiny", {"embeddings.backend": "openvino"})

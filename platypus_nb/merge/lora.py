"""The paper's merge, streamed: a LoRA adapter's update added into a full model, one tensor at a time.

The original ``merge.py`` loads the whole target model (``from_pretrained``), wraps it in
``PeftModel.from_pretrained`` and calls ``merge_and_unload()``: every targeted weight becomes
W' = W + (alpha / r) B A. That needs the whole model in memory, about 140 GB for a 70B model in fp16.

Here the same sum is taken while copying the model's safetensors files: each tensor is read with
``safetensors.safe_open``, changed if the adapter targets it, and written straight into a new safetensors file whose
header was laid out beforehand, so peak memory is about one tensor plus the adapter, whatever the model's size.
Untargeted tensors are copied byte for byte. Every check (missing layer, wrong shape, a targeted layer the adapter
does not cover) runs before anything is written, and the output folder appears only once complete
(:func:`platypus_nb.io.atomic_directory`).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from platypus_nb.io import atomic_directory, atomic_write_json
from platypus_nb.merge.adapter import LoraAdapter, adapter_files, read_lora_adapter
from platypus_nb.merge.errors import MergeInputError
from platypus_nb.merge.measure import PeakMemory, single_threaded_torch
from platypus_nb.merge.safetensors_files import (DTYPES, OUTPUT_DTYPES, SAFETENSORS_INDEX, TensorEntry, folder_hashes,
                                                 output_entries, shard_sizes, tensor_entries, weight_shards,
                                                 write_safetensors_streaming)

MERGE_CONFIG = "merge_config.json"
# Files of a model folder that are weights (rewritten or dropped), or bookkeeping of another tool: never copied.
_NOT_COPIED = re.compile(r".*\.(safetensors|bin|pt|pth|ckpt|h5|msgpack|gguf|onnx)$|.*\.index\.json$|"
                         r"platypus_nb_asset\.json$|" + re.escape(MERGE_CONFIG) + "$")


def check_adapter_fits(adapter: LoraAdapter, entries: list[TensorEntry], model_dir: Path) -> None:
    """Fail, naming the layer, unless every update lands on a tensor of its shape and no targeted layer is left out.

    The second check catches a partner of another architecture whose extra layers peft would have adapted (e.g. a
    40-layer adapter against an 80-layer model): merging it anyway would silently leave those layers untouched.
    """
    from peft.tuners.tuners_utils import check_target_module_exists

    by_name = {e.name: e for e in entries}
    for name, update in adapter.weight_names.items():
        entry = by_name.get(name)
        if entry is None:
            raise MergeInputError(f"layer {update.module}: the adapter {adapter.path} updates {name}, which the model "
                                  f"{model_dir} does not have (another architecture?)")
        if entry.shape != update.weight_shape:
            raise MergeInputError(f"layer {update.module}: shape mismatch: the model {model_dir} has {name} of shape "
                                  f"{list(entry.shape)}, the adapter {adapter.path} updates shape "
                                  f"{list(update.weight_shape)}")
        if entry.dtype not in OUTPUT_DTYPES.values():
            raise MergeInputError(f"layer {update.module}: {name} is stored as {entry.dtype}; only float32/16 and "
                                  f"bfloat16 weights can take a LoRA update (quantized checkpoint?)")
    for entry in entries:
        module = entry.name.removesuffix(".weight")
        if (entry.name.endswith(".weight") and len(entry.shape) == 2 and module not in adapter.updates
                and check_target_module_exists(adapter.config, module)):
            raise MergeInputError(f"layer {module}: the adapter {adapter.path} targets it (target_modules="
                                  f"{adapter.config.target_modules}) but holds no update for it; the model "
                                  f"{model_dir} has a different architecture than the adapter's base")


def _copy_model_files(model_dir: Path, out_dir: Path, dtype: str) -> None:
    """Config, generation config and the *target's* tokenizer, as the original merge.py saved them."""
    for p in sorted(model_dir.iterdir()):
        if p.is_file() and not p.name.startswith(".") and not _NOT_COPIED.match(p.name):
            shutil.copyfile(p, out_dir / p.name)
    config_file = out_dir / "config.json"
    if dtype != "auto" and config_file.is_file():
        config = json.loads(config_file.read_text())
        config["dtype"] = dtype
        if "torch_dtype" in config:
            config["torch_dtype"] = dtype
        atomic_write_json(config_file, config)


def merge_lora_into(model_dir: str | Path, adapter: str | Path | LoraAdapter, out_dir: str | Path, *,
                    dtype: str = "auto", notes: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Write ``out_dir`` = the model in ``model_dir`` with the adapter's update merged in; return the merge report.

    The model folder's sharding is kept (same shard names and index); ``dtype`` ("auto", "float32", "bfloat16",
    "float16") is the dtype floating tensors are written in. Each update is added in float32 and rounded once:
    peft on CPU rounds the update to the weight's dtype before adding it, so fp16/bf16 results may differ from
    ``merge_and_unload`` in the last bit; fp32 results are identical. ``notes`` are recorded in merge_config.json.

    The report (merge_report.json's entry) holds the inputs and their sha256, the tensors changed, the largest
    entry of any update added (``max_abs_delta``), ||delta W|| / ||W|| per tensor, the wall time and the peak
    resident memory of this process during the merge, next to its memory before and the model's size.
    """
    from safetensors import safe_open
    from tqdm.auto import tqdm

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if dtype != "auto" and dtype not in OUTPUT_DTYPES:
        raise MergeInputError(f"dtype {dtype!r}: expected 'auto' or one of {', '.join(OUTPUT_DTYPES)}")
    if not model_dir.is_dir():
        raise MergeInputError(f"model folder {model_dir} does not exist")
    adapter = adapter if isinstance(adapter, LoraAdapter) else read_lora_adapter(adapter)
    entries = tensor_entries(model_dir)
    check_adapter_fits(adapter, entries, model_dir)
    targets = adapter.weight_names
    sharded = (model_dir / SAFETENSORS_INDEX).is_file()
    merge_config = {
        "method": "lora_linear",
        "formula": "W' = W + scaling * B @ A on every targeted layer (the paper's merge.py: peft merge_and_unload)",
        "model": {"path": str(model_dir), "sha256": folder_hashes(model_dir, weight_shards(model_dir))},
        "adapter": {"path": str(adapter.path), "sha256": folder_hashes(adapter.path, adapter_files(adapter.path)),
                    "r": adapter.config.r, "lora_alpha": adapter.config.lora_alpha,
                    "use_rslora": bool(adapter.config.use_rslora),
                    "target_modules": sorted(adapter.config.target_modules)
                    if not isinstance(adapter.config.target_modules, str) else adapter.config.target_modules,
                    "scaling": sorted({u.scaling for u in adapter.updates.values()})},
        "dtype": dtype,
        "tensors_changed": len(targets),
        "notes": notes or {},
    }
    if (model_dir / MERGE_CONFIG).is_file():
        merge_config["model_provenance"] = json.loads((model_dir / MERGE_CONFIG).read_text())
    changed: list[dict[str, Any]] = []
    out_entries = output_entries(entries, dtype)
    progress = tqdm(total=len(entries), desc=f"merging into {out_dir.name}", unit="tensor", leave=False)
    with PeakMemory() as memory, single_threaded_torch(), atomic_directory(out_dir) as tmp, progress:
        for shard in weight_shards(model_dir):
            shard_entries = [e for e in out_entries if e.shard == shard]
            out_dtypes = {e.name: DTYPES[e.dtype] for e in shard_entries}
            with safe_open(model_dir / shard, framework="pt") as f:
                metadata = {**(f.metadata() or {}), "format": "pt"}

            def tensor_for(name: str, path=model_dir / shard, out_dtypes=out_dtypes) -> torch.Tensor:
                # safetensors hands out tensors backed by a memory map of the whole file, whose pages stay
                # resident while the file is open: opening it per tensor bounds memory by a tensor, not a shard.
                with safe_open(path, framework="pt") as f:
                    stored = f.get_tensor(name)
                progress.update()
                out_dtype = out_dtypes[name]
                if name not in targets:
                    return stored.to(out_dtype)
                # Added in float32 (type promotion, no copy of the weight) and rounded once to the output dtype.
                delta = targets[name].delta()
                merged = torch.add(stored, delta).to(out_dtype)
                weight_norm = torch.linalg.vector_norm(stored, dtype=torch.float32).clamp_min(1e-30)
                changed.append({"tensor": name, "relative_norm": (delta.norm() / weight_norm).item(),
                                "max_abs_delta": delta.abs_().max().item()})
                return merged

            write_safetensors_streaming(tmp / shard, shard_entries, tensor_for, metadata)
        if sharded:
            index = json.loads((model_dir / SAFETENSORS_INDEX).read_text())
            index.setdefault("metadata", {})["total_size"] = sum(e.nbytes for e in out_entries)
            atomic_write_json(tmp / SAFETENSORS_INDEX, index)
        _copy_model_files(model_dir, tmp, dtype)
        atomic_write_json(tmp / MERGE_CONFIG, merge_config)
    return {
        "output": str(out_dir),
        "inputs": {"model": merge_config["model"], "adapter": merge_config["adapter"]},
        "method": merge_config["method"],
        "dtype": dtype,
        "tensors_total": len(entries),
        "tensors_changed": len(changed),
        "max_abs_delta": max((c["max_abs_delta"] for c in changed), default=0.0),
        **memory.as_dict(),
        "model_mib": round(sum(e.nbytes for e in entries) / 2**20, 1),
        "largest_shard_mib": round(max(shard_sizes(entries).values()) / 2**20, 1),
        "notes": notes or {},
        "tensors": sorted(changed, key=lambda c: c["tensor"]),
    }

"""safetensors model folders read from their headers and written one tensor at a time.

``safetensors.torch.save_file`` needs every tensor of a file in memory at once and the library has no streaming
writer, so :func:`write_safetensors_streaming` lays the header out first and writes each tensor as it is made; that
is what keeps a 70B merge's peak memory at about one tensor.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from platypus_nb.io import file_sha256
from platypus_nb.merge.errors import MergeInputError

SAFETENSORS_INDEX = "model.safetensors.index.json"
# safetensors dtype names and the torch dtypes they hold.
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# What merge.dtype may ask for; "auto" keeps each tensor's stored dtype.
OUTPUT_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor of a safetensors model lives, read from the file headers only."""

    name: str
    shard: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype].itemsize


def weight_shards(model_dir: Path) -> list[str]:
    """The model's safetensors files, in order: from the index of a sharded model, or the single file."""
    index = model_dir / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise MergeInputError(f"{index}: expected a non-empty 'weight_map'")
        shards = sorted(set(weight_map.values()))
    else:
        shards = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if not shards:
        bins = sorted(p.name for p in model_dir.glob("*.bin"))
        hint = (f"; it has PyTorch .bin weights ({', '.join(bins[:3])}): convert them with "
                f"platypus_nb.merge.partners.safetensors_copy_of_bin_model" if bins else "")
        raise MergeInputError(f"{model_dir}: no safetensors weights found{hint}")
    missing = [s for s in shards if not (model_dir / s).is_file()]
    if missing:
        raise MergeInputError(f"{model_dir}: shard(s) named in {SAFETENSORS_INDEX} are missing: {missing}")
    return shards


def tensor_entries(model_dir: str | Path) -> list[TensorEntry]:
    """Every tensor of a safetensors model folder (single file or sharded), from the headers only."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    entries = []
    for shard in weight_shards(model_dir):
        with safe_open(model_dir / shard, framework="pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                entries.append(TensorEntry(name, shard, sl.get_dtype(), tuple(sl.get_shape())))
    return entries


def output_entries(entries: list[TensorEntry], dtype: str) -> list[TensorEntry]:
    """Entries as written: floating tensors cast to ``dtype`` unless it is "auto" (other tensors are never cast)."""
    if dtype == "auto":
        return list(entries)
    target = OUTPUT_DTYPES[dtype]
    return [TensorEntry(e.name, e.shard, target, e.shape) if DTYPES[e.dtype].is_floating_point else e
            for e in entries]


def shard_sizes(entries: list[TensorEntry]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for e in entries:
        sizes[e.shard] = sizes.get(e.shard, 0) + e.nbytes
    return sizes


def folder_hashes(folder: Path, names: Iterable[str]) -> dict[str, str]:
    return {name: file_sha256(folder / name) for name in sorted(names)}


def write_safetensors_streaming(path: Path, entries: list[TensorEntry], tensor_for: Callable[[str], torch.Tensor],
                                metadata: dict[str, str]) -> None:
    """Write a safetensors file whose header is laid out from ``entries`` first, then each tensor as it is made.

    ``safetensors.torch.save_file`` needs every tensor of a file in memory at once; this writer holds one. Tensors
    are laid out by descending item size, then name (as safetensors itself does), so every tensor stays aligned.
    """
    order = sorted(entries, key=lambda e: (-DTYPES[e.dtype].itemsize, e.name))
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for e in order:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for e in order:
            t = tensor_for(e.name)
            if DTYPE_NAMES.get(t.dtype) != e.dtype or tuple(t.shape) != e.shape:
                raise RuntimeError(f"{path}: tensor {e.name} came out as {t.dtype} {tuple(t.shape)}, "
                                   f"laid out as {e.dtype} {e.shape}")
            f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)

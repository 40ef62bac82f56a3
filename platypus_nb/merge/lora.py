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

import contextlib
import json
import math
import re
import resource
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import torch

from platypus_nb.io import atomic_directory, atomic_write_json, file_sha256

SAFETENSORS_INDEX = "model.safetensors.index.json"
MERGE_CONFIG = "merge_config.json"
# Files of a model folder that are weights (rewritten or dropped), or bookkeeping of another tool: never copied.
_NOT_COPIED = re.compile(r".*\.(safetensors|bin|pt|pth|ckpt|h5|msgpack|gguf|onnx)$|.*\.index\.json$|"
                         r"platypus_nb_asset\.json$|" + re.escape(MERGE_CONFIG) + "$")
# safetensors dtype names and the torch dtypes they hold.
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# What merge.dtype may ask for; "auto" keeps each tensor's stored dtype.
OUTPUT_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
# peft adapter keys: base_model.model.<module>.lora_A[.<adapter name>].weight
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


class MergeInputError(ValueError):
    """An adapter or model folder cannot be merged; raised before anything is written, naming file and layer."""


# ---------------------------------------------------------------------------------------------------- adapters


@dataclass
class LoraUpdate:
    """One targeted layer's low-rank update: delta = scaling * B @ A (transposed for fan_in_fan_out layers)."""

    module: str
    lora_A: torch.Tensor  # (r, in_features)
    lora_B: torch.Tensor  # (out_features, r)
    scaling: float
    fan_in_fan_out: bool

    @property
    def weight_shape(self) -> tuple[int, int]:
        shape = (self.lora_B.shape[0], self.lora_A.shape[1])
        return shape[::-1] if self.fan_in_fan_out else shape

    def delta(self) -> torch.Tensor:
        """The update in float32, computed as peft's ``get_delta_weight`` does (so fp32 merges agree bit for bit)."""
        delta = (self.lora_B.float() @ self.lora_A.float()).mul_(self.scaling)
        return delta.T if self.fan_in_fan_out else delta


@dataclass
class LoraAdapter:
    path: Path
    config: Any  # peft.LoraConfig
    updates: dict[str, LoraUpdate]

    @property
    def weight_names(self) -> dict[str, LoraUpdate]:
        """The model tensors this adapter changes, by name (``<module>.weight``)."""
        return {f"{module}.weight": u for module, u in self.updates.items()}


def _unsupported_features(config: Any) -> list[str]:
    """LoRA variants whose merge is not W + scaling B A on existing weights (we refuse them rather than mis-merge)."""
    found = []
    if getattr(config, "use_dora", False):
        found.append("use_dora (DoRA rescales the merged weight by a learned magnitude)")
    if getattr(config, "bias", "none") != "none" or getattr(config, "lora_bias", False):
        found.append(f"bias={config.bias!r}/lora_bias (the adapter also trains biases)")
    if getattr(config, "modules_to_save", None):
        found.append(f"modules_to_save={config.modules_to_save} (whole modules replaced, not a low-rank update)")
    if getattr(config, "target_parameters", None):
        found.append("target_parameters")
    if getattr(config, "layer_replication", None):
        found.append("layer_replication (the adapter changes the model's layer structure)")
    return found


def read_lora_adapter(adapter_dir: str | Path) -> LoraAdapter:
    """Read a peft LoRA adapter folder (safetensors or .bin) into per-layer updates, validating it fully.

    Scaling follows peft: alpha / r, or alpha / sqrt(r) with ``use_rslora``; ``rank_pattern`` and ``alpha_pattern``
    give per-layer values. For the Platypus recipe (r = alpha = 16) the scale is 1.
    """
    from peft import LoraConfig
    from peft.utils import load_peft_weights
    from peft.utils.other import get_pattern_key

    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise MergeInputError(f"{adapter_dir}: not a peft adapter folder (no adapter_config.json); expected the "
                              f"output of step 03, e.g. runs/<run>/03_finetune/adapter/")
    raw = json.loads(config_file.read_text())
    if raw.get("peft_type") != "LORA":
        raise MergeInputError(f"{config_file}: peft_type is {raw.get('peft_type')!r}; only LoRA adapters merge as "
                              f"W + (alpha/r) B A")
    config = LoraConfig.from_pretrained(str(adapter_dir))
    unsupported = _unsupported_features(config)
    if unsupported:
        raise MergeInputError(f"{config_file}: unsupported LoRA features for the streamed merge: "
                              f"{'; '.join(unsupported)}")
    weights = load_peft_weights(str(adapter_dir), device="cpu")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        m = _LORA_KEY.match(key)
        if m is None:
            raise MergeInputError(f"{adapter_dir}: adapter tensor {key!r} is not a LoRA A/B weight (embedding LoRA, "
                                  f"DoRA magnitudes and trained biases are not supported)")
        parts.setdefault(m["module"], {})[m["part"]] = tensor
    if not parts:
        raise MergeInputError(f"{adapter_dir}: the adapter holds no LoRA weights")
    updates = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise MergeInputError(f"{adapter_dir}: layer {module}: has lora_{''.join(ab)} but not both A and B")
        r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), module), config.r)
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha)
        A, B = ab["A"], ab["B"]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != r or B.shape[1] != r:
            raise MergeInputError(f"{adapter_dir}: layer {module}: lora_A {tuple(A.shape)} and lora_B "
                                  f"{tuple(B.shape)} do not form a rank-{r} update of a linear layer")
        scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
        updates[module] = LoraUpdate(module, A, B, scaling, bool(config.fan_in_fan_out))
    return LoraAdapter(adapter_dir, config, updates)


# ------------------------------------------------------------------------------------------------- model files


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


# --------------------------------------------------------------------------------------------------- hashing


def folder_hashes(folder: Path, names: Iterable[str]) -> dict[str, str]:
    return {name: file_sha256(folder / name) for name in sorted(names)}


def adapter_files(adapter_dir: Path) -> list[str]:
    return [p.name for p in sorted(adapter_dir.iterdir())
            if p.name.startswith("adapter_") and p.suffix in (".json", ".safetensors", ".bin")]


# -------------------------------------------------------------------------------------------- memory and time


class PeakMemory:
    """Peak resident memory (MiB) of this process over a ``with`` block.

    On Linux the kernel's high-water mark is reset on entry (``/proc/self/clear_refs``), so the peak is the block's
    own; elsewhere it falls back to the process's lifetime peak (``ru_maxrss``) and says so in ``scope``.
    """

    def __enter__(self) -> "PeakMemory":
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.scope = "block"
        except OSError:
            self.scope = "process"
        self.before_mib = _status_kib("VmRSS") / 1024 if self.scope == "block" else float("nan")
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start
        if self.scope == "block":
            self.peak_mib = _status_kib("VmHWM") / 1024
        else:
            self.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "peak_rss_mib": round(self.peak_mib, 1),
                "rss_before_mib": round(self.before_mib, 1), "peak_rss_scope": self.scope}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


@contextlib.contextmanager
def single_threaded_torch() -> Iterator[None]:
    """Run torch's arithmetic on one thread for the block, then restore the setting.

    A merge's arithmetic is one small matmul and a few elementwise passes per tensor, bound by memory and disk;
    intra-op threads only add synchronisation (on a shared 2-core machine SmolLM2's merge took 15 s with 2 threads
    and 2 s with 1).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------- safetensors writer


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


# ------------------------------------------------------------------------------------------------- the merge


def output_entries(entries: list[TensorEntry], dtype: str) -> list[TensorEntry]:
    """Entries as written: floating tensors cast to ``dtype`` unless it is "auto" (other tensors are never cast)."""
    if dtype == "auto":
        return list(entries)
    target = OUTPUT_DTYPES[dtype]
    return [TensorEntry(e.name, e.shard, target, e.shape) if DTYPES[e.dtype].is_floating_point else e
            for e in entries]


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
        "largest_shard_mib": round(max(_shard_sizes(entries).values()) / 2**20, 1),
        "notes": notes or {},
        "tensors": sorted(changed, key=lambda c: c["tensor"]),
    }


def _shard_sizes(entries: list[TensorEntry]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for e in entries:
        sizes[e.shard] = sizes.get(e.shard, 0) + e.nbytes
    return sizes

"""Reading a peft LoRA adapter folder into per-layer low-rank updates, validated before any merge starts."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from platypus_nb.merge.errors import MergeInputError

# peft adapter keys: base_model.model.<module>.lora_A[.<adapter name>].weight
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


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


def target_kinds(target_modules: Any) -> list[str]:
    """The kinds of layer an adapter targets (``down_proj``, ``q_proj``, ...), for tables and cards: peft saves
    ``"all-linear"`` expanded to every layer by its full name, 210 names for a 30-layer model."""
    if isinstance(target_modules, str):
        return [target_modules]
    return sorted({name.rsplit(".", 1)[-1] for name in target_modules})


def adapter_files(adapter_dir: Path) -> list[str]:
    return [p.name for p in sorted(adapter_dir.iterdir())
            if p.name.startswith("adapter_") and p.suffix in (".json", ".safetensors", ".bin")]

"""The base model at the configured precision (``finetune.precision``), with the Platypus LoRA adapter on top.

``fp32`` (the tiny CPU default); ``bf16`` / ``fp16`` with autocast; ``int8``, what the original ran: LLM.int8 base,
fp16 autocast; ``nf4``: QLoRA, 4-bit NF4 with double quantisation, ``bnb_4bit_compute_dtype`` compute. Without
CUDA every 16-bit dtype becomes fp32 (a CPU without bf16/fp16 units runs them far slower); the 4- and 8-bit
bitsandbytes layers run on CPU as they are. What was used is recorded in ``train_args.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch

from platypus_nb.config import FinetuneConfig
from platypus_nb.finetune.attention import register_segment_sdpa

# Linear layers as transformers' models define them (GPT-2 style models use Conv1D), the layers LoRA adapts here.
LINEAR_LAYERS = {"Linear", "Conv1D"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelSetupError(ValueError):
    """The model cannot be set up as configured (e.g. a LoRA target module it does not have)."""


@dataclass(frozen=True)
class Precision:
    """What a precision setting means on this device."""

    name: str
    weights_dtype: str          # dtype of the non-quantized base weights
    quantization: Optional[str]  # None, "int8" or "nf4"
    compute_dtype: str          # nf4 matmul dtype
    mixed_precision: str        # the Trainer's autocast (TrainingArguments bf16 / fp16): "no", "bf16" or "fp16"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_precision(cfg: FinetuneConfig, cuda: bool) -> Precision:
    def on_device(dtype: str) -> str:
        return dtype if cuda else "float32"

    half = {"bf16": "bfloat16", "fp16": "float16"}
    if cfg.precision == "fp32":
        return Precision("fp32", "float32", None, "float32", "no")
    if cfg.precision in half:
        dtype = on_device(half[cfg.precision])
        return Precision(cfg.precision, dtype, None, dtype, _autocast(dtype))
    if cfg.precision == "int8":
        # Original: load_in_8bit=True, torch_dtype=float16, TrainingArguments(fp16=True).
        dtype = on_device("float16")
        return Precision("int8", dtype, "int8", dtype, _autocast(dtype))
    compute = on_device(cfg.bnb_4bit_compute_dtype)
    return Precision("nf4", compute, "nf4", compute, _autocast(compute))


def _autocast(dtype: str) -> str:
    return {"bfloat16": "bf16", "float16": "fp16"}.get(dtype, "no")


def quantization_config(precision: Precision, cfg: FinetuneConfig, fsdp: bool = False) -> Any:
    """bitsandbytes settings. Under FSDP the 4-bit weights are stored packed in the compute dtype, so that FSDP
    can shard them like the other (non-quantized) weights (PEFT's FSDP + QLoRA guide); LLM.int8 cannot be sharded."""
    from transformers import BitsAndBytesConfig

    if precision.quantization == "int8":
        if fsdp:
            raise ModelSetupError("finetune.precision int8 (LLM.int8) cannot be sharded by FSDP; use nf4 or bf16 "
                                  "with an FSDP accelerate config, or int8 with plain DDP")
        return BitsAndBytesConfig(load_in_8bit=True)
    if precision.quantization == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=cfg.bnb_4bit_double_quant,
                                  bnb_4bit_compute_dtype=_DTYPES[precision.compute_dtype],
                                  bnb_4bit_quant_storage=_DTYPES[precision.compute_dtype] if fsdp else torch.uint8)
    return None


def check_target_modules(base_model: str, targets: list[str], trust_remote_code: bool = False) -> None:
    """Every LoRA target must name a Linear layer of the base (checked on an empty, meta-device model): peft
    matches a target against module names, so ``mlp`` would pick the whole MLP block, which LoRA cannot adapt."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from platypus_nb.assets import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(base_model), trust_remote_code=trust_remote_code)
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    kinds: dict[str, set[str]] = {}
    for name, module in empty.named_modules():
        kinds.setdefault(name.rsplit(".", 1)[-1], set()).add(type(module).__name__)
    linear = sorted(n for n, k in kinds.items() if k <= LINEAR_LAYERS and n != "lm_head")
    for target in targets:
        if not kinds.get(target, LINEAR_LAYERS) <= LINEAR_LAYERS:
            raise ModelSetupError(f"finetune.lora_target_modules: {target!r} names a {'/'.join(sorted(kinds[target]))} "
                                  f"in {base_model} ({config.model_type}), not a Linear layer; its Linear layers "
                                  f"are: {', '.join(linear)}")
    missing = [t for t in targets if t not in kinds]
    if missing:
        raise ModelSetupError(f"finetune.lora_target_modules: {missing} not found in {base_model} "
                              f"({config.model_type}); its Linear layers are: {', '.join(linear)}")


def training_attention(cfg: FinetuneConfig) -> str:
    """Packed rows with ``sdpa`` attend one example at a time (see ``attention.py``) instead of through a dense
    block-diagonal mask; ``flash_attention_2`` handles packed rows natively, ``eager`` through the mask."""
    if cfg.packing and cfg.attn_implementation == "sdpa":
        return register_segment_sdpa()
    return cfg.attn_implementation


def load_lora_model(base_model: str, cfg: FinetuneConfig, precision: Precision, device: torch.device, seed: int,
                    trust_remote_code: bool = False, fsdp: bool = False) -> Any:
    """Load the base (quantized bases placed on ``device``; the Trainer places the others, FSDP shards them), prepare
    a quantized base for k-bit training, and add a LoRA adapter initialised from ``seed``."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    from platypus_nb.assets import load_model

    quant = quantization_config(precision, cfg, fsdp)
    kwargs: dict[str, Any] = {"attn_implementation": training_attention(cfg)}
    if quant is not None:
        kwargs["quantization_config"] = quant
        if not fsdp:
            kwargs["device_map"] = {"": device}
    model = load_model(base_model, dtype=_DTYPES[precision.weights_dtype], trust_remote_code=trust_remote_code,
                       **kwargs)
    model.config.use_cache = False
    if quant is not None:
        # The original's prepare_model_for_int8_training was removed in PEFT 0.10; its successor casts norms and
        # the output layer to fp32. Gradient checkpointing is the Trainer's (TrainingArguments).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), bias="none", task_type="CAUSAL_LM")
    set_seed(seed)  # the same LoRA initialisation in every process and on every resume
    return get_peft_model(model, lora)


def training_flops_per_token(config: Any, lora_params: int, mean_context: float) -> float:
    """Model FLOPs of one trained token for LoRA on a frozen base (the MFU numerator), PaLM-style: 2 per decoder
    weight forward, 2 more for the input gradients (frozen weights need no weight gradient), 4 more per LoRA weight,
    and 12 x layers x hidden x context for attention, ``mean_context`` being the token-weighted mean example length
    (a token attends within its example). The LM head counts for target tokens only (:func:`lm_head_flops_per_target`);
    gradient checkpointing's recomputation is not model work."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or h // heads
    attn_proj = h * heads * head_dim * 2 + h * kv_heads * head_dim * 2
    per_layer = attn_proj + 3 * h * inter
    return 4 * layers * per_layer + 6 * lora_params + 12 * layers * heads * head_dim * mean_context


def lm_head_flops_per_target(config: Any) -> float:
    """Forward and input-gradient backward through the (frozen) output projection, per token that has a label."""
    return 4 * config.hidden_size * config.vocab_size

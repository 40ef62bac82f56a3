"""The base model at the configured precision (``finetune.precision``), with the Platypus LoRA adapter on top.

``fp32`` (the tiny CPU default); ``bf16`` / ``fp16`` with autocast; ``int8``, what the original ran: LLM.int8 base,
fp16 autocast; ``nf4``: QLoRA, 4-bit NF4 with double quantisation, ``bnb_4bit_compute_dtype`` compute. Without
CUDA every 16-bit dtype becomes fp32 (a CPU without bf16/fp16 units runs them far slower); the 4- and 8-bit
bitsandbytes layers run on CPU as they are. What was used is recorded in ``train_args.json``.
"""

from __future__ import annotations

from typing import Any

import torch

from platypus_nb.config import ALL_LINEAR, FinetuneConfig

# Linear layers as transformers' models define them (GPT-2 style models use Conv1D), the layers LoRA adapts here.
LINEAR_LAYERS = {"Linear", "Conv1D"}


class ModelSetupError(ValueError):
    """The model cannot be set up as configured (e.g. a LoRA target module it does not have)."""


def resolve_precision(cfg: FinetuneConfig, cuda: bool) -> dict[str, Any]:
    """What ``finetune.precision`` means on this device: the dtype of the non-quantized weights (also the nf4
    matmul dtype), the bitsandbytes quantization and the Trainer's autocast (TrainingArguments ``bf16`` / ``fp16``).
    int8 is the original's ``load_in_8bit=True, torch_dtype=float16, TrainingArguments(fp16=True)``."""
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "float16",
             "nf4": cfg.bnb_4bit_compute_dtype}[cfg.precision] if cuda else "float32"
    return {"name": cfg.precision, "weights_dtype": dtype,
            "quantization": cfg.precision if cfg.precision in ("int8", "nf4") else None, "compute_dtype": dtype,
            "mixed_precision": {"bfloat16": "bf16", "float16": "fp16"}.get(dtype, "no")}


def quantization_config(precision: dict[str, Any], cfg: FinetuneConfig, fsdp: bool = False) -> Any:
    """bitsandbytes settings. Under FSDP the 4-bit weights are stored packed in the compute dtype, so that FSDP
    can shard them like the other (non-quantized) weights (PEFT's FSDP + QLoRA guide); LLM.int8 cannot be sharded."""
    from transformers import BitsAndBytesConfig

    if precision["quantization"] == "int8":
        if fsdp:
            raise ModelSetupError("finetune.precision int8 (LLM.int8) cannot be sharded by FSDP; use nf4 or bf16 "
                                  "with an FSDP accelerate config, or int8 with plain DDP")
        return BitsAndBytesConfig(load_in_8bit=True)
    if precision["quantization"] == "nf4":
        compute = getattr(torch, precision["compute_dtype"])
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=cfg.bnb_4bit_double_quant, bnb_4bit_compute_dtype=compute,
                                  bnb_4bit_quant_storage=compute if fsdp else torch.uint8)
    return None


def peft_target_modules(targets: list[str]) -> list[str] | str:
    """``finetune.lora_target_modules`` as peft takes it: ``["all-linear"]`` is its string ``"all-linear"``, which
    peft expands to every Linear layer but the output layer (and saves expanded in ``adapter_config.json``)."""
    return ALL_LINEAR if list(targets) == [ALL_LINEAR] else list(targets)


def check_target_modules(base_model: str, targets: list[str], trust_remote_code: bool = False) -> None:
    """Every LoRA target must name a Linear layer of the base (checked on an empty, meta-device model): peft
    matches a target against module names, so ``mlp`` would pick the whole MLP block, which LoRA cannot adapt."""
    if peft_target_modules(targets) == ALL_LINEAR:
        return
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from platypus_nb.assets import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(base_model), trust_remote_code=trust_remote_code)
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    kinds: dict[str, set[str]] = {}
    for name, module in empty.named_modules():
        kinds.setdefault(name.rsplit(".", 1)[-1], set()).add(type(module).__name__)
    linear = ", ".join(sorted(n for n, k in kinds.items() if k <= LINEAR_LAYERS and n != "lm_head"))
    where = f"in {base_model} ({config.model_type})"
    for target in targets:
        if not kinds.get(target, LINEAR_LAYERS) <= LINEAR_LAYERS:
            raise ModelSetupError(f"finetune.lora_target_modules: {target!r} names a {'/'.join(sorted(kinds[target]))} "
                                  f"{where}, not a Linear layer; its Linear layers are: {linear}")
    missing = [t for t in targets if t not in kinds]
    if missing:
        raise ModelSetupError(f"finetune.lora_target_modules: {missing} not found {where}; its Linear layers are: "
                              f"{linear}")


def load_lora_model(base_model: str, cfg: FinetuneConfig, precision: dict[str, Any], device: torch.device, seed: int,
                    trust_remote_code: bool = False, fsdp: bool = False) -> Any:
    """Load the base (quantized bases placed on ``device``; the Trainer places the others, FSDP shards them), prepare
    a quantized base for k-bit training, and add a LoRA adapter initialised from ``seed``.

    Packed rows with ``sdpa`` attend one example at a time (``attention.py``) instead of through a dense
    block-diagonal mask; ``flash_attention_2`` handles packed rows natively, ``eager`` through the mask."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    from platypus_nb.assets import load_model
    from platypus_nb.finetune.attention import register_segment_sdpa

    quant = quantization_config(precision, cfg, fsdp)
    packed_sdpa = cfg.packing and cfg.attn_implementation == "sdpa"
    kwargs: dict[str, Any] = {"attn_implementation": register_segment_sdpa() if packed_sdpa
                              else cfg.attn_implementation}
    if quant is not None:
        kwargs["quantization_config"] = quant
        if not fsdp:
            kwargs["device_map"] = {"": device}
    model = load_model(base_model, dtype=getattr(torch, precision["weights_dtype"]),
                       trust_remote_code=trust_remote_code, **kwargs)
    model.config.use_cache = False
    if quant is not None:
        # The original's prepare_model_for_int8_training was removed in PEFT 0.10; its successor casts norms and
        # the output layer to fp32. Gradient checkpointing is the Trainer's (TrainingArguments).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=peft_target_modules(cfg.lora_target_modules), bias="none", task_type="CAUSAL_LM")
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
    per_layer = h * heads * head_dim * 2 + h * kv_heads * head_dim * 2 + 3 * h * inter
    return 4 * layers * per_layer + 6 * lora_params + 12 * layers * heads * head_dim * mean_context


def lm_head_flops_per_target(config: Any) -> float:
    """Forward and input-gradient backward through the (frozen) output projection, per token that has a label."""
    return 4 * config.hidden_size * config.vocab_size

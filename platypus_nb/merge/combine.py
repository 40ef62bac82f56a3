"""Beyond the paper: several LoRA adapters combined into one with peft's weighted-adapter merging.

The paper merges the Platypus adapter into another fine-tune by plain addition. When that other fine-tune is itself
a LoRA adapter over the same base (our tiny stand-in partners are), the two updates can instead be combined with
the interference-aware methods peft implements in ``add_weighted_adapter``: TIES (trim, elect sign, merge), DARE
(random drop and rescale) and their SVD variants, or ``cat``, the exact weighted sum. The combined adapter is then
merged into the base with the same streamed merge as the paper's.

Combining needs only the adapters, never the base weights, so peft runs on a weightless skeleton of the model:
built on the ``meta`` device, with each targeted layer given a zero-stride placeholder weight of the right shape.
Memory is the adapters', whatever the model's size.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

import torch

from platypus_nb.config import COMBINATION_METHODS
from platypus_nb.io import atomic_directory, atomic_write_json
from platypus_nb.merge.adapter import adapter_files
from platypus_nb.merge.errors import MergeInputError
from platypus_nb.merge.safetensors_files import folder_hashes

COMBINE_CONFIG = "combine_config.json"


def _weightless_skeleton(base_model_dir: Path, adapter_configs: Sequence[Any], trust_remote_code: bool):
    """The base architecture on ``meta``, with a shape-only CPU weight on every layer some adapter targets."""
    from peft.tuners.tuners_utils import check_target_module_exists
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_model_dir, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(check_target_module_exists(c, name) for c in adapter_configs):
            placeholder = torch.zeros(1, dtype=torch.float32).expand(module.weight.shape)
            module.weight = torch.nn.Parameter(placeholder, requires_grad=False)
    return model


def combine_adapters(adapter_dirs: Sequence[str | Path], weights: Sequence[float], method: str,
                     out_dir: str | Path, *, base_model_dir: str | Path, density: float = 0.5,
                     majority_sign_method: str = "total", seed: int = 42,
                     trust_remote_code: bool = False) -> dict[str, Any]:
    """Write one LoRA adapter to ``out_dir`` combining ``adapter_dirs`` with ``weights`` by ``method``.

    ``method`` is a peft ``combination_type`` (see :data:`COMBINATION_METHODS`); ``density`` is the share of
    entries TIES/DARE keep. DARE's random drop is seeded with ``seed``. Returns what ``combine_config.json`` records.
    """
    from peft import LoraConfig, PeftModel

    adapter_dirs = [Path(p) for p in adapter_dirs]
    if method not in COMBINATION_METHODS:
        raise MergeInputError(f"method {method!r}: expected one of {', '.join(COMBINATION_METHODS)}")
    if len(adapter_dirs) != len(weights) or len(adapter_dirs) < 2:
        raise MergeInputError(f"combining needs at least two adapters and one weight each, got "
                              f"{len(adapter_dirs)} adapters and weights {list(weights)}")
    configs = []
    for d in adapter_dirs:
        if not (d / "adapter_config.json").is_file():
            raise MergeInputError(f"{d}: not a peft adapter folder (no adapter_config.json)")
        configs.append(LoraConfig.from_pretrained(str(d)))
    ranks = {c.r for c in configs}
    if len(ranks) > 1 and not (method == "cat" or method.endswith("_svd")):
        raise MergeInputError(f"method {method!r} needs adapters of one rank, got r = "
                              f"{[c.r for c in configs]} for {[str(d) for d in adapter_dirs]}; use cat or an "
                              f"_svd method")
    names = [f"adapter_{i}" for i in range(len(adapter_dirs))]
    model = PeftModel.from_pretrained(_weightless_skeleton(Path(base_model_dir), configs, trust_remote_code),
                                      str(adapter_dirs[0]), adapter_name=names[0])
    for name, d in zip(names[1:], adapter_dirs[1:]):
        model.load_adapter(str(d), adapter_name=name)
    torch.manual_seed(seed)
    model.add_weighted_adapter(names, list(weights), "combined", combination_type=method, density=density,
                               majority_sign_method=majority_sign_method)
    record = {
        "method": method,
        "weights": list(weights),
        "density": density,
        "majority_sign_method": majority_sign_method,
        "seed": seed,
        "rank": model.peft_config["combined"].r,
        "adapters": [{"path": str(d), "sha256": folder_hashes(d, adapter_files(d))} for d in adapter_dirs],
        "implementation": "peft LoraModel.add_weighted_adapter on a weightless skeleton of the base",
    }
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp / "saved", selected_adapters=["combined"])
        for p in (tmp / "saved" / "combined").iterdir():
            shutil.move(p, tmp / p.name)
        shutil.rmtree(tmp / "saved")
        atomic_write_json(tmp / COMBINE_CONFIG, record)
    return record

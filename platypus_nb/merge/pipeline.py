"""Step 04 as the notebook runs it: merge the Platypus adapter into its base and into each partner, then list the
models step 05 evaluates (``models.json``) and what each merge cost (``merge_report.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from platypus_nb.assets import model_folder
from platypus_nb.config import Config
from platypus_nb.contracts import MODELS_JSON
from platypus_nb.io import atomic_write_json
from platypus_nb.merge.adapter import read_lora_adapter, target_kinds
from platypus_nb.merge.combine import combine_adapters
from platypus_nb.merge.lora import merge_lora_into
from platypus_nb.merge.partners import Partner, build_partner, fetch_partner
from platypus_nb.model_card import base_model_card_fields, build_card, recipe_fields, write_card

MERGE_REPORT = "merge_report.json"
PLATYPUS = "platypus"


def adapter_summary(adapter_dir: str | Path) -> dict[str, Any]:
    """What step 03 trained, as the merge sees it: targets, rank, alpha, scale, layers and parameters."""
    adapter = read_lora_adapter(adapter_dir)
    c = adapter.config
    return {"adapter": str(adapter_dir), "target_modules": ", ".join(target_kinds(c.target_modules)),
            "r": c.r, "lora_alpha": c.lora_alpha, "use_rslora": bool(c.use_rslora),
            "scaling": ", ".join(f"{s:g}" for s in sorted({u.scaling for u in adapter.updates.values()})),
            "layers_updated": len(adapter.updates),
            "adapter_parameters": sum(u.lora_A.numel() + u.lora_B.numel() for u in adapter.updates.values())}


def base_model_dir(cfg: Config) -> Path:
    return model_folder(cfg.model.base, cfg.model.revision)


def merge_platypus(cfg: Config, adapter_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Platypus2 itself: the adapter merged into the base it was trained on (merge.py with the base as target)."""
    report = merge_lora_into(base_model_dir(cfg), adapter_dir, out_dir / PLATYPUS, dtype=cfg.merge.dtype,
                             notes={"model": PLATYPUS, "stands_in_for": cfg.merge.platypus_stands_in_for})
    report["method"] = "linear"
    write_merged_card(cfg, PLATYPUS, cfg.merge.platypus_stands_in_for, report,
                      into=f"the base model {cfg.model.base}")
    return report


def prepare_partners(cfg: Config, cache_root: Path | None = None) -> list[Partner]:
    """Each configured partner as a local safetensors model: downloaded (paper configs) or built (tiny stand-ins)."""
    from tqdm.auto import tqdm

    partners = []
    for spec in tqdm(cfg.merge.partners, desc="partners"):
        if spec.model is not None:
            partners.append(fetch_partner(spec, cache_root))
        else:
            partners.append(build_partner(spec, cfg.model.base, cfg.finetune, cfg.run.seed,
                                          trust_remote_code=cfg.model.trust_remote_code, cache_root=cache_root))
    return partners


def merge_partner(cfg: Config, partner: Partner, adapter_dir: Path, out_dir: Path) -> dict[str, Any]:
    """The Platypus adapter merged into one partner: the paper's linear merge, or a peft combination (config).

    ``linear``: W_partner + (alpha/r) B A, as merge.py. The combination methods need the partner's own adapter:
    they combine (Platypus, partner) adapters with ``merge.adapter_weights`` and merge the result into the base.
    With ``cat`` and weights (1, 1) that is the same model as ``linear`` up to rounding.
    """
    spec, m = partner.spec, cfg.merge
    target = out_dir / spec.merged_name
    notes = {"model": spec.merged_name, "partner": spec.name, "stands_in_for": spec.merge_stands_in_for}
    if m.method == "linear":
        report = merge_lora_into(partner.model_dir, adapter_dir, target, dtype=m.dtype, notes=notes)
        report["method"] = "linear"
        write_merged_card(cfg, spec.merged_name, spec.merge_stands_in_for, report, into=f"the partner {spec.name}")
        return report
    if partner.adapter_dir is None:
        raise ValueError(f"merge.method {m.method!r} combines adapters, but partner {spec.name!r} is a full model "
                         f"without one; use merge.method: linear")
    base = base_model_dir(cfg)
    combination = combine_adapters([adapter_dir, partner.adapter_dir], m.adapter_weights, m.method,
                                   out_dir / "combined_adapters" / spec.merged_name, base_model_dir=base,
                                   density=m.density, majority_sign_method=m.majority_sign_method,
                                   seed=cfg.run.seed, trust_remote_code=cfg.model.trust_remote_code)
    report = merge_lora_into(base, out_dir / "combined_adapters" / spec.merged_name, target, dtype=m.dtype,
                             notes={**notes, "combination": combination})
    report["method"] = m.method
    write_merged_card(cfg, spec.merged_name, spec.merge_stands_in_for, report,
                      into=f"the base, combined with the partner {spec.name}'s adapter ({m.method})")
    return report


def write_merged_card(cfg: Config, name: str, stands_in_for: str, report: dict[str, Any], into: str) -> Path:
    """The merged model's Hugging Face card: base, dataset, recipe, and how this merge was made."""
    base = base_model_card_fields(cfg.model.base, base_model_dir(cfg))
    adapter = report["inputs"]["adapter"]
    provenance = {"merge": f"{report['method']}: the Platypus LoRA adapter merged into {into}",
                  "stands in for": stands_in_for or "-", "base model": base["name"],
                  "adapter": f"r={adapter['r']}, alpha={adapter['lora_alpha']}, targets "
                             f"{', '.join(target_kinds(adapter['target_modules']))}",
                  "adapter sha256": ", ".join(f"{k}: {v[:12]}" for k, v in adapter["sha256"].items()),
                  "dtype": report["dtype"], "run": cfg.run.name, "seed": cfg.run.seed}
    card = build_card(model_name=name, summary=f"`{name}` is {into} with the Platypus adapter of run "
                                               f"`{cfg.run.name}` merged in (paper section 4).",
                      base_model=base["name"], base_license=base["license"], library_name="transformers",
                      provenance=provenance, recipe=recipe_fields(cfg.finetune), tags=["merge"])
    return write_card(report["output"], card)


def models_manifest(cfg: Config, out_dir: Path, partners: Sequence[Partner]) -> list[dict[str, Any]]:
    """The models step 05 evaluates, each with the model it is compared against (the file step 05 reads)."""
    def entry(name: str, path: str, role: str, compare_to: str | None, stands_in_for: str) -> dict[str, Any]:
        return {"name": name, "path": path, "adapter": None, "role": role, "compare_to": compare_to,
                "stands_in_for": stands_in_for}

    models = [entry("base", cfg.model.base, "base", None, cfg.merge.base_stands_in_for),
              entry(PLATYPUS, str((out_dir / PLATYPUS).resolve()), "platypus", "base",
                    cfg.merge.platypus_stands_in_for)]
    for p in partners:
        models.append(entry(p.name, str(p.model_dir.resolve()), "partner", "base", p.spec.stands_in_for))
        models.append(entry(p.spec.merged_name, str((out_dir / p.spec.merged_name).resolve()), "merge", p.name,
                            p.spec.merge_stands_in_for))
    return models


def partner_report(partner: Partner) -> dict[str, Any]:
    """merge_report.json's entry for a partner: how its full model came to be."""
    if partner.report is None:
        return {"output": str(partner.model_dir), "source": partner.source, "method": "downloaded"}
    return {**partner.report, "method": "stand-in: base + its own LoRA adapter (linear)", "source": partner.source,
            "reused_from_cache": partner.cached}


def write_outputs(out_dir: Path, models: list[dict[str, Any]], reports: dict[str, dict[str, Any]]) -> None:
    atomic_write_json(out_dir / MODELS_JSON, models)
    atomic_write_json(out_dir / MERGE_REPORT, reports)


def report_table(reports: dict[str, dict[str, Any]]):
    """One line per model: what changed, how far, how long and how much memory it took."""
    import pandas as pd

    cols = ["method", "tensors_changed", "tensors_total", "max_abs_delta", "seconds", "peak_rss_mib",
            "rss_before_mib", "model_mib", "largest_shard_mib", "reused_from_cache"]
    return pd.DataFrame([{"model": name, **{c: r.get(c) for c in cols}} for name, r in reports.items()])


def update_norms_figure(report: dict[str, Any], title: str):
    """Relative size of the merged update, ||delta W|| / ||W||, per layer and targeted module."""
    import matplotlib.pyplot as plt
    import pandas as pd

    rows = []
    for t in report["tensors"]:
        parts = t["tensor"].split(".")
        layer = next((int(p) for p in parts if p.isdigit()), -1)
        rows.append({"layer": layer, "module": parts[-2], "relative_norm": t["relative_norm"]})
    grid = pd.DataFrame(rows).pivot_table(index="module", columns="layer", values="relative_norm")
    fig, ax = plt.subplots(figsize=(min(14, 2 + 0.35 * grid.shape[1]), 2 + 0.4 * grid.shape[0]))
    image = ax.imshow(grid.values, aspect="auto", cmap="viridis")
    ax.set_xticks(range(grid.shape[1]), grid.columns)
    ax.set_yticks(range(grid.shape[0]), grid.index)
    ax.set_xlabel("layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="||delta W||_F / ||W||_F")
    fig.tight_layout()
    return fig

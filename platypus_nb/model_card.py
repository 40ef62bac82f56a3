"""Hugging Face model cards for what the pipeline writes: the LoRA adapter (step 03) and every merged model (step 04).

The Platypus2 releases each came with a card naming the base model, the dataset, the recipe and the leaderboard
scores. A card here is the same thing in the Hub's format, a ``README.md`` with YAML metadata, built with
``huggingface_hub``'s :class:`~huggingface_hub.ModelCard` so that ``push_to_hub`` and the Hub's model index read it
as they read any card. Step 05 adds this run's results (``model-index``) to a copy in its own folder: a stage never
rewrites an earlier stage's outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from platypus_nb.assets import DEFAULT_BASE_MODEL
from platypus_nb.io import atomic_write_text

CARD_FILE = "README.md"
OPEN_PLATYPUS = "garage-bAInd/Open-Platypus"
PAPER = "https://arxiv.org/abs/2308.07317"
# The offline default's licence (SmolLM2-135M-Instruct, Apache-2.0); any other base's comes from its own card.
OFFLINE_BASE = {"name": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"}

_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ summary }}

Made with platypus-nb, a reproduction of *Platypus: Quick, Cheap, and Powerful Refinement of LLMs*
(Lee, Hunter & Ruiz, 2023, [arXiv 2308.07317]({{ paper }})).

## How it was made

| | |
|---|---|
{% for key, value in provenance.items() %}| {{ key }} | {{ value }} |
{% endfor %}
{% if recipe %}
## Fine-tuning recipe (step 03)

| key | value |
|---|---|
{% for key, value in recipe.items() %}| `{{ key }}` | {{ value }} |
{% endfor %}{% endif %}
"""


# The recipe keys a card lists: the paper's README table, plus what decides what was optimised.
RECIPE_KEYS = ("learning_rate", "global_batch_size", "micro_batch_size", "num_epochs", "max_steps", "lr_scheduler",
               "warmup_steps", "cutoff_len", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
               "precision", "train_on_inputs", "add_eos_token", "loss_weighting")


def recipe_fields(finetune: Any) -> dict[str, Any]:
    """The fine-tuning recipe as a card shows it, from the resolved ``finetune`` config section."""
    return {key: getattr(finetune, key) for key in RECIPE_KEYS}


def base_model_card_fields(base_model: str, model_dir: Optional[Path] = None) -> dict[str, Optional[str]]:
    """The Hub id and licence to name as base: the offline default's, or what the base folder's own card says."""
    if base_model == DEFAULT_BASE_MODEL:
        return dict(OFFLINE_BASE)
    from huggingface_hub import ModelCard

    card_file = (model_dir or Path(base_model)) / CARD_FILE
    license_ = ModelCard.load(card_file).data.license if card_file.is_file() else None
    return {"name": base_model, "license": license_}


def adapter_card(base_model: str, finetune: Any, provenance: dict[str, Any]) -> Any:
    """The LoRA adapter's card (step 03): peft's own default card is a blank template, this one names the base, the
    dataset, the recipe and what the run trained on."""
    base = base_model_card_fields(base_model)
    return build_card(model_name="platypus-lora", library_name="peft", base_model=base["name"],
                      base_license=base["license"], provenance=provenance, recipe=recipe_fields(finetune),
                      summary=f"The Platypus LoRA adapter (paper section 3) trained on `{base['name']}`; merge it with "
                              f"step 04 or load it with `peft.PeftModel.from_pretrained`.")


def build_card(*, model_name: str, summary: str, base_model: str, base_license: Optional[str], library_name: str,
               provenance: dict[str, Any], recipe: Optional[dict[str, Any]] = None,
               tags: Sequence[str] = ()) -> Any:
    """A :class:`huggingface_hub.ModelCard` as steps 03 and 04 write it, before any evaluation."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(base_model=base_model, datasets=[OPEN_PLATYPUS], license=base_license,
                         library_name=library_name, model_name=model_name, tags=["platypus", "lora", *tags])
    return ModelCard.from_template(data, template_str=_TEMPLATE, model_name=model_name, summary=summary,
                                   paper=PAPER, provenance=provenance, recipe=recipe or {})


def with_results(card_file: str | Path, results: Sequence[dict[str, Any]], note: str) -> Any:
    """The card in ``card_file`` plus step 05's results: the Hub's ``model-index`` metadata and a table.

    ``results`` rows are ``{task, metric, value, stderr, n}`` with ``value`` and ``stderr`` as fractions. The
    card is loaded and extended rather than rebuilt, so whatever step 03 or 04 wrote stays as written.
    """
    from huggingface_hub import EvalResult, ModelCard

    card = ModelCard.load(card_file)
    card.data.model_name = card.data.model_name or Path(card_file).parent.name
    card.data.eval_results = [EvalResult(task_type="text-generation", dataset_type=r["task"], dataset_name=r["task"],
                                         metric_type=r["metric"], metric_value=float(r["value"]))
                              for r in results]
    table = "\n".join(f"| {r['task']} | {r['metric']} | {r['value']:.4f} | {r['stderr']:.4f} | {r['n']} |"
                       for r in results)
    card.text = (f"{card.text.rstrip()}\n\n## Evaluation (step 05 of this run)\n\n"
                 f"| task | metric | value | standard error | questions |\n|---|---|---|---|---|\n{table}\n\n{note}\n")
    return card


def results_note(run_name: str, leaderboard_setting: bool) -> str:
    """What a reader of the card must know before comparing its numbers with a leaderboard's."""
    setting = ("the Open LLM Leaderboard's setting (all questions, its shots)" if leaderboard_setting else
               "not the Open LLM Leaderboard's setting (fewer questions, subjects or shots): not comparable with "
               "leaderboard scores")
    return f"Scored with lm-evaluation-harness by platypus-nb step 05, run `{run_name}`; {setting}."


def write_result_cards(models: Sequence[Any], summary: Any, out_dir: str | Path, note: str) -> list[Path]:
    """``<out_dir>/cards/<model>/README.md`` for every evaluated model whose folder has a card (the adapter's and
    the merges' from steps 03 and 04): a copy with this run's results, since a stage never rewrites an earlier
    stage's outputs. Copy it over the model folder's own ``README.md`` before pushing that folder to the Hub."""
    written = []
    for model in models:
        card_file = Path(model.adapter or model.path) / CARD_FILE
        rows = summary[summary["model"] == model.name]
        if not card_file.is_file() or rows.empty:
            continue
        results = [{"task": r.task, "metric": r.metric, "value": r.score_pct / 100, "stderr": r.stderr_pct / 100,
                    "n": int(r.n)} for r in rows.itertuples()]
        written.append(write_card(Path(out_dir) / "cards" / model.name, with_results(card_file, results, note)))
    return written


def write_card(folder: str | Path, card: Any) -> Path:
    """Write ``folder/README.md`` atomically (a card copied in from a partner or base folder is replaced)."""
    return atomic_write_text(Path(folder) / CARD_FILE, str(card))

"""Model cards: what a user pushing a model to the Hub reads, and what the Hub's index parses."""

from __future__ import annotations

from platypus_nb.config import load_config
from platypus_nb.model_card import base_model_card_fields, build_card, recipe_fields, write_card


def test_card_round_trips_through_huggingface_hub_with_base_recipe_and_results(tmp_path):
    from huggingface_hub import ModelCard

    cfg = load_config("tiny")
    base = base_model_card_fields(cfg.model.base)
    card = build_card(model_name="platypus", summary="The base with the adapter merged in.", base_model=base["name"],
                      base_license=base["license"], library_name="transformers", provenance={"run": "tiny"},
                      recipe=recipe_fields(cfg.finetune),
                      results=[{"task": "arc_challenge", "metric": "acc_norm", "value": 0.3125, "n": 64}])
    path = write_card(tmp_path, card)

    loaded = ModelCard.load(path)
    assert loaded.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and loaded.data.license == "apache-2.0"
    assert loaded.data.datasets == ["garage-bAInd/Open-Platypus"]
    result = loaded.data.eval_results[0]
    assert (result.dataset_type, result.metric_type, result.metric_value) == ("arc_challenge", "acc_norm", 0.3125)
    assert "| arc_challenge | acc_norm | 0.3125 | 64 |" in loaded.text
    assert f"| `learning_rate` | {cfg.finetune.learning_rate} |" in loaded.text
    assert "| `lora_target_modules` | ['gate_proj', 'up_proj', 'down_proj'] |" in loaded.text


def test_a_local_base_gives_its_own_cards_licence(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: llama2\n---\n# a base\n")
    assert base_model_card_fields(str(tmp_path)) == {"name": str(tmp_path), "license": "llama2"}
    assert base_model_card_fields(str(tmp_path / "elsewhere"))["license"] is None


def test_a_card_without_results_has_no_model_index(tmp_path):
    from huggingface_hub import ModelCard

    card = build_card(model_name="m", summary="s", base_model="b", base_license=None, library_name="peft",
                      provenance={})
    loaded = ModelCard.load(write_card(tmp_path, card))
    assert loaded.data.eval_results is None and "## Evaluation" not in loaded.text

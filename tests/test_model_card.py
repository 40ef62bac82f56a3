"""Model cards: what a user pushing a model to the Hub reads, and what the Hub's index parses."""

from __future__ import annotations

from platypus_nb.config import load_config
import pandas as pd

from platypus_nb.evaluate import ModelToEvaluate
from platypus_nb.model_card import base_model_card_fields, build_card, recipe_fields, write_card, write_result_cards


def test_card_round_trips_through_huggingface_hub_with_base_and_recipe(tmp_path):
    from huggingface_hub import ModelCard

    cfg = load_config("tiny")
    base = base_model_card_fields(cfg.model.base)
    card = build_card(model_name="platypus", summary="The base with the adapter merged in.", base_model=base["name"],
                      base_license=base["license"], library_name="transformers", provenance={"run": "tiny"},
                      recipe=recipe_fields(cfg.finetune))
    loaded = ModelCard.load(write_card(tmp_path, card))
    assert loaded.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and loaded.data.license == "apache-2.0"
    assert loaded.data.datasets == ["garage-bAInd/Open-Platypus"]
    assert f"| `learning_rate` | {cfg.finetune.learning_rate} |" in loaded.text
    assert "| `lora_target_modules` | ['gate_proj', 'up_proj', 'down_proj'] |" in loaded.text


def test_step_05_writes_a_copy_of_each_card_with_its_results_and_leaves_the_model_folder_alone(tmp_path):
    from huggingface_hub import ModelCard

    merged, base = tmp_path / "merged", tmp_path / "base"
    merged.mkdir()
    base.mkdir()
    original = write_card(merged, build_card(model_name="platypus", summary="s", base_model="b", base_license=None,
                                             library_name="transformers", provenance={"run": "tiny"}))
    before = original.read_bytes()
    models = [ModelToEvaluate(name="platypus", path=str(merged), adapter=None, role="platypus", compare_to="base",
                              stands_in_for="Platypus2-13B"),
              ModelToEvaluate(name="base", path=str(base), adapter=None, role="base", compare_to=None,
                              stands_in_for="Llama-2-13b-hf")]
    summary = pd.DataFrame([
        {"model": "platypus", "task": "arc_challenge", "metric": "acc_norm", "n": 24, "score_pct": 31.25,
         "stderr_pct": 9.5},
        {"model": "platypus", "task": "truthfulqa_mc2", "metric": "mc2", "n": 24, "score_pct": 44.0, "stderr_pct": 8.0},
        {"model": "base", "task": "arc_challenge", "metric": "acc_norm", "n": 24, "score_pct": 30.0, "stderr_pct": 9.4}])

    written = write_result_cards(models, summary, tmp_path / "05", note="24 questions per task.")

    assert written == [tmp_path / "05" / "cards" / "platypus" / "README.md"]   # the base folder has no card
    assert original.read_bytes() == before
    loaded = ModelCard.load(written[0])
    results = [(r.dataset_type, r.metric_type, r.metric_value) for r in loaded.data.eval_results]
    assert results == [("arc_challenge", "acc_norm", 0.3125), ("truthfulqa_mc2", "mc2", 0.44)]
    assert "| arc_challenge | acc_norm | 0.3125 | 0.0950 | 24 |" in loaded.text
    assert "| run | tiny |" in loaded.text and loaded.text.rstrip().endswith("24 questions per task.")


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

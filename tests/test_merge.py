"""Step 04: the streamed merge equals peft's merge_and_unload, fails before writing on a mismatch, never leaves a
half-written model, and the stage lists every model step 05 evaluates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from platypus_nb.assets import AssetError
from platypus_nb.config import ConfigError, load_config
from platypus_nb.merge import (MergeInputError, combine_adapters, merge_lora_into, partner_training_rows,
                               read_lora_adapter)
from platypus_nb.merge.partners import MEDICAL_SUBJECTS, safetensors_copy_of_bin_model
from platypus_nb.merge.safetensors_files import write_safetensors_streaming

MLP = ["gate_proj", "up_proj", "down_proj"]


# ------------------------------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tensors here are small: on 2 shared cores, torch's intra-op threads cost more than they give."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_adapter(model_dir: Path, out_dir: Path, seed: int, *, targets=MLP, r=16, alpha=16, **lora_kwargs) -> Path:
    """A real peft LoRA adapter of the Platypus recipe, with non-zero B (a freshly initialised B is zero)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                  task_type="CAUSAL_LM", **lora_kwargs))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    peft_model.save_pretrained(out_dir)
    return out_dir


def peft_merged_state(model_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The original merge.py path: whole model in memory, PeftModel.from_pretrained, merge_and_unload."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().state_dict()


def stored_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


def save_random_llama(out_dir: Path, *, layers=2, intermediate=128, hidden=64, shard_size=None, seed=0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    LlamaForCausalLM(cfg).save_pretrained(out_dir, **kwargs)
    return out_dir


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.endswith(".partial"))


# -------------------------------------------------------------------------------------- equality with peft


@pytest.fixture(scope="module")
def smollm2_sharded(smollm2_dir, tmp_path_factory) -> Path:
    """The real SmolLM2-135M split into 4 shards with an index, the way large Hub models come."""
    import shutil

    from safetensors.torch import save_file

    out = tmp_path_factory.mktemp("smollm2_sharded")
    tensors = stored_tensors(smollm2_dir)
    names = sorted(tensors)
    weight_map = {}
    for i in range(4):
        shard = f"model-{i + 1:05d}-of-00004.safetensors"
        part = names[i::4]
        save_file({k: tensors[k] for k in part}, out / shard, metadata={"format": "pt"})
        weight_map.update({k: shard for k in part})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(t.numel() * 4 for t in tensors.values())}, "weight_map": weight_map}))
    for p in smollm2_dir.iterdir():
        if p.suffix in (".json", ".jinja") and p.name != "platypus_nb_asset.json":
            shutil.copyfile(p, out / p.name)
    return out


def test_streamed_merge_of_sharded_smollm2_equals_peft_merge_and_unload(smollm2_sharded, tmp_path):
    adapter = make_adapter(smollm2_sharded, tmp_path / "adapter", seed=1)
    report = merge_lora_into(smollm2_sharded, adapter, tmp_path / "merged")

    expected = peft_merged_state(smollm2_sharded, adapter)
    original = stored_tensors(smollm2_sharded)
    merged = stored_tensors(tmp_path / "merged")
    assert set(merged) == set(original)  # tied lm_head stays tied (not stored), as in the input
    for name, tensor in merged.items():
        assert (tensor - expected[name]).abs().max().item() <= 1e-6, name
        if name.removesuffix(".weight").endswith(tuple(MLP)):
            assert not torch.equal(tensor, original[name]), name
        else:  # untargeted: byte for byte the input
            assert tensor.dtype == original[name].dtype
            assert torch.equal(tensor.view(torch.uint8), original[name].view(torch.uint8)), name
    assert report["tensors_changed"] == 30 * 3 and report["tensors_total"] == len(original)
    assert report["max_abs_delta"] > 0

    # Same sharding and index as the input; tokenizer and config of the target; merge_config with hashes.
    out = tmp_path / "merged"
    index_in = json.loads((smollm2_sharded / "model.safetensors.index.json").read_text())
    index_out = json.loads((out / "model.safetensors.index.json").read_text())
    assert index_out["weight_map"] == index_in["weight_map"] and len(set(index_in["weight_map"].values())) == 4
    assert (out / "tokenizer.json").read_bytes() == (smollm2_sharded / "tokenizer.json").read_bytes()
    record = json.loads((out / "merge_config.json").read_text())
    assert record["method"] == "lora_linear"
    assert set(record["model"]["sha256"]) == set(index_in["weight_map"].values())
    assert set(record["adapter"]["sha256"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert record["adapter"]["scaling"] == [1.0]  # the paper's alpha / r = 16 / 16


def test_rslora_and_per_layer_alpha_are_scaled_as_peft_scales_them(tiny_llama_dir, tmp_path):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", seed=2, r=8, alpha=32, use_rslora=True,
                           alpha_pattern={"down_proj": 4})
    merge_lora_into(tiny_llama_dir, adapter, tmp_path / "merged")
    expected = peft_merged_state(tiny_llama_dir, adapter)
    for name, tensor in stored_tensors(tmp_path / "merged").items():
        assert (tensor - expected[name]).abs().max().item() <= 1e-6, name
    scalings = {m.rsplit(".", 1)[-1]: u.scaling for m, u in read_lora_adapter(adapter).updates.items()}
    assert scalings == {"gate_proj": 32 / 8 ** 0.5, "up_proj": 32 / 8 ** 0.5, "down_proj": 4 / 8 ** 0.5}


def test_fan_in_fan_out_layers_gpt2_conv1d_merge_as_peft_does(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=2)).save_pretrained(
        tmp_path / "gpt2")
    adapter = make_adapter(tmp_path / "gpt2", tmp_path / "adapter", seed=3, targets=["c_fc", "c_proj"],
                           fan_in_fan_out=True)
    report = merge_lora_into(tmp_path / "gpt2", adapter, tmp_path / "merged")
    expected = peft_merged_state(tmp_path / "gpt2", adapter)
    for name, tensor in stored_tensors(tmp_path / "merged").items():
        assert (tensor - expected[name]).abs().max().item() <= 1e-6, name
    assert report["tensors_changed"] == 2 * 3  # c_fc, attn.c_proj and mlp.c_proj in each of 2 layers


# ------------------------------------------------------------------------------------ failing before writing


def test_partner_with_other_shapes_fails_naming_the_layer_and_writes_nothing(tiny_llama_dir, tmp_path):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", seed=4)
    partner = save_random_llama(tmp_path / "partner", intermediate=96)
    with pytest.raises(MergeInputError, match=r"layer model\.layers\.0\.mlp\.down_proj: shape mismatch.*"
                                              r"\[64, 96\].*\[64, 128\]"):
        merge_lora_into(partner, adapter, tmp_path / "out" / "merged")
    assert not (tmp_path / "out").exists()


def test_partner_with_more_layers_than_the_adapter_knows_fails(tiny_llama_dir, tmp_path):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", seed=5)
    partner = save_random_llama(tmp_path / "partner", layers=3)
    with pytest.raises(MergeInputError, match=r"layer model\.layers\.2\.mlp\.(down|gate|up)_proj: the adapter .* "
                                              r"targets it .* but holds no update"):
        merge_lora_into(partner, adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_partner_of_another_architecture_fails(tiny_llama_dir, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", seed=6)
    GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(MergeInputError, match=r"layer model\.layers\.0\.mlp\.down_proj: .* does not have"):
        merge_lora_into(tmp_path / "gpt2", adapter, tmp_path / "merged")


def test_dora_adapters_are_refused_rather_than_mis_merged(tiny_llama_dir, tmp_path):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", seed=7, use_dora=True)
    with pytest.raises(MergeInputError, match="use_dora"):
        merge_lora_into(tiny_llama_dir, adapter, tmp_path / "merged")


def test_a_folder_without_adapter_config_is_named(tiny_llama_dir, tmp_path):
    with pytest.raises(MergeInputError, match=r"no adapter_config\.json.*03_finetune/adapter"):
        merge_lora_into(tiny_llama_dir, tmp_path, tmp_path / "merged")


# ------------------------------------------------------------------------------------------ interrupted writes


def test_an_interrupt_in_a_notebook_cleans_up_and_keeps_the_previous_output(tmp_path, monkeypatch):
    """Jupyter's "interrupt kernel" is a KeyboardInterrupt in the middle of the write: raised here right after the
    first shard is on disk (deterministic; a watcher thread raced a merge that can finish before it looks)."""
    import platypus_nb.merge.lora as lora

    model = save_random_llama(tmp_path / "model", layers=8, hidden=256, intermediate=1024, shard_size="2MB")
    out = tmp_path / "runs" / "merged"
    merge_lora_into(model, make_adapter(model, tmp_path / "adapter", seed=10), out)
    previous = {p.name: p.read_bytes() for p in out.iterdir()}
    other = read_lora_adapter(make_adapter(model, tmp_path / "other_adapter", seed=11))
    written = []

    def write_then_interrupt(path, *args, **kwargs):
        write_safetensors_streaming(path, *args, **kwargs)
        written.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(lora, "write_safetensors_streaming", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        merge_lora_into(model, other, out)
    assert len(written) == 1 and written[0].parent.name.endswith(".partial") and not written[0].exists()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == previous
    # Nothing else looks like an output (the temporary folder is hidden, ".merged.*.partial", and removed on the
    # way out; a hard kill would leave it, still hidden).
    assert [p.name for p in out.parent.iterdir() if not p.name.startswith(".")] == ["merged"]


# ------------------------------------------------------------------------------ several adapters combined


@pytest.mark.parametrize("method", ["cat", "ties", "dare_linear", "dare_ties", "ties_svd"])
def test_combining_on_a_weightless_skeleton_equals_peft_on_the_loaded_base(tiny_llama_dir, tmp_path, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    first = make_adapter(tiny_llama_dir, tmp_path / "platypus", seed=12)
    second = make_adapter(tiny_llama_dir, tmp_path / "partner", seed=13)
    record = combine_adapters([first, second], [1.0, 0.7], method, tmp_path / "combined",
                              base_model_dir=tiny_llama_dir, density=0.5, seed=42)

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), str(first),
                                      adapter_name="a")
    model.load_adapter(str(second), adapter_name="b")
    torch.manual_seed(42)
    model.add_weighted_adapter(["a", "b"], [1.0, 0.7], "c", combination_type=method, density=0.5)
    model.save_pretrained(tmp_path / "reference", selected_adapters=["c"])
    ours = stored_tensors(tmp_path / "combined")
    reference = stored_tensors(tmp_path / "reference" / "c")
    assert ours.keys() == reference.keys() and len(ours) == 2 * 3 * 2
    for name in ours:
        assert torch.equal(ours[name], reference[name]), name
    assert record["rank"] == (32 if method == "cat" else 16)
    assert json.loads((tmp_path / "combined" / "combine_config.json").read_text())["weights"] == [1.0, 0.7]


def test_cat_with_unit_weights_is_the_papers_merge_into_a_lora_partner(tiny_llama_dir, tmp_path):
    """Platypus into (base + partner adapter) equals base + (Platypus and partner adapters concatenated)."""
    platypus = make_adapter(tiny_llama_dir, tmp_path / "platypus", seed=14)
    partner_adapter = make_adapter(tiny_llama_dir, tmp_path / "partner_adapter", seed=15)
    merge_lora_into(tiny_llama_dir, partner_adapter, tmp_path / "partner")
    merge_lora_into(tmp_path / "partner", platypus, tmp_path / "paper_merge")
    combine_adapters([platypus, partner_adapter], [1.0, 1.0], "cat", tmp_path / "cat", base_model_dir=tiny_llama_dir)
    merge_lora_into(tiny_llama_dir, tmp_path / "cat", tmp_path / "cat_merge")
    paper, cat = stored_tensors(tmp_path / "paper_merge"), stored_tensors(tmp_path / "cat_merge")
    for name in paper:
        assert (paper[name] - cat[name]).abs().max().item() <= 1e-6, name
    provenance = json.loads((tmp_path / "paper_merge" / "merge_config.json").read_text())["model_provenance"]
    assert provenance["adapter"]["path"] == str(partner_adapter)


def test_merging_in_float16_rounds_once_and_records_the_dtype(tiny_llama_dir, tmp_path):
    """merge.py saved float16; every floating tensor is written in it, the update added in float32 first."""
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", seed=16)
    merge_lora_into(tiny_llama_dir, adapter, tmp_path / "merged", dtype="float16")
    expected = peft_merged_state(tiny_llama_dir, adapter)
    merged = stored_tensors(tmp_path / "merged")
    assert {t.dtype for t in merged.values()} == {torch.float16}
    for name, tensor in merged.items():
        assert torch.equal(tensor, expected[name].to(torch.float16)), name
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["dtype"] == "float16"


# -------------------------------------------------------------------------------------------------- partners


def test_bin_checkpoints_are_converted_shard_by_shard(tiny_llama_dir, tmp_path):
    state = stored_tensors(tiny_llama_dir)
    names = sorted(state)
    src = tmp_path / "bin_model"
    src.mkdir()
    halves = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for shard, keys in halves.items():
        torch.save({k: state[k] for k in keys}, src / shard)
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {k: shard for shard, keys in halves.items() for k in keys}}))
    (src / "config.json").write_bytes((tiny_llama_dir / "config.json").read_bytes())
    with pytest.raises(MergeInputError, match=r"PyTorch \.bin weights"):
        merge_lora_into(src, make_adapter(tiny_llama_dir, tmp_path / "adapter", seed=17), tmp_path / "merged")

    out = safetensors_copy_of_bin_model(src, tmp_path / "converted")
    converted = stored_tensors(out)
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], state[k]) for k in state)
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model-00001-of-00002.safetensors",
                                                               "model-00002-of-00002.safetensors"]
    assert (out / "config.json").is_file() and not list(out.glob("*.bin"))


def test_paper_partners_are_local_folders_or_hub_ids_and_an_unreachable_one_is_named(tiny_llama_dir, tmp_path):
    from platypus_nb.config import PartnerConfig
    from platypus_nb.merge import fetch_partner

    local = fetch_partner(PartnerConfig(name="local-partner", model=str(tiny_llama_dir)), tmp_path)
    assert (local.source, local.model_dir, local.adapter_dir) == ("local", tiny_llama_dir, None)
    with pytest.raises(AssetError, match=r"'no-such-org/no-such-model': it is neither a local folder nor reachable"
                                         r".*Without the Hub, give merge.partners 'hub-partner' build_data in place "
                                         r"of model"):
        fetch_partner(PartnerConfig(name="hub-partner", model="no-such-org/no-such-model"), tmp_path)


def test_stand_in_partners_train_on_real_vendored_data():
    cfg = load_config("tiny")
    general, medical = cfg.merge.partners
    general_rows = partner_training_rows(general, seed=42)
    medical_rows = partner_training_rows(medical, seed=42)
    assert len(general_rows) == general.build_rows
    assert {r["data_source"] for r in general_rows} == {"arc_easy_validation", "openbookqa_validation",
                                                        "sciq_validation"}
    # MMLU's validation split (step 05 scores the test split), medical subjects only: 132 of the 158 such rows (24 of
    # the rest are the partner's held-out rows).
    assert len(medical_rows) == medical.build_rows == 132
    assert {r["data_source"] for r in medical_rows} == {f"mmlu_validation/{s}" for s in MEDICAL_SUBJECTS}
    assert partner_training_rows(general, seed=42) == general_rows != partner_training_rows(general, seed=1)
    row = medical_rows[0]
    assert row["output"].split(". ", 1)[0] in "ABCD" and row["output"].split(". ", 1)[1] in row["input"]


@pytest.mark.parametrize("merge_yaml, match", [
    ("{partners: [{name: p, model: some/model, build_data: [sciq]}]}",
     r"merge\.partners\[0\]\.model: exactly one of model .* and build_data .* should be given"),
    ("{partners: [{name: p}]}", r"merge\.partners\[0\]\.model: exactly one of model .* and build_data .* should be given"),
    ("{partners: [{name: p, build_data: [pubmed]}]}", r"merge\.partners\[0\]\.build_data\[0\]: should be 'arc_easy', .*, got str 'pubmed'"),
    ("{partners: [{name: platypus, build_data: [sciq]}]}", r"merge\.partners: should have names distinct"),
    ("{method: ties, partners: [{name: p, model: some/model}]}", r"merge\.method: should be 'linear' when a partner"),
    ("{adapter_weights: [1.0]}", r"merge\.adapter_weights: list should have at least 2 items after validation, not 1"),
    ("{density: 0.0}", r"merge\.density: should be greater than 0, got float 0\.0"),
])
def test_merge_config_errors_name_the_key(tmp_path, merge_yaml, match):
    p = tmp_path / "c.yaml"
    p.write_text(f"merge: {merge_yaml}\n")
    with pytest.raises(ConfigError, match=match):
        load_config(p)


# ------------------------------------------------------------------------------------------- the notebook


def theoremqa_rows(n: int) -> list[dict]:
    """Real Open-Platypus-schema rows (TheoremQA is one of its sources) standing in for step 02's clean.jsonl."""
    import gzip

    from platypus_nb.assets import data_file

    items = json.loads(gzip.open(data_file("theoremqa_test.json.gz"), "rt").read())[:n]
    return [{"instruction": q["Question"], "input": "", "output": str(q["Answer"]), "data_source": "theoremqa"}
            for q in items]


def test_notebook_merges_platypus_and_both_built_partners_and_lists_them_for_step_05(
        tiny_llama_dir, tmp_path, monkeypatch, figures_override):
    """The tiny run end to end on a random 2-layer Llama base (partners built with 2 training steps)."""
    import pandas as pd
    import yaml

    from platypus_nb.io import write_jsonl
    from platypus_nb.merge import merge_partner, prepare_partners
    from platypus_nb.paths import CONFIGS_DIR, NOTEBOOKS_DIR
    from platypus_nb.runner import execute_notebook

    monkeypatch.setenv("PLATYPUS_NB_CACHE", str(tmp_path / "cache"))  # the kernel inherits it: partners built anew
    raw = yaml.safe_load((CONFIGS_DIR / "tiny.yaml").read_text())
    raw["model"]["base"] = str(tiny_llama_dir)
    raw["finetune"].update({"global_batch_size": 4, "micro_batch_size": 4, "warmup_steps": 0})
    for partner in raw["merge"]["partners"]:
        partner.update({"build_rows": 12, "build_steps": 2, "build_cutoff_len": 160})
    config = tmp_path / "tiny-test.yaml"
    config.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    write_jsonl(run / "02_contamination" / "clean.jsonl", theoremqa_rows(40))
    make_adapter(tiny_llama_dir, run / "03_finetune" / "adapter", seed=20)

    execute_notebook(NOTEBOOKS_DIR / "04_merge.ipynb", tmp_path / "04_merge.out.ipynb",
                     {"config": str(config), "run_dir": str(run), "overrides": figures_override})

    out = run / "04_merge"
    models = json.loads((out / "models.json").read_text())
    assert [(m["name"], m["role"], m["compare_to"], m["stands_in_for"]) for m in models] == [
        ("base", "base", None, "Llama-2-13b-hf"),
        ("platypus", "platypus", "base", "Platypus2-13B"),
        ("general-partner", "partner", "base", "StableBeluga-13B"),
        ("general-partner-platypus", "merge", "general-partner", "Stable-Platypus2-13B"),
        ("medical-partner", "partner", "base", "qCammel-70-x"),
        ("medical-partner-platypus", "merge", "medical-partner", "Camel-Platypus2-70B")]
    assert models[0]["path"] == str(tiny_llama_dir) and all(m["adapter"] is None for m in models)
    for m in models[1:]:
        assert (Path(m["path"]) / "model.safetensors").is_file() and (Path(m["path"]) / "tokenizer.json").is_file()
    assert str(tmp_path / "cache" / "partners") in models[2]["path"]

    reports = json.loads((out / "merge_report.json").read_text())
    assert reports["platypus"]["tensors_changed"] == 2 * 3 and reports["platypus"]["peak_rss_mib"] > 0
    assert reports["general-partner-platypus"]["method"] == "linear"
    assert reports["general-partner"]["source"] == "built"
    # The merge went into the partner, which itself is the base plus the partner's own adapter.
    record = json.loads((out / "general-partner-platypus" / "merge_config.json").read_text())
    assert record["model"]["path"] == models[2]["path"] and record["model_provenance"]["method"] == "lora_linear"
    # Every merged model carries a Hugging Face card naming its base, the dataset and the recipe.
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "general-partner-platypus" / "README.md")
    assert card.data.base_model == str(tiny_llama_dir) and card.data.datasets == ["garage-bAInd/Open-Platypus"]
    assert "the partner general-partner" in card.text and "| `learning_rate` | 0.001 |" in card.text

    overlap = pd.read_csv(out / "overlap.csv")
    assert list(overlap["partner"]) == ["general-partner", "medical-partner"]
    assert list(overlap["partner_rows"]) == [12, 12] and (overlap["platypus_rows"] == 40).all()
    assert overlap["mean_best_cosine"].between(-1, 1).all()
    assert overlap["share_at_or_above_threshold"].between(0, 1).all()
    assert {p.name for p in (out / "figures").iterdir()} == {"04_update_norms.png", "04_training_data_overlap.png"}

    # Beyond the paper, from the cached partners (no rebuild): DARE-TIES of (Platypus, partner) adapters.
    cfg = load_config(config, {"merge.method": "dare_ties", "merge.dtype": "auto"})
    partners = prepare_partners(cfg)
    assert all(p.cached for p in partners)
    report = merge_partner(cfg, partners[0], run / "03_finetune" / "adapter", tmp_path / "dare")
    assert report["method"] == "dare_ties" and report["notes"]["combination"]["density"] == 0.5
    assert (tmp_path / "dare" / "combined_adapters" / "general-partner-platypus" / "adapter_config.json").is_file()
    dare, linear = (stored_tensors(p / "general-partner-platypus") for p in (tmp_path / "dare", out))
    assert not torch.equal(dare["model.layers.0.mlp.up_proj.weight"], linear["model.layers.0.mlp.up_proj.weight"])

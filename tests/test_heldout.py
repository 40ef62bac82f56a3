"""Held-out rows and their loss: the split step 02 makes, the partners' own-domain rows, the per-token loss."""

from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest

from platypus_nb import contamination as C
from platypus_nb import heldout_loss as H
from platypus_nb.config import ConfigError, load_config
from platypus_nb.contracts import STAGES, question_text
from platypus_nb.evaluate import ModelToEvaluate
from platypus_nb.io import read_jsonl
from platypus_nb.merge import MergeInputError, partner_heldout_rows, partner_training_rows
from platypus_nb.prompts import render_prompt

NO_PAIRS = pd.DataFrame({c: pd.Series(dtype=bool if c in ("reviewed", "removed") else object)
                         for c in C.FLAGGED_COLUMNS})


def build_rows(n: int = 40) -> list[dict]:
    """``n`` distinct rows, then two copies of one more question (a repeat the split must not separate)."""
    rows = [{"instruction": f"What is {i} + {i}?", "input": "" if i % 3 else f"Show work for {i}.",
             "output": str(2 * i), "data_source": "mine"} for i in range(n)]
    repeat = {"instruction": "Name a prime.", "input": "", "output": "2", "data_source": "mine"}
    return rows + [repeat, dict(repeat, output="3")]


def written(tmp_path, rows, n, seed):
    out = tmp_path / f"{n}-{seed}"
    summary = C.summarize(rows, [], NO_PAIRS, load_config("tiny").contamination, review={})
    paths = C.write_outputs(out, rows, NO_PAIRS, summary, heldout_rows=n, seed=seed)
    return read_jsonl(paths["clean"]), read_jsonl(paths["heldout"]), json.loads(paths["summary"].read_text())


def test_the_heldout_split_is_seeded_and_never_reaches_the_training_file(tmp_path):
    rows = build_rows()
    clean, held, summary = written(tmp_path, rows, 10, seed=42)
    assert len(held) == 10 and len(clean) == len(rows) - 10
    assert {question_text(r) for r in clean}.isdisjoint(question_text(r) for r in held)
    assert sorted(map(json.dumps, clean + held)) == sorted(map(json.dumps, rows))  # every row, once, unchanged
    assert rows[-1] in clean and rows[-2] in clean  # a repeated question is never held out
    assert (summary["training_rows"], summary["heldout_rows"], summary["train_rows"]) == (32, 10, 42)
    assert written(tmp_path / "again", rows, 10, seed=42)[1] == held
    assert written(tmp_path, rows, 10, seed=43)[1] != held
    # 0 (the paper configs): the training file is every row that survived decontamination, as before.
    clean, held, summary = written(tmp_path, rows, 0, seed=42)
    assert clean == rows and held == [] and summary["heldout_rows"] == 0
    with pytest.raises(ValueError, match=r"contamination.heldout_rows = 41: expected fewer than the 42 rows .* at "
                                         r"most the 40 of them whose question occurs once"):
        written(tmp_path, rows, 41, seed=42)
    assert "heldout.jsonl" in STAGES["02_contamination_analysis"].outputs
    assert any("heldout.jsonl" in r.files for r in STAGES["05_evaluate"].reads)


def test_heldout_keys_are_typed_and_off_for_the_paper():
    for name in ("platypus2-13b", "platypus2-70b"):
        paper = load_config(name)
        assert (paper.contamination.heldout_rows, paper.evaluate.partner_heldout_rows) == (0, 0)
    tiny = load_config("tiny")
    assert (tiny.contamination.heldout_rows, tiny.evaluate.partner_heldout_rows) == (12, 12)
    with pytest.raises(ConfigError, match=r"contamination.heldout_rows: should be greater than or equal to 0, got int -1"):
        load_config("tiny", ["contamination.heldout_rows=-1"])
    with pytest.raises(ConfigError, match=r"evaluate.partner_heldout_rows: should be a valid integer, got bool True"):
        load_config("tiny", ["evaluate.partner_heldout_rows=true"])


def test_partner_heldout_rows_are_its_own_data_and_did_not_build_it():
    cfg = load_config("tiny")
    for spec in cfg.merge.partners:
        trained = {question_text(r) for r in partner_training_rows(spec, 42)}
        held = partner_heldout_rows(spec, 42, 24)
        assert len(held) == 24 and trained.isdisjoint(question_text(r) for r in held)
        assert {r["data_source"].split("/")[0] for r in held} <= {f"{s}_validation" for s in
                                                                  ("arc_easy", "openbookqa", "sciq", "mmlu")}
        assert partner_heldout_rows(spec, 42, 24) == held != partner_heldout_rows(spec, 1, 24)
    medical = cfg.merge.partners[1]
    with pytest.raises(MergeInputError, match=r"'medical-partner'.* has 158 rows and build_rows = 132 .* "
                                              r"leaving 2\d with a question it was not built on"):
        partner_heldout_rows(medical, 42, 27)


ROWS = [{"instruction": "Add 2 and 3.", "input": "", "output": "2 + 3 = 5."},
        {"instruction": "Translate to French.", "input": "The cat sleeps on the warm mat by the door.",
         "output": "Le chat dort sur le tapis chaud près de la porte."},
        {"instruction": "Say nothing.", "input": "", "output": ""}]


def test_the_loss_of_a_row_is_the_mean_nll_of_its_response_tokens(tiny_llama_dir):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    fcfg = load_config("tiny").finetune
    examples = H.tokenize_sets({"d": ROWS}, tok, fcfg)["d"]
    got = H.row_losses(model, examples)
    for row, (n, loss) in zip(ROWS, got):
        # By hand: the full text's tokens plus EOS; the prompt's tokens are not scored; token k is predicted at k - 1.
        ids = tok(render_prompt(row["instruction"], row["input"], row["output"]))["input_ids"] + [tok.eos_token_id]
        start = len(tok(render_prompt(row["instruction"], row["input"]))["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        expected = -sum(logp[k - 1, ids[k]].item() for k in range(start, len(ids))) / (len(ids) - start)
        assert n == len(ids) - start and loss == pytest.approx(expected, abs=1e-5)
    assert got[2][0] == 1  # an empty output: EOS is the one target, as step 03 trains it
    # A cutoff the prompt fills leaves nothing to score: no loss rather than a NaN mean pretending to be one.
    short = H.tokenize_sets({"d": ROWS[:1]}, tok, dataclasses.replace(fcfg, cutoff_len=8))["d"]
    n, loss = H.row_losses(model, short)[0]
    assert n == 0 and math.isnan(loss)


def test_every_model_is_scored_on_the_same_rows(tmp_path, tiny_llama_dir):
    cfg = load_config("tiny", {"model.base": str(tiny_llama_dir)})
    models = [ModelToEvaluate("a", str(tiny_llama_dir), None, "base", None, ""),
              ModelToEvaluate("b", str(tiny_llama_dir), None, "platypus", "a", "")]
    table = H.heldout_losses(models, {H.OPEN_PLATYPUS: ROWS, "partner:p": ROWS[:2]}, cfg, tmp_path)
    saved = H.read_heldout_losses(tmp_path / H.HELDOUT_LOSS_CSV)
    assert list(saved.columns) == H.LOSS_COLUMNS and len(saved) == len(table) == 2 * (3 + 2)
    a, b = (saved[saved["model"] == m].reset_index(drop=True) for m in "ab")
    assert a["row_hash"].tolist() == b["row_hash"].tolist() and a["loss"].tolist() == b["loss"].tolist()
    assert list(H.mean_losses(saved).columns) == [H.OPEN_PLATYPUS, "partner:p"]
    assert H.heldout_losses(models, {}, cfg, tmp_path / "none").empty  # no rows: the header only
    assert list(H.read_heldout_losses(tmp_path / "none" / H.HELDOUT_LOSS_CSV).columns) == H.LOSS_COLUMNS

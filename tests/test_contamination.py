"""Step 02, contamination analysis, on real test items and real training rows with planted copies and rewordings.

The planted training file mixes real MATH / TheoremQA / SciBench rows with copies of real benchmark test questions
(verbatim, twice, with options appended, inside a longer instruction), rewordings at or above the 0.8 threshold, and
questions on the same topics that ask something else.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from platypus_nb import contamination as C
from platypus_nb.assets import data_file
from platypus_nb.config import ConfigError, ContaminationConfig, EvalSetConfig, TEST_SETS, load_config
from platypus_nb.contamination.analysis import apply_decisions
from platypus_nb.contamination.testsets import data_source_of
from platypus_nb.contracts import read_training_rows
from platypus_nb.embeddings import EmbeddingCache, embed_texts
from platypus_nb.io import open_text, read_jsonl, write_jsonl

N_ITEMS = 40  # first N items of every test set: keeps embedding to a few hundred texts

ARC_ROTATION = "arc_challenge:Mercury_7175875"
ARC_PHOTOSYNTHESIS = "arc_challenge:Mercury_SC_408547"
ARC_PHYSICIST = "arc_challenge:Mercury_407327"
MMLU_DEGREE = "mmlu:abstract_algebra:0"
MMLU_INDEX = "mmlu:abstract_algebra:1"
HELLASWAG_CANOE = "hellaswag:2"
TRUTHFULQA_POMEGRANATE = "truthfulqa:0"
TRUTHFULQA_OBAMA = "truthfulqa:4"

# The paper's evaluation-split checks (MATH test embedded and compared), which tiny.yaml trims for time: the planted
# file has a MATH test copy from a source that is not itself an evaluation split.
PAPER_SPLITS = {"contamination.eval_splits": ["math_test", "theoremqa_test"],
                "contamination.eval_split_sources": ["theoremqa", "openbookqa", "sciq"]}


def paper_splits(**overrides) -> ContaminationConfig:
    """tiny.yaml's contamination section with the paper's evaluation splits, plus dotted overrides."""
    dotted = {f"contamination.{key}": value for key, value in overrides.items()}
    return load_config("tiny", {**PAPER_SPLITS, **dotted}).contamination


def _items_by_id() -> dict[str, C.TestItem]:
    return {item.test_id: item for item in C.load_test_items(TEST_SETS, max_items=N_ITEMS)}


def _row(instruction: str, output: str, source: str, input: str = "") -> dict:
    return {"instruction": instruction, "input": input, "output": output, "data_source": source}


def planted_rows() -> tuple[list[dict], dict[str, list[int]]]:
    """Real background rows plus planted ones; returns the rows and the indices of each planted kind."""
    t = _items_by_id()
    rows, kinds = [], {}

    def plant(kind: str, row: dict) -> None:
        kinds.setdefault(kind, []).append(len(rows))
        rows.append(row)

    for r in read_jsonl(data_file("math_test.jsonl.gz"))[100:130]:
        rows.append(_row(r["problem"], r["solution"], "MATH/PRM-800K"))
    with open_text(data_file("scibench/atkins.json.gz")) as f:
        for r in json.load(f)[:15]:
            rows.append(_row(r["problem_text"], r["answer_number"], "scibench"))
    rotation = t[ARC_ROTATION].text
    plant("copy", _row(rotation, "Planetary days will become shorter.", "airoboros"))
    plant("copy", _row(rotation, "C", "guanaco"))
    degree = t[MMLU_DEGREE]
    plant("copy", _row(degree.text + "\n" + "\n".join(f"{l}. {c}" for l, c in zip("ABCD", degree.choices)), "B",
                       "scienceqa"))
    plant("copy", _row("Complete the description with the most likely continuation.", "They sit in a canoe.",
                       "airoboros", input=t[HELLASWAG_CANOE].text))
    plant("copy", _row(t[TRUTHFULQA_POMEGRANATE].text, "Nothing in particular happens.", "guanaco"))
    plant("rewording", _row("Photosynthesis ends by producing oxygen and sugar. What step signals that "
                            "photosynthesis has begun?", "Chlorophyll captures light energy.", "airoboros"))
    plant("rewording", _row("A physicist wants to find out how fast a car has to go to jump a ramp. She runs three "
                            "trials, raising the car's speed by 20 miles per hour in trials two and three. What is "
                            "the car's speed in this experiment?", "The independent variable.", "airoboros"))
    plant("rewording", _row("In which country was Barack Obama born?", "He was born in the U.S.", "guanaco"))
    plant("rewording", _row("Let p = (1, 2, 5, 4)(2, 3) be an element of S_5. What is the index of <p> in S_5?",
                            "24", "ARB"))
    plant("same_topic", _row("What causes the seasons on Earth?", "The tilt of Earth's axis.", "scienceqa"))
    plant("same_topic", _row("Describe the light-dependent reactions of photosynthesis.", "Light is absorbed.",
                             "scienceqa"))
    plant("same_topic", _row("What happens if you eat too much salt?", "Your blood pressure may rise.", "guanaco"))
    plant("same_topic", _row("A planet's rotation slows down after a large asteroid impact. How does the length "
                             "of its day change?", "Its days become longer.", "airoboros"))
    plant("other_numbers", _row("Find the degree for the given field extension Q(sqrt(2)) over Q.", "2", "ARB"))
    plant("reversed", _row("An astronomer observes that a planet rotates slower after a meteorite impact. Which is "
                           "the most likely effect of this decrease in rotation?",
                           "Planetary days will become longer.", "airoboros"))
    with open_text(data_file("theoremqa_test.json.gz")) as f:
        for r in json.load(f)[:3]:
            plant("theoremqa", _row(f"{r['Question']}\nRelevant Theorem: {r['theorem']}", str(r["Answer"]),
                                    "theoremqa"))
    math_test = read_jsonl(data_file("math_test.jsonl.gz"))
    plant("math_test", _row(math_test[0]["problem"], math_test[0]["solution"], "MATH/PRM-800K"))
    color = next(r for r in math_test if "What is your favorite color?" in r["problem"])
    plant("quoted_phrase", _row(color["problem"], color["solution"], "MATH/PRM-800K"))
    return rows, kinds


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The full analysis on the planted file against the first N items of every test set (plus one TruthfulQA
    item a MATH problem quotes), with tiny.yaml and the paper's evaluation splits: what the notebook does, step by
    step."""
    rows, kinds = planted_rows()
    path = tmp_path_factory.mktemp("planted") / "train.jsonl"
    write_jsonl(path, rows)
    cfg = paper_splits()
    items = C.load_test_items(cfg.benchmarks, cfg.eval_splits, max_items=N_ITEMS)
    items += [i for i in C.load_test_set("truthfulqa") if i.text == "What is your favorite color?"]
    rows = read_training_rows(path)
    train_texts = [C.question_text(r) for r in rows]
    test_texts = [i.text for i in items]
    pieces = C.embed_pieces(train_texts, items, "all-MiniLM-L6-v2", 16, EmbeddingCache("all-MiniLM-L6-v2"),
                            show_progress=False)
    train_emb, test_emb = pieces.train_whole, pieces.test_whole
    semantic = C.semantic_pairs(train_emb, test_emb, cfg.threshold)
    lexical = C.lexical_pairs(train_texts, test_texts, cfg.ngram_n, cfg.lexical_min_words,
                              cfg.lexical_max_test_items)
    flagged = C.flag_pairs(rows, items, semantic, lexical, train_emb, test_emb, cfg, review={}, pieces=pieces)
    nearest, nearest_sim = C.nearest_training_rows(train_emb, test_emb)
    original = C.original_rule_removals(items, nearest, nearest_sim, cfg.threshold, cfg.benchmarks)
    clean, removed = C.split_rows(rows, flagged)
    return {"path": path, "rows": rows, "kinds": kinds, "items": items, "cfg": cfg, "flagged": flagged,
            "clean": clean, "removed": set(removed), "original": original}


def pairs_of(p: dict, kind: str) -> pd.DataFrame:
    f = p["flagged"]
    return f[f["train_index"].isin(p["kinds"][kind])]


# ------------------------------------------------------------------------------------------ what must be found


def test_every_verbatim_copy_is_removed_even_a_second_copy_the_original_rule_keeps(planted):
    copies = planted["kinds"]["copy"]
    assert set(copies) <= planted["removed"]
    twice = [i for i in copies if C.question_text(planted["rows"][i]) == planted["items"][0].text]
    assert len(twice) == 2
    for i in twice:
        pair = planted["flagged"].query("train_index == @i and test_id == @ARC_ROTATION").iloc[0]
        assert (pair["method"], pair["category"], pair["removed"]) == ("exact", "duplicate", True)
        assert pair["similarity"] == pytest.approx(1.0, abs=1e-5)
    # The original kept only each test item's single nearest row: one of the two copies survives it.
    assert len(set(twice) & planted["original"]) == 1


def test_copies_diluted_by_options_or_a_longer_instruction_are_found_lexically(planted):
    f = planted["flagged"]
    for test_id in (MMLU_DEGREE, HELLASWAG_CANOE, TRUTHFULQA_POMEGRANATE):
        pair = f[f["test_id"] == test_id].iloc[0]
        assert pair["method"] == "exact" and pair["category"] == "duplicate", test_id


def test_rewordings_at_or_above_the_threshold_are_flagged_and_removed(planted):
    pairs = pairs_of(planted, "rewording")
    expected = {ARC_PHOTOSYNTHESIS, ARC_PHYSICIST, TRUTHFULQA_OBAMA, MMLU_INDEX}
    assert expected <= set(pairs["test_id"])
    matched = pairs[pairs["test_id"].isin(expected)]
    assert (matched["similarity"] >= 0.8).all()
    assert set(matched["category"]) <= {"duplicate", "gray_area"}
    assert set(planted["kinds"]["rewording"]) <= planted["removed"]


def test_same_topic_but_different_questions_are_kept(planted):
    kept = planted["clean"]
    for i in planted["kinds"]["same_topic"] + planted["kinds"]["other_numbers"]:
        assert planted["rows"][i] in kept
    # The same template with other numbers is flagged (cosine 0.85) but sorted as similar but different.
    pair = pairs_of(planted, "other_numbers").query("test_id == @MMLU_DEGREE").iloc[0]
    assert pair["similarity"] >= 0.8
    assert (pair["category"], pair["numbers_differ"], pair["answer_agreement"]) == \
        ("similar_but_different", True, "different")


def test_a_short_test_question_quoted_inside_a_different_problem_is_not_removed(planted):
    pair = pairs_of(planted, "quoted_phrase").query("benchmark == 'truthfulqa'").iloc[0]
    assert pair["method"] == "exact" and pair["similarity"] < 0.5
    assert pair["category"] == "similar_but_different" and not pair["removed"]


def test_evaluation_split_leaks_are_flagged_and_kept_unless_configured(planted):
    f = planted["flagged"]
    theoremqa = f[f["train_index"].isin(planted["kinds"]["theoremqa"])]
    assert set(theoremqa["method"]) >= {"source", "exact"}
    assert set(theoremqa["benchmark"]) >= {"eval_split_source", "theoremqa_test"}
    math_pair = pairs_of(planted, "math_test").query("benchmark == 'math_test'").iloc[0]
    assert math_pair["method"] == "exact"
    leaks = planted["kinds"]["theoremqa"] + planted["kinds"]["math_test"]
    assert not set(leaks) & planted["removed"]
    strict = paper_splits(remove_eval_split_leaks=True)
    removed = set(apply_decisions(f, strict, {}).query("removed")["train_index"])
    assert set(leaks) <= removed


def test_gray_area_rows_follow_the_config(planted):
    f = planted["flagged"]
    gray_rows = set(f.loc[f["category"] == "gray_area", "train_index"])
    assert gray_rows and gray_rows <= planted["removed"]
    keep = paper_splits(gray_area="keep")
    removed_when_kept = set(apply_decisions(f, keep, {}).query("removed")["train_index"])
    only_gray = {r for r in gray_rows if not (f.query("train_index == @r")["category"] == "duplicate").any()}
    assert only_gray and not only_gray & removed_when_kept


def test_real_mmlu_items_copying_math_test_problems_are_exact_matches():
    """docs/contamination.md: MMLU test items copy MATH problems verbatim; MATH test problems in training data find them."""
    mmlu = [i for i in C.load_test_set("mmlu") if i.test_id.startswith("mmlu:high_school_mathematics:")]
    math = [r["problem"] for r in read_jsonl(data_file("math_test.jsonl.gz"))]
    pairs = C.lexical_pairs(math, [i.text for i in mmlu])
    exact = pairs[pairs["exact"]]
    found = {(math[r], mmlu[t].text) for r, t in zip(exact["train_index"], exact["test_index"])}
    question = "What is the sum of all positive integer values of $n$ such that $n^2$ is a factor of $1200$?"
    assert (question, question) in found
    assert len(set(exact["test_index"])) >= 60


def test_boilerplate_shared_by_many_test_items_is_not_evidence():
    moral = [i for i in C.load_test_set("mmlu") if i.test_id.startswith("mmlu:moral_scenarios:")]
    preamble = moral[0].text.split("?")[0] + "?"
    assert all(i.text.startswith(preamble) for i in moral[:50])
    pairs = C.lexical_pairs([preamble, "Explain this: " + moral[7].text], [i.text for i in moral])
    assert set(pairs["train_index"]) == {1}
    copied = pairs.set_index("test_index").loc[7]
    assert copied["exact"] and copied["ngram_overlap"] == 1.0
    # Other items share a scenario or the preamble's last words with it: a few n-grams, not the question.
    assert (pairs.loc[pairs["test_index"] != 7, "ngram_overlap"] < 0.2).all()


# --------------------------------------------------------------------------------------------- review file


def test_the_review_file_overrides_the_suggested_category(planted, tmp_path):
    f = planted["flagged"]
    reversed_pair = pairs_of(planted, "reversed").query("test_id == @ARC_ROTATION").iloc[0]
    # The rules cannot see that "slower" reverses the answer: suggested duplicate, removed ...
    assert reversed_pair["suggested_category"] == "duplicate" and reversed_pair["removed"]
    review = tmp_path / "review.csv"
    review.write_text("train_hash,test_id,category,reviewer,note\n"
                      f"{reversed_pair['train_hash']},{ARC_ROTATION},similar_but_different,me,answer reversed\n")
    decided = apply_decisions(f, planted["cfg"], C.load_review(review))
    pair = decided.query("train_index == @reversed_pair.train_index and test_id == @ARC_ROTATION").iloc[0]
    # ... until a reviewer says otherwise.
    assert (pair["category"], pair["reviewed"], pair["removed"]) == ("similar_but_different", True, False)


@pytest.mark.parametrize("body, message", [
    ("abc,arc_challenge:x,leak,,\n", "line 2: category 'leak' is not one of duplicate, gray_area"),
    ("abc,arc_challenge:x,duplicate,,\nabc,arc_challenge:x,gray_area,,\n", "line 3: ('abc', 'arc_challenge:x') "
                                                                          "was already reviewed as 'duplicate'"),
])
def test_a_bad_review_file_names_the_line(tmp_path, body, message):
    review = tmp_path / "review.csv"
    review.write_text("train_hash,test_id,category,reviewer,note\n" + body)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        C.load_review(review)


def test_a_short_review_row_names_the_file_and_line(tmp_path):
    review = tmp_path / "review.csv"
    review.write_text("train_hash,test_id,category,reviewer,note\nabc,arc_challenge:x,duplicate,me,\nabc,truthfulqa:1\n")
    with pytest.raises(ValueError, match=r"review.csv: line 3: expected 5 comma-separated fields .* got 2"):
        C.load_review(review)


def test_a_review_file_that_does_not_exist_is_an_error_not_an_empty_review(tmp_path):
    typo = "data/contamination_reveiw.csv"
    with pytest.raises(ConfigError, match=r"contamination.review_file: should be an existing file, but .*reveiw"):
        load_config("tiny", {"contamination.review_file": typo})
    with pytest.raises(FileNotFoundError, match=r"contamination.review_file: .*reveiw.csv does not exist"):
        C.load_review(typo)
    assert load_config("tiny", {"contamination.review_file": None}).contamination.review_file is None
    assert C.load_review(None) == {}


def test_review_rows_naming_unknown_test_items_are_reported(planted, tmp_path):
    f = planted["flagged"]
    pair = pairs_of(planted, "reversed").query("test_id == @ARC_ROTATION").iloc[0]
    review = tmp_path / "review.csv"
    review.write_text("train_hash,test_id,category,reviewer,note\n"
                      f"{pair['train_hash']},{ARC_ROTATION},similar_but_different,me,\n"
                      f"{pair['train_hash']},arc_chalenge:Mercury_7175875,similar_but_different,me,typo\n")
    decisions = C.load_review(review)
    assert C.unknown_review_items(decisions, planted["items"]) == ["arc_chalenge:Mercury_7175875"]
    summary = C.summarize(planted["rows"], planted["items"], apply_decisions(f, planted["cfg"], decisions),
                          planted["cfg"], decisions)
    assert summary["review_unknown_test_ids"] == ["arc_chalenge:Mercury_7175875"]


def test_the_shipped_review_file_is_valid():
    """The vendored review decisions parse and point at real test items (a missing file would mean none apply)."""
    from platypus_nb.config import resolve_path

    path = resolve_path(load_config("tiny").contamination.review_file)
    assert path.is_file()
    decisions = C.load_review(path)
    assert decisions
    known = {item.test_id for name in {t.split(":")[0] for _, t in decisions} for item in C.load_test_set(name)}
    for train_hash, test_id in decisions:
        assert re.fullmatch(r"[0-9a-f]{16}", train_hash), train_hash
        assert test_id in known, test_id


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("lines, message", [
    (['{"instruction": "a", "output": "b"}', "", '{"instruction": "c", "output": 3}'],
     "line 3: 'output' must be a string"),
    (['{"instruction": "a", "output": "b"}', '{"instruction": "a" "output": "b"}'], "line 2: not valid JSON"),
    (['{"instruction": "a", "input": "x"}'], "line 1: missing key 'output'"),
    (['{"instruction": " ", "output": "b"}'], "line 1: 'instruction' is empty"),
])
def test_malformed_training_rows_are_reported_with_their_line(tmp_path, lines, message):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        read_training_rows(path)


def test_null_input_and_data_source_read_as_empty(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, [{"instruction": "Name a prime.", "input": None, "output": "2", "data_source": None}])
    row = read_training_rows(path)[0]
    assert C.question_text(row) == "Name a prime."
    assert data_source_of(row) == "(none)"


@pytest.mark.parametrize("overrides, message", [
    ({"contamination.threshold": 0.2}, r"contamination.threshold: should be greater than or equal to 0.5, got float 0.2"),
    ({"contamination.threshold": 0.97}, r"duplicate_similarity: .*raising threshold above 0.95 needs "
                                        r"duplicate_similarity raised with it"),
])
def test_a_threshold_out_of_range_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides)


def test_an_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", {"contamination.benchmarks": ["arc_challenge", "gsm8k"]})
    assert "contamination.benchmarks[1]" in str(e.value)
    assert all(name in str(e.value) for name in TEST_SETS)


def test_the_config_registry_and_the_loaders_agree():
    for name in TEST_SETS:
        items = C.load_test_set(name, max_items=3)
        assert len(items) == 3 and all(i.text.strip() and i.test_id.startswith(f"{name}:") for i in items)


def test_test_ids_are_unique_and_answers_are_options():
    items = C.load_test_items(TEST_SETS)
    assert len({i.test_id for i in items}) == len(items) == 1172 + 10042 + 14042 + 817 + 5000 + 800
    assert all(i.answer in i.choices for i in items if i.choices)


# ------------------------------------------------------------------------------------ further evaluation sets


def test_an_extra_evaluation_set_is_checked_and_its_copies_removed(tmp_path):
    eval_path = tmp_path / "gsm8k_test.jsonl"
    write_jsonl(eval_path, [{"q": "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                                  "clips in May. How many clips did Natalia sell altogether in April and May?",
                             "uid": "g1", "a": "72"},
                            {"q": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
                                  "babysitting. How much did she earn?", "uid": "g2", "a": "10"}])
    cfg = load_config("tiny", {"contamination.benchmarks": [], "contamination.eval_splits": [],
                               "contamination.extra_eval_sets": [
                                   {"name": "gsm8k", "path": str(eval_path), "text_field": "q", "id_field": "uid",
                                    "answer_field": "a"}]}).contamination
    items = C.load_test_items(cfg.benchmarks, cfg.eval_splits, cfg.extra_eval_sets)
    assert [i.test_id for i in items] == ["gsm8k:g1", "gsm8k:g2"] and items[0].answer == "72"
    rows = [_row("Solve: " + items[1].text, "She earned $10.", "airoboros"), _row("What is 2 + 2?", "4", "x")]
    texts = [C.question_text(r) for r in rows]
    emb_train = embed_texts(texts, show_progress=False)
    emb_test = embed_texts([i.text for i in items], show_progress=False)
    flagged = C.flag_pairs(rows, items, C.semantic_pairs(emb_train, emb_test, cfg.threshold),
                           C.lexical_pairs(texts, [i.text for i in items]), emb_train, emb_test, cfg)
    assert flagged[["train_index", "test_id", "method", "answer_agreement", "removed"]].values.tolist() == \
        [[0, "gsm8k:g2", "exact", "same", True]]


def test_an_extra_evaluation_set_row_without_text_names_its_line(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text('{"question": "What is a prime number, and why is 1 not one?"}\n\n{"prompt": "x"}\n')
    spec = EvalSetConfig(name="mine", path=str(path))
    with pytest.raises(ValueError, match=r"set.jsonl: line 3: expected a non-empty string in field 'question'"):
        C.load_eval_set(spec)


# ----------------------------------------------------------------------------------------- outputs and cache


def test_outputs_hold_every_pair_and_the_rows_that_stay(planted, tmp_path):
    summary = C.summarize(planted["rows"], planted["items"], planted["flagged"], planted["cfg"], {},
                          planted["original"])
    paths = C.write_outputs(tmp_path, planted["clean"], planted["flagged"], summary)
    flagged = pd.read_csv(paths["flagged"])
    assert list(flagged.columns[:8]) == ["train_index", "benchmark", "test_id", "similarity", "method", "category",
                                         "train_text", "test_text"]
    assert len(flagged) == len(planted["flagged"])
    clean = read_jsonl(paths["clean"])
    assert clean == [r for i, r in enumerate(planted["rows"]) if i not in planted["removed"]]
    saved = json.loads(paths["summary"].read_text())
    assert saved["removed_rows"] == len(planted["removed"]) == saved["train_rows"] - saved["clean_rows"]
    assert saved["test_sets"]["arc_challenge"]["pairs"]["duplicate"] >= 2
    assert saved["original_rule"]["removed_only_here"] >= 1
    assert saved["verifier"] == {"kind": "evidence", "version": "evidence-9", "model": None, "threshold": 1.5,
                                 "recall_top_k": 5, "recall_floor": 0.5}
    with open(paths["review_todo"], newline="") as f:
        todo = list(csv.DictReader(f))
    assert {r["category"] for r in todo} <= {"duplicate", "gray_area", "similar_but_different"}


def test_the_cache_is_keyed_by_the_weights_content_not_their_size(tmp_path):
    """A fine-tuned copy of MiniLM has the same files and sizes: its vectors must not come from the original's."""
    import shutil

    from platypus_nb.assets import embedding_model_path
    from platypus_nb.embeddings import _model_cache_name

    def weights_key(model: str) -> str:
        return _model_cache_name(model).rsplit("-", 1)[1]

    copy = tmp_path / "minilm-copy"
    shutil.copytree(embedding_model_path("all-MiniLM-L6-v2"), copy)
    original = weights_key("all-MiniLM-L6-v2")
    assert weights_key(str(copy)) == original
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of the last tensor: same size, other weights
    weights.write_bytes(bytes(data))
    assert weights_key(str(copy)) != original


def test_a_second_run_embeds_nothing_new(tmp_path, monkeypatch):
    import platypus_nb.embeddings as E

    cache = EmbeddingCache("all-MiniLM-L6-v2", root=tmp_path)
    texts = [i.text for i in C.load_test_set("truthfulqa", max_items=20)]
    first = embed_texts(texts, cache=cache, show_progress=False)
    assert len(list(cache.dir.glob("*.npz"))) == 1

    def no_encoder(path, backend="torch"):
        raise AssertionError("the second run loaded the encoder: something was embedded again")

    monkeypatch.setattr(E, "_load_encoder", no_encoder)
    again = embed_texts(texts, cache=EmbeddingCache("all-MiniLM-L6-v2", root=tmp_path), show_progress=False)
    np.testing.assert_array_equal(first, again)
    with pytest.raises(AssertionError, match="embedded again"):  # and one new text does reach the encoder
        embed_texts(texts + ["a text that is not cached"], cache=EmbeddingCache("all-MiniLM-L6-v2", root=tmp_path),
                    show_progress=False)


def _flag_against_truthfulqa(rows: list[dict], cfg: ContaminationConfig) -> pd.DataFrame:
    """Step 02's flagged pairs of ``rows`` against the first three TruthfulQA items (no verifier pieces)."""
    items = C.load_test_items(["truthfulqa"], max_items=3)
    texts = [C.question_text(r) for r in rows]
    train_emb = embed_texts(texts, show_progress=False)
    test_emb = embed_texts([i.text for i in items], show_progress=False)
    return C.flag_pairs(rows, items, C.semantic_pairs(train_emb, test_emb, cfg.threshold),
                        C.lexical_pairs(texts, [i.text for i in items]), train_emb, test_emb, cfg)


def test_only_evaluation_split_rows_and_no_benchmark_match_still_draw_every_figure():
    """A training set whose only flagged rows are evaluation-split rows (no pair with a benchmark) crashed the
    top-pairs table: assigning to the empty filtered frame made a row of NaN texts."""
    from platypus_nb.contamination import plots

    cfg = paper_splits()
    flagged = _flag_against_truthfulqa([_row("State Fermat's little theorem.", "a^p = a mod p", "theoremqa"),
                                        _row("Name a colour of the sky.", "Blue.", "airoboros")], cfg)
    assert flagged["method"].tolist() == ["source"]
    assert plots.top_pairs(flagged, cfg.benchmarks).empty
    for figure in (plots.top_pairs_table(flagged, cfg.benchmarks), plots.flagged_heatmap(flagged)):
        assert figure.axes


def test_a_training_set_with_no_flagged_pair_removes_nothing_and_every_reader_copes():
    """With nothing flagged, the decision columns were float64 (a list of no values), so flagged[flagged["removed"]]
    selected columns instead of rows and the detector evaluation's removals raised KeyError."""
    from platypus_nb.contamination import detector_eval, plots

    rows = [_row("Write a haiku about autumn leaves.", "Red leaves drift and fall.", "airoboros")]
    flagged = _flag_against_truthfulqa(rows, paper_splits())
    assert flagged.empty and flagged["removed"].dtype == bool and flagged["reviewed"].dtype == bool
    assert detector_eval.removals(flagged) == {}
    assert C.split_rows(rows, flagged) == (rows, [])
    assert plots.flagged_heatmap(flagged).axes


def test_a_truncated_cache_shard_is_named_removed_and_re_embedded(tmp_path):
    texts = [i.text for i in C.load_test_set("truthfulqa", max_items=6)]
    first = embed_texts(texts, cache=EmbeddingCache("all-MiniLM-L6-v2", root=tmp_path), show_progress=False)
    (shard,) = EmbeddingCache("all-MiniLM-L6-v2", root=tmp_path).dir.glob("*.npz")
    shard.write_bytes(shard.read_bytes()[:-200])
    with pytest.warns(UserWarning, match=re.escape(str(shard)) + r" is unreadable"):
        cache = EmbeddingCache("all-MiniLM-L6-v2", root=tmp_path)
    assert len(cache) == 0 and not shard.exists()
    again = embed_texts(texts, cache=cache, show_progress=False)
    np.testing.assert_allclose(again, first, atol=1e-5)
    assert len(EmbeddingCache("all-MiniLM-L6-v2", root=tmp_path)) == len(texts)


def test_the_notebook_runs_on_the_planted_file(planted, tmp_path):
    from platypus_nb.runner import execute_notebook

    notebook = Path(__file__).parent.parent / "notebooks" / "02_contamination_analysis.ipynb"
    execute_notebook(notebook, tmp_path / "02.ipynb", {
        "run_dir": str(tmp_path / "run"), "train_path": str(planted["path"]), "threshold": 0.8,
        "overrides": {"run.figures_dir": str(tmp_path / "figures"), "contamination.max_test_items": N_ITEMS,
                      "contamination.heldout_rows": 5}})
    out = tmp_path / "run" / "02_contamination"
    clean, heldout = read_jsonl(out / "clean.jsonl"), read_jsonl(out / "heldout.jsonl")
    # Five of the rows that stay are held out of the training file, drawn from those rows only.
    assert len(heldout) == 5 and all(row not in clean for row in heldout)
    kept = clean + heldout
    assert all(planted["rows"][i] not in kept for i in planted["kinds"]["copy"])
    assert all(planted["rows"][i] in kept for i in planted["kinds"]["same_topic"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_rows"] == len(planted["rows"])
    figures = {"02_similarity_distribution.png", "02_flagged_by_source.png", "02_top_pairs.png"}
    assert {p.name for p in (tmp_path / "figures").iterdir()} == figures
    assert {p.name for p in (out / "figures").iterdir()} == figures

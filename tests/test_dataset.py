"""Step 01, rebuilding Open-Platypus: formatters on real-schema rows, filters, exact and near-duplicate semantics,
bad rows, unavailable sources, the embedding cache, the release comparison, the output files and the notebook.

Offline sources are read from data/; Hub-only sources from the small real-schema fixtures in
tests/fixtures/sources/, passed the way a user passes a local copy (dataset.source_files).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from platypus_nb import dataset
from platypus_nb.config import ConfigError, load_config
from platypus_nb.dataset import dedup, filters, formats, sources
from platypus_nb.dataset.rows import BadRowError, make_row
from platypus_nb.embeddings import EmbeddingCache, embed_texts
from platypus_nb.paths import NOTEBOOKS_DIR

FIXTURES = Path(__file__).parent / "fixtures" / "sources"
HUB_FIXTURES = {"prm800k": "prm800k.jsonl", "math": "math_train.jsonl", "scienceqa": "scienceqa.jsonl",
                "reclor": "reclor.jsonl", "leetcode": "leetcode.jsonl", "airoboros": "airoboros.jsonl",
                "tigerbot": "tigerbot.jsonl", "arb": "arb.json", "guanaco": "guanaco.jsonl"}
ALL_SOURCES = ["prm800k", "math", "scienceqa", "scibench", "reclor", "theoremqa", "leetcode", "airoboros",
               "tigerbot", "arb", "guanaco", "openbookqa", "sciq"]


def cfg_with(**dataset_keys):
    return load_config("tiny", {f"dataset.{k}": v for k, v in dataset_keys.items()})


def fixture_cfg(**dataset_keys):
    """All 13 sources: offline ones from data/, Hub-only ones from the fixtures, MATH train + test."""
    keys = dict(sources=ALL_SOURCES, source_files={n: str(FIXTURES / f) for n, f in HUB_FIXTURES.items()},
                math_splits=["train", "test"], max_rows_per_source=10)
    keys.update(dataset_keys)
    return cfg_with(**keys)


def fixture_records(name):
    return sources.read_records(FIXTURES / HUB_FIXTURES[name], name)


OPTIONS = formats.FormatOptions(seed=42)


def by_id(formatted):
    return {r["row_id"]: r for r in formatted.rows}, {r["row_id"]: r for r in formatted.removed}


# ------------------------------------------------------------------------------------------------ config


def test_the_tiny_config_uses_offline_sources_and_the_card_threshold():
    d = load_config("tiny").dataset
    assert set(d.sources) <= {"math", "scibench", "theoremqa", "openbookqa", "sciq"}
    assert d.math_splits == ["test"] and d.dedup_threshold == 0.8


@pytest.mark.parametrize("keys, message", [
    ({"dataset.sources": ["reclor", "nope"]}, r"dataset\.sources\[1\]: should be 'prm800k', .*, got str 'nope'"),
    ({"dataset.sources": ["prm800k", "theoremqa"]}, r"dataset\.sources: should list math next to prm800k"),
    ({"dataset.source_files": {"reclor": "no/such/reclor.jsonl"}}, r"source_files\.reclor: should be an existing"),
    ({"dataset.dedup_backend": "annoy"}, r"dataset\.dedup_backend: should be 'auto', 'numpy' or 'faiss', got str 'annoy'"),
])
def test_bad_dataset_settings_fail_naming_the_key(keys, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", keys)


# ------------------------------------------------------------------------------------ offline sources


def test_theoremqa_appends_the_theorems_definition_joined_by_name():
    records = sources.load_source_records("theoremqa", cfg_with(max_rows_per_source=None).dataset)
    assert len(records) == 800 and all(r["theorem_def"] for r in records)
    row = formats.format_source("theoremqa", records[:1], OPTIONS).rows[0]
    question = "How many ways are there to divide a set of 8 elements into 5 non-empty ordered subsets?"
    assert row["instruction"].startswith(f"{question}\nRelevant Theorem: In combinatorics, Lah numbers are ")
    assert len(row["instruction"]) > 1000 and (row["input"], row["output"]) == ("", "11760")
    names = formats.format_source("theoremqa", records[:1], formats.FormatOptions(theoremqa_theorem="name")).rows
    assert names[0]["instruction"] == f"{question}\nRelevant Theorem: lah number"


def test_theoremqa_revisions_differ_in_one_answer_and_step_02_reads_the_same_revision():
    from platypus_nb.contamination import load_test_set

    for revision, answer in (("paper_2023", "False"), ("current", "1.5")):
        records = sources.load_source_records("theoremqa", cfg_with(max_rows_per_source=None,
                                                                    source_revision=revision).dataset)
        row = next(r for r in records if r["id"] == "elainewan/math_real_analysis_additional_4.json")
        assert str(row["Answer"]) == answer
        item = next(i for i in load_test_set("theoremqa_test", source_revision=revision)
                    if i.test_id.endswith("math_real_analysis_additional_4.json"))
        assert item.answer == answer and item.text == row["Question"]


def test_a_local_copy_of_theoremqa_is_joined_too_and_an_unknown_theorem_names_its_row(tmp_path):
    hub_copy = tmp_path / "test.csv"
    hub_copy.write_text("Question,Answer,theorem,id\nWhat is 2+2?,4,Lah Number,a\nWhat is x?,1,no such theorem,b\n")
    cfg = cfg_with(source_files={"theoremqa": str(hub_copy)})
    with pytest.raises(sources.SourceUnavailableError,
                       match=r"source 'theoremqa' row 1 \(.*test\.csv, id 'b'\): theorem 'no such theorem' has no "
                             r"definition in data/theoremqa_all_theorems\.json\.gz"):
        sources.load_source_records("theoremqa", cfg.dataset)
    hub_copy.write_text("Question,Answer,theorem,theorem_def,id\nWhat is 2+2?,4,Lah Number,,a\n"
                        "What is x?,1,no such theorem,Its own definition.,b\n")
    records = sources.load_source_records("theoremqa", cfg.dataset)
    assert records[0]["theorem_def"].startswith("In combinatorics, Lah numbers")  # joined by name, case-insensitive
    assert records[1]["theorem_def"] == "Its own definition."  # the Hub CSV's own column is kept


def test_scibench_reads_every_book_and_its_solutions_file_preferring_worked_solutions():
    records = sources.load_source_records("scibench", cfg_with(max_rows_per_source=None).dataset)
    assert len(records) == 695  # the 2023-07-21 revision the original cloned
    current = sources.load_source_records("scibench", cfg_with(max_rows_per_source=None,
                                                               source_revision="current").dataset)
    assert len(current) == 580 + 112
    solved = next(r for r in records if r["_file"] == "atkins_sol.json")
    assert formats.format_scibench(solved)[2] == solved["solution"]
    unsolved = next(r for r in records if r["_file"] == "atkins.json")
    assert formats.format_scibench(unsolved) == (unsolved["problem_text"], "", unsolved["answer_number"])


def test_math_concatenates_train_and_test_and_unwraps_boxed_answers():
    records = sources.load_source_records("math", fixture_cfg(max_rows_per_source=None).dataset)
    assert [r["_split"] for r in records[:3]] == ["train", "train", "test"] and len(records) == 2 + 5000
    out = formats.format_source("math", records[:3], OPTIONS)
    assert out.rows[1]["output"] == "$\\dbinom{8}{4} = \\dfrac{8!}{4!4!} = 70.$"
    assert out.rows[2]["output"].endswith("the graph has $2$ vertical asymptotes.")
    assert all(r["data_source"] == "MATH/PRM-800K" for r in out.rows)


def test_unwrap_boxed_keeps_the_originals_greedy_one_line_regex():
    assert formats.unwrap_boxed("so $\\boxed{\\frac{1}{2}}$.") == "so $\\frac{1}{2}$."
    assert formats.unwrap_boxed("\\boxed{2}, and {x}") == "2}, and {x"
    assert formats.unwrap_boxed("a\n\\boxed{3}\nb}") == "a\n3\nb}"


def test_openbookqa_follows_the_original_format_and_sciq_puts_the_answer_at_a_seeded_position():
    obqa = sources.load_source_records("openbookqa", cfg_with().dataset)
    instruction, input_, output = formats.format_openbookqa(obqa[0])
    assert instruction == ("Frilled sharks and angler fish live far beneath the surface of the ocean, which is why "
                           "they are known as: \nA: Deep sea animals\nB: fish\nC: Long Sea Fish\nD: Far Sea Animals")
    assert (input_, output) == ("", "The answer is A: Deep sea animals")
    sciq = sources.load_source_records("sciq", cfg_with(max_rows_per_source=20).dataset)
    first = formats.format_source("sciq", sciq, OPTIONS)
    again = formats.format_source("sciq", sciq, OPTIONS)
    assert first.rows == again.rows
    for row, record in zip(first.rows, sciq):
        letter = row["output"][len("The answer is ")]
        assert f"\n{letter}: {record['correct_answer']}" in row["instruction"]


# ------------------------------------------------------------------------------------- Hub-only sources


def test_prm800k_keeps_solved_answered_samples_and_they_replace_math_solutions():
    prm, removed = formats.prm800k_solutions(fixture_records("prm800k"), OPTIONS)
    reasons = {r["row_id"]: r["reason"] for r in removed}
    assert reasons == {"prm800k:1": "not_solved", "prm800k:2": "wrong_answer", "prm800k:3": "answer_not_found",
                       "prm800k:7": "bad_row"}
    assert [s.row_id for s in prm] == ["prm800k:0", "prm800k:4", "prm800k:5", "prm800k:6"]
    # Rated -1 completions are never picked; the human completion rated 1 is appended after the step's pick.
    assert "$x^2$." not in prm[0].output and prm[0].output.endswith("# Answer\n\n2")
    assert prm[1].output == ("$120\\%$ of 30 is 36 and $130\\%$ of 20 is 26. 36 - 26 = 10.\n\n# Answer\n\n10")

    math_records = sources.load_source_records("math", cfg_with(max_rows_per_source=3).dataset)
    out = formats.format_math(math_records, prm, OPTIONS)
    rows, gone = by_id(out)
    # The later sample of problem 0 wins; the "# Answer" line is cut, as update_MATH.py's regex did.
    assert rows["math:0"]["output"] == "$x^2+x-6=(x-2)(x+3)$ has two roots, so 2 asymptotes.\n\n"
    assert rows["math:1"]["output"].startswith("$120\\%$ of 30 is 36")
    assert gone["prm800k:0"]["reason"] == "superseded" and gone["prm800k:0"]["duplicate_of"] == "prm800k:6"
    assert gone["prm800k:5"]["reason"] == "no_math_problem"
    assert rows["math:2"]["output"].endswith("the equation is $1+\\dfrac{2}{7}=\\dfrac{9}{7}$.")  # no PRM800K sample


def test_prm800k_completion_choice_is_reproducible_with_the_run_seed():
    records = fixture_records("prm800k")
    first = formats.prm800k_solutions(records, formats.FormatOptions(seed=7))[0]
    again = formats.prm800k_solutions(records, formats.FormatOptions(seed=7))[0]
    assert [s.output for s in first] == [s.output for s in again]
    picks = {formats.prm800k_solutions(records, formats.FormatOptions(seed=s))[0][0].output.split(" ")[0]
             for s in range(20)}
    assert picks == {"The", "Factor:"}  # both rated-1 first steps occur across seeds


def test_scienceqa_applies_the_original_rules_in_order():
    out = formats.format_source("scienceqa", fixture_records("scienceqa"), OPTIONS)
    rows, gone = by_id(out)
    assert {k: v["reason"] for k, v in gone.items()} == {
        "scienceqa:1": "excluded_skill", "scienceqa:2": "no_solution", "scienceqa:3": "duplicate_in_source",
        "scienceqa:5": "input_over_400_words", "scienceqa:6": "bad_row"}
    assert gone["scienceqa:3"]["duplicate_of"] == "scienceqa:0"
    assert rows["scienceqa:0"]["instruction"] == ("Which tense does the sentence use?\nMona will print her name with "
                                                  "care.\nA: present tense\nB: future tense\nC: past tense")
    assert rows["scienceqa:0"]["input"] == ""  # the question does not refer to the lecture
    assert rows["scienceqa:4"]["input"].startswith("An organism's genotype")  # "Based on" keeps it


def test_reclor_asks_for_the_letter_only():
    out = formats.format_source("reclor", fixture_records("reclor"), OPTIONS)
    row = out.rows[0]
    assert row["instruction"].endswith("most weakens the argument?\nA: Exercise was prescribed only to patients "
                                       "already recovering.\nB: Some patients did not exercise.\nC: Recovery rates "
                                       "vary by hospital.\nD: The survey was anonymous.")
    assert (row["input"], row["output"]) == ("Choose A, B, C or D as your solution.", "A")
    assert out.removed[0]["reason"] == "bad_row" and "label" in out.removed[0]["detail"]


def test_code_and_chat_sources_map_their_columns_as_the_original():
    leetcode = formats.format_source("leetcode", fixture_records("leetcode"), OPTIONS)
    assert leetcode.rows[0]["output"].startswith("class Solution:") and leetcode.removed[0]["reason"] == "bad_row"
    tigerbot = formats.format_source("tigerbot", fixture_records("tigerbot"), OPTIONS)
    assert tigerbot.rows[0]["instruction"].startswith("Given a sorted array") and tigerbot.rows[0]["input"] == ""
    assert tigerbot.removed[0]["reason"] == "not_python"
    airoboros = formats.format_source("airoboros", fixture_records("airoboros"), OPTIONS)
    assert airoboros.rows[0]["output"] == "Average velocity is distance over time: 120 / 2 = 60 miles per hour."
    guanaco = formats.format_source("guanaco", fixture_records("guanaco"), OPTIONS)
    assert guanaco.rows[0]["instruction"] == "What is the derivative of x^2?"
    assert guanaco.rows[0]["output"] == ("The derivative of x^2 is 2x.### Instruction:\n And of x^3?### Response:\n "
                                         "It is 3x^2.")
    assert guanaco.removed[0]["row_id"] == "guanaco:3" and "Assistant" in guanaco.removed[0]["detail"]


def test_arb_formats_each_library_as_duckai_format():
    rows = formats.format_source("arb", fixture_records("arb"), OPTIONS).rows
    math, reading, law, science, physics = (r for r in rows)
    assert (math["input"], math["output"]) == ("", "The antiderivative is $x^3/3$, so the integral is $1/3$.")
    assert reading["instruction"].endswith("described as\nA. skeptical\nB. enthusiastic\nC. neutral\nD. hostile")
    assert reading["output"] == "The author doubts the claims throughout."  # first sentence stripped
    assert law["output"] == "B" and science["output"].startswith("Mitochondria")
    assert physics["instruction"].startswith("A mass of 2 kg")


# -------------------------------------------------------------------------------------------- filters


def test_the_keyword_list_keeps_the_fused_calculationscience_unless_told_otherwise():
    original = filters.stem_keywords()
    assert len(original) == 118 and len(set(original)) == 114 and "calculationscience" in original
    fixed = filters.stem_keywords(as_original=False)
    assert {"calculation", "science"} <= set(fixed) and "calculationscience" not in fixed


def test_keyword_matching_reproduces_each_scripts_case_rules():
    rows = formats.format_source("reclor", fixture_records("reclor"), OPTIONS).rows
    rows += formats.format_source("guanaco", fixture_records("guanaco"), OPTIONS).rows
    kept, removed = filters.keyword_filter(rows, filters.stem_keywords())
    assert [r["row_id"] for r in kept] == ["reclor:0", "guanaco:0", "guanaco:2"]  # "AI" matches only in guanaco
    assert {r["row_id"] for r in removed} == {"reclor:1", "reclor:2", "reclor:3", "guanaco:1"}
    kept_fixed, _ = filters.keyword_filter(rows, filters.stem_keywords(as_original=False))
    assert "reclor:3" in {r["row_id"] for r in kept_fixed}  # "science" is a keyword again
    other = [make_row("theoremqa", 0, "theoremqa", "no keyword here", "", "1")]
    assert filters.keyword_filter(other, filters.stem_keywords())[0] == other  # only three sources are filtered


def test_rows_without_instruction_or_output_are_dropped():
    rows = [make_row("scibench", 0, "scibench", "Q", "", "A"), make_row("scibench", 1, "scibench", None, "", "A"),
            make_row("scibench", 2, "scibench", "Q2", "", "  ")]
    kept, removed = filters.drop_incomplete(rows, as_original=False)
    assert [r["row_id"] for r in kept] == ["scibench:0"]
    assert [r["reason"] for r in removed] == ["missing_instruction", "missing_output"]


def test_the_original_keeps_arbs_empty_mcat_output_and_drops_only_none():
    one_sentence = {"_library": "mcatScience", "Problem Statement": "Which organelle makes ATP?",
                    "Answer Candidates": ["Ribosome", "Mitochondrion", "Golgi body", "Lysosome"],
                    "Solution": "Choice B is correct.", "Final Answer": "B"}
    row = formats.format_source("arb", [one_sentence], OPTIONS).rows[0]
    assert row["output"] == ""  # the first sentence is stripped, nothing is left
    none = make_row("scibench", 1, "scibench", None, "", "A")
    kept, removed = filters.drop_incomplete([row, none])
    assert kept == [row] and [r["row_id"] for r in removed] == ["scibench:1"]
    assert filters.drop_incomplete([row, none], as_original=False)[0] == []


def test_exact_dedup_keeps_the_longest_output_in_the_first_place():
    rows = [make_row("s", 0, "s", "Q", "", "short"), make_row("s", 1, "s", "Other", "", "x"),
            make_row("s", 2, "s", "Q", "", "a longer one"), make_row("s", 3, "s", "Q", "", "same length!"),
            make_row("s", 4, "s", "Q", "ctx", "different input is a different row")]
    for as_original in (True, False):
        kept, removed = filters.exact_dedup(rows, as_original)
        assert [r["row_id"] for r in kept] == ["s:2", "s:1", "s:4"]
        assert {r["row_id"]: r["duplicate_of"] for r in removed} == {"s:0": "s:2", "s:3": "s:2"}  # ties: earlier


def test_the_originals_string_key_merges_rows_the_pair_keeps_apart():
    rows = [make_row("s", 0, "s", "a-b", "", "x"), make_row("s", 1, "s", "a", "b-", "longer"),
            make_row("s", 2, "s", "Q", None, "y"), make_row("s", 3, "s", "Q", "None", "z")]
    kept, removed = filters.exact_dedup(rows)
    assert [r["row_id"] for r in kept] == ["s:1", "s:2"]
    assert {r["row_id"]: r["duplicate_of"] for r in removed} == {"s:0": "s:1", "s:3": "s:2"}
    assert filters.exact_dedup(rows, key_as_original=False)[1] == []


def test_shuffled_order_is_seeded():
    rows = [make_row("s", i, "s", f"Q{i}", "", "A") for i in range(30)]
    assert filters.order_rows(rows, "source", 1) == rows
    assert filters.order_rows(rows, "shuffle", 1) == filters.order_rows(rows, "shuffle", 1) != rows


# ---------------------------------------------------------------------------------------- near-duplicates


def unit(*rows):
    a = np.asarray(rows, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_a_similarity_equal_to_the_threshold_is_kept_and_just_above_is_removed():
    emb = np.asarray([[1, 0, 0], [0.8, 0.6, 0], [0.6, 0.8, 0]], dtype=np.float32)  # cos(0, 1) = 0.8 exactly
    assert dedup.greedy_near_duplicates(emb, 0.8).kept.tolist() == [True, True, False]  # cos(1, 2) = 0.96
    assert dedup.greedy_near_duplicates(emb, np.nextafter(np.float32(0.8), np.float32(0))).kept.tolist() == \
        [True, False, True]  # cos(0, 2) = 0.6


def test_the_first_seen_row_wins_and_removed_rows_remove_nothing():
    a, b, c = (unit([np.cos(np.radians(d)), np.sin(np.radians(d))])[0] for d in (0, 25, 50))
    # cos(a, b) = cos(b, c) = cos 25 deg = 0.906 > 0.8; cos(a, c) = cos 50 deg = 0.643
    result = dedup.greedy_near_duplicates(np.stack([a, b, c]), 0.8)
    assert result.kept.tolist() == [True, False, True]  # c is compared with kept rows only
    assert result.nearest[1] == 0 and result.similarity[1] == pytest.approx(np.cos(np.radians(25)), abs=1e-6)
    assert dedup.greedy_near_duplicates(np.stack([b, a, c]), 0.8).kept.tolist() == [True, False, False]


@pytest.mark.parametrize("block_size", [1, 3, 50, 4096])
@pytest.mark.parametrize("backend", ["numpy", pytest.param("faiss", marks=pytest.mark.skipif(
    not dedup.faiss_available(), reason="faiss-cpu is not installed"))])
def test_blocked_search_keeps_exactly_what_the_original_loop_keeps(block_size, backend):
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(60, 24))
    emb = unit(*np.concatenate([centres + s * rng.normal(size=centres.shape) for s in (0.2, 0.4, 0.6)]))
    emb = emb[rng.permutation(len(emb))]
    for threshold in (0.7, 0.8):
        reference = dedup.greedy_near_duplicates_original(emb, threshold)
        result = dedup.greedy_near_duplicates(emb, threshold, block_size, backend)
        np.testing.assert_array_equal(result.kept_indices, reference)
        for i in np.flatnonzero(~result.kept):  # each removal names its most similar earlier kept row
            earlier = reference[reference < i]
            assert result.nearest[i] == earlier[np.argmax(emb[earlier] @ emb[i])]
            assert result.similarity[i] > np.float32(threshold)


def pairs_at_the_threshold(threshold, n_pairs=100, dim=384, seed=5):
    """Rows u1, v1, u2, v2, ... (float32) with cos(ui, vi) within 2e-7 of the threshold and unrelated pairs far apart.

    float32 arithmetic rounds similarities by about that much, so its decisions on these pairs are a coin toss.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_pairs):
        u, w = rng.normal(size=(2, dim))
        u /= np.linalg.norm(u)
        w -= (w @ u) * u
        w /= np.linalg.norm(w)
        c = threshold + rng.uniform(-2e-7, 2e-7)
        rows += [u, c * u + np.sqrt(1 - c * c) * w]
    return np.asarray(rows, dtype=np.float32)


@pytest.mark.parametrize("threshold", [0.7, 0.8])
@pytest.mark.parametrize("block_size, backend", [(1, "numpy"), (1024, "numpy"), pytest.param(1, "faiss", marks=(
    pytest.mark.skipif(not dedup.faiss_available(), reason="faiss-cpu is not installed")))])
def test_pairs_at_the_threshold_are_decided_as_the_original_loop_decides_them_exactly(threshold, block_size, backend):
    emb = pairs_at_the_threshold(threshold)
    # The original loop on float64 copies: sklearn's cosine in float64, compared with the float threshold.
    reference = dedup.greedy_near_duplicates_original(emb.astype(np.float64), threshold)
    exact = dedup.exact_cosine(emb[0::2], emb[1::2]).diagonal()
    assert 0 < (exact > threshold).sum() < len(exact)  # both sides of the threshold occur
    result = dedup.greedy_near_duplicates(emb, threshold, block_size, backend)
    np.testing.assert_array_equal(result.kept_indices, reference)
    # Deciding these pairs in float32 alone (block_size 1: queries x kept; 1024: in-block) gets some wrong.
    float32_only = dedup.greedy_near_duplicates(emb, threshold, block_size, backend, exact_margin=0.0)
    assert not np.array_equal(float32_only.kept_indices, reference)


def test_near_dedup_needs_unit_vectors():
    with pytest.raises(ValueError, match="row 1 has norm 2.0000"):
        dedup.greedy_near_duplicates(np.asarray([[1, 0], [2, 0]], dtype=np.float32), 0.8)


def test_the_faiss_backend_is_chosen_from_the_configured_row_count():
    assert dedup.choose_backend("auto", 99, faiss_min_rows=100) == "numpy"
    assert dedup.choose_backend("auto", 100, faiss_min_rows=100) == ("faiss" if dedup.faiss_available() else "numpy")
    assert dedup.choose_backend("numpy", 10**6, faiss_min_rows=100) == "numpy"


def test_embeddings_are_cached_by_text_and_a_rerun_embeds_nothing(tmp_path):
    cache = EmbeddingCache("all-MiniLM-L6-v2", root=tmp_path)
    texts = ["What is 2 + 2?", "Compute the integral of x.", "What is 2 + 2?"]
    first = embed_texts(texts, cache=cache, show_progress=False)
    shards = sorted(cache.dir.glob("*.npz"))
    again = embed_texts(texts, cache=EmbeddingCache("all-MiniLM-L6-v2", root=tmp_path), show_progress=False)
    assert sorted(cache.dir.glob("*.npz")) == shards and len(shards) == 1
    np.testing.assert_array_equal(first, again)
    assert np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5) and np.array_equal(first[0], first[2])


# --------------------------------------------------------------------------------------- bad input


def test_a_bad_row_is_listed_with_source_and_row_number_or_stops_the_build():
    records = fixture_records("guanaco")
    skipped = formats.format_source("guanaco", records, formats.FormatOptions(on_bad_row="skip"))
    assert skipped.removed[0]["detail"].startswith("source 'guanaco' row 3: field 'text'")
    with pytest.raises(BadRowError, match=r"source 'guanaco' row 3: .*on_bad_row is 'stop'"):
        formats.format_source("guanaco", records, formats.FormatOptions(on_bad_row="stop"))


def test_a_hub_only_source_without_the_hub_fails_with_its_name_and_what_to_do(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(sources.SourceUnavailableError,
                       match=r"source 'reclor' could not be loaded from Hub: metaeval/reclor.*"
                             r"dataset\.source_files\.reclor"):
        dataset.load_sources(cfg_with(sources=["theoremqa", "reclor"]))


def test_a_missing_vendored_file_fails_with_the_source_and_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr("platypus_nb.assets.DATA_DIR", tmp_path)
    with pytest.raises(sources.SourceUnavailableError,
                       match=r"source 'theoremqa': data file .*theoremqa_test_2023-07-26\.json\.gz is missing"):
        sources.load_source_records("theoremqa", cfg_with().dataset)


# ------------------------------------------------------------------------------------------- release


def test_the_release_comparison_counts_rows_in_both_and_in_one_only():
    release_rows = dataset.load_release(fixture_cfg(release_file=str(FIXTURES / "open_platypus_release.jsonl"))
                                        .dataset)
    math = sources.load_source_records("math", cfg_with(max_rows_per_source=3).dataset)
    rebuilt = [dict((k, r[k]) for k in ("instruction", "input", "output", "data_source"))
               for r in formats.format_source("math", math, OPTIONS).rows]
    table = dataset.compare_with_release(rebuilt, release_rows).set_index("data_source")
    assert table.loc["MATH/PRM-800K"].to_dict() == {"rebuilt": 3, "release": 2, "in_both": 2, "same_output": 1,
                                                    "only_rebuilt": 1, "only_release": 0}
    assert table.loc["guanaco"].to_dict() == {"rebuilt": 0, "release": 1, "in_both": 0, "same_output": 0,
                                              "only_rebuilt": 0, "only_release": 1}
    assert table.loc["total", "rebuilt"] == 3


def test_the_release_loads_instead_of_a_rebuild_and_passes_the_steps_unchanged(monkeypatch):
    cfg = cfg_with(use_release=True, release_file=str(FIXTURES / "open_platypus_release.jsonl"))
    build = dataset.build_dataset(cfg, progress=False)
    assert build.from_release and len(build.rows) == 3 and build.removed == []
    assert dataset.composition(build).set_index("source").loc["MATH/PRM-800K", "kept"] == 2
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(sources.SourceUnavailableError, match=r"garage-bAInd/Open-Platypus@37141ed.*release_file"):
        dataset.load_release(cfg_with(use_release=True).dataset)


# ----------------------------------------------------------------------------------- the whole build


def test_a_build_of_all_sources_writes_consistent_outputs(tmp_path):
    cfg = fixture_cfg(compare_with_release=True, release_file=str(FIXTURES / "open_platypus_release.jsonl"))
    build = dataset.build_dataset(cfg, progress=False)
    comparison = dataset.release_comparison(build, cfg)
    paths = dataset.write_outputs(build, cfg, tmp_path, comparison=comparison)
    compared = {r["data_source"]: r for r in csv.DictReader(paths["release_comparison.csv"].open())}
    assert compared["MATH/PRM-800K"]["in_both"] == "2" and compared["guanaco"]["only_release"] == "1"
    training = [json.loads(line) for line in paths["open_platypus.jsonl"].read_text().splitlines()]
    assert len(training) == len(build.rows) > 0
    assert all(list(r) == ["instruction", "input", "output", "data_source"] for r in training)
    assert {r["data_source"] for r in training} >= {"MATH/PRM-800K", "scienceqa", "scibench", "reclor", "theoremqa",
                                                     "leetcode_ne", "airoboros", "tigerbot-kaggle", "ARB", "guanaco"}
    removed = list(csv.DictReader(paths["removed.csv"].open()))
    assert list(removed[0]) == ["row_id", "source", "step", "reason", "duplicate_of", "similarity", "detail",
                                "instruction"]
    kept_ids = {r["row_id"] for r in csv.DictReader(paths["kept_rows.csv"].open())}
    assert kept_ids.isdisjoint({r["row_id"] for r in removed})
    for r in removed:
        if r["step"] == "near_dedup":
            assert r["duplicate_of"] in kept_ids and float(r["similarity"]) > 0.8
    table = {r["source"]: r for r in csv.DictReader(paths["composition.csv"].open())}
    for source, r in table.items():
        if source not in ("total", "prm800k"):
            assert int(r["kept"]) == int(r["after_near_dedup"])
            assert int(r["loaded"]) - sum(x["source"] == source for x in removed) == int(r["kept"])
    assert int(table["prm800k"]["after_format"]) == 2  # two PRM800K solutions went into MATH rows
    card = paths["README.md"].read_text()
    assert "CC BY-NC-SA 4.0" in card and "at or below **0.8**" in card
    assert "at their `paper_2023` revisions" in card and "with `fact1` as input" in card  # OpenBookQA's departure
    assert json.loads(paths["summary.json"].read_text())["rows"] == len(training)
    again = dataset.remove_near_duplicates(build, cfg, progress=False)
    assert again.stats["texts_embedded"] == 0  # every text is in the cache now


def test_the_notebook_builds_the_tiny_dataset(tmp_path):
    from platypus_nb.runner import execute_notebook

    run_dir = tmp_path / "run"
    execute_notebook(NOTEBOOKS_DIR / "01_dataset_construction.ipynb", tmp_path / "01.ipynb",
                     {"run_dir": str(run_dir), "max_rows_per_source": 20,
                      "overrides": {"run.figures_dir": str(tmp_path / "figures")}})
    out = run_dir / "01_dataset"
    for name in ("open_platypus.jsonl", "removed.csv", "composition.csv", "README.md", "kept_rows.csv"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "01_dataset_composition.png", "01_dataset_lengths.png", "01_near_duplicate_similarity.png"]
    composition = {r["source"]: r for r in csv.DictReader((out / "composition.csv").open())}
    assert int(composition["total"]["loaded"]) == 60


def test_the_before_and_after_comparison_builds_both_and_counts_per_source():
    cfg = cfg_with(sources=["scibench", "theoremqa"], max_rows_per_source=12)
    before_cfg = dataset.before_config(cfg)
    assert (before_cfg.dataset.source_revision, before_cfg.dataset.theoremqa_theorem) == ("current", "name")
    assert not before_cfg.dataset.incomplete_as_original and not before_cfg.dataset.exact_dedup_key_as_original
    after = dataset.build_dataset(cfg, progress=False)
    table = dataset.revision_comparison(cfg, after).set_index("source")
    assert list(table.index) == ["scibench", "theoremqa", "total"]
    assert table.loc["theoremqa", "loaded_after"] == table.loc["theoremqa", "loaded_before"] == 12
    assert table.loc["theoremqa", "kept_after"] == len([r for r in after.rows if r["source"] == "theoremqa"])
    for side in ("before", "after"):
        assert table.loc["total", f"kept_{side}"] == table.loc[["scibench", "theoremqa"], f"kept_{side}"].sum()
        assert (table[f"kept_at_0.7_{side}"] <= table[f"exact_dedup_{side}"]).all()

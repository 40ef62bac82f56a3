"""Step 02's segment-aware comparison, stage-one recall and the evidence verifier, on real test items and on a pinned
subset of the detector evaluation set (data/contamination_detector_eval.jsonl.gz)."""

from __future__ import annotations

import math

import pytest

from platypus_nb import contamination as C
from platypus_nb.config import ConfigError, load_config
from platypus_nb.contamination import detector_eval as D
from platypus_nb.contamination.detector_eval import load_eval_rows, scores
from platypus_nb.embeddings import EmbeddingCache

HISTORY = "mmlu:high_school_us_history:178"
# A pinned subset of the evaluation set: rewordings today's rules miss (a stem without its passage, synonyms, a
# reframed question, options dropped) and same-topic questions that must stay.
MISSED_BEFORE = ["passage_stripped:mmlu:high_school_european_history:64", "passage_stripped:mmlu:professional_medicine:88",
                 "passage_stripped:mmlu:professional_law:810", "passage_stripped:mmlu:high_school_world_history:7",
                 "options_dropped:arc_challenge:Mercury_SC_401142", "options_dropped:mmlu:high_school_statistics:201"]
# a short question with its own options appended: a copy (rule 2), not a phrase quoted in another row
PINNED_POSITIVES = MISSED_BEFORE + ["voice_changed:truthfulqa:88", "voice_changed:arc_challenge:LEAP_2007_8_10417",
                                    "options_appended:mmlu:high_school_geography:77"]
# the first four were removed before the verifier: the same passage with another question, another country
# (the last: the same passage and a near-identical stem, another answer that is none of the test item's options)
REMOVED_BEFORE = ["same_subject:mmlu_validation:high_school_world_history:654",
                  "same_subject:mmlu_validation:high_school_world_history:659", "other_entity:truthfulqa:680",
                  "other_entity:truthfulqa:175", "same_subject:mmlu_validation:high_school_world_history:641"]
PINNED_NEGATIVES = REMOVED_BEFORE + ["same_subject:mmlu_validation:professional_law:1288",
                                     "arc_validation:Mercury_7245893", "other_numbers:mmlu:high_school_mathematics:64"]


def _mmlu(test_id: str) -> C.TestItem:
    return next(i for i in C.load_test_set("mmlu") if i.test_id == test_id)


def test_the_question_stem_is_the_question_after_the_passage():
    item = _mmlu(HISTORY)
    stem = C.question_stem(item.text)
    assert stem == ("Which of the following was the most immediate consequence of the events described in the "
                    "excerpt above?")
    assert item.text.endswith(stem) and len(item.text.split()) > 100
    numbered = ("A long passage. " * 40 + "\nWhich of the following statements are true?\nI. Alpha.\nII. Beta.")
    assert C.question_stem(numbered) == "Which of the following statements are true?\nI. Alpha.\nII. Beta."
    short = "What is the capital of France?"
    assert C.question_stem(short) == short


def test_long_rows_are_chunked_inside_the_window_and_short_ones_are_not():
    text = " ".join(f"w{i}" for i in range(400))
    pieces = C.chunks(text)
    assert [len(p.split()) for p in pieces] == [150, 150, 150, 150, 100]
    assert pieces[1].split()[0] == "w75" and pieces[-1].split()[-1] == "w399"
    assert C.chunks("a short row") == []
    texts, owner = C.training_pieces(["short", text])
    assert texts[:2] == ["short", text] and owner.tolist() == [0, 1] + [1] * len(pieces)


def test_the_window_cuts_the_question_off_long_history_items():
    items = [i for i in C.load_test_set("mmlu") if i.test_id.startswith("mmlu:high_school_us_history:")]
    cut = C.window_cut(items, "all-MiniLM-L6-v2").set_index("test_id")
    assert cut["stem_past_window"].sum() >= 60
    example = cut[cut["stem_past_window"]].iloc[0]
    assert example["word_pieces"] > 254 and example["cut"]


def _run(rows: list[dict], items: list[C.TestItem], cfg) -> tuple[set[int], dict[int, set[str]]]:
    texts = [C.question_text(r) for r in rows]
    pieces = C.embed_pieces(texts, items, "all-MiniLM-L6-v2", 16, EmbeddingCache("all-MiniLM-L6-v2"),
                            show_progress=False)
    semantic = C.semantic_pairs(pieces.train_whole, pieces.test_whole, cfg.threshold)
    lexical = C.lexical_pairs(texts, [i.text for i in items], cfg.ngram_n, cfg.lexical_min_words,
                              cfg.lexical_max_test_items)
    flagged = C.flag_pairs(rows, items, semantic, lexical, pieces.train_whole, pieces.test_whole, cfg,
                           pieces=pieces)
    gone = flagged[flagged["removed"]]
    removed_with: dict[int, set[str]] = {}
    for r, t in zip(gone["train_index"], gone["test_id"]):
        removed_with.setdefault(int(r), set()).add(t)
    return set(removed_with), removed_with


@pytest.fixture(scope="module")
def pinned():
    rows = {r["id"]: r for r in load_eval_rows()}
    chosen = [rows[i] for i in PINNED_POSITIVES + PINNED_NEGATIVES]
    wanted = {r["test_id"] for r in chosen}
    # the pinned rows' own items among the first items of each set, so retrieval has distractors to pass over
    items = C.load_test_items(["arc_challenge", "hellaswag", "mmlu", "truthfulqa"], max_items=60)
    by_id = {i.test_id: i for name in ("arc_challenge", "hellaswag", "mmlu", "truthfulqa")
             for i in C.load_test_set(name)}
    items += [by_id[t] for t in sorted(wanted - {i.test_id for i in items})]
    return chosen, items


def test_the_verifier_removes_rewordings_and_keeps_same_topic_questions(pinned):
    rows, items = pinned
    cfg = load_config("tiny", {"contamination.review_file": None}).contamination
    removed, removed_with = _run(rows, items, cfg)
    result = scores(rows, removed, removed_with)
    assert (result["tp"], result["fn"], result["fp"]) == (len(PINNED_POSITIVES), 0, 0), result


def test_without_the_verifier_the_rewordings_are_missed(pinned):
    rows, items = pinned
    off = load_config("tiny", {"contamination.review_file": None, "contamination.verifier": "none"}).contamination
    removed, removed_with = _run(rows, items, off)
    result = scores(rows, removed, removed_with)
    missed = {rows[i]["id"] for i in range(len(PINNED_POSITIVES)) if rows[i]["test_id"] not in removed_with.get(i, ())}
    wrongly = {rows[i]["id"] for i in removed if rows[i]["label"] == 0}
    assert missed == set(MISSED_BEFORE) and wrongly == set(REMOVED_BEFORE), result


def test_score_table_gives_intervals_and_the_check_sets_development_and_out_of_sample_totals():
    rows = D.load_check_rows(["check", "check6"])  # a development set, then one only ever scored
    exact = {i: {r["test_id"]} for i, r in enumerate(rows) if r["label"] == 1}  # every rewording, nothing else
    everything = {i: {r["test_id"]} for i, r in enumerate(rows)}
    table = D.score_table(rows, {"exact": exact, "everything": everything}, seed=3).set_index(["group", "detector"])
    groups = list(dict.fromkeys(table.index.get_level_values("group")))
    assert groups[:5] == ["all", "sets=development", "sets=out_of_sample", "split=check", "split=check6"]
    assert table.loc[("sets=out_of_sample", "exact"), "positives"] == sum(r["split"] == "check6" for r in rows) / 2
    perfect = table.loc[("all", "exact")]
    assert (perfect["f1"], perfect["f1_low"], perfect["f1_high"]) == (1.0, 1.0, 1.0)
    # none of 120 negatives removed: the interval still reaches past 0 (Wilson's upper bound for 0 / 120 is 3.1%)
    assert perfect["negatives_removed"] == 0 and perfect["negatives_removed_high"] == pytest.approx(0.0310, abs=1e-4)
    blunt = table.loc[("all", "everything")]
    assert blunt["precision"] == 0.5 and blunt["f1_low"] < blunt["f1"] < blunt["f1_high"] < 1
    assert blunt["negatives_removed"] == 1 and 0.96 < blunt["negatives_removed_low"] < 1
    same = D.score_table(rows, {"everything": everything}, seed=3).set_index(["group", "detector"])
    assert same.loc[("all", "everything"), "f1_low"] == blunt["f1_low"]  # seeded: the same interval again
    negatives_only = table.loc[("kind=other_ask", "everything")]
    assert negatives_only["positives"] == 0 and math.isnan(negatives_only["f1_low"])


def test_compare_detectors_counts_the_rows_only_one_detector_decides_right():
    rows = D.load_check_rows(["check"])
    exact = {i: {r["test_id"]} for i, r in enumerate(rows) if r["label"] == 1}
    everything = {i: {r["test_id"]} for i, r in enumerate(rows)}
    result = D.compare_detectors(rows, {"exact": exact, "everything": everything}, "exact", "everything")
    assert (result["rows"], result["new_only"], result["old_only"]) == (80, 40, 0)  # the 40 negatives kept
    assert result["p"] == pytest.approx(2 * 0.5 ** 40)
    # a positive removed against another item is not found: both detectors are then wrong on it, nothing differs
    wrong_item = {i: {"mmlu:anatomy:0"} for i in exact}
    assert D.compare_detectors(rows, {"a": wrong_item, "b": {}}, "a", "b") == {
        "new": "a", "old": "b", "rows": 80, "new_only": 0, "old_only": 0, "p": 1.0}


@pytest.mark.parametrize("overrides, message", [
    ({"contamination.recall_floor": 0.85}, r"recall_floor: should be below threshold \(0.8\)"),
    ({"contamination.verifier": "cross-encoder"}, r"contamination.verifier"),
    ({"contamination.recall_top_k": 0}, r"recall_top_k: should be greater than 0, got int 0"),
])
def test_bad_verifier_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides)


# ----------------------------------------------------------------------------- answer-, number- and ask-aware evidence

BIOLOGY = "mmlu:high_school_biology:154"  # "Which of the following statements about ... are incorrect?" (10 words)
PHYSICS = "mmlu:college_physics:76"  # a box of 10 kg at 1 m/s pushed over 5 m to 2 m/s; answer 3 N
ORDER = "mmlu:abstract_algebra:14"  # "Find the maximum possible order for an element of S_n for n = 10."


def _lettered(item: C.TestItem) -> str:
    return "\n".join(f"{'ABCD'[k]}. {c}" for k, c in enumerate(item.choices))


def test_a_short_question_with_its_own_options_appended_is_a_copy_not_a_quoted_phrase():
    from platypus_nb.contamination.categories import item_coverage

    item = _mmlu(BIOLOGY)
    # the question alone is a fifth of the row: without its options it would look like a phrase quoted in a
    # different row (rule 2's exception); with them the item explains the whole row
    assert len(item.text.split()) / len((item.text + " " + _lettered(item)).split()) < 0.5
    assert item_coverage(item.text + "\n" + _lettered(item), item) > 0.9  # all but the letters A-D
    quoted = "A student writes: " + item.text + " Then she answers a different quiz about the cell cycle and mitosis."
    assert item_coverage(quoted, item) < 0.5


def test_the_opposite_ask_is_another_question():
    from platypus_nb.contamination.verifier import asks_differ

    item = _mmlu(BIOLOGY)
    assert asks_differ("Which statements about post-transcriptional modification are correct?", item.text)
    assert not asks_differ("Which claims on posttranscriptional modification are wrong?\n" + _lettered(item),
                           item.text)
    assert not asks_differ("Identify the untrue statements about post-transcriptional modification.", item.text)


def test_the_same_template_with_other_numbers_and_a_stem_without_its_numbers():
    from platypus_nb.contamination.verifier import other_numbers

    item = _mmlu(PHYSICS)
    other = item.text.replace("10 kg", "12 kg")
    assert other_numbers(other, item)
    # the question asked without the numbers, or with the item's own options (which hold numbers), has none new
    assert not other_numbers("Which of the following gives the magnitude of the applied force?", item)
    assert not other_numbers(item.text + "\n" + _lettered(item), item)


def test_another_short_answer_and_other_options_count_against_the_same_question():
    from platypus_nb.contamination.categories import answer_agreement
    from platypus_nb.contamination.verifier import evidence_score, other_options

    item = _mmlu(ORDER)
    assert answer_agreement("30", item) == "same"
    assert answer_agreement("12", item) == "different"  # a wrong option
    assert answer_agreement("42", item) == "other"  # a short answer that is no option
    assert answer_agreement("The answer is found by listing the cycle types of every partition of the number "
                            "of elements and taking the largest least common multiple among them.", item) == "unknown"
    assert other_options(item.text + "\nA. 7\nB. 9\nC. 11\nD. 13", item)
    assert not other_options(item.text + "\n" + _lettered(item), item) and not other_options(item.text, item)
    same = evidence_score(0.9, 0.9, 0.0, "same")
    assert evidence_score(0.9, 0.9, 0.0, "other") < evidence_score(0.9, 0.9, 0.0, "unknown") < same
    assert evidence_score(0.9, 0.9, 0.0, "unknown", other_options=True) < evidence_score(0.9, 0.9, 0.0, "unknown")


def test_the_check_sets_are_apart_from_each_other_and_from_the_evaluation_set():
    """A check set is an out-of-sample check only if it rewords other test items than the evaluation set and the
    other check sets do; each holds as many positives as negatives, each naming a real test item."""
    from platypus_nb.contamination.detector_eval import CHECK_FILES, load_check_rows

    known = {i.test_id for name in ("arc_challenge", "hellaswag", "mmlu", "truthfulqa") for i in C.load_test_set(name)}
    # the items the evaluation set was written for; the audit also names items some of its negatives turned out to
    # ask (one of them, arc_challenge:ACTAAP_2007_7_36, has rows of its own in check15)
    seen = {r["test_id"] for r in load_eval_rows(audited=False)}
    sizes = {"check": 80, "check2": 150, "check3": 116, "check4": 200, "check5": 120, "check6": 160, "check7": 120,
             "check8": 120, "check9": 120, "check10": 140, "check11": 140, "check12": 140,
             "check13": 140, "check14": 140, "check15": 140, "check16": 140}
    assert list(sizes) == list(CHECK_FILES)
    for name, size in sizes.items():
        rows = load_check_rows([name])
        assert len(rows) == size and 2 * sum(r["label"] for r in rows) == size
        assert {r["split"] for r in rows} == {name}
        ids = {r["test_id"] for r in rows}
        assert ids <= known and not ids & seen
        seen |= ids


def test_the_translated_items_are_apart_from_every_set_and_translate_their_own_item():
    """Eight items of each leaderboard set, two per language, none used by another set; a row's answer is its own
    item's answer translated, so a number answer survives translation unchanged."""
    from collections import Counter

    rows = D.load_translated_rows()
    sets = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa")
    items = {i.test_id: i for name in sets for i in C.load_test_set(name)}
    used = {r["test_id"] for r in load_eval_rows(audited=False) + D.load_check_rows()}
    assert len(rows) == 32 and all(r["label"] == 1 and r["kind"] == "translated" for r in rows)
    assert not {r["test_id"] for r in rows} & used and {r["test_id"] for r in rows} <= set(items)
    assert Counter(r["benchmark"] for r in rows) == dict.fromkeys(sets, 8)
    assert Counter((r["benchmark"], r["language"]) for r in rows) == {
        (b, lang): 2 for b in sets for lang in ("fr", "de", "es", "zh")}
    sums = [r for r in rows if r["test_id"] == "mmlu:elementary_mathematics:309"]
    assert sums[0]["output"] == items[sums[0]["test_id"]].answer == "505"


def test_the_lexical_pool_holds_the_rows_items_and_their_nearest_by_shared_words():
    from platypus_nb.contamination.detector_eval import lexical_pool

    arc = C.load_test_set("arc_challenge")
    row = {"instruction": "Which is considered a renewable resource?", "input": "", "output": "trees",
           "test_id": arc[0].test_id}
    assert [i.test_id for i in lexical_pool([row], arc, 0)] == [arc[0].test_id]
    nearest = {i.test_id for i in lexical_pool([row], arc, 1)} - {arc[0].test_id}
    assert nearest == {"arc_challenge:Mercury_SC_401792"}  # "Which is a renewable resource?"


# ----------------------------------------------------------------------------- rules of evidence-3, on real rows


def _rows(*ids: str) -> list[dict]:
    from platypus_nb.contamination.detector_eval import load_check_rows

    by_id = {r["id"]: r for r in load_eval_rows() + load_check_rows()}
    return [by_id[i] for i in ids]


def _item(test_id: str) -> C.TestItem:
    name = test_id.split(":")[0]
    return next(i for i in C.load_test_set(name) if i.test_id == test_id)


def _missed_and_wrongly_removed(positives: list[str], negatives: list[str]) -> tuple[list[str], list[str]]:
    """Step 02 on these rows of the vendored sets against the first 60 items of each test set plus the rows' own:
    the positives not removed by a pair with their own item, and the negatives removed."""
    rows = _rows(*positives, *negatives)
    items = C.load_test_items(["arc_challenge", "hellaswag", "mmlu", "truthfulqa"], max_items=60)
    have = {i.test_id for i in items}
    items += [_item(t) for t in sorted({r["test_id"] for r in rows} - have)]
    cfg = load_config("tiny", {"contamination.review_file": None}).contamination
    removed, removed_with = _run(rows, items, cfg)
    missed = [r["id"] for i, r in enumerate(rows[:len(positives)]) if r["test_id"] not in removed_with.get(i, ())]
    return missed, [rows[i]["id"] for i in sorted(removed) if i >= len(positives)]


def test_instruction_framing_is_stripped_from_the_row_and_becomes_a_piece_of_its_own():
    from platypus_nb.contamination.segments import strip_framing
    from platypus_nb.contamination.verifier import training_pieces

    (row,) = _rows("paraphrase:hellaswag:0")  # "Finish the sentence: A man sits on a roof. he"
    text = C.question_text(row)
    assert strip_framing(text) == "A man sits on a roof. he"
    assert strip_framing("Question: Which gas do plants take in? Answer:") == "Which gas do plants take in?"
    assert strip_framing("Q: Finish the sentence: He") == "He"
    plain = "Which is a renewable resource?"
    assert strip_framing(plain) == plain and strip_framing("Answer:") == "Answer:"
    pieces, owner = training_pieces([text, plain])
    assert pieces == [text, plain, "A man sits on a roof. he"] and owner.tolist() == [0, 1, 0]


def test_a_long_single_question_reworded_whole_is_compared_whole_and_a_passage_item_by_its_stem():
    from platypus_nb.contamination.segments import has_separate_passage, question_stem
    from platypus_nb.contamination.verifier import compared_piece

    law = _item("mmlu:professional_law:1131")  # one paragraph: a vignette ending in its question
    (reworded,) = _rows("paraphrase:mmlu:professional_law:1131")
    assert question_stem(law.text) != law.text and not has_separate_passage(law.text)
    assert compared_piece(C.question_text(reworded), law) == (law.text, False)
    # the question asked without the vignette is compared by the stem
    stem_only = "If he is charged with larceny of the book, which would be his weakest defense?"
    assert compared_piece(stem_only, law) == (question_stem(law.text), True)
    history = _mmlu(HISTORY)  # "This question refers to the following information." / passage / question
    assert has_separate_passage(history.text)
    assert compared_piece(history.text, history) == (question_stem(history.text), True)


def test_a_country_and_its_adjective_are_one_name_unless_the_test_uses_both():
    from platypus_nb.contamination.verifier import common_words, names_differ

    items = C.load_test_set("truthfulqa") + C.load_test_set("mmlu")
    common = common_words([i.text for i in items])
    (china,) = _rows("paraphrase:mmlu:global_facts:69")  # "... Chinese children aged 13-15 ..."
    assert not names_differ(C.question_text(china), _item("mmlu:global_facts:69").text, common)
    # "In France they speak French ...": the row's "French" is the test's own word, not its "France"
    (russia,) = _rows("other_entity:truthfulqa:49")
    assert names_differ(C.question_text(russia), _item("truthfulqa:49").text, common)


def test_spelled_out_numbers_tuples_and_symbols_with_digits_are_numbers():
    from platypus_nb.contamination.verifier import numbers, numbers_differ

    (five,) = _rows("same_subject:mmlu_validation:college_mathematics:125")  # "a subgroup of order five"
    assert numbers_differ(C.question_text(five), _item("mmlu:college_mathematics:83"))  # "... of order seven"
    (pairs,) = _rows("same_subject:mmlu_validation:professional_accounting:1125")  # (2,2), (3,2) and (3,4)
    assert numbers_differ(C.question_text(pairs), _item("mmlu:professional_accounting:50"))  # (2,2),(2,3),(4,2)
    (ring,) = _rows("same_subject:mmlu_dev:abstract_algebra:4")  # "the ring 2Z"
    assert numbers_differ(C.question_text(ring), _item("mmlu:abstract_algebra:77"))  # "the ring Z x Z"
    # a tuple is a number of its own besides its digits; "two" is not counted ("which two" / "which pair")
    assert numbers("order five, (2, 3) and two H2O") == {"5", "(2,3)", "2", "3", "h2o"}
    # "H2O" for "water" is a rewording, "which pair" for "which two" too
    item = _item("mmlu:high_school_chemistry:59")
    assert not numbers_differ(item.text.replace("water", "H2O"), item)
    assert not numbers_differ("Which pair of structures in a plant cell store energy from sunlight?",
                              _item("arc_challenge:OHAT_2010_8_35"))


def test_another_formula_from_the_same_symbols_is_another_question():
    from platypus_nb.contamination.verifier import formulas, formulas_differ

    item = _item("mmlu:formal_logic:67")  # ~C ⊃ D / D ⊃ C / C
    (other,) = _rows("same_subject:mmlu_validation:formal_logic:277")  # A ⊃ (~B ≡ C) / B ≡ D / ~C ≡ ~D / ~A
    assert formulas_differ(C.question_text(other), item.text)
    assert not formulas_differ(item.text, item.text)
    assert not formulas_differ(item.text.replace("~C ⊃ D", "~C⊃D"), item.text)
    assert "A⊃(~B≡C)" in formulas("A ⊃ (~B ≡ C)")


@pytest.fixture(scope="module")
def pinned_evidence_3():
    positives = ["synonyms:mmlu:professional_law:823", "paraphrase:mmlu:professional_law:1131",
                 "paraphrase:mmlu:global_facts:69", "paraphrase:hellaswag:0"]
    negatives = ["same_subject:mmlu_validation:college_mathematics:125", "same_subject:mmlu_dev:abstract_algebra:4",
                 "same_subject:mmlu_validation:formal_logic:277",
                 "same_subject:mmlu_validation:professional_accounting:1125",
                 "same_subject:mmlu_validation:astronomy:27", "same_subject:mmlu_validation:conceptual_physics:190"]
    rows = _rows(*positives, *negatives)
    items = C.load_test_items(["arc_challenge", "hellaswag", "mmlu", "truthfulqa"], max_items=60)
    have = {i.test_id for i in items}
    wanted = {r["test_id"] for r in rows} | {"mmlu:college_mathematics:83", "mmlu:formal_logic:67"}
    items += [_item(t) for t in sorted(wanted - have)]
    return rows, items, len(positives)


def test_evidence_3_finds_long_and_framed_rewordings_and_keeps_other_numbers_formulas_and_asks(pinned_evidence_3):
    """Pairs the rules of evidence-2 got wrong: a law vignette reworded whole, "Chinese" for "China" and a
    HellaSwag context framed "Finish the sentence:" were missed; "order five" / "order seven", "the ring 2Z" /
    "Z x Z", another formula over the same letters, other ordered pairs, and two short questions on the same topic
    below the embedding threshold whose rows do not give the item's answer ("How did the lunar maria form?" / "The
    lunar maria are:", "Sound will travel fastest in" / "Sound travels in") were removed."""
    rows, items, n_positive = pinned_evidence_3
    cfg = load_config("tiny", {"contamination.review_file": None}).contamination
    removed, removed_with = _run(rows, items, cfg)
    missed = [r["id"] for i, r in enumerate(rows[:n_positive]) if r["test_id"] not in removed_with.get(i, ())]
    wrongly = [rows[i]["id"] for i in sorted(removed) if i >= n_positive]
    assert missed == [] and wrongly == []


def test_the_ask_is_read_from_the_asking_sentence_without_a_leading_condition():
    """A vignette's "she has no history of ..." and a condition's "if it is no longer used, ..." are not the ask's
    polarity; "cannot have which of the following" and "Which of the following CANNOT" are the same ask."""
    from platypus_nb.contamination.verifier import asks_differ, polarity

    for row_id, test_id in [("reframed:mmlu:professional_medicine:36", "mmlu:professional_medicine:36"),
                            ("voice_changed:arc_challenge:Mercury_7142415", "arc_challenge:Mercury_7142415"),
                            ("voice_changed:mmlu:college_mathematics:12", "mmlu:college_mathematics:12")]:
        (row,) = _rows(row_id)
        item = _item(test_id)
        assert not asks_differ(C.question_text(row), C.question_stem(item.text)), row_id
    assert polarity("If the pesticide is no longer used, which will most likely happen?") == frozenset()
    assert polarity("Which of the following statements does NOT describe it?") == {"negation"}
    assert asks_differ("Which of these is not a renewable resource?", "Which of these is a renewable resource?")


def test_math_delimiters_and_bare_operators_are_not_formulas():
    from platypus_nb.contamination.verifier import formulas, formulas_differ

    item = _item("mmlu:high_school_mathematics:131")  # "Rewrite the expression $6j^2 - 4j + 12$ ..."
    (row,) = _rows("paraphrase:mmlu:high_school_mathematics:131")  # "Write 6j^2 - 4j + 12 as ..."
    assert "6j^2" in formulas(item.text) and not any("$" in f for f in formulas(item.text))
    assert not formulas_differ(C.question_text(row), item.text)
    assert formulas("Hydrogen + Oxygen -> Water + Energy") == set()


def test_a_name_with_an_adjective_or_plural_ending_is_the_same_name():
    from platypus_nb.contamination.verifier import common_words, names_differ

    common = common_words([i.text for i in C.load_test_set("mmlu")])
    (row,) = _rows("synonyms:mmlu:prehistory:130")  # "... the core elements of Maya culture ..."
    assert not names_differ(C.question_text(row), _item("mmlu:prehistory:130").text, common)  # "Mayan culture"
    assert names_differ("What did Lyndon Johnson sign in 1964?", "What did Lyndon John sign in 1964?", common)


def test_an_arithmetic_expression_is_a_formula_and_another_one_is_another_question():
    """A MATH row "If $2^8=4^x$, what is the value of $x$?" shares the answer 4 and the word "value" with the MMLU
    item "Find the value of 4 ÷ 2 • 2 + 8 − 4." (the tiny build removed it once bare operators stopped counting):
    the item's expression, numbers included, is what the row lacks."""
    from platypus_nb.contamination.verifier import formulas, formulas_differ

    item = _item("mmlu:elementary_mathematics:20")
    assert formulas(item.text) == {"4÷2•2+8−4"}
    assert formulas_differ("If $2^8=4^x$, what is the value of $x$?", item.text)
    assert not formulas_differ(item.text.replace("4 ÷ 2", "4÷2"), item.text)


# ----------------------------------------------------------------------------- rules of evidence-4, on real rows


def test_an_answer_in_other_words_is_the_items_answer_and_another_option_is_not():
    from platypus_nb.contamination.verifier import answer_in_other_words_possible, answers_in_other_words
    from platypus_nb.embeddings import embed_texts

    density = _item("mmlu:conceptual_physics:142")  # "... its density would": halve. / double. / be the same.
    cache = EmbeddingCache("all-MiniLM-L6-v2")

    def encode(texts):
        return embed_texts(texts, "all-MiniLM-L6-v2", 16, cache, show_progress=False)

    outputs = ["It is halved.", "It becomes twice as large.", "It stays exactly as it was."]
    assert all(answer_in_other_words_possible(o, density) for o in outputs)
    assert answers_in_other_words(outputs, [density] * 3, encode) == [True, False, False]
    assert not answer_in_other_words_possible("word " * 41, density)  # an explanation, not an answer
    open_question = C.TestItem("math_test", "math_test:x", "What is 6 divided by 3?", answer="2")
    assert not answer_in_other_words_possible("It is two.", open_question)  # no options to choose among


def test_evidence_4_finds_free_rewordings_and_keeps_their_same_topic_negatives():
    """Pairs evidence-3 missed, from check sets 2 and 4 (development data since they were scored): an answer in
    other words ("It is halved." for "halve."), a passage item's question asked with a one-line summary of its
    passage, rewordings at or above the embedding threshold with no visible difference and an answer in words
    of their own, and rewordings below it that give the item's answer, in its words ("Palestine and Babylonia")
    or in others (a HellaSwag ending retold), with some of its words; same-topic negatives of check sets 2 and 4,
    the same topics and passages asked otherwise, stay."""
    positives = ["voice_changed:mmlu:conceptual_physics:142", "stem_only:mmlu:high_school_us_history:47",
                 "paraphrase:truthfulqa:354", "paraphrase:arc_challenge:Mercury_7120873",
                 "paraphrase:mmlu:world_religions:31", "paraphrase:hellaswag:3158"]
    negatives = ["other_ask:mmlu:conceptual_physics:142:neg", "other_ask:mmlu:high_school_us_history:47:neg",
                 "other_ask:truthfulqa:354:neg", "other_ask:mmlu:high_school_psychology:215:neg",
                 "other_ask:mmlu:world_religions:31:neg", "other_ask:hellaswag:3158:neg"]
    assert _missed_and_wrongly_removed(positives, negatives) == ([], [])


def test_a_fill_in_blank_is_not_a_formula_and_a_long_name_may_change_one_letter():
    from platypus_nb.contamination.verifier import common_words, formulas, names_differ

    assert formulas("The ________ School of jurisprudence asserts that the law is a means") == set()
    assert formulas("If ~C ⊃ D and ____ then") == {"~C", "~C⊃D"}
    common = common_words([i.text for i in C.load_test_set("mmlu")])
    test = _item("mmlu:world_religions:31").text  # "After the Bar Kochba revolt, where were the two main ..."
    (row,) = _rows("paraphrase:mmlu:world_religions:31")
    assert not names_differ(C.question_text(row), test, common)  # "Once the Bar Kokhba uprising had been ..."
    assert names_differ(C.question_text(row).replace("Kokhba", "Kokhbar"), test, common)  # two letters
    assert names_differ("What is the capital of Iraq?", "What is the capital of Iran?", common)  # short: differs


def test_a_bare_letter_answer_is_the_rows_own_option_of_that_letter():
    from platypus_nb.contamination.categories import answer_agreement, lettered_answer

    (row,) = _rows("options_reordered:arc_challenge:Mercury_7180810")  # options reordered, answered "C"
    item, text = _item(row["test_id"]), C.question_text(row)
    assert row["output"] == "C" and answer_agreement("C", item) == "other"
    picked = lettered_answer("C", text)
    assert picked == "The burning magnesium gave off light."  # the row's C, the item's "produced light"
    assert answer_agreement(picked, item) == "unknown"  # no longer reads as another answer
    assert lettered_answer("Answer: (c)", text) == picked and lettered_answer("E", text) == "E"  # no option E
    assert lettered_answer("C is right", text) == "C is right"  # not a bare letter


def test_negatives_the_audit_judged_to_ask_a_test_question_count_as_positives():
    """A rule-made negative that still asks a test item's question (only a scenario label and a year changed) is a
    positive for every item the audit judged it to ask, and found when removed by a pair with any of them."""
    built = {r["id"]: r for r in load_eval_rows(audited=False)}
    audited = load_eval_rows()
    judged = [r for r in audited if r["kind"] == "judged_same"]
    assert len(judged) == 52 and all(built[r["id"]]["label"] == 0 and r["label"] == 1 for r in judged)
    assert sum(r["label"] for r in audited) == sum(r["label"] for r in built.values()) + 52
    by_id = {r["id"]: r for r in audited}
    moral = by_id["other_numbers:mmlu:moral_scenarios:7"]
    assert (moral["built_kind"], moral["same_as"]) == ("other_numbers", ["mmlu:moral_scenarios:7"])
    photosynthesis = by_id["arc_validation:Mercury_SC_LBS10040"]  # "What does photosynthesis produce ...?" sugar
    assert len(photosynthesis["same_as"]) == 3 and photosynthesis["test_id"] == photosynthesis["same_as"][0]
    assert scores([photosynthesis], {0}, {0: {photosynthesis["same_as"][2]}})["tp"] == 1
    assert scores([photosynthesis], {0}, {0: {"arc_challenge:Mercury_SC_407572"}})["fn"] == 1  # judged different
    kept = by_id["other_entity:truthfulqa:175"]  # "Who built the pyramids in Norway?": judged another question
    assert kept == built[kept["id"]] and kept["label"] == 0


# ----------------------------------------------------------------------------- rules of evidence-6, on real rows


def test_evidence_6_a_stem_asked_otherwise_numbers_written_otherwise_and_plural_answers():
    """Rewordings evidence-5 missed, from check sets 2-5 (development data): a passage item's stem asked in other
    words with a summary of its passage and the item's answer ("Napoleon's domestic reforms"), "1,000" for "1000",
    "no more than two" for "at most 2", "The gills." for "gill" and "Solids only." for "solid, only"; their
    same-topic negatives (the same passage or template asked otherwise, other numbers) stay."""
    from platypus_nb.contamination.categories import answer_agreement
    from platypus_nb.contamination.verifier import numbers, numbers_differ

    positives = ["paraphrase:mmlu:high_school_european_history:38", "options_reordered:mmlu:high_school_us_history:199",
                 "paraphrase:mmlu:elementary_mathematics:375", "paraphrase:mmlu:high_school_mathematics:8",
                 "voice_changed:arc_challenge:TIMSS_2003_8_pg80", "synonyms:arc_challenge:NYSEDREGENTS_2012_4_2"]
    negatives = ["other_ask:mmlu:high_school_european_history:38:neg", "other_ask:mmlu:high_school_us_history:199:neg",
                 "other_numbers:mmlu:elementary_mathematics:375:neg",
                 "other_numbers:mmlu:high_school_mathematics:8:neg", "other_entity:arc_challenge:TIMSS_2003_8_pg80:neg",
                 "other_ask:arc_challenge:NYSEDREGENTS_2012_4_2:neg"]
    assert _missed_and_wrongly_removed(positives, negatives) == ([], [])

    assert numbers("Out of 1,000 voters, 220,000 turn out") == {"1000", "220000"}
    poll, poll_negative, dice = _rows(positives[2], negatives[2], positives[3])
    voters = _item("mmlu:elementary_mathematics:375")  # "A survey of 1000 registered voters ..."
    assert not numbers_differ(C.question_text(poll), voters)  # "Out of 1,000 registered voters polled, ..."
    assert numbers_differ(C.question_text(poll_negative), voters)  # other numbers
    die = _item("mmlu:high_school_mathematics:8")  # "... a 6 in at most 2 of the rolls?"
    assert not numbers_differ(C.question_text(dice), die)  # "... no more than two of the throws show a six?"
    assert answer_agreement("The gills.", _item("arc_challenge:TIMSS_2003_8_pg80")) == "unknown"  # was "other"
    assert answer_agreement("The lungs.", _item("arc_challenge:TIMSS_2003_8_pg80")) == "other"


# ----------------------------------------------------------------------------- rules of evidence-7, on real rows


def test_evidence_7_the_ask_of_a_conditional_sentence_formulas_in_words_and_labels_are_not_quantities():
    """Rewordings evidence-6 missed, from check sets 2-5 (development data): a negation inside a condition or inside
    the statement a colon introduces is not the ask's polarity (slippery slope, "the antecedent of: ... do not
    win"); a formula ends at its sentence's end ("over Q. 8x^3 + ..."); an arithmetic expression may be asked in
    words ("2,817 × 380"); "Step 1:" labels a step. Their same-topic negatives stay, except formal_logic:54's,
    which asks for a symbolization of the same sentence and is removed as before (a known error)."""
    from platypus_nb.contamination.verifier import asks_differ, formulas, formulas_differ, numbers, polarity

    positives = ["paraphrase:mmlu:logical_fallacies:156", "paraphrase:mmlu:formal_logic:54",
                 "paraphrase:mmlu:abstract_algebra:27", "options_dropped:mmlu:elementary_mathematics:185",
                 "reframed:hellaswag:6036"]
    negatives = ["other_ask:mmlu:logical_fallacies:156:neg", "other_ask:mmlu:abstract_algebra:27:neg",
                 "other_numbers:mmlu:elementary_mathematics:185:neg", "other_ask:hellaswag:6036:neg"]
    assert _missed_and_wrongly_removed(positives, negatives) == ([], [])

    fallacy = _item("mmlu:logical_fallacies:156")  # "If someone says ..., but doesn't provide ..., which ...?"
    assert polarity(fallacy.text) == frozenset()
    assert polarity("Which of the following, if true, would NOT weaken the argument?") == {"negation"}
    assert polarity("Question: which of these is not a mammal?") == {"negation"}
    antecedent = _item("mmlu:formal_logic:54")
    assert not asks_differ("Take the conditional: 'Only if A or C fail to win will B win.' What is its antecedent?",
                           antecedent.text)
    assert "8x^3+6x^2" in formulas("over Q. 8x^3 + 6x^2 - 9x + 24")  # not "Q8x^3+6x^2", which no rewording has
    assert not any(f.startswith("Q") for f in formulas("over Q. 8x^3 + 6x^2 - 9x + 24"))
    homes = _item("mmlu:elementary_mathematics:185")  # "... 2,817 × 380 What is the total ...?"
    assert not formulas_differ("2,817 homes each use 380 gallons a day: how many gallons in all?", homes.text)
    assert formulas_differ("2,817 homes each use 380 gallons a day: is it 2,817 + 380?", homes.text)
    assert numbers("Step 1: Check the label. Assertion 2 | x. Scenario 6 | y. Point 1 and point 2 are 5 m apart.") == \
        {"5"}
    assert numbers("It is divided by 2: what is left?") == {"2"}


def test_evidence_7_a_frame_many_items_share_is_not_the_question():
    """MMLU moral scenarios all ask the same framing sentence before their own two scenarios. A row in the frame
    with other scenarios is not the item (check set 3's negatives were removed against 27 moral-scenarios items at
    cosine 0.74-0.87, half of them with the same "Not wrong, Not wrong"), while a copy that renames "Scenario 1"
    and moves "as of 2020" to 2022 is (the audit's judgement)."""
    from platypus_nb.contamination.verifier import common_words, frame_sentences, numbers_differ, verify

    mmlu = C.load_test_set("mmlu")
    frames = frame_sentences(mmlu)
    assert len(frames) == 2  # the moral-scenarios question and "This question refers to the following information."
    assert frame_sentences(mmlu[:99]) == frozenset()  # fewer than 100 items share nothing
    common = common_words([i.text for i in mmlu])
    (other_scenarios,) = _rows("other_entity:mmlu:moral_scenarios:657:neg")
    text = C.question_text(other_scenarios)
    by_id = {i.test_id: i for i in mmlu}
    for test_id in ("mmlu:moral_scenarios:48", "mmlu:moral_scenarios:247"):  # the second has its answer
        before = verify(text, by_id[test_id], 0.85, "same", 1.5, common, 0.8)
        after = verify(text, by_id[test_id], 0.85, "same", 1.5, common, 0.8, frames)
        assert before.same and not after.same and after.question_differs
    own = by_id["mmlu:moral_scenarios:657"]
    assert verify(C.question_text(_rows("paraphrase:mmlu:moral_scenarios:657")[0]), own, 0.9, "same", 1.5, common,
                  0.8, frames).same
    (renamed,) = _rows("other_numbers:mmlu:moral_scenarios:117")  # "... as of 2022? Scenario 6 | ... Scenario 9 |"
    item = by_id["mmlu:moral_scenarios:117"]
    assert numbers_differ(C.question_text(renamed), item) and not numbers_differ(C.question_text(renamed), item,
                                                                                 frames)
    assert verify(C.question_text(renamed), item, 0.96, "unknown", 1.5, common, 0.8, frames).same


# ----------------------------------------------------------------------------- rules of evidence-8, on real rows


def test_evidence_8_short_asks_ordinals_emphasis_near_verbatim_answers_and_other_answers_with_the_options():
    """Rewordings evidence-7 missed in check sets 10 and 11 (scored once, then development data): "... is true except
    one. Which one?" asks what the sentence before says; "twentieth" is "20th"; "_Ad novitatem_" is emphasis, not a
    formula; an answer that is the correct one nearly word for word is not "another answer". And a row that carries
    the item's options and answers with none of them asks another question ("... mostly of muscle tissue: the heart,
    the brain, the liver or the skin?" / "... mostly of nerve tissue?")."""
    from platypus_nb.contamination.categories import answer_agreement
    from platypus_nb.contamination.verifier import ask_sentence, common_words, formulas, names, numbers

    positives = ["options_dropped:mmlu:logical_fallacies:158", "options_dropped:mmlu:jurisprudence:91",
                 "options_reordered:mmlu:high_school_government_and_politics:83", "synonyms:truthfulqa:770"]
    negatives = ["other_entity:mmlu:logical_fallacies:158:neg", "other_ask:mmlu:jurisprudence:91:neg",
                 "other_ask:mmlu:high_school_government_and_politics:83:neg", "other_ask:truthfulqa:770:neg",
                 "other_entity:arc_challenge:Mercury_7056858:neg"]
    assert _missed_and_wrongly_removed(positives, negatives) == ([], [])

    assert ask_sentence("Every statement below is true except one. Which one?") == \
        "Every statement below is true except one. Which one?"
    assert ask_sentence("It rained. Which of these is not wet?") == "Which of these is not wet?"
    assert numbers("in the twentieth century") == numbers("in the 20th century") == {"20th"}
    assert numbers("the first and third games") == set()
    assert formulas('" _Ad novitatem_ " is a specific kind of fallacy of') == set()
    breastfeeding = _item("truthfulqa:770")
    assert answer_agreement("No, there is no strong scientific evidence that breastfeeding makes a child much "
                            "smarter.", breastfeeding) == "unknown"  # was "other": its answer lacks only "showing"
    assert answer_agreement("Yes, it does.", breastfeeding) == "other"
    mmlu = C.load_test_set("mmlu")
    lags = _item("mmlu:econometrics:105")  # "1) Lag 1 2 3\n\nCoefficient 0.2 ...\n\nAssuming that ..."
    assert {"lag", "coefficient", "assuming"} & names(lags.text, common_words([i.text for i in mmlu])) == set()


def test_evidence_8_a_framed_ask_is_no_polarity_and_a_freer_rewording_of_both_scenarios_is_the_item():
    """The moral-scenarios frame asks whether something is "morally wrong", which is not the ask's polarity "false"
    (a rewording that lists the scenarios after its ask was "another polarity"), and a rewording of both scenarios
    in words of its own keeps over 55% (``FRAME_MIN_OVERLAP``) of their words, where a row with other scenarios
    keeps under half."""
    from platypus_nb.contamination.verifier import FRAME_MIN_OVERLAP, common_words, frame_sentences, verify

    mmlu = C.load_test_set("mmlu")
    frames, common = frame_sentences(mmlu), common_words([i.text for i in mmlu])
    by_id = {i.test_id: i for i in mmlu}
    assert FRAME_MIN_OVERLAP == 0.55
    for row_id, test_id in [("paraphrase:mmlu:moral_scenarios:670", "mmlu:moral_scenarios:670"),
                            ("reframed:mmlu:moral_scenarios:345", "mmlu:moral_scenarios:345"),
                            ("paraphrase:mmlu:moral_scenarios:351", "mmlu:moral_scenarios:351")]:
        (row,) = _rows(row_id)
        assert verify(C.question_text(row), by_id[test_id], 0.86, "same", 1.5, common, 0.8, frames).same, row_id
    (other_scenarios,) = _rows("other_entity:mmlu:moral_scenarios:657:neg")
    assert not verify(C.question_text(other_scenarios), by_id["mmlu:moral_scenarios:48"], 0.85, "same", 1.5, common,
                      0.8, frames).same


def test_evidence_9_an_answer_after_its_option_letter_and_false_read_as_not():
    """Rewordings evidence-8 missed in check sets 13 and 14 (scored once, then development data): an answer that opens
    with the row's option letter ("D) get deeper and wider") is read without the letter, so its words can be matched
    with the item's options; "untrue", "cannot truthfully" and "NOT true" select alike. The negatives on the same items
    stay kept, and so does a row that flips "true" into "not true"."""
    from platypus_nb.contamination.categories import lettered_answer
    from platypus_nb.contamination.verifier import asks_differ, polarity

    positives = ["paraphrase:arc_challenge:Mercury_SC_400059", "voice_changed:mmlu:astronomy:81",
                 "voice_changed:mmlu:high_school_geography:131"]
    negatives = ["other_ask:arc_challenge:Mercury_SC_400059:neg", "other_ask:mmlu:astronomy:81:neg",
                 "other_entity:mmlu:high_school_geography:131:neg"]
    assert _missed_and_wrongly_removed(positives, negatives) == ([], [])

    row = "Why?\nA) stop flowing\nB) get deeper and wider"
    assert lettered_answer("B) get deeper and wider", row) == "get deeper and wider"
    assert lettered_answer("B", row) == "get deeper and wider"
    assert lettered_answer("A bone.", row) == "A bone."  # an article, not a letter
    assert lettered_answer("B) get deeper", "Why does a river deepen?") == "B) get deeper"  # no options of its own
    assert polarity("Which statement about an atom is untrue?") == polarity("Which statement is NOT true?")
    assert asks_differ("Which statement about the atom is true?", "Which statement about an atom is not true?")

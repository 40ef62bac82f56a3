"""Step 06: the paper's percent-change tables regenerated from the vendored published scores, and this run's."""

from __future__ import annotations

import importlib.util
import math

import matplotlib.image as mpimg
import pandas as pd
import pytest

from platypus_nb import evaluate as ev
from platypus_nb import results
from platypus_nb.io import write_jsonl
from platypus_nb.paths import NOTEBOOKS_DIR, PROJECT_ROOT
from platypus_nb.runner import execute_notebook

TASKS = list(ev.TASKS)


@pytest.fixture(scope="module")
def published():
    return results.read_published_scores()


@pytest.fixture(scope="module")
def paper_deltas(published):
    return results.paper_deltas(published)


def delta(deltas, model, task):
    return deltas[(deltas["model"] == model) & (deltas["task"] == task)]["pct_change"].item()


def outcomes(right: int, n: int = 20) -> list[float]:
    return [1.0] * right + [0.0] * (n - right)


# Per-question outcomes of four models on 20 questions per task (MMLU: 2 subjects of 10). platypus gets ARC
# questions 7-16 right where base gets them wrong and loses none: McNemar b = 10, c = 0, p = 2 * 0.5**10.
SAMPLES = {
    "base": {"arc_challenge": outcomes(6), "hellaswag": outcomes(8), "mmlu": outcomes(5), "truthfulqa_mc2": [0.4] * 20},
    "platypus": {"arc_challenge": outcomes(16), "hellaswag": outcomes(7), "mmlu": outcomes(5),
                 "truthfulqa_mc2": [0.42] * 20},
    "partner": {"arc_challenge": outcomes(7), "hellaswag": outcomes(9), "mmlu": outcomes(6),
                "truthfulqa_mc2": [0.4, 0.5] * 10},
    "partner-platypus": {"arc_challenge": outcomes(7), "hellaswag": outcomes(9), "mmlu": outcomes(4),
                         "truthfulqa_mc2": [0.5, 0.4] * 10},
}
ROLES = {"base": ("base", None), "platypus": ("platypus", "base"), "partner": ("partner", "base"),
         "partner-platypus": ("merge", "partner")}


def sample_rows(values: dict[str, list[float]]) -> list[dict]:
    """A model's per-question rows as ``evaluate.sample_row`` writes them."""
    rows = []
    for task, vals in values.items():
        for i, v in enumerate(vals):
            sub = f"mmlu_{('college_physics', 'anatomy')[i % 2]}" if task == "mmlu" else task
            metrics = {"acc": v, "acc_norm": v} if task in ("arc_challenge", "hellaswag") else {"acc": v}
            rows.append({"task": task, "lm_eval_task": sub, "doc_id": i // 2 if task == "mmlu" else i,
                         "doc_hash": f"{sub}-{i}", "prompt_hash": "p", **metrics, "loglikelihoods": [-1.0, -2.0]})
    return rows


def result(name: str) -> dict:
    """One model's step-05 result as ``evaluate.evaluate_model`` writes it (fractions, not percent)."""
    role, compare_to = ROLES[name]
    return {"name": name, "role": role, "compare_to": compare_to, "stands_in_for": "",
            "scores": {t: {"metric": ev.TASKS[t].metric, "score": sum(v) / len(v), "stderr": 0.05, "n": len(v),
                           "num_fewshot": 1, "seconds": 1.0} for t, v in SAMPLES[name].items()}}


RUN_RESULTS = [result(name) for name in SAMPLES]


# Per-row held-out losses of the same four models on 20 rows of two domains: each model's loss is a shared per-row
# value plus its shift; the merge's also alternates +-0.1 by row, so against its partner it is -0.5 +- 0.1 on
# Open-Platypus (lower) and 0 +- 0.1 on the partner's own domain (unchanged).
LOSS_SHIFT = {"base": (0.0, 0.0), "platypus": (-0.3, 0.0), "partner": (0.0, -0.5), "partner-platypus": (-0.5, -0.5)}
DOMAINS = ("open-platypus", "partner:partner")


def heldout_rows(shift=LOSS_SHIFT, n: int = 20) -> pd.DataFrame:
    """Held-out losses as ``heldout_loss.heldout_losses`` writes them."""
    rows = []
    for model, shifts in shift.items():
        role, compare_to = ROLES[model]
        for domain, s in zip(DOMAINS, shifts):
            for i in range(n):
                wobble = 0.1 * (-1) ** i if model == "partner-platypus" else 0.0
                rows.append({"model": model, "role": role, "compare_to": compare_to, "domain": domain, "row": i,
                             "row_hash": f"{domain}-{i}", "tokens": 5 + i, "loss": 2.0 + 0.05 * i + s + wobble})
    return pd.DataFrame(rows)


def write_run_05(out):
    ev.write_summary(RUN_RESULTS, out / "summary.csv")
    for name, values in SAMPLES.items():
        write_jsonl(out / f"{name}{ev.SAMPLES_SUFFIX}", sample_rows(values))
    heldout_rows().to_csv(out / "heldout_loss.csv", index=False)
    return out


# ------------------------------------------------------------------------------------- the published table


def test_published_scores_are_the_release_card_values(published):
    rows = published.set_index("model")[TASKS]
    assert rows.loc["Camel-Platypus2-70B"].tolist() == [71.16, 87.66, 69.80, 57.77]
    assert rows.loc["Stable-Platypus2-13B"].tolist() == [62.71, 82.29, 58.30, 52.52]
    assert rows.loc["Platypus2-13B"].tolist() == [61.26, 82.56, 56.70, 44.86]
    assert rows.loc["OpenOrca-Platypus2-13B"].tolist() == [62.88, 83.19, 59.50, 52.69]
    assert rows.loc["qCammel-70-x"].tolist() == [68.34, 87.87, 70.18, 57.47]
    assert rows.loc["StableBeluga-13B"].tolist() == [62.03, 82.27, 57.71, 49.61]
    assert rows.loc["qCammel-13"].tolist() == [60.84, 83.66, 56.73, 47.54]


def test_every_published_row_has_a_source_and_a_consistent_average(published):
    assert published["source"].str.len().gt(20).all()
    with_average = published.dropna(subset=["average"])
    # Cards print the average of the four rounded (or truncated) to 2 decimals; one source gives 1 decimal.
    assert (with_average[TASKS].mean(axis=1) - with_average["average"]).abs().max() < 0.06


def test_camel_platypus2_70b_arc_gain_is_the_papers_4_12_percent(paper_deltas):
    change = delta(paper_deltas, "Camel-Platypus2-70B", "arc_challenge")
    assert change == pytest.approx((71.16 - 68.34) / 68.34 * 100) == pytest.approx(4.1264, abs=1e-4)
    quoted = results.read_quoted_deltas().set_index(["model", "task"]).loc[("Camel-Platypus2-70B", "arc_challenge")]
    # The paper truncates: +4.1264% printed as +4.12%, where rounding gives +4.13%.
    assert math.floor(change * 100) / 100 == quoted["quoted_pct_change"] == 4.12
    assert round(change, 2) == 4.13


def test_stable_platypus2_13b_gains_on_every_task(paper_deltas):
    assert all(delta(paper_deltas, "Stable-Platypus2-13B", t) > 0 for t in TASKS)
    assert delta(paper_deltas, "Stable-Platypus2-13B", "truthfulqa_mc2") == pytest.approx(5.8658, abs=1e-4)


def test_models_without_vendored_partner_scores_are_listed_not_dropped(published, paper_deltas):
    assert results.uncomparable(published) == ["OpenOrca-Platypus2-13B (vs OpenOrcaxOpenChat-Preview2-13B)"]
    assert "OpenOrca-Platypus2-13B" not in set(paper_deltas["model"])


def test_delta_table_sets_the_quote_beside_the_regenerated_value(paper_deltas):
    table = results.delta_table(paper_deltas, results.read_quoted_deltas())
    row = table.loc["Camel-Platypus2-70B vs qCammel-70-x"]
    assert row["ARC %"] == 4.13 and row["paper quotes"] == "ARC +4.12%"
    assert list(table.columns) == ["ARC %", "HellaSwag %", "MMLU %", "TruthfulQA %", "paper quotes"]


def test_a_published_row_without_a_source_is_rejected(tmp_path, published):
    broken = published.copy()
    broken.loc[0, "source"] = None
    broken.to_csv(tmp_path / "scores.csv", index=False)
    with pytest.raises(ValueError, match="every row needs a source.*Platypus2-13B"):
        results.read_published_scores(tmp_path / "scores.csv")


# ------------------------------------------------------------------------------------------------ this run


def test_percent_change_is_relative_to_the_base():
    assert results.percent_change(33.0, 30.0) == pytest.approx(10.0)
    assert math.isnan(results.percent_change(10.0, 0.0))


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    out = write_run_05(tmp_path_factory.mktemp("run05"))
    return out, *results.paired_comparisons(ev.summary_table(RUN_RESULTS), out, seed=42)


def row(table, model, task, metric=None):
    metric = metric or ev.TASKS[task].metric
    return table[(table["model"] == model) & (table["task"] == task) & (table["metric"] == metric)].iloc[0]


def test_paired_comparisons_pair_each_model_with_its_compare_to_on_every_metric(paired):
    _, table, differences = paired
    assert sorted(set(zip(table["model"], table["compare_to"]))) == [
        ("partner", "base"), ("partner-platypus", "partner"), ("platypus", "base")]
    # acc_norm and acc for ARC and HellaSwag, acc for MMLU, MC2 for TruthfulQA: 6 tests per comparison.
    assert len(table) == 3 * 6 and table["headline"].sum() == 3 * 4
    assert len(differences) == 3 * 4 * 20


def test_a_one_sided_gain_on_ten_questions_is_mcnemar_significant_after_holm(paired):
    _, table, _ = paired
    arc = row(table, "platypus", "arc_challenge")
    assert (arc["b"], arc["c"], arc["n"]) == (10, 0, 20)
    assert arc["delta_pts"] == pytest.approx(50.0) and arc["score_pct"] == pytest.approx(80.0)
    assert arc["p_value"] == pytest.approx(2 * 0.5 ** 10)
    # Third smallest of 18 p-values (two MC2 shifts with no question going down have the bootstrap's floor 1e-4).
    assert arc["p_holm"] == pytest.approx(16 * 2 * 0.5 ** 10) and arc["significant"]
    assert 0 < arc["ci_low_pts"] < 50 < arc["ci_high_pts"]
    assert results.verdict(arc) == "significantly higher"


def test_unchanged_and_balanced_comparisons_are_no_significant_change(paired):
    _, table, _ = paired
    same = row(table, "platypus", "mmlu")
    assert same["delta_pts"] == 0 and same["p_value"] == 1.0 and not same["significant"]
    assert results.verdict(same) == "no significant change"
    # MC2 moves by +10 points on half the questions and -10 on the other half: a paired bootstrap, CI around 0.
    mc2 = row(table, "partner-platypus", "truthfulqa_mc2")
    assert mc2["test"] == "paired bootstrap" and mc2["delta_pts"] == pytest.approx(0.0)
    assert mc2["ci_low_pts"] < 0 < mc2["ci_high_pts"] and not mc2["significant"]
    # A constant +2 points on every question: the bootstrap interval is the point itself and excludes 0.
    shift = row(table, "platypus", "truthfulqa_mc2")
    assert shift["ci_low_pts"] == pytest.approx(2.0) == shift["ci_high_pts"]
    summary = results.paired_summary(table)
    assert summary.startswith("18 paired tests (12 on the leaderboard metrics), p-values Holm-adjusted over all 18")
    assert "platypus vs base ARC +50.00 pts" in summary and "Every other comparison: no significant change" in summary


def test_mmlu_delta_is_the_unweighted_mean_over_subjects(tmp_path):
    """Subjects of 2 and 8 questions: the leaderboard's MMLU is the mean of the two subject scores."""
    def rows(values):
        subs = ["mmlu_a"] * 2 + ["mmlu_b"] * 8
        return pd.DataFrame([{"task": "mmlu", "lm_eval_task": s, "doc_id": i, "doc_hash": f"{s}{i}", "acc": v}
                             for i, (s, v) in enumerate(zip(subs, values))])
    d = results.paired_differences(rows([1, 1] + [0] * 8), rows([0] * 10), "mmlu", "acc", "test")
    assert d["d"].mean() == pytest.approx(50.0)       # subject a +100, subject b 0: mean +50, pooled would be +20


def test_models_scored_on_different_questions_are_not_compared(tmp_path, paired):
    out, _, _ = paired
    other = tmp_path / "other"
    other.mkdir()
    for name in ("base", "platypus"):
        (other / f"{name}{ev.SAMPLES_SUFFIX}").write_text((out / f"{name}{ev.SAMPLES_SUFFIX}").read_text())
    rows = [r for r in sample_rows(SAMPLES["platypus"]) if not (r["task"] == "hellaswag" and r["doc_id"] == 3)]
    write_jsonl(other / f"platypus{ev.SAMPLES_SUFFIX}", rows)
    summary = ev.summary_table(RUN_RESULTS[:2])
    with pytest.raises(results.PairingError, match=r"platypus vs base: hellaswag was scored on different questions "
                                                   r"for the two models \(0 only in the first, 1 only in the second, "
                                                   r"0 with different text\)"):
        results.paired_comparisons(summary, other, seed=42)
    (other / f"base{ev.SAMPLES_SUFFIX}").unlink()
    with pytest.raises(FileNotFoundError, match=r"base\.samples\.jsonl: no per-question results for model 'base'"):
        results.paired_comparisons(summary, other, seed=42)


def test_overlap_is_joined_to_each_merges_mean_change(tmp_path, paired):
    _, table, _ = paired
    assert results.read_overlap(tmp_path / "overlap.csv") is None
    pd.DataFrame([{"partner": "partner", "merge": "partner-platypus", "mean_best_cosine": 0.3}]).to_csv(
        tmp_path / "overlap.csv", index=False)
    joined = results.overlap_vs_deltas(results.read_overlap(tmp_path / "overlap.csv"), table)
    expected = (0 + 0 + results.percent_change(20, 30) + 0) / 4
    assert joined["mean_pct_change"].item() == pytest.approx(expected)
    assert (joined["significant_tasks"].item(), joined["tasks"].item()) == (0, 4)
    pd.DataFrame([{"partner": "partner"}]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="missing column.*merge"):
        results.read_overlap(tmp_path / "bad.csv")


def test_heldout_comparisons_pair_rows_and_test_the_merge_claim():
    table = results.heldout_comparisons(heldout_rows(), seed=42).set_index(["model", "domain"])
    assert len(table) == 3 * 2 and (table["n"] == 20).all()
    lower = table.loc[("platypus", "open-platypus")]  # every row 0.3 lower: the interval is the point
    assert (lower["delta"], lower["ci_low"], lower["ci_high"]) == pytest.approx((-0.3, -0.3, -0.3))
    assert lower["p_value"] == pytest.approx(1e-4) and lower["significant"]
    gained = table.loc[("partner-platypus", "open-platypus")]
    assert gained["delta"] == pytest.approx(-0.5) and gained["ci_low"] < -0.5 < gained["ci_high"] < -0.4
    assert gained["loss"] - gained["compared_loss"] == pytest.approx(-0.5) and gained["significant"]
    kept = table.loc[("partner-platypus", "partner:partner")]
    assert kept["delta"] == pytest.approx(0.0, abs=1e-12) and kept["ci_low"] < 0 < kept["ci_high"]
    assert not kept["significant"] and kept["p_holm"] > 0.5
    unchanged = table.loc[("platypus", "partner:partner")]
    assert (unchanged["delta"], unchanged["p_value"], unchanged["significant"]) == (0.0, 1.0, False)
    shown = results.heldout_table(table.reset_index())
    assert shown["verdict"].value_counts().to_dict() == {"significantly lower loss": 3, "no significant change": 3}
    claim = results.merge_claim(table.reset_index())
    assert claim.iloc[0].tolist() == ["partner-platypus", "partner", True, True]
    assert all("significantly" in column for column in claim.columns[2:])  # a lower loss by chance is no gain
    # The same merge, 0.4 worse than its partner on the partner's own rows: the partner's skill was not kept.
    worse = heldout_rows({**LOSS_SHIFT, "partner-platypus": (-0.5, -0.1)})
    assert results.merge_claim(results.heldout_comparisons(worse, seed=42)).iloc[0].tolist()[2:] == [True, False]


def test_heldout_losses_on_different_rows_are_not_compared():
    losses = heldout_rows()
    losses = losses[~((losses["model"] == "partner") & (losses["row"] == 3))]
    with pytest.raises(results.PairingError, match="partner and base were not scored on the same open-platypus rows"):
        results.heldout_comparisons(losses, seed=42)


# ------------------------------------------------------------------------------------------------ notebook


@pytest.fixture(scope="module")
def executed_06(tmp_path_factory):
    """Notebook 06 run on a step-05 summary and a step-04 overlap table; figures kept out of the repository."""
    tmp = tmp_path_factory.mktemp("nb06")
    run = tmp / "run"
    write_run_05(run / "05_evaluate")
    (run / "04_merge").mkdir(parents=True)
    pd.DataFrame([{"partner": "partner", "merge": "partner-platypus", "mean_best_cosine": 0.3}]).to_csv(
        run / "04_merge" / "overlap.csv", index=False)
    executed = tmp / "06_results.ipynb"
    execute_notebook(NOTEBOOKS_DIR / "06_results.ipynb", executed,
                     {"run_dir": str(run), "overrides": {"run.figures_dir": str(tmp / "figures")}})
    return tmp, run, executed


def test_notebook_06_writes_the_delta_tables_and_figures(executed_06):
    tmp, run, _ = executed_06
    for name in ("06_paper_deltas", "06_run_deltas", "06_overlap_vs_delta"):
        assert (tmp / "figures" / f"{name}.png").is_file()
        assert (run / "06_results" / "figures" / f"{name}.png").is_file()
    regenerated = pd.read_csv(run / "06_results" / "paper_deltas.csv")
    assert delta(regenerated, "Camel-Platypus2-70B", "arc_challenge") == pytest.approx(4.1264, abs=1e-4)
    run_deltas = pd.read_csv(run / "06_results" / "run_deltas.csv")
    assert list(run_deltas.columns) == results.PAIRED_COLUMNS and len(run_deltas) == 3 * 6
    heldout = pd.read_csv(run / "06_results" / "heldout_deltas.csv")
    assert list(heldout.columns) == results.HELDOUT_COLUMNS and len(heldout) == 3 * 2


def test_jupyterlab_shows_notebook_06_with_its_figures(executed_06):
    """JupyterLab on 127.0.0.1, headless Chromium, a screenshot in which the figures' pixels are present."""
    spec = importlib.util.spec_from_file_location("screenshot_lab", PROJECT_ROOT / "scripts" / "screenshot_lab.py")
    screenshot_lab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(screenshot_lab)
    if screenshot_lab.find_chromium() is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); the screenshot needs it")
    tmp, _, executed = executed_06
    png = screenshot_lab.screenshot_notebook(executed, tmp / "lab.png", height=3200)
    pixels = mpimg.imread(png)
    assert pixels.shape[:2] == (3200, 1400)
    # The bars of the first figure, in two of the task colours that JupyterLab's light theme does not use.
    rgb = pixels[..., :3]

    def near(colour: str) -> int:
        target = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        return int((abs(rgb - target).max(axis=-1) < 0.04).sum())

    assert near(results.TASK_COLORS["arc_challenge"]) > 1000
    assert near(results.TASK_COLORS["hellaswag"]) > 100

"""Step 06: the paper's percent-change tables regenerated from the vendored published scores, and this run's."""

from __future__ import annotations

import importlib.util
import math

import matplotlib.image as mpimg
import pandas as pd
import pytest

from platypus_nb import evaluate as ev
from platypus_nb import plots
from platypus_nb.paths import NOTEBOOKS_DIR, PROJECT_ROOT
from platypus_nb.runner import execute_notebook

TASKS = list(ev.TASKS)


@pytest.fixture(scope="module")
def published():
    return plots.read_published_scores()


@pytest.fixture(scope="module")
def paper_deltas(published):
    return plots.paper_deltas(published)


def delta(deltas, model, task):
    return deltas[(deltas["model"] == model) & (deltas["task"] == task)]["pct_change"].item()


def result(name, role, compare_to, scores, stderr=0.05):
    """One model's step-05 result as ``evaluate.evaluate_model`` writes it (fractions, not percent)."""
    return {"name": name, "role": role, "compare_to": compare_to, "stands_in_for": "",
            "scores": {t: {"metric": ev.TASKS[t].metric, "score": s, "stderr": stderr, "n": 20, "num_fewshot": 1,
                           "seconds": 1.0} for t, s in zip(TASKS, scores)}}


RUN_RESULTS = [
    result("base", "base", None, [0.30, 0.40, 0.25, 0.40]),
    result("platypus", "platypus", "base", [0.33, 0.38, 0.30, 0.44]),
    result("partner", "partner", "base", [0.35, 0.42, 0.26, 0.41]),
    result("partner-platypus", "merge", "partner", [0.36, 0.42, 0.24, 0.45]),
]


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
    quoted = plots.read_quoted_deltas().set_index(["model", "task"]).loc[("Camel-Platypus2-70B", "arc_challenge")]
    # The paper truncates: +4.1264% printed as +4.12%, where rounding gives +4.13%.
    assert math.floor(change * 100) / 100 == quoted["quoted_pct_change"] == 4.12
    assert round(change, 2) == 4.13


def test_stable_platypus2_13b_gains_on_every_task(paper_deltas):
    assert all(delta(paper_deltas, "Stable-Platypus2-13B", t) > 0 for t in TASKS)
    assert delta(paper_deltas, "Stable-Platypus2-13B", "truthfulqa_mc2") == pytest.approx(5.8658, abs=1e-4)


def test_models_without_vendored_partner_scores_are_listed_not_dropped(published, paper_deltas):
    assert plots.uncomparable(published) == ["OpenOrca-Platypus2-13B (vs OpenOrcaxOpenChat-Preview2-13B)"]
    assert "OpenOrca-Platypus2-13B" not in set(paper_deltas["model"])


def test_delta_table_sets_the_quote_beside_the_regenerated_value(paper_deltas):
    table = plots.delta_table(paper_deltas, plots.read_quoted_deltas())
    row = table.loc["Camel-Platypus2-70B vs qCammel-70-x"]
    assert row["ARC %"] == 4.13 and row["paper quotes"] == "ARC +4.12%"
    assert list(table.columns) == ["ARC %", "HellaSwag %", "MMLU %", "TruthfulQA %", "paper quotes"]


def test_a_published_row_without_a_source_is_rejected(tmp_path, published):
    broken = published.copy()
    broken.loc[0, "source"] = None
    broken.to_csv(tmp_path / "scores.csv", index=False)
    with pytest.raises(ValueError, match="every row needs a source.*Platypus2-13B"):
        plots.read_published_scores(tmp_path / "scores.csv")


# ------------------------------------------------------------------------------------------------ this run


def test_percent_change_and_its_standard_error():
    assert plots.percent_change(33.0, 30.0) == pytest.approx(10.0)
    # d/dnew = 100/base, d/dbase = -100 new/base^2
    assert plots.percent_change_stderr(33.0, 4.0, 30.0, 3.0) == pytest.approx(
        math.hypot(100 / 30 * 4.0, 100 * 33 / 30 ** 2 * 3.0))
    assert math.isnan(plots.percent_change(10.0, 0.0))


def test_run_deltas_compare_each_model_with_its_compare_to():
    deltas = plots.run_deltas(ev.summary_table(RUN_RESULTS))
    assert sorted(set(zip(deltas["model"], deltas["compare_to"]))) == [
        ("partner", "base"), ("partner-platypus", "partner"), ("platypus", "base")]
    row = deltas[(deltas["model"] == "platypus") & (deltas["task"] == "mmlu")].iloc[0]
    assert row["pct_change"] == pytest.approx(20.0)
    assert row["pct_change_se"] == pytest.approx(plots.percent_change_stderr(30.0, 5.0, 25.0, 5.0))


def test_overlap_is_joined_to_each_merges_mean_change(tmp_path):
    assert plots.read_overlap(tmp_path / "overlap.csv") is None
    pd.DataFrame([{"partner": "partner", "merge": "partner-platypus", "mean_best_cosine": 0.3}]).to_csv(
        tmp_path / "overlap.csv", index=False)
    table = plots.overlap_vs_deltas(plots.read_overlap(tmp_path / "overlap.csv"),
                                    plots.run_deltas(ev.summary_table(RUN_RESULTS)))
    expected = sum(plots.percent_change(100 * a, 100 * b) for a, b in zip([0.36, 0.42, 0.24, 0.45],
                                                                          [0.35, 0.42, 0.26, 0.41])) / 4
    assert table["mean_pct_change"].item() == pytest.approx(expected)
    pd.DataFrame([{"partner": "partner"}]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="missing column.*merge"):
        plots.read_overlap(tmp_path / "bad.csv")


# ------------------------------------------------------------------------------------------------ notebook


@pytest.fixture(scope="module")
def executed_06(tmp_path_factory):
    """Notebook 06 run on a step-05 summary and a step-04 overlap table; figures kept out of the repository."""
    tmp = tmp_path_factory.mktemp("nb06")
    run = tmp / "run"
    ev.write_summary(RUN_RESULTS, run / "05_evaluate" / "summary.csv")
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
    assert len(pd.read_csv(run / "06_results" / "run_deltas.csv")) == 3 * 4


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

    assert near(plots.TASK_COLORS["arc_challenge"]) > 1000
    assert near(plots.TASK_COLORS["hellaswag"]) > 100

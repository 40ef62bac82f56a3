"""Step 06: the paper's benchmark-delta tables and plots from published scores, and this run's paired comparisons.

The paper reports each merged model by its percent change over the model it was built from, per leaderboard
task: ``(merged - base) / base`` (e.g. Camel-Platypus2-70B over qCammel-70-x on ARC-Challenge,
(71.16 - 68.34) / 68.34 = +4.126%, which the paper prints as +4.12%). Its tables could not be retrieved
(docs/evaluation.md), so ``data/paper/`` vendors the scores behind them, each row with its source: the release
model cards and the Open LLM Leaderboard's values for the bases and partners.

This run's models are compared on the same questions: step 05 keeps every model's per-question outcomes
(``05_evaluate/<model>.samples.jsonl``), and each model is set against its ``compare_to`` model question by
question, with a paired bootstrap interval and an exact McNemar test (:mod:`platypus_nb.stats`). Their
losses on held-out rows (step 05's ``heldout_loss.csv``) are compared the same way, row by row
(:func:`heldout_comparisons`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from platypus_nb import stats
from platypus_nb.assets import data_file
from platypus_nb.evaluate import SAMPLES_SUFFIX, TASKS
from platypus_nb.heldout_loss import OPEN_PLATYPUS, PARTNER_DOMAIN
from platypus_nb.io import read_csv_checked, read_jsonl

PUBLISHED_COLUMNS = ["model", "role", "compare_to", *TASKS, "average", "kind", "source"]
QUOTED_COLUMNS = ["model", "compare_to", "task", "quoted_pct_change", "source", "note"]
# Bars coloured per task, the same in every figure.
TASK_COLORS = dict(zip(TASKS, ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]))


# ------------------------------------------------------------------------------------------- published scores


def read_published_scores(path: Optional[Path] = None) -> pd.DataFrame:
    """The vendored scores (percent) of the Platypus models and their bases/partners, one source per row.

    The vendored file (the default) is checked against ``data/checksums.json`` first.
    """
    path = path or data_file("paper/published_scores.csv")
    table = _read_csv(path, PUBLISHED_COLUMNS)
    for task in TASKS:
        if table[task].isna().any() or not pd.api.types.is_numeric_dtype(table[task]):
            raise ValueError(f"{path}: column {task!r} must hold a number (percent) on every row")
    if table["source"].isna().any():
        raise ValueError(f"{path}: every row needs a source (rows without: "
                         f"{', '.join(table.loc[table['source'].isna(), 'model'])})")
    if table["model"].duplicated().any():
        raise ValueError(f"{path}: model names must be unique")
    return table


def read_quoted_deltas(path: Optional[Path] = None) -> pd.DataFrame:
    """The percent changes the paper's text itself quotes, to set beside the regenerated ones (checked as above)."""
    return _read_csv(path or data_file("paper/quoted_deltas.csv"), QUOTED_COLUMNS)


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    return read_csv_checked(path, columns, "it is vendored with the repository; see data/paper/README.md")


# ------------------------------------------------------------------------------------------------ deltas


def percent_change(new: float, base: float) -> float:
    """The paper's "% change" of a model over its base: relative, in percent, not a difference of points."""
    return math.nan if base == 0 else 100.0 * (new - base) / base


def paper_deltas(published: pd.DataFrame) -> pd.DataFrame:
    """Percent change of every published model that names a comparison model present in the table (long form)."""
    scores = published.set_index("model")
    rows = []
    for _, r in published.iterrows():
        if pd.isna(r["compare_to"]) or r["compare_to"] not in scores.index:
            continue
        base = scores.loc[r["compare_to"]]
        for task in TASKS:
            rows.append({"model": r["model"], "compare_to": r["compare_to"], "task": task, "score": r[task],
                         "base_score": base[task], "pct_change": percent_change(r[task], base[task])})
    return pd.DataFrame(rows)


def uncomparable(published: pd.DataFrame) -> list[str]:
    """Published models whose comparison model has no vendored scores (said in the notebook, not hidden)."""
    known = set(published["model"])
    return [f"{r.model} (vs {r.compare_to})" for r in published.itertuples()
            if isinstance(r.compare_to, str) and r.compare_to not in known]


def comparison_names(deltas: pd.DataFrame) -> pd.Series:
    """"<model> vs <compared model>", the row label of every delta table and figure."""
    return deltas["model"] + " vs " + deltas["compare_to"]


def delta_table(deltas: pd.DataFrame, quoted: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Comparisons as rows, tasks as columns (percent change, 2 decimals), with the paper's quotes beside them."""
    table = deltas.assign(comparison=comparison_names(deltas)).pivot(index="comparison", columns="task",
                                                                     values="pct_change")
    table = table[[t for t in TASKS if t in table.columns]].round(2)
    table.columns = [f"{TASKS[t].label} %" for t in table.columns]
    if quoted is not None:
        quotes = {f"{q.model} vs {q.compare_to}": f"{TASKS[q.task].label} {q.quoted_pct_change:+.2f}%"
                  for q in quoted.itertuples()}
        table["paper quotes"] = [quotes.get(c, "") for c in table.index]
    return table.loc[list(dict.fromkeys(comparison_names(deltas)))]


# ------------------------------------------------------------------------------------ paired comparisons

# The per-question metrics compared: the leaderboard's metric of each task first ("headline"), then plain accuracy
# where the leaderboard reports acc_norm. TruthfulQA's "acc" is the per-question MC2 probability mass.
COMPARED_METRICS = {task: list(dict.fromkeys([spec.metric, "acc"])) for task, spec in TASKS.items()}
SIGNIFICANCE = 0.05
PAIRED_COLUMNS = ["model", "compare_to", "role", "task", "metric", "headline", "n", "score_pct", "base_score_pct",
                  "delta_pts", "ci_low_pts", "ci_high_pts", "pct_change", "test", "b", "c", "p_value", "p_holm",
                  "significant"]


class PairingError(ValueError):
    """Two models' per-question logs do not cover the same questions; the message names both files."""


def read_samples(out_dir: str | Path, model: str) -> pd.DataFrame:
    """A model's per-question outcomes written by step 05 (``<out_dir>/<model>.samples.jsonl``)."""
    path = Path(out_dir) / f"{model}{SAMPLES_SUFFIX}"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no per-question results for model {model!r}; run "
                                f"notebooks/05_evaluate.ipynb for this run first (it writes one per model)")
    return pd.DataFrame(read_jsonl(path))


def paired_differences(new: pd.DataFrame, old: pd.DataFrame, task: str, metric: str,
                       where: str) -> pd.DataFrame:
    """Per-question values of two models on one task, joined by question, with the weighted difference ``d``.

    ``d`` is in points and weighted so that its plain mean is the leaderboard's task score difference: for MMLU the
    unweighted mean over subjects (a question of a subject with ``n_s`` of the ``N`` questions, ``K`` subjects,
    weighs ``N / (K n_s)``), for the other tasks the plain mean (all weights 1).
    """
    key = ["lm_eval_task", "doc_id"]
    a, b = (df[df["task"] == task] for df in (new, old))
    joined = a.merge(b, on=key, how="outer", suffixes=("_new", "_old"), indicator=True)
    differing = (joined["_merge"] == "both") & (joined["doc_hash_new"] != joined["doc_hash_old"])
    if (joined["_merge"] != "both").any() or differing.any():
        raise PairingError(f"{where}: {task} was scored on different questions for the two models "
                           f"({int((joined['_merge'] == 'left_only').sum())} only in the first, "
                           f"{int((joined['_merge'] == 'right_only').sum())} only in the second, "
                           f"{int(differing.sum())} with different text); "
                           f"re-run step 05 with the same settings for both")
    sizes = joined.groupby("lm_eval_task")["doc_id"].transform("size")
    weight = len(joined) / (joined["lm_eval_task"].nunique() * sizes)
    return pd.DataFrame({"lm_eval_task": joined["lm_eval_task"], "doc_id": joined["doc_id"], "weight": weight,
                         "new": joined[f"{metric}_new"], "old": joined[f"{metric}_old"],
                         "d": 100 * weight * (joined[f"{metric}_new"] - joined[f"{metric}_old"])})


def paired_comparisons(summary: pd.DataFrame, samples_dir: str | Path, seed: int) -> tuple[pd.DataFrame,
                                                                                             pd.DataFrame]:
    """Every model against its ``compare_to`` model, per task and compared metric, on the same questions.

    Returns the table (:data:`PAIRED_COLUMNS`; p-values Holm-adjusted over all its rows) and the per-question
    differences behind its headline rows (for :func:`plot_paired_deltas`). The bootstrap is seeded with ``seed``.
    """
    pairs = summary[["model", "compare_to", "role"]].drop_duplicates()
    pairs = pairs[pairs["compare_to"].apply(lambda c: isinstance(c, str))]
    cache: dict[str, pd.DataFrame] = {}

    def samples(name: str) -> pd.DataFrame:
        if name not in cache:
            cache[name] = read_samples(samples_dir, name)
        return cache[name]

    rows, diffs = [], []
    for pair in pairs.itertuples():
        new, old = samples(pair.model), samples(pair.compare_to)
        for task in [t for t in TASKS if t in set(new["task"])]:
            for metric in COMPARED_METRICS[task]:
                where = f"{Path(samples_dir)}: {pair.model} vs {pair.compare_to}"
                d = paired_differences(new, old, task, metric, where)
                rows.append(_compare(pair, task, metric, d, seed))
                if rows[-1]["headline"]:
                    diffs.append(d.assign(comparison=f"{pair.model} vs {pair.compare_to}", task=task))
    table = pd.DataFrame(rows, columns=PAIRED_COLUMNS)
    table["p_holm"] = stats.holm(table["p_value"])
    table["significant"] = table["p_holm"] < SIGNIFICANCE
    differences = pd.concat(diffs, ignore_index=True) if diffs else pd.DataFrame(
        columns=["lm_eval_task", "doc_id", "weight", "new", "old", "d", "comparison", "task"])
    return table, differences


def _compare(pair: Any, task: str, metric: str, d: pd.DataFrame, seed: int) -> dict[str, Any]:
    delta = float(d["d"].mean())
    low, high, bootstrap_p = stats.paired_bootstrap(d["d"], seed)
    score, base = (float(100 * (d["weight"] * d[side]).mean()) for side in ("new", "old"))
    binary = d["new"].isin((0, 1)).all() and d["old"].isin((0, 1)).all() and task != "truthfulqa_mc2"
    if binary:
        b, c, p = stats.mcnemar_exact(d["new"], d["old"])
        test = "McNemar exact"
    else:
        b = c = None
        p, test = bootstrap_p, "paired bootstrap"
    return {"model": pair.model, "compare_to": pair.compare_to, "role": pair.role, "task": task, "metric": metric,
            "headline": metric == TASKS[task].metric, "n": len(d), "score_pct": score, "base_score_pct": base,
            "delta_pts": delta, "ci_low_pts": low, "ci_high_pts": high, "pct_change": percent_change(score, base),
            "test": test, "b": b, "c": c, "p_value": p, "p_holm": math.nan, "significant": False}


def paired_table(table: pd.DataFrame) -> pd.DataFrame:
    """The comparisons as the notebook shows them: one row per comparison, task and metric, rounded."""
    shown = pd.DataFrame({
        "comparison": comparison_names(table), "task": table["task"].map(lambda t: TASKS[t].label),
        "metric": table["metric"].where(table["task"] != "truthfulqa_mc2", "mc2"), "n": table["n"],
        "score %": table["score_pct"].round(2), "compared %": table["base_score_pct"].round(2),
        "delta pts": table["delta_pts"].round(2),
        "95% CI pts": [f"[{lo:+.2f}, {hi:+.2f}]" for lo, hi in zip(table["ci_low_pts"], table["ci_high_pts"])],
        "test": table["test"], "p": table["p_value"].round(4), "p (Holm)": table["p_holm"].round(4),
        "verdict": [verdict(r) for r in table.itertuples()]})
    return shown


def verdict(row: Any) -> str:
    """"higher" / "lower" when the Holm-adjusted test rejects "no change", else "no significant change"."""
    if not row.significant:
        return "no significant change"
    return "significantly higher" if row.delta_pts > 0 else "significantly lower"


def paired_summary(table: pd.DataFrame) -> str:
    """A sentence for the notebook: how many tests were made, how they were adjusted, and what they found."""
    headline = table[table["headline"]]
    found = headline[headline["significant"]]
    text = (f"{len(table)} paired tests ({len(headline)} on the leaderboard metrics), p-values Holm-adjusted over "
            f"all {len(table)} at a family-wise {SIGNIFICANCE:.0%}; 95% intervals are per comparison (unadjusted). ")
    if found.empty:
        return text + "On the leaderboard metrics: no significant change in any comparison."
    return text + "Significant on the leaderboard metrics: " + "; ".join(
        f"{r.model} vs {r.compare_to} {TASKS[r.task].label} {r.delta_pts:+.2f} pts (Holm p = {r.p_holm:.3g})"
        for r in found.itertuples()) + ". Every other comparison: no significant change."


def plot_paired_deltas(differences: pd.DataFrame, table: pd.DataFrame, title: str, seed: int):
    """Each comparison's delta (points) on every task's leaderboard metric with its paired bootstrap 95% interval.

    seaborn draws the mean of the per-question differences with ``errorbar`` set to the same seeded bootstrap as
    the table (:func:`platypus_nb.stats.paired_bootstrap_ci`), so dots and bars are the table's numbers. A star marks
    a change significant after Holm's adjustment.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    tasks = [t for t in TASKS if t in set(differences["task"])]
    comparisons = list(dict.fromkeys(differences["comparison"]))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.9 * len(comparisons)))
    sns.pointplot(data=differences, x="d", y="comparison", hue="task", order=comparisons, hue_order=tasks,
                  estimator="mean", errorbar=lambda d: stats.paired_bootstrap_ci(d, seed), dodge=0.5,
                  linestyles="none", capsize=0.1, palette=TASK_COLORS, ax=ax)
    ax.axvline(0, color="black", linewidth=0.8)
    stars = table[table["headline"] & table["significant"]]
    offsets = dict(zip(tasks, np.linspace(-0.25, 0.25, len(tasks)) if len(tasks) > 1 else [0.0]))
    for r in stars.itertuples():
        ax.annotate("*", (r.ci_high_pts, comparisons.index(f"{r.model} vs {r.compare_to}") + offsets[r.task]),
                    xytext=(3, -4), textcoords="offset points", fontsize=12)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles, [TASKS[t].label for t in tasks], fontsize=8, loc="best")
    ax.set_xlabel("change in score (points), paired bootstrap 95% interval; * significant after Holm")
    ax.set_ylabel("")
    ax.set_title(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------ figures


def plot_deltas(deltas: pd.DataFrame, title: str, quoted: Optional[pd.DataFrame] = None):
    """Grouped bars of the published percent change per comparison and task, black diamonds where the paper quotes
    a figure (the published scores carry no per-question data, so no intervals)."""
    import matplotlib.pyplot as plt

    deltas = deltas.assign(comparison=comparison_names(deltas))
    comparisons = list(dict.fromkeys(deltas["comparison"]))
    tasks = [t for t in TASKS if t in set(deltas["task"])]
    width = 0.8 / len(tasks)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(comparisons) + 2), 4.2))
    x = np.arange(len(comparisons))
    quote_label = "paper quotes"
    for i, task in enumerate(tasks):
        rows = deltas[deltas["task"] == task].set_index("comparison")
        values = [rows["pct_change"].get(c, np.nan) for c in comparisons]
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, values, width, color=TASK_COLORS[task], label=TASKS[task].label)
        for q in ([] if quoted is None else quoted[quoted["task"] == task].itertuples()):
            name = f"{q.model} vs {q.compare_to}"
            if name in comparisons:
                ax.plot(pos[comparisons.index(name)], q.quoted_pct_change, "kD", markersize=6, label=quote_label)
                quote_label = None
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [c.replace(" vs ", "\nvs ") for c in comparisons], fontsize=8)
    ax.set_ylabel("% change over the compared model")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=len(tasks) + 1, loc="best")
    fig.tight_layout()
    return fig


def plot_scores(summary: pd.DataFrame, title: str):
    """Grouped bars of every model's score per task with standard-error bars, and 4-choice chance marked."""
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(summary["model"]))
    tasks = [t for t in TASKS if t in set(summary["task"])]
    width = 0.8 / len(tasks)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(models) + 2), 4.2))
    x = np.arange(len(models))
    for i, task in enumerate(tasks):
        rows = summary[summary["task"] == task].set_index("model")
        ax.bar(x - 0.4 + width * (i + 0.5), [rows["score_pct"].get(m, np.nan) for m in models], width,
               yerr=[rows["stderr_pct"].get(m, np.nan) for m in models], capsize=3, color=TASK_COLORS[task],
               label=TASKS[task].label)
    ax.axhline(25, color="grey", linestyle="--", linewidth=1, label="chance, 4 choices (not TruthfulQA MC2)")
    ax.set_xticks(x, models, fontsize=8, rotation=15)
    ax.set_ylabel("score (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------- data overlap


def read_overlap(path: Path) -> Optional[pd.DataFrame]:
    """Step 04's ``overlap.csv`` (partner vs Open-Platypus training-data similarity), or None when absent."""
    if not Path(path).is_file():
        return None
    table = pd.read_csv(path)
    missing = [c for c in ("merge", "partner", "mean_best_cosine") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (written by step 04's "
                         f"write_overlap_table)")
    return table


def overlap_vs_deltas(overlap: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """Each merge's data overlap with Open-Platypus next to its mean percent change over its partner (the mean over
    tasks of the leaderboard metrics' changes) and how many of those changes are significant."""
    merges = paired[(paired["role"] == "merge") & paired["headline"]]
    mean_change = merges.groupby("model").agg(mean_pct_change=("pct_change", "mean"),
                                              significant_tasks=("significant", "sum"), tasks=("task", "size"))
    joined = overlap.merge(mean_change, left_on="merge", right_index=True, how="inner")
    return joined[["merge", "partner", "mean_best_cosine", "mean_pct_change", "significant_tasks", "tasks"]
                  + [c for c in ("share_at_or_above_threshold",) if c in joined.columns]]


def plot_overlap_vs_deltas(table: pd.DataFrame):
    """Scatter of training-data overlap against the merge's mean change: the README's "little to no overlap" claim."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(table["mean_best_cosine"], table["mean_pct_change"], "o")
    for r in table.itertuples():
        ax.annotate(f"{r.merge} ({r.significant_tasks} of {r.tasks} tasks significant)",
                    (r.mean_best_cosine, r.mean_pct_change), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("partner data overlap: mean best cosine to Open-Platypus")
    ax.set_ylabel("merge's mean % change over its partner")
    ax.set_title("Data overlap vs merge gain")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------- held-out loss

HELDOUT_COLUMNS = ["model", "compare_to", "role", "domain", "n", "loss", "compared_loss", "delta", "ci_low",
                   "ci_high", "p_value", "p_holm", "significant"]


def heldout_comparisons(losses: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Every model against its ``compare_to`` model on every held-out domain, row by row (:data:`HELDOUT_COLUMNS`).

    ``delta`` is the mean per-row difference of the rows' mean response-token losses (negative: the model predicts
    the held-out responses better than the one it is compared with), with a paired bootstrap 95% interval and
    p-value seeded with ``seed``; p-values are Holm-adjusted over the table. Rows without a response token inside the
    cutoff (no loss for either model: both see the same token ids) are left out; ``n`` counts the rest.
    """
    rows = []
    pairs = losses[["model", "compare_to", "role"]].drop_duplicates()
    for pair in pairs[pairs["compare_to"].apply(lambda c: isinstance(c, str))].itertuples():
        new, old = (losses[losses["model"] == name] for name in (pair.model, pair.compare_to))
        for domain in dict.fromkeys(new["domain"]):
            joined = new[new["domain"] == domain].merge(old[old["domain"] == domain], on="row", how="outer",
                                                        suffixes=("_new", "_old"), indicator=True)
            if (joined["_merge"] != "both").any() or (joined["row_hash_new"] != joined["row_hash_old"]).any():
                raise PairingError(f"held-out losses: {pair.model} and {pair.compare_to} were not scored on the same "
                                   f"{domain} rows; re-run step 05 for both")
            joined = joined.dropna(subset=["loss_new", "loss_old"])
            d = joined["loss_new"] - joined["loss_old"]
            low, high, p = _bootstrap(d, seed)
            rows.append({"model": pair.model, "compare_to": pair.compare_to, "role": pair.role, "domain": domain,
                         "n": len(d), "loss": joined["loss_new"].mean(), "compared_loss": joined["loss_old"].mean(),
                         "delta": d.mean(), "ci_low": low, "ci_high": high,
                         "p_value": p, "p_holm": math.nan, "significant": False})
    table = pd.DataFrame(rows, columns=HELDOUT_COLUMNS)
    table["p_holm"] = stats.holm(table["p_value"])
    table["significant"] = table["p_holm"] < SIGNIFICANCE
    return table


def _bootstrap(d: pd.Series, seed: int) -> tuple[float, float, float]:
    """The paired bootstrap 95% interval and p-value of mean(d); NaN when no row has a loss for both models."""
    if d.empty:
        return math.nan, math.nan, math.nan
    return stats.paired_bootstrap(d, seed)


def heldout_table(table: pd.DataFrame) -> pd.DataFrame:
    """The held-out comparisons as the notebook shows them, rounded, with a verdict per row."""
    return pd.DataFrame({
        "comparison": comparison_names(table), "domain": table["domain"], "n": table["n"],
        "loss": table["loss"].round(4), "compared loss": table["compared_loss"].round(4),
        "delta": table["delta"].round(4),
        "95% CI": [f"[{lo:+.4f}, {hi:+.4f}]" for lo, hi in zip(table["ci_low"], table["ci_high"])],
        "p (Holm)": table["p_holm"].round(4),
        "verdict": ["no significant change" if not r.significant else
                    "significantly lower loss" if r.delta < 0 else "significantly higher loss"
                    for r in table.itertuples()]})


# merge_claim's two checks, named for what they test: a lower loss that is not significant is no gain.
GAINS = "gains Platypus's (Open-Platypus loss significantly lower)"
KEEPS = "keeps the partner's (own-domain loss not significantly higher)"


def merge_claim(table: pd.DataFrame) -> pd.DataFrame:
    """Per merge, the paper's claim in two checks against its partner: Open-Platypus held-out loss significantly
    lower (gains Platypus's skill), and loss on the partner's own domain not significantly higher (keeps the
    partner's). A check without its domain in the table is left empty."""
    merges = table[table["role"] == "merge"]
    out = []
    for merge, rows in merges.groupby("model", sort=False):
        by_domain = rows.set_index("domain")
        partner = rows["compare_to"].iloc[0]
        own = f"{PARTNER_DOMAIN}{partner}"
        gains = by_domain.loc[OPEN_PLATYPUS] if OPEN_PLATYPUS in by_domain.index else None
        keeps = by_domain.loc[own] if own in by_domain.index else None
        out.append({"merge": merge, "partner": partner,
                    GAINS: None if gains is None else bool(gains["significant"] and gains["delta"] < 0),
                    KEEPS: None if keeps is None else not bool(keeps["significant"] and keeps["delta"] > 0)})
    return pd.DataFrame(out, columns=["merge", "partner", GAINS, KEEPS])

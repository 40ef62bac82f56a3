"""Paired statistics for comparing two models on the same items (questions, held-out rows).

Two models scored on the same questions are not independent samples: most questions are easy or hard for both, so
the uncertainty of their difference is far smaller than two independent standard errors suggest. Every comparison
here is therefore made on the per-item differences ``d_i = new_i - old_i`` (docs/evaluation.md, "Paired
comparisons"):

- the delta is ``mean(d)``; its 95% interval is a percentile bootstrap over items (items resampled with
  replacement, both models' values kept together), seeded from the run's seed;
- for 0/1 accuracies, an exact McNemar test: under "no change", each of the ``b + c`` discordant items (right for
  one model only) is equally likely to favour either, so ``b ~ Binomial(b + c, 1/2)``, two-sided;
- for continuous per-item values (TruthfulQA MC2, per-token losses), the bootstrap's two-sided p-value: twice the
  share of resampled deltas on the far side of 0 (floored at one resample);
- Holm's step-down adjustment over all the tests of one table, so "significant" holds for the family.

A single proportion (the share of same-topic questions a contamination detector removes) gets a Wilson score
interval, which unlike the normal approximation stays inside [0, 1] and keeps its coverage near 0 and 1, where a
detector's error rates live.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
CI_LEVEL = 0.95


def bootstrap_deltas(d: Sequence[float], seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> np.ndarray:
    """``resamples`` bootstrap replicates of ``mean(d)``; the generator is seeded, so the replicates are fixed."""
    d = np.asarray(d, dtype=float)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError(f"paired differences: expected a non-empty 1-D sequence, got shape {d.shape}")
    rng = np.random.default_rng(seed)
    # Chunked so that a 14,000-question MMLU run does not allocate 140 million indices at once.
    out = np.empty(resamples)
    chunk = max(1, 2_000_000 // len(d))
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        out[start:stop] = d[rng.integers(0, len(d), size=(stop - start, len(d)))].mean(axis=1)
    return out


def _interval(reps: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(reps, [tail, 100 - tail])
    return float(low), float(high)


def _p_value(reps: np.ndarray, d: np.ndarray) -> float:
    if not np.any(d):
        return 1.0
    share = min(np.mean(reps <= 0), np.mean(reps >= 0))
    return float(min(1.0, max(2 * share, 1 / len(reps))))


def paired_bootstrap_ci(d: Sequence[float], seed: int, level: float = CI_LEVEL,
                        resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(d)`` at ``level`` (the same seed gives the same interval)."""
    return _interval(bootstrap_deltas(d, seed, resamples), level)


def bootstrap_p_value(d: Sequence[float], seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> float:
    """Two-sided bootstrap p-value for ``mean(d) == 0``: twice the share of replicates on the far side of 0.

    Floored at ``1 / resamples`` (a bootstrap cannot show a smaller p) and capped at 1; 1 when every ``d`` is 0.
    """
    d = np.asarray(d, dtype=float)
    return 1.0 if not np.any(d) else _p_value(bootstrap_deltas(d, seed, resamples), d)


def paired_bootstrap(d: Sequence[float], seed: int, level: float = CI_LEVEL,
                     resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float, float]:
    """(low, high, p): :func:`paired_bootstrap_ci` and :func:`bootstrap_p_value` from one set of replicates (the
    same seed draws the same replicates, so the numbers equal the two calls' while resampling only once)."""
    d = np.asarray(d, dtype=float)
    reps = bootstrap_deltas(d, seed, resamples)
    return (*_interval(reps, level), _p_value(reps, d))


def wilson_interval(k: int, n: int, level: float = CI_LEVEL) -> tuple[float, float]:
    """Wilson score interval of the proportion ``k / n`` at ``level``; (nan, nan) when ``n`` is 0."""
    if not 0 <= k <= n:
        raise ValueError(f"Wilson interval: expected 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p, z2 = k / n, z * z / n
    centre = (p + z2 / 2) / (1 + z2)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n)) / (1 + z2)
    return (0.0 if k == 0 else centre - half), (1.0 if k == n else centre + half)


def mcnemar_exact(new: Sequence[float], old: Sequence[float]) -> tuple[int, int, float]:
    """Exact two-sided McNemar test on paired 0/1 outcomes; returns (b, c, p).

    ``b`` counts items only ``new`` gets right, ``c`` items only ``old`` gets right. The p-value is the two-sided
    exact binomial test of ``b`` out of ``b + c`` at 1/2: ``min(1, 2 * P(X <= min(b, c)))``; 1 without discordant
    items. Written out (three lines) rather than taken from scipy, which the project does not pin.
    """
    new, old = np.asarray(new, dtype=float), np.asarray(old, dtype=float)
    if new.shape != old.shape:
        raise ValueError(f"McNemar: the two models have {len(new)} and {len(old)} outcomes; expected the same items")
    if not np.isin(new, (0, 1)).all() or not np.isin(old, (0, 1)).all():
        raise ValueError("McNemar: outcomes must be 0 or 1 (an accuracy per question)")
    b = int(np.sum((new == 1) & (old == 0)))
    c = int(np.sum((new == 0) & (old == 1)))
    n = b + c
    if n == 0:
        return b, c, 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
    return b, c, min(1.0, 2 * tail)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order; NaNs are left out and kept."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(p), np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()

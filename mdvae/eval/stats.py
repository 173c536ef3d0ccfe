"""Standard errors of the evaluation's shares and accuracies.

Shares are pooled over items (frames, clips) that come in clusters (the frames of one clip,
of one swapped pair): frames of a clip are not independent, so a binomial SE over frames
would flatter. `ratio_se` treats each cluster as the unit, the usual linearised
(cluster-robust) SE of a ratio of sums; with one item per cluster it is the binomial SE
(up to n / (n - 1)). `bootstrap_se` serves statistics that are not ratios of sums
(balanced accuracy), resampling clusters with replacement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def binomial_se(p: float, n: int) -> float:
    """SE of a share p of n independent items: sqrt(p (1 - p) / n)."""
    if n <= 0 or not np.isfinite(p):
        return float("nan")
    return float(np.sqrt(p * (1.0 - p) / n))


def ratio_se(hits: Sequence[float], totals: Sequence[float]) -> float:
    """SE of sum(hits) / sum(totals) over clusters (hits[i] of totals[i] items in cluster i):
    sqrt(C / (C - 1) * sum_i (hits_i - p totals_i)^2) / sum(totals), C clusters with items."""
    hits, totals = np.asarray(hits, np.float64), np.asarray(totals, np.float64)
    keep = totals > 0
    hits, totals = hits[keep], totals[keep]
    c = len(totals)
    if c < 2:
        return float("nan")
    p = hits.sum() / totals.sum()
    return float(np.sqrt(c / (c - 1) * ((hits - p * totals) ** 2).sum()) / totals.sum())


def se_over_speakers(values: Sequence[float], speakers: Sequence[str]) -> tuple[float, int]:
    """SE of the mean of per-item `values` with the speakers as the unit (`ratio_se` over
    each speaker's sum and count: items of one speaker are not independent), and how many
    speakers there are."""
    names, index = np.unique(np.asarray(speakers), return_inverse=True)
    sums = np.bincount(index, weights=np.asarray(values, np.float64), minlength=len(names))
    return ratio_se(sums, np.bincount(index, minlength=len(names))), len(names)


def paired_difference(d: Sequence[float], speakers: Sequence[str] | None = None) -> dict:
    """Mean of per-item differences `d` between two readings of the same items, with its SE
    over items ("se") and, given each item's speaker, with the speakers as the unit
    ("se_speakers", `se_over_speakers`)."""
    d = np.asarray(d, np.float64)
    out: dict = {
        "difference": float(d.mean()),
        "se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan"),
    }
    if speakers is not None:
        se, n = se_over_speakers(d, speakers)
        out.update(se_speakers=se, speakers=n)
    return out


def bootstrap_se(
    statistic: Callable[[np.ndarray], float],
    n_clusters: int,
    *,
    reps: int = 200,
    seed: int = 0,
) -> float:
    """SE of statistic(cluster indices) over `reps` resamples of the clusters with
    replacement (the statistic is given the resampled indices, repeats included)."""
    if n_clusters < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n_clusters, n_clusters)) for _ in range(reps)]
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def mean_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (the spread over seeds or draws; 0 for one)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if not len(v):
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "n": int(len(v))}

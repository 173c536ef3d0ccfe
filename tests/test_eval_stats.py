import numpy as np
import pytest

from mdvae.eval import stats


def test_binomial_se_of_a_known_case():
    assert stats.binomial_se(0.5, 100) == pytest.approx(0.05)
    assert stats.binomial_se(0.477, 176) == pytest.approx(0.0377, abs=1e-4)  # the tie
    assert np.isnan(stats.binomial_se(0.5, 0))


def test_ratio_se_is_binomial_with_one_item_per_cluster():
    hits = np.array([1] * 30 + [0] * 70)
    p = 0.3
    se = stats.ratio_se(hits, np.ones(100))
    assert se == pytest.approx(np.sqrt(p * (1 - p) / 99))  # binomial, up to n / (n - 1)


def test_ratio_se_counts_clusters_not_frames():
    # two clips of 50 frames: one read right throughout, one wrong throughout. Over frames
    # a binomial SE would say 0.05; there are really two observations.
    se = stats.ratio_se([50, 0], [50, 50])
    assert se == pytest.approx(0.5)
    assert stats.ratio_se([50, 0], [50, 50]) > 5 * stats.binomial_se(0.5, 100)
    # clusters without items do not count, and one cluster has no SE
    assert stats.ratio_se([50, 0, 0], [50, 50, 0]) == pytest.approx(0.5)
    assert np.isnan(stats.ratio_se([3], [4]))


def test_bootstrap_se_of_a_mean_is_close_to_the_analytic_one():
    x = np.random.default_rng(0).normal(size=400)
    se = stats.bootstrap_se(lambda idx: x[idx].mean(), len(x), reps=400, seed=1)
    assert se == pytest.approx(x.std(ddof=1) / np.sqrt(len(x)), rel=0.15)


def test_mean_spread_over_seeds():
    assert stats.mean_spread([0.4, 0.5, 0.6]) == {"mean": pytest.approx(0.5),
                                                  "std": pytest.approx(0.1), "n": 3}
    assert stats.mean_spread([0.4])["std"] == 0.0
    assert stats.mean_spread([None, float("nan")])["n"] == 0

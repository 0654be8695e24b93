"""Known answers for the window bootstrap, the Multi-Bootstrap and 2x2-table statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seedscope.core.errors import SeedscopeError
from seedscope.core.stats import (
    bh_adjust,
    bootstrap_mean,
    bootstrap_pearson,
    bootstrap_weights,
    multi_bootstrap,
    odds_ratio_test,
    proportion_ci,
    resample_windows,
)


def _tiny(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(7, 5))
    y = 0.5 * x + rng.normal(size=(7, 5))
    x[:, 0] = np.nan  # position 0: no log-prob
    y[:, 0] = np.nan
    y[3, 2] = np.nan
    return x, y


def test_window_bootstrap_matches_plain_loops():
    x, y = _tiny()
    n_boot, seed = 60, 11
    idx = np.random.default_rng(seed).integers(0, 7, size=(n_boot, 7))
    slow_mean, slow_r = [], []
    for b in range(n_boot):
        xs = np.concatenate([x[i] for i in idx[b]])
        ys = np.concatenate([y[i] for i in idx[b]])
        slow_mean.append(np.mean(xs[np.isfinite(xs)]))
        both = np.isfinite(xs) & np.isfinite(ys)
        slow_r.append(np.corrcoef(xs[both], ys[both])[0, 1])
    fast_mean = bootstrap_mean(x, n_boot=n_boot, seed=seed)
    fast_r = bootstrap_pearson(x, y, n_boot=n_boot, seed=seed)
    np.testing.assert_allclose(fast_mean.replicates, slow_mean, rtol=1e-10)
    np.testing.assert_allclose(fast_r.replicates, slow_r, rtol=1e-9)
    np.testing.assert_allclose(
        [fast_mean.low, fast_mean.high], np.percentile(slow_mean, [2.5, 97.5]), rtol=1e-10
    )
    np.testing.assert_allclose(
        [fast_r.low, fast_r.high], np.percentile(slow_r, [2.5, 97.5]), rtol=1e-9
    )
    both = np.isfinite(x) & np.isfinite(y)
    assert fast_r.estimate == pytest.approx(np.corrcoef(x[both], y[both])[0, 1], rel=1e-10)
    assert fast_mean.estimate == pytest.approx(np.nanmean(x), rel=1e-12)


def test_weights_count_the_drawn_windows():
    idx = resample_windows(9, 5, seed=4)
    w = bootstrap_weights(9, 5, seed=4)
    for b in range(5):
        np.testing.assert_array_equal(w[b], np.bincount(idx[b], minlength=9))
    np.testing.assert_array_equal(w.sum(axis=1), np.full(5, 9))


@pytest.mark.parametrize(("window_sd", "expected_ratio"), [(0.0, 1.0), (0.1**0.5, 10**0.5)])
def test_window_ci_widens_by_the_design_effect(window_sd, expected_ratio):
    # x = window effect u (var 0.1) + token noise (var 1), 100 tokens per window:
    # intra-window correlation 0.1/1.1, design effect 1 + 99 * 0.1/1.1 = 10 -> CI x sqrt(10).
    rng = np.random.default_rng(0)
    n_w, m = 200, 100
    x = rng.normal(size=(n_w, 1)) * window_sd + rng.normal(size=(n_w, m))
    res = bootstrap_mean(x, n_boot=2000, seed=1)
    naive = 2 * 1.959964 * x.std(ddof=1) / math.sqrt(x.size)
    assert (res.high - res.low) / naive == pytest.approx(expected_ratio, rel=0.2)
    assert res.low < x.mean() < res.high


def test_odds_ratio_ci_and_fisher_by_hand():
    a, b, c, d = 12, 5, 3, 20
    out = odds_ratio_test(a, b, c, d)
    se = math.sqrt(1 / 12 + 1 / 5 + 1 / 3 + 1 / 20)
    assert out["odds_ratio"] == pytest.approx(12 * 20 / (5 * 3))
    assert out["ci_low"] == pytest.approx(math.exp(math.log(16) - 1.959964 * se), rel=1e-5)
    assert out["ci_high"] == pytest.approx(math.exp(math.log(16) + 1.959964 * se), rel=1e-5)

    # Fisher: hypergeometric over tables with the same margins; sum the ones at most as likely.
    row1, col1, n = a + b, a + c, a + b + c + d

    def prob(x: int) -> float:
        return math.comb(row1, x) * math.comb(n - row1, col1 - x) / math.comb(n, col1)

    p_obs = prob(a)
    support = range(max(0, col1 - (n - row1)), min(row1, col1) + 1)
    p_hand = sum(prob(x) for x in support if prob(x) <= p_obs * (1 + 1e-7))
    assert out["p_value"] == pytest.approx(p_hand, rel=1e-9)


def test_odds_ratio_haldane_when_a_cell_is_zero():
    out = odds_ratio_test(0, 10, 5, 5)
    est = (0.5 * 5.5) / (10.5 * 5.5)
    se = math.sqrt(1 / 0.5 + 1 / 10.5 + 1 / 5.5 + 1 / 5.5)
    assert out["odds_ratio"] == pytest.approx(est)
    assert out["ci_low"] == pytest.approx(est * math.exp(-1.959964 * se), rel=1e-5)
    assert out["ci_high"] == pytest.approx(est * math.exp(1.959964 * se), rel=1e-5)


def test_bh_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.20 -> p*m/rank = .04, .06, .0533, .2 -> running min from top.
    adj = bh_adjust([0.01, 0.04, 0.03, 0.20, np.nan])
    np.testing.assert_allclose(adj[:4], [0.04, 0.16 / 3, 0.16 / 3, 0.20], rtol=1e-12)
    assert np.isnan(adj[4])


def test_proportion_ci_wilson_by_hand():
    k, n, z = 7, 20, 1.959964
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    frac, low, high = proportion_ci(k, n)
    assert frac == pytest.approx(0.35)
    assert (low, high) == pytest.approx((centre - half, centre + half), rel=1e-5)


def _suite(size_effect: float, seed: int = 0) -> tuple[dict[str, np.ndarray], list, list]:
    """8 runs (4 small, 4 medium) sharing token difficulty; each run has its own offset
    (sd 0.05) and token noise; medium runs are better by `size_effect` nats."""
    rng = np.random.default_rng(seed)
    n_w, m = 200, 100
    difficulty = -3 + rng.normal(size=(n_w, 1)) * 0.5 + rng.normal(size=(n_w, m))
    values = {}
    for size, shift in (("small", 0.0), ("medium", size_effect)):
        for s in range(4):
            lp = difficulty + shift + rng.normal() * 0.05 + rng.normal(size=(n_w, m)) * 0.3
            lp[:, 0] = np.nan
            values[f"{size}-{s}"] = lp
    small = [f"small-{s}" for s in range(4)]
    medium = [f"medium-{s}" for s in range(4)]
    return values, small, medium


def test_multi_bootstrap_recovers_a_planted_size_effect():
    values, small, medium = _suite(size_effect=0.3)
    out = multi_bootstrap(values, medium, small, n_boot=1000, seed=2)
    assert out["estimate"] == pytest.approx(0.3, abs=0.1)
    assert out["ci_low"] <= 0.3 <= out["ci_high"]
    assert out["ci_low"] > 0
    assert out["mean_a"] - out["mean_b"] == pytest.approx(out["estimate"])
    # Paired by seed index: same planted effect.
    paired = multi_bootstrap(values, medium, small, paired=True, n_boot=1000, seed=2)
    assert paired["ci_low"] <= 0.3 <= paired["ci_high"]
    assert multi_bootstrap(values, medium, small, n_boot=1000, seed=2) == out


def test_multi_bootstrap_null_effect_covers_zero():
    values, small, medium = _suite(size_effect=0.0, seed=5)
    out = multi_bootstrap(values, medium, small, n_boot=1000, seed=3)
    assert out["ci_low"] <= 0.0 <= out["ci_high"]
    assert out["estimate"] == pytest.approx(0.0, abs=0.1)


def test_multi_bootstrap_category_contrast_paired():
    values, small, medium = _suite(size_effect=0.0, seed=6)
    runs = small + medium
    cat = np.zeros((200, 100), dtype=bool)
    cat[:, 1::2] = True  # odd positions: category X, planted 0.5 nats easier
    for r in runs:
        values[r] = values[r] + np.where(cat, 0.5, 0.0)
    out = multi_bootstrap(values, runs, runs, mask_a=cat, mask_b=~cat, paired=True, seed=1)
    assert out["ci_low"] <= 0.5 <= out["ci_high"]
    assert out["estimate"] == pytest.approx(0.5, abs=0.05)


def test_multi_bootstrap_rejects_unequal_paired_groups():
    values, small, medium = _suite(size_effect=0.0)
    with pytest.raises(SeedscopeError, match="equal groups"):
        multi_bootstrap(values, small[:3], medium, paired=True)

"""Uncertainty for token-level statistics: resample whole eval windows (and seeds), never tokens.

Tokens in one window share context, so they are not independent; every confidence interval
here comes from a window bootstrap. A statistic is written as a smooth function of *sums over
windows* (means, ratios, correlations, variances), so one replicate is a weighted sum of
per-window totals (`weights @ per_window`) instead of a pass over the tokens: a 1000-replicate
bootstrap over 1M tokens costs one small matrix product.

Replicate `b` draws `n_windows` windows with replacement; the draws of all replicates are
`numpy.random.default_rng(seed).integers(0, n_windows, size=(n_boot, n_windows))` (row b =
replicate b). That contract lets a plain-loop implementation reproduce the numbers exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats

from seedscope.core.errors import SeedscopeError

_Z_CACHE: dict[float, float] = {}


def log_step(steps: Sequence[int] | np.ndarray) -> np.ndarray:
    """The step axis of every fit over training (trajectories, induction): `log(step + 1)`."""
    return np.log(np.asarray(steps, dtype=float) + 1.0)


def _z(ci: float) -> float:
    if not 0 < ci < 1:
        raise SeedscopeError(f"Confidence level {ci} is not in (0, 1).", "use e.g. ci=0.95.")
    if ci not in _Z_CACHE:
        _Z_CACHE[ci] = float(scipy.stats.norm.ppf(0.5 + ci / 2))
    return _Z_CACHE[ci]


# --------------------------------------------------------------------------- window bootstrap


def resample_windows(n_windows: int, n_boot: int, seed: int) -> np.ndarray:
    """Window indices of every replicate, `[n_boot, n_windows]` (row b = replicate b's draws)."""
    if n_windows < 1:
        raise SeedscopeError("There are no eval windows to resample.", "pass non-empty arrays.")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_windows, size=(n_boot, n_windows))


def bootstrap_weights(n_windows: int, n_boot: int, seed: int) -> np.ndarray:
    """How often each window is drawn in each replicate, float64 `[n_boot, n_windows]`.

    Same draws as `resample_windows(n_windows, n_boot, seed)`; reuse one weight matrix for
    every statistic of an analysis (common random numbers across pairs and categories).
    """
    return _counts(resample_windows(n_windows, n_boot, seed), n_windows)


def _counts(idx: np.ndarray, n_windows: int) -> np.ndarray:
    """Indices `[n_boot, n_windows]` -> draw counts per window, float64 `[n_boot, n_windows]`."""
    n_boot = idx.shape[0]
    weights = np.empty((n_boot, n_windows), dtype=np.float64)
    chunk = max(1, 2**24 // max(n_windows, 1))
    for start in range(0, n_boot, chunk):
        part = idx[start : start + chunk]
        flat = part + (np.arange(part.shape[0])[:, None] * n_windows)
        counts = np.bincount(flat.ravel(), minlength=part.shape[0] * n_windows)
        weights[start : start + part.shape[0]] = counts.reshape(part.shape[0], n_windows)
    return weights


@dataclass(frozen=True)
class BootstrapResult:
    """A point estimate with a percentile CI; arrays share the statistic's shape."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    replicates: np.ndarray  # [n_boot, *statistic shape]

    def as_tuple(self) -> tuple[float, float, float]:
        """(estimate, low, high) as floats, for a scalar statistic."""
        return float(self.estimate), float(self.low), float(self.high)


def window_bootstrap(
    per_window: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    weights: np.ndarray | None = None,
) -> BootstrapResult:
    """Percentile CI of a statistic of window totals, resampling whole windows.

    per_window: `[n_windows, *k]` per-window sums (e.g. `[n_windows, 2]` = sum, count).
    statistic: maps totals `[..., *k]` (any leading batch dims) to the statistic `[..., *s]`;
        it is applied to the sum over all windows (the estimate) and to every replicate.
    weights: optional precomputed `bootstrap_weights(n_windows, n_boot, seed)`.
    n_boot=0 gives NaN bounds (estimate only).
    """
    per_window = np.asarray(per_window, dtype=np.float64)
    n_windows = per_window.shape[0]
    _z(ci)
    estimate = np.asarray(statistic(per_window.sum(axis=0)))
    if weights is None:
        if n_boot == 0:
            nan = np.full_like(estimate, np.nan, dtype=np.float64)
            return BootstrapResult(estimate, nan, nan.copy(), np.empty((0, *estimate.shape)))
        weights = bootstrap_weights(n_windows, n_boot, seed)
    if weights.shape[1] != n_windows:
        raise SeedscopeError(
            f"Bootstrap weights cover {weights.shape[1]} windows, the data {n_windows}.",
            "build the weights with bootstrap_weights(n_windows, n_boot, seed) for this data.",
        )
    totals = np.tensordot(weights, per_window, axes=(1, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = np.asarray(statistic(totals))
    alpha = (1 - ci) / 2
    low, high = np.nanpercentile(reps, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return BootstrapResult(estimate, low, high, reps)


def masked_window_sums(values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-window (sum, count) of finite `values` under `mask`: `[n_windows, window]` ->
    `[n_windows, 2]` float64."""
    values = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(values)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool).reshape(values.shape)
    return np.stack([np.where(keep, values, 0.0).sum(axis=1), keep.sum(axis=1)], axis=1)


def ratio_statistic(totals: np.ndarray) -> np.ndarray:
    """Mean from (sum, count) totals `[..., 2]`."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return totals[..., 0] / totals[..., 1]


def bootstrap_mean(
    values: np.ndarray,
    mask: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    weights: np.ndarray | None = None,
) -> BootstrapResult:
    """Token-mean of finite `values` `[n_windows, window]` (under `mask`) with a window CI."""
    return window_bootstrap(
        masked_window_sums(values, mask), ratio_statistic, n_boot, seed, ci, weights
    )


def pair_moments(x: np.ndarray, y: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per-window moments `[n_windows, 6]` = (n, sx, sy, sxx, syy, sxy) of x, y `[n_windows,
    window]` over `keep`; x and y should be centred (by their overall mean) for accuracy."""
    xz = np.where(keep, x, 0.0)
    yz = np.where(keep, y, 0.0)
    return np.stack(
        [
            keep.sum(axis=1),
            xz.sum(axis=1),
            yz.sum(axis=1),
            (xz * xz).sum(axis=1),
            (yz * yz).sum(axis=1),
            (xz * yz).sum(axis=1),
        ],
        axis=1,
    ).astype(np.float64)


def pearson_statistic(totals: np.ndarray) -> np.ndarray:
    """Pearson r from moment totals `[..., 6]` (n, sx, sy, sxx, syy, sxy)."""
    n, sx, sy, sxx, syy, sxy = np.moveaxis(totals, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sy / n
        return cov / np.sqrt((sxx - sx * sx / n) * (syy - sy * sy / n))


def bootstrap_pearson(
    x: np.ndarray,
    y: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    weights: np.ndarray | None = None,
) -> BootstrapResult:
    """Pearson r of x and y `[n_windows, window]` over tokens finite in both, window CI."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    xc = x - x[keep].mean()
    yc = y - y[keep].mean()
    return window_bootstrap(
        pair_moments(xc, yc, keep), pearson_statistic, n_boot, seed, ci, weights
    )


# --------------------------------------------------------------------------- multi-bootstrap


def multi_bootstrap(
    values: Mapping[str, np.ndarray],
    group_a: Sequence[str],
    group_b: Sequence[str],
    mask_a: np.ndarray | None = None,
    mask_b: np.ndarray | None = None,
    paired: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, float]:
    """The Multi-Bootstrap (Sellam et al. 2022): E[theta_a - theta_b] with a CI over seeds
    AND eval windows.

    values: run -> `[n_windows, window]` per-token metric (e.g. log-prob; NaN = no token).
    theta_g = mean over the runs (seeds) of group g of the token-mean of the metric over the
    tokens in `mask_g` (default all). Each replicate draws windows with replacement (shared by
    both groups, since the eval set is shared) and runs with replacement: unpaired, each group
    on its own; `paired=True`, run i of group a goes with run i of group b (e.g. the same seed
    at two sizes, or the same runs on two token categories: group_a == group_b with masks).
    Returns estimate (on all runs and windows), ci_low, ci_high, mean_a, mean_b, p_value (two-
    sided bootstrap p of difference = 0), n_runs_a, n_runs_b, n_boot, paired.
    """
    group_a, group_b = list(group_a), list(group_b)
    missing = [r for r in group_a + group_b if r not in values]
    if missing:
        raise SeedscopeError(
            f"Runs {missing} are not in the values.", f"use runs from {sorted(values)}."
        )
    if not group_a or not group_b:
        raise SeedscopeError("A multi-bootstrap group has no runs.", "give runs in both groups.")
    if paired and len(group_a) != len(group_b):
        raise SeedscopeError(
            f"Paired multi-bootstrap needs equal groups, got {len(group_a)} and {len(group_b)}.",
            "list the runs of both groups in matching order (e.g. by seed), or paired=False.",
        )
    _z(ci)
    shape = np.shape(values[group_a[0]])
    n_windows = shape[0]

    def sums(group: list[str], mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        per = np.stack([masked_window_sums(values[r], mask) for r in group])  # [runs, win, 2]
        return per[..., 0], per[..., 1]

    s_a, c_a = sums(group_a, mask_a)
    s_b, c_b = sums(group_b, mask_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_a = float(np.mean(s_a.sum(1) / c_a.sum(1)))
        mean_b = float(np.mean(s_b.sum(1) / c_b.sum(1)))

    # The same resampling as every seed statistic of analyses 1-3: window weights
    # (`bootstrap_weights`) and run counts drawn within each group (`resample_runs_within`).
    rng = np.random.default_rng(seed)
    w = bootstrap_weights(n_windows, n_boot, int(rng.integers(2**31)))
    n_a, n_b = len(group_a), len(group_b)
    if paired:
        count_a = resample_runs_within([list(range(n_a))], n_a, n_boot, rng)
        count_b = count_a
    else:
        both = resample_runs_within(
            [list(range(n_a)), list(range(n_a, n_a + n_b))], n_a + n_b, n_boot, rng
        )
        count_a, count_b = both[:, :n_a], both[:, n_a:]

    with np.errstate(invalid="ignore", divide="ignore"):
        run_means_a = (w @ s_a.T) / (w @ c_a.T)  # [n_boot, runs_a]
        run_means_b = (w @ s_b.T) / (w @ c_b.T)
    theta_a = np.where(count_a > 0, run_means_a * count_a, 0.0).sum(axis=1) / n_a
    theta_b = np.where(count_b > 0, run_means_b * count_b, 0.0).sum(axis=1) / n_b
    diff = theta_a - theta_b
    alpha = (1 - ci) / 2
    low, high = np.nanpercentile(diff, [100 * alpha, 100 * (1 - alpha)])
    finite = diff[np.isfinite(diff)]
    p = min(1.0, 2 * min(np.mean(finite <= 0), np.mean(finite >= 0))) if finite.size else np.nan
    return {
        "estimate": mean_a - mean_b,
        "ci_low": float(low),
        "ci_high": float(high),
        "mean_a": mean_a,
        "mean_b": mean_b,
        "p_value": float(p),
        "n_runs_a": len(group_a),
        "n_runs_b": len(group_b),
        "n_boot": n_boot,
        "paired": paired,
    }


# --------------------------------------------------------------------------- 2x2 tables


def odds_ratio_ci(
    a: np.ndarray | float,
    b: np.ndarray | float,
    c: np.ndarray | float,
    d: np.ndarray | float,
    ci: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Odds ratio (a*d)/(b*c) of 2x2 tables [[a, b], [c, d]] with a Woolf (log) CI.

    Vectorised over tables. A table with a zero cell gets the Haldane correction (+0.5 on
    every cell of that table) for both the ratio and its CI.
    Returns (odds_ratio, low, high), arrays of the tables' shape.
    """
    cells = np.stack(np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a, b, c, d))))
    if np.any(cells < 0):
        raise SeedscopeError("A 2x2 table has a negative count.", "pass counts >= 0.")
    cells = np.where(np.any(cells == 0, axis=0), cells + 0.5, cells)
    a_, b_, c_, d_ = cells
    log_or = np.log(a_) + np.log(d_) - np.log(b_) - np.log(c_)
    se = np.sqrt(1 / a_ + 1 / b_ + 1 / c_ + 1 / d_)
    z = _z(ci)
    return np.exp(log_or), np.exp(log_or - z * se), np.exp(log_or + z * se)


def fisher_p(
    a: np.ndarray | float, b: np.ndarray | float, c: np.ndarray | float, d: np.ndarray | float
) -> np.ndarray:
    """Two-sided Fisher exact p of 2x2 tables [[a, b], [c, d]] (scipy), vectorised by a loop."""
    cells = np.stack(np.broadcast_arrays(*(np.asarray(v) for v in (a, b, c, d))))
    flat = cells.reshape(4, -1).astype(np.int64)
    out = np.array(
        [scipy.stats.fisher_exact([[t[0], t[1]], [t[2], t[3]]]).pvalue for t in flat.T],
        dtype=np.float64,
    )
    return out.reshape(cells.shape[1:])


def odds_ratio_test(a: int, b: int, c: int, d: int, ci: float = 0.95) -> dict[str, float]:
    """One 2x2 table [[a, b], [c, d]]: odds ratio, Woolf CI (Haldane if a zero cell), Fisher p."""
    value, low, high = odds_ratio_ci(a, b, c, d, ci)
    return {
        "odds_ratio": float(value),
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": float(fisher_p(a, b, c, d)),
    }


def bh_adjust(p_values: np.ndarray | Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (scipy); NaN entries stay NaN and are not counted."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = scipy.stats.false_discovery_control(p[finite], method="bh")
    return out


def proportion_ci(k: int, n: int, ci: float = 0.95) -> tuple[float, float, float]:
    """Fraction k/n with a Wilson score CI (scipy); NaNs when n == 0."""
    if n == 0:
        return np.nan, np.nan, np.nan
    interval = scipy.stats.binomtest(int(k), int(n)).proportion_ci(
        confidence_level=ci, method="wilson"
    )
    return k / n, float(interval.low), float(interval.high)


# --------------------------------------------------------------------------- seeds as samples


def t_interval(
    values: np.ndarray | Sequence[float], ci: float = 0.95
) -> tuple[float, float, float]:
    """Mean of per-seed values with a Student-t CI (NaN bounds with fewer than 2 values).

    With 5 seeds a percentile bootstrap over seeds under-covers (it cannot see beyond the 5
    values drawn); the t-interval is the textbook small-sample alternative.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.nan, np.nan, np.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, np.nan, np.nan
    half = float(scipy.stats.t.ppf(0.5 + ci / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return mean, mean - half, mean + half


def resample_runs_within(
    groups: Sequence[Sequence[int]], n_runs: int, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """How often each run is drawn per replicate, `[n_boot, n_runs]`: every group (the runs of
    one size) draws as many runs as it has, with replacement, from itself only."""
    counts = np.zeros((n_boot, n_runs), dtype=np.float64)
    rows = np.arange(n_boot)[:, None]
    for group in groups:
        members = np.asarray(group, dtype=np.int64)
        if members.size == 0:
            continue
        picks = members[rng.integers(0, members.size, size=(n_boot, members.size))]
        np.add.at(counts, (np.broadcast_to(rows, picks.shape), picks), 1.0)
    return counts


def pair_replicate_mean(
    pair_replicates: np.ndarray, pairs: Sequence[tuple[int, int]], run_counts: np.ndarray
) -> np.ndarray:
    """Mean of a pair statistic over the pairs among the runs drawn in each replicate.

    pair_replicates: `[n_boot, n_pairs]` (the statistic of each pair of distinct runs on the
    replicate's windows); run_counts: `[n_boot, n_runs]` from `resample_runs_within`. A pair
    (i, j) weighs count_i * count_j; a run drawn twice is never paired with itself (its
    "agreement with itself" is not a seed pair). A replicate with no such pair is NaN.
    """
    idx = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    weights = run_counts[:, idx[:, 0]] * run_counts[:, idx[:, 1]]
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights * pair_replicates).sum(axis=1) / total, np.nan)


def wald_p(estimate: np.ndarray, replicates: np.ndarray) -> np.ndarray:
    """Two-sided p of estimate = 0 from its bootstrap standard error (normal approximation).

    Continuous p-values (a percentile p from 200 replicates cannot go below 1/200, too coarse
    for Benjamini-Hochberg over thousands of tests). A zero estimate with a zero SE (identical
    runs) gets p = 1; a non-zero one p = 0.
    """
    est = np.asarray(estimate, dtype=np.float64)
    se = quiet_nan(np.nanstd, np.asarray(replicates, dtype=np.float64), axis=0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.abs(est) / se
    p = 2 * scipy.stats.norm.sf(z)
    p = np.where(se > 0, p, np.where(est == 0, 1.0, 0.0))
    return np.where(np.isfinite(est), p, np.nan)


def quiet_nan(func: Callable[..., np.ndarray], *args: object, **kwargs: object) -> np.ndarray:
    """Call a numpy nan-function (nanstd, nanpercentile...) without its all-NaN-slice warnings:
    an empty category's statistic is NaN by design."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return func(*args, **kwargs)

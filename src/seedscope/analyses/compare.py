"""Analyses 1-2: how token-level predictions of seed runs agree, where they differ, and whether
the differences close with training.

Every input is the central table: `logprobs: dict[run -> float [n_windows, window]]`, entry
`[w, t]` = log P(token t of window w | tokens 0..t-1 of window w), so position 0 is NaN
(nothing to condition on). `meta` has one row per eval token in window-major order (row
`w * window + t`). Token index = that flat row number. All CIs come from the window bootstrap
of `seedscope.core.stats`, with one weight matrix shared by every pair and category.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from seedscope.core.errors import SeedscopeError
from seedscope.core.stats import (
    BootstrapResult,
    bh_adjust,
    bootstrap_weights,
    fisher_p,
    odds_ratio_ci,
    pair_moments,
    pair_replicate_mean,
    pearson_statistic,
    proportion_ci,
    quiet_nan,
    resample_runs_within,
    wald_p,
    window_bootstrap,
)

TopK = Callable[[str, int, int], list[tuple[str, float]]]


# --------------------------------------------------------------------------- checks, helpers


def check_logprobs(logprobs: Mapping[str, np.ndarray], min_runs: int = 2) -> tuple[int, int]:
    """Check runs share one `[n_windows, window]` shape; return it. Raises before any work."""
    if len(logprobs) < min_runs:
        raise SeedscopeError(
            f"Need at least {min_runs} runs, got {len(logprobs)}.", "pass more runs' log-probs."
        )
    shapes = {name: np.shape(arr) for name, arr in logprobs.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise SeedscopeError(
            f"Log-prob arrays must all be 2-D with one shape [n_windows, window]; got {shapes}.",
            "compute every run's log-probs on the same eval windows.",
        )
    return next(iter(shapes.values()))  # type: ignore[return-value]


def check_meta(meta: pd.DataFrame, n_tokens: int, columns: Sequence[str]) -> None:
    """Check `meta` has one row per eval token and the requested columns."""
    if len(meta) != n_tokens:
        raise SeedscopeError(
            f"Metadata has {len(meta)} rows but there are {n_tokens} eval tokens.",
            "pass the metadata of the same eval set (one row per token, window-major).",
        )
    missing = [c for c in columns if c not in meta.columns]
    if missing:
        raise SeedscopeError(
            f"Metadata lacks columns {missing}.", f"use columns from {list(meta.columns)}."
        )


def common_valid(logprobs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Tokens finite under every run, bool `[n_windows, window]` (drops position 0)."""
    arrays = list(logprobs.values())
    valid = np.isfinite(arrays[0])
    for arr in arrays[1:]:
        valid &= np.isfinite(arr)
    return valid


def position_bucket(pos: np.ndarray | pd.Series, window_len: int) -> pd.Categorical:
    """Position in window -> ordered bucket label on a base-4 scale: '0', '1-3', '4-15', ...,
    the last bucket ending at `window_len - 1`."""
    pos = np.asarray(pos)
    edges = [0, 1]
    while edges[-1] < window_len:
        edges.append(edges[-1] * 4)
    edges[-1] = window_len
    labels = [f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)]
    codes = np.searchsorted(edges, pos, side="right") - 1
    return pd.Categorical.from_codes(codes, categories=labels, ordered=True)


def _pairs(runs: Sequence[str], pairs: Sequence[tuple[str, str]] | None) -> list[tuple[str, str]]:
    if pairs is None:
        return list(itertools.combinations(runs, 2))
    bad = [p for p in pairs if p[0] not in runs or p[1] not in runs]
    if bad:
        raise SeedscopeError(f"Pairs {bad} name unknown runs.", f"use runs from {list(runs)}.")
    return [tuple(p) for p in pairs]  # type: ignore[misc]


def _feature_codes(meta: pd.DataFrame, column: str) -> tuple[np.ndarray, list[str]]:
    """Category codes (NaN is its own category) and labels of one metadata column."""
    codes, uniques = pd.factorize(meta[column], sort=True, use_na_sentinel=False)
    return codes.astype(np.int64), [str(u) for u in uniques]


def _features(
    meta: pd.DataFrame, columns: Sequence[str], window_len: int, with_position: bool
) -> list[tuple[str, np.ndarray, list[str]]]:
    out = [(c, *_feature_codes(meta, c)) for c in columns]
    if with_position:
        cat = position_bucket(np.arange(len(meta)) % window_len, window_len)
        out.append(("position", np.asarray(cat.codes, dtype=np.int64), list(cat.categories)))
    return out


def _row_index(flat: np.ndarray, window_len: int) -> dict[str, np.ndarray]:
    return {"token_index": flat, "window": flat // window_len, "pos": flat % window_len}


def _top_k(score: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the k largest finite scores, largest first, ties by index."""
    flat = np.where(np.isfinite(score), score, -np.inf).ravel()
    k = min(k, int(np.isfinite(score).sum()))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    part = np.argpartition(-flat, k - 1)[:k]
    return part[np.lexsort((part, -flat[part]))]


# --------------------------------------------------------------------------- analysis 1


def pairwise_agreement(
    logprobs: Mapping[str, np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
    sizes: Mapping[str, str] | None = None,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Agreement of every pair of runs on per-token log-probs, with window-bootstrap CIs.

    Tokens: those finite under every run (common to all pairs). Spearman is the Pearson r of
    ranks taken once on all tokens (the ranks are not recomputed per replicate).
    Columns: run_a, run_b, same_size (bool, NA without `sizes`), n_tokens, pearson(_low,
    _high), spearman(_low, _high), mean_diff(_low, _high) = mean of logprob_a - logprob_b,
    sd_diff(_low, _high).
    """
    shape = check_logprobs(logprobs)
    runs = list(logprobs)
    valid = common_valid(logprobs)
    n_tokens = int(valid.sum())
    if n_tokens < 3:
        raise SeedscopeError("Fewer than 3 tokens are finite under every run.", "check inputs.")
    weights = bootstrap_weights(shape[0], n_boot, seed) if n_boot > 0 else None

    centred, ranked, means = {}, {}, {}
    for run in runs:
        x = np.asarray(logprobs[run], dtype=np.float64)
        means[run] = float(x[valid].mean())
        centred[run] = np.where(valid, x - means[run], 0.0)
        r = np.zeros(shape)
        r[valid] = scipy.stats.rankdata(x[valid])
        ranked[run] = np.where(valid, r - (n_tokens + 1) / 2, 0.0)
    n_w = valid.sum(axis=1).astype(np.float64)
    own = {
        kind: {r: (src[r].sum(axis=1), (src[r] ** 2).sum(axis=1)) for r in runs}
        for kind, src in (("value", centred), ("rank", ranked))
    }

    def moments(kind: str, src: dict[str, np.ndarray], a: str, b: str) -> np.ndarray:
        (sx, sxx), (sy, syy) = own[kind][a], own[kind][b]
        sxy = (src[a] * src[b]).sum(axis=1)
        return np.stack([n_w, sx, sy, sxx, syy, sxy], axis=1)

    def diff_stats(totals: np.ndarray) -> np.ndarray:
        n, sx, sy, sxx, syy, sxy = np.moveaxis(totals, -1, 0)
        sd_sum, sd_sq = sx - sy, sxx + syy - 2 * sxy
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sd_sum / n
            sd = np.sqrt(np.maximum(sd_sq - sd_sum * sd_sum / n, 0) / (n - 1))
        return np.stack([mean, sd], axis=-1)

    rows = []
    for a, b in itertools.combinations(runs, 2):
        mv = moments("value", centred, a, b)
        pear = window_bootstrap(mv, pearson_statistic, n_boot, seed, ci, weights)
        spear = window_bootstrap(
            moments("rank", ranked, a, b), pearson_statistic, n_boot, seed, ci, weights
        )
        diff = window_bootstrap(mv, diff_stats, n_boot, seed, ci, weights)
        offset = means[a] - means[b]
        row = {
            "run_a": a,
            "run_b": b,
            "same_size": pd.NA if sizes is None else sizes.get(a) == sizes.get(b),
            "n_tokens": n_tokens,
            **_ci_cols("pearson", pear),
            **_ci_cols("spearman", spear),
            "mean_diff": float(diff.estimate[0]) + offset,
            "mean_diff_low": float(diff.low[0]) + offset,
            "mean_diff_high": float(diff.high[0]) + offset,
            "sd_diff": float(diff.estimate[1]),
            "sd_diff_low": float(diff.low[1]),
            "sd_diff_high": float(diff.high[1]),
        }
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["same_size"] = frame["same_size"].astype("boolean")
    return frame


def _ci_cols(name: str, res: BootstrapResult) -> dict[str, float]:
    est, low, high = res.as_tuple()
    return {name: est, f"{name}_low": low, f"{name}_high": high}


def agreement_over_training(
    logprobs_by_step: Mapping[int, Mapping[str, np.ndarray]],
    n_boot: int = 200,
    seed: int = 0,
    sizes: Mapping[str, str] | None = None,
    ci: float = 0.95,
) -> pd.DataFrame:
    """`pairwise_agreement` at every step: step -> logprobs dict; adds a `step` column."""
    if not logprobs_by_step:
        raise SeedscopeError("No steps given.", "pass {step: logprobs dict}.")
    frames = [
        pairwise_agreement(lp, n_boot=n_boot, seed=seed, sizes=sizes, ci=ci).assign(step=step)
        for step, lp in sorted(logprobs_by_step.items())
    ]
    out = pd.concat(frames, ignore_index=True)
    return out[["step", *[c for c in out.columns if c != "step"]]]


# --------------------------------------------------------------------------- outliers


def robust_fit(
    x: np.ndarray, y: np.ndarray, max_points: int = 200_000, seed: int = 0
) -> tuple[float, float]:
    """Huber regression y ~ intercept + slope * x (scikit-learn) on finite pairs; fitted on a
    seeded subsample of at most `max_points`. Returns (intercept, slope)."""
    from sklearn.linear_model import HuberRegressor

    keep = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    if keep.size < 3:
        raise SeedscopeError("Fewer than 3 finite token pairs to fit.", "check the inputs.")
    if keep.size > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_points, replace=False))
    model = HuberRegressor(max_iter=500).fit(x[keep, None].astype(np.float64), y[keep])
    return float(model.intercept_), float(model.coef_[0])


def pair_outliers(
    logprobs: Mapping[str, np.ndarray],
    run_a: str,
    run_b: str,
    k: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """Top-k tokens of one pair by |logprob_a - logprob_b| and by |residual| from the pair's
    robust linear fit logprob_b ~ c + s * logprob_a (tokens off the pair's typical relation).

    Columns: run_a, run_b, kind ('abs_diff' | 'residual'), rank (0 = most extreme),
    token_index, window, pos, logprob_a, logprob_b, diff (a - b), residual (b - fit).
    """
    _require_runs(logprobs, (run_a, run_b))
    shape = check_logprobs({r: logprobs[r] for r in (run_a, run_b)})
    x = np.asarray(logprobs[run_a], dtype=np.float64).ravel()
    y = np.asarray(logprobs[run_b], dtype=np.float64).ravel()
    intercept, slope = robust_fit(x, y, seed=seed)
    diff = x - y
    resid = y - (intercept + slope * x)
    frames = []
    for kind, score in (("abs_diff", np.abs(diff)), ("residual", np.abs(resid))):
        top = _top_k(score, k)
        frames.append(
            pd.DataFrame(
                {
                    "run_a": run_a,
                    "run_b": run_b,
                    "kind": kind,
                    "rank": np.arange(top.size),
                    **_row_index(top, shape[1]),
                    "logprob_a": x[top],
                    "logprob_b": y[top],
                    "diff": diff[top],
                    "residual": resid[top],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _require_runs(logprobs: Mapping[str, np.ndarray], runs: Sequence[str]) -> None:
    bad = [r for r in runs if r not in logprobs]
    if bad:
        raise SeedscopeError(
            f"Runs {bad} are not in the log-probs.", f"use one of {list(logprobs)}."
        )


def all_pair_outliers(
    logprobs: Mapping[str, np.ndarray], k: int = 20, seed: int = 0
) -> pd.DataFrame:
    """`pair_outliers` for every pair of runs, concatenated."""
    check_logprobs(logprobs)
    return pd.concat(
        [pair_outliers(logprobs, a, b, k, seed) for a, b in itertools.combinations(logprobs, 2)],
        ignore_index=True,
    )


def outlier_mask(
    logprobs: Mapping[str, np.ndarray],
    run_a: str,
    run_b: str,
    top_fraction: float = 0.01,
    by: str = "abs_diff",
    seed: int = 0,
) -> np.ndarray:
    """Bool `[n_windows, window]`: the `top_fraction` of finite tokens with the largest
    |logprob_a - logprob_b| (`by='abs_diff'`) or |residual| from the robust fit ('residual')."""
    if not 0 < top_fraction < 1:
        raise SeedscopeError(f"top_fraction={top_fraction} is not in (0, 1).", "use e.g. 0.01.")
    _require_runs(logprobs, (run_a, run_b))
    if by not in ("abs_diff", "residual"):
        raise SeedscopeError(f"Unknown outlier score {by!r}.", "use 'abs_diff' or 'residual'.")
    x = np.asarray(logprobs[run_a], dtype=np.float64)
    y = np.asarray(logprobs[run_b], dtype=np.float64)
    if by == "abs_diff":
        score = np.abs(x - y)
    else:
        c, s = robust_fit(x.ravel(), y.ravel(), seed=seed)
        score = np.abs(y - (c + s * x))
    finite = np.isfinite(score)
    n_top = max(1, int(round(top_fraction * finite.sum())))
    mask = np.zeros(score.size, dtype=bool)
    mask[_top_k(score, n_top)] = True
    return mask.reshape(score.shape)


def odd_one_out(logprobs: Mapping[str, np.ndarray], k: int = 20) -> pd.DataFrame:
    """Tokens where one run deviates most from the median of the other runs (needs >= 3 runs).

    For each token and run: deviation = logprob_run - median(logprob of the other runs).
    Returns the top-k tokens by the largest |deviation|, with the run that deviates, its
    log-prob, the others' median, the deviation and the runner-up run's |deviation| (how
    singular the odd one is). Columns: rank, token_index, window, pos, run, logprob,
    median_others, deviation, runner_up_abs_deviation.
    """
    shape = check_logprobs(logprobs, min_runs=3)
    runs = list(logprobs)
    stack = np.stack([np.asarray(logprobs[r], dtype=np.float32).ravel() for r in runs])
    dev = np.empty_like(stack)
    med = np.empty_like(stack)
    for i in range(len(runs)):
        med[i] = np.median(np.delete(stack, i, axis=0), axis=0)
        dev[i] = stack[i] - med[i]
    absdev = np.abs(dev)
    absdev[~np.isfinite(absdev)] = -np.inf
    order = np.argsort(-absdev, axis=0, kind="stable")
    best, second = order[0], order[1]
    cols = np.arange(stack.shape[1])
    top_score = absdev[best, cols]
    top = _top_k(np.where(np.isfinite(top_score), top_score, np.nan), k)
    who = best[top]
    return pd.DataFrame(
        {
            "rank": np.arange(top.size),
            **_row_index(top, shape[1]),
            "run": np.asarray(runs, dtype=object)[who],
            "logprob": stack[who, top].astype(np.float64),
            "median_others": med[who, top].astype(np.float64),
            "deviation": dev[who, top].astype(np.float64),
            "runner_up_abs_deviation": absdev[second[top], top].astype(np.float64),
        }
    )


def attach_context(
    table: pd.DataFrame,
    tokens: np.ndarray,
    decode: Callable[[Sequence[int]], str],
    logprobs: Mapping[str, np.ndarray],
    runs: Sequence[str] | None = None,
    topk: TopK | None = None,
    n_before: int = 30,
    marker: tuple[str, str] = ("⟦", "⟧"),
) -> pd.DataFrame:
    """Add decoded context and per-run predictions to a token table (rows with window, pos).

    tokens: eval token ids, `[n_windows, window]` or flat window-major. Adds `context`
    (up to `n_before` tokens of the same window before the target, then the target wrapped in
    `marker`) and `target`. Runs: with `runs` given, adds `logprob_<run>` (and `top_<run>`) for
    each; with `runs=None`, uses each row's own runs from its `run_a`/`run_b`/`run` columns and
    adds `top_run_a`/`top_run_b`/`top_run`. `topk(run, window, pos)` -> [(token_str, prob)] is
    the model's prediction *for* position `pos` (conditioned on tokens < pos, the same
    distribution that scored the target); it is called only for the table's rows.
    """
    shape = check_logprobs(logprobs, min_runs=1)
    tokens = np.asarray(tokens)
    if tokens.size != shape[0] * shape[1]:
        raise SeedscopeError(
            f"Token array has {tokens.size} ids, the log-probs {shape[0] * shape[1]} tokens.",
            "pass the eval tokens the log-probs were computed on.",
        )
    tokens = tokens.reshape(shape)
    missing = [c for c in ("window", "pos") if c not in table.columns]
    if missing:
        raise SeedscopeError(f"Token table lacks columns {missing}.", "pass an outlier table.")
    out = table.copy()
    contexts, targets = [], []
    for w, p in zip(out["window"].to_numpy(), out["pos"].to_numpy(), strict=True):
        before = tokens[w, max(0, p - n_before) : p].tolist()
        target = decode([int(tokens[w, p])])
        contexts.append(f"{decode(before)}{marker[0]}{target}{marker[1]}")
        targets.append(target)
    out["context"] = contexts
    out["target"] = targets
    w_idx, p_idx = out["window"].to_numpy(), out["pos"].to_numpy()
    if runs is not None:
        _require_runs(logprobs, runs)
        for run in runs:
            out[f"logprob_{run}"] = np.asarray(logprobs[run], dtype=np.float64)[w_idx, p_idx]
            if topk is not None:
                out[f"top_{run}"] = [
                    _format_top(topk(run, int(w), int(p)))
                    for w, p in zip(w_idx, p_idx, strict=True)
                ]
    elif topk is not None:
        for col in ("run_a", "run_b", "run"):
            if col in out.columns:
                out[f"top_{col}"] = [
                    _format_top(topk(str(r), int(w), int(p)))
                    for r, w, p in zip(out[col], w_idx, p_idx, strict=True)
                ]
    return out


def _format_top(pairs: list[tuple[str, float]]) -> str:
    return ", ".join(f"{tok!r} {prob:.2f}" for tok, prob in pairs)


# --------------------------------------------------------------------------- enrichment


def enrichment(
    mask: np.ndarray,
    meta: pd.DataFrame,
    columns: Sequence[str],
    valid: np.ndarray | None = None,
    window_len: int | None = None,
    min_tokens: int = 10,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Are outlier tokens (`mask`) over-represented in a metadata category?

    mask, valid: bool, flat or `[n_windows, window]` (window-major, like `meta`); only `valid`
    tokens count (pass `common_valid(logprobs)` to drop position 0). For each column and each
    category with >= `min_tokens` valid tokens, the 2x2 table (outlier yes/no x in category
    yes/no): odds ratio with Woolf CI (Haldane when a cell is 0), Fisher exact p, and the BH-
    adjusted p over all rows. With `window_len`, position in window is added as the feature
    'position' (base-4 buckets). Columns: feature, category, n_tokens, n_outliers,
    outlier_rate, odds_ratio, ci_low, ci_high, p_value, p_adjusted; sorted by odds ratio, high
    first.
    """
    check_meta(meta, np.size(mask), columns)
    mask = np.asarray(mask, dtype=bool).ravel()
    keep = np.ones_like(mask) if valid is None else np.asarray(valid, dtype=bool).ravel()
    total, total_out = int(keep.sum()), int((mask & keep).sum())
    if total_out == 0:
        raise SeedscopeError("The outlier mask selects no valid token.", "check the mask.")
    rows = []
    for feature, codes, labels in _features(meta, columns, window_len or 0, window_len is not None):
        n_in = np.bincount(codes[keep], minlength=len(labels))
        a = np.bincount(codes[keep & mask], minlength=len(labels))
        b, c = n_in - a, total_out - a
        d = (total - n_in) - c
        use = n_in >= min_tokens
        odds, low, high = odds_ratio_ci(a[use], b[use], c[use], d[use], ci)
        p = fisher_p(a[use], b[use], c[use], d[use])
        for i, j in enumerate(np.flatnonzero(use)):
            rows.append(
                {
                    "feature": feature,
                    "category": labels[j],
                    "n_tokens": int(n_in[j]),
                    "n_outliers": int(a[j]),
                    "outlier_rate": a[j] / n_in[j],
                    "odds_ratio": float(odds[i]),
                    "ci_low": float(low[i]),
                    "ci_high": float(high[i]),
                    "p_value": float(p[i]),
                }
            )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_adjusted"] = bh_adjust(out["p_value"].to_numpy())
    return out.sort_values(["odds_ratio", "p_value"], ascending=[False, True], ignore_index=True)


# --------------------------------------------------------------------------- capability gaps


def capability_gaps(
    logprobs: Mapping[str, np.ndarray],
    meta: pd.DataFrame,
    columns: Sequence[str],
    pairs: Sequence[tuple[str, str]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    min_windows: int = 5,
    with_position: bool = False,
) -> pd.DataFrame:
    """Per pair and per metadata category: mean logprob_a - logprob_b with a window CI.

    Every gap is tested (gap = 0, normal approximation with its bootstrap SE,
    `stats.wald_p`); `p_adjusted` is Benjamini-Hochberg over all gaps of the call (one step's
    tests); a gap is `significant` when p_adjusted < 1 - ci and the category spans >=
    `min_windows` windows ("something run a does and run b does not", or the reverse when
    negative). Tokens: finite under both runs. Columns: run_a, run_b, feature, category,
    n_tokens, n_windows, mean_a, mean_b, gap, gap_low, gap_high, p_value, p_adjusted,
    significant, better (run with the higher mean log-prob when significant, else None).
    """
    shape = check_logprobs(logprobs)
    check_meta(meta, shape[0] * shape[1], columns)
    pair_list = _pairs(list(logprobs), pairs)
    n_windows, window_len = shape
    weights = bootstrap_weights(n_windows, n_boot, seed) if n_boot > 0 else None
    features = _features(meta, columns, window_len, with_position)
    win = np.repeat(np.arange(n_windows), window_len)
    rows = []
    for a, b in pair_list:
        x = np.asarray(logprobs[a], dtype=np.float64).ravel()
        y = np.asarray(logprobs[b], dtype=np.float64).ravel()
        keep = np.isfinite(x) & np.isfinite(y)
        for feature, codes, labels in features:
            n_cat = len(labels)
            key = win[keep] * n_cat + codes[keep]
            size = n_windows * n_cat

            def per(wts: np.ndarray | None, key: np.ndarray = key, size: int = size) -> np.ndarray:
                return np.bincount(key, weights=wts, minlength=size).reshape(n_windows, -1)

            counts = per(None)
            sums = np.stack([per((x - y)[keep]), counts], axis=-1)  # [n_windows, n_cat, 2]
            res = window_bootstrap(sums, lambda t: t[..., 0] / t[..., 1], n_boot, seed, ci, weights)
            sum_a, sum_b = per(x[keep]).sum(0), per(y[keep]).sum(0)
            n_tok = counts.sum(0)
            n_win = (counts > 0).sum(0)
            p_gap = wald_p(res.estimate, res.replicates) if n_boot > 0 else np.full(n_cat, np.nan)
            for j in np.flatnonzero(n_tok > 0):
                gap = float(res.estimate[j])
                rows.append(
                    {
                        "run_a": a,
                        "run_b": b,
                        "feature": feature,
                        "category": labels[j],
                        "n_tokens": int(n_tok[j]),
                        "n_windows": int(n_win[j]),
                        "mean_a": sum_a[j] / n_tok[j],
                        "mean_b": sum_b[j] / n_tok[j],
                        "gap": gap,
                        "gap_low": float(res.low[j]),
                        "gap_high": float(res.high[j]),
                        "p_value": float(p_gap[j]),
                        "n_windows_ok": bool(n_win[j] >= min_windows),
                    }
                )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["p_adjusted"] = bh_adjust(frame["p_value"].to_numpy())
    sig = (frame["p_adjusted"] < 1 - ci).to_numpy() & frame.pop("n_windows_ok").to_numpy()
    frame["significant"] = sig
    frame["better"] = [
        (a if g > 0 else b) if s else None
        for a, b, g, s in zip(frame["run_a"], frame["run_b"], frame["gap"], sig, strict=True)
    ]
    return frame


# --------------------------------------------------------------------------- analysis 2

_GAP_KEY = ["run_a", "run_b", "feature", "category"]


def material_gap_fraction(gaps: pd.DataFrame, margin: float) -> float:
    """Fraction of the gaps of `capability_gaps` that are material: significant AND with a
    CI entirely outside +-`margin` nats. Significance alone measures power (with a million
    tokens every gap in a big category is significant, however small); 0 with no gaps."""
    if gaps.empty:
        return 0.0
    outside = (gaps["gap_low"] > margin) | (gaps["gap_high"] < -margin)
    return float((gaps["significant"].astype(bool) & outside).mean())


def gap_convergence(
    gaps_mid: pd.DataFrame, gaps_final: pd.DataFrame, ci: float = 0.95
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Do gaps significant mid-training close by the end?

    Inputs: two `capability_gaps` tables (mid step, final step). For each gap significant at
    mid: status 'closed' (not significant at the end), 'persisted' (significant, same sign) or
    'reversed' (significant, opposite sign). Returns (table with gap_mid, gap_final and its CI,
    status) and a summary: n_significant_mid, n_closed, n_persisted, n_reversed,
    fraction_closed with a Wilson CI (fraction_closed_low/high). Gaps absent at the end are
    dropped.
    """
    for name, frame in (("gaps_mid", gaps_mid), ("gaps_final", gaps_final)):
        missing = [
            c
            for c in [*_GAP_KEY, "gap", "gap_low", "gap_high", "significant"]
            if c not in frame.columns
        ]
        if missing:
            raise SeedscopeError(f"{name} lacks columns {missing}.", "pass capability_gaps output.")
    mid = gaps_mid.loc[
        gaps_mid["significant"].astype(bool), [*_GAP_KEY, "gap", "gap_low", "gap_high"]
    ]
    fin = gaps_final[[*_GAP_KEY, "gap", "gap_low", "gap_high", "significant"]]
    merged = mid.merge(fin, on=_GAP_KEY, suffixes=("_mid", "_final"), how="inner")
    sig_final = merged["significant"].astype(bool).to_numpy()
    same_sign = np.sign(merged["gap_mid"].to_numpy()) == np.sign(merged["gap_final"].to_numpy())
    merged["status"] = np.where(~sig_final, "closed", np.where(same_sign, "persisted", "reversed"))
    merged = merged.rename(columns={"significant": "significant_final"})
    n = len(merged)
    counts = merged["status"].value_counts()
    n_closed = int(counts.get("closed", 0))
    frac, low, high = proportion_ci(n_closed, n, ci)
    summary = {
        "n_significant_mid": n,
        "n_closed": n_closed,
        "n_persisted": int(counts.get("persisted", 0)),
        "n_reversed": int(counts.get("reversed", 0)),
        "fraction_closed": frac,
        "fraction_closed_low": low,
        "fraction_closed_high": high,
    }
    return merged, summary


# --------------------------------------------------------------------------- figures


def _label(labels: Mapping[str, str] | None, run: str) -> str:
    return labels.get(run, run) if labels else run


def scatter_grid(
    logprobs: Mapping[str, np.ndarray],
    runs: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    bins: int = 150,
    clip_quantile: float = 0.001,
    colors: Mapping[str, object] | None = None,
    title: str = "",
) -> Figure:
    """Pairs of `runs` as 2-D histograms of per-token log-probs (log colour scale, identity
    line), lower triangle; each run's histogram on the diagonal (in its colour, `colors`:
    run -> colour, default `seedscope.core.plots.run_colors(runs)`); Pearson r in the upper
    triangle. Readable at 1M tokens. `labels`: run -> display label (name with seed).

    Meant for the runs of one size (up to ~6: text stays >= 9 pt at the book's page width);
    all pairs of a larger suite read better as `correlation_heatmap`."""
    from matplotlib.ticker import MaxNLocator

    from seedscope.core.plots import run_colors

    runs = list(runs or logprobs)
    check_logprobs({r: logprobs[r] for r in runs}, min_runs=2)
    colors = colors or run_colors(runs)
    valid = common_valid({r: logprobs[r] for r in runs})
    data = {r: np.asarray(logprobs[r], dtype=np.float64)[valid] for r in runs}
    lo = min(float(np.quantile(v, clip_quantile)) for v in data.values())
    hi = max(float(v.max()) for v in data.values())
    # no finer than ~4 tokens per bin along one run's histogram (a few thousand tokens would
    # otherwise scatter into single-token bins)
    bins = int(min(bins, max(20, np.sqrt(int(valid.sum())) / 2)))
    edges = np.linspace(lo, hi, bins + 1)
    n = len(runs)
    side = min(1.6, 6.6 / n)  # panel size (in): the whole grid fits the page width
    fig = Figure(figsize=(side * n + 2.2, side * n + 1.2), layout="constrained")
    axes = fig.subplots(n, n, squeeze=False, sharex=True)
    mesh = None
    for i, ri in enumerate(runs):
        for j, rj in enumerate(runs):
            ax = axes[i, j]
            ax.tick_params(labelsize=10)
            ax.xaxis.set_major_locator(MaxNLocator(3))
            ax.yaxis.set_major_locator(MaxNLocator(3))
            if i == j:
                ax.hist(np.clip(data[ri], lo, hi), bins=edges, color=colors[ri])
                ax.set_yticks([])
            elif i > j:
                hist, _, _ = np.histogram2d(data[rj], data[ri], bins=[edges, edges])
                mesh = ax.pcolormesh(
                    edges, edges, hist.T, norm=LogNorm(vmin=1), cmap="viridis", rasterized=True
                )
                ax.plot([lo, hi], [lo, hi], color="red", lw=0.8, ls="--")
                ax.set_ylim(lo, hi)
                if j > 0:
                    ax.tick_params(labelleft=False)
            else:
                r = float(np.corrcoef(data[ri], data[rj])[0, 1])
                ax.text(
                    0.5,
                    0.5,
                    f"r = {r:.3f}",
                    ha="center",
                    va="center",
                    fontsize=11,
                    transform=ax.transAxes,
                )
                ax.set_axis_off()
            if i == 0:
                # two lines ("name" / "(seed N)"): five labels side by side fit the page
                head = _label(labels, rj).replace(" (", "\n(", 1)
                ax.set_title(head, fontsize=10, color=colors[rj])
            if i < n - 1:
                ax.tick_params(labelbottom=False)
            else:
                ax.set_xlabel("log-prob (nats)", fontsize=10)
            if j == 0:
                what = "tokens" if i == 0 else "log-prob (nats)"
                ax.set_ylabel(f"{_label(labels, ri)}\n{what}", fontsize=10, color=colors[ri])
    if mesh is not None:
        bar = fig.colorbar(mesh, ax=axes, shrink=0.6)
        bar.set_label("tokens per bin (log scale)", fontsize=10)
        bar.ax.tick_params(labelsize=10)
    fig.suptitle(
        title or f"Per-token log-probs, pairs of runs ({int(valid.sum()):,} tokens)", fontsize=12
    )
    return fig


def correlation_heatmap(
    agreement: pd.DataFrame,
    method: str = "pearson",
    labels: Mapping[str, str] | None = None,
    sizes: Mapping[str, str] | None = None,
    colors: Mapping[str, object] | None = None,
) -> Figure:
    """Heatmap of `pairwise_agreement` correlations (`method`: 'pearson' or 'spearman'), every
    pair of runs. `sizes` (run -> size): runs grouped by size, blocks outlined, so the
    within-size (seed) blocks sit on the diagonal and cross-size pairs off it. `colors`: run
    -> colour of its tick label (the run's colour in every figure)."""
    import seaborn as sns

    if method not in agreement.columns:
        raise SeedscopeError(f"No column {method!r} in the table.", "use pearson or spearman.")
    runs = list(dict.fromkeys([*agreement["run_a"], *agreement["run_b"]]))
    groups = size_groups(runs, sizes) if sizes else {"": runs}
    runs = [r for members in groups.values() for r in members]
    mat = pd.DataFrame(np.eye(len(runs)), index=runs, columns=runs)
    for a, b, v in agreement[["run_a", "run_b", method]].itertuples(index=False):
        mat.loc[a, b] = mat.loc[b, a] = v
    names = [_label(labels, r) for r in runs]
    mat.index, mat.columns = names, names
    n = len(runs)
    fig = Figure(figsize=(0.55 * n + 3.6, 0.5 * n + 2.2), layout="constrained")
    ax = fig.subplots()
    off = mat.to_numpy()[~np.eye(n, dtype=bool)]
    sns.heatmap(
        mat,
        annot=True,
        fmt=".3f",
        annot_kws={"fontsize": 10},
        cmap="mako",
        ax=ax,
        vmin=float(off.min()),
        vmax=1,
        cbar_kws={"label": f"{method.capitalize()} r of per-token log-probs"},
    )
    ax.collections[0].colorbar.ax.tick_params(labelsize=10)
    ax.tick_params(labelsize=10)
    if sizes:
        start = 0
        for members in groups.values():
            ax.add_patch(
                Rectangle(
                    (start, start), len(members), len(members), fill=False, ec="white", lw=2.5
                )
            )
            start += len(members)
    if colors:
        for tick in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
            run = runs[names.index(tick.get_text())]
            tick.set_color(colors[run])
    what = "runs grouped by size, seed pairs in the outlined blocks" if sizes else "runs"
    ax.set_title(
        f"{method.capitalize()} correlation of per-token log-probs between runs\n({what})",
        fontsize=11,
    )
    ax.set_xlabel("run (name and seed)", fontsize=10)
    ax.set_ylabel("run (name and seed)", fontsize=10)
    return fig


def enrichment_forest(enrich: pd.DataFrame, top: int = 25, alpha: float = 0.05) -> Figure:
    """Forest plot of enrichment rows: odds ratio with its (1 - alpha) CI on a log axis (the
    top `top` rows in the table's order); filled markers = BH-adjusted p < alpha. Tables of
    `enrichment_bootstrap` show the loss-stratified (Mantel-Haenszel) odds ratio, those of
    `enrichment` the plain one."""
    rows = enrich.head(top).iloc[::-1]
    mh = "mh_odds_ratio" in rows.columns
    est, low, high = (
        ("mh_odds_ratio", "mh_low", "mh_high") if mh else ("odds_ratio", "ci_low", "ci_high")
    )
    fig = Figure(figsize=(7, 0.3 * len(rows) + 1.5), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(rows))
    sig = rows["p_adjusted"].to_numpy() < alpha
    value = rows[est].to_numpy(dtype=np.float64)
    err = np.vstack([value - rows[low].to_numpy(float), rows[high].to_numpy(float) - value])
    ax.errorbar(value, y, xerr=np.clip(np.nan_to_num(err), 0, None), fmt="none", ecolor="0.4")
    ax.scatter(value[sig], y[sig], color="C3", zorder=3, label=f"BH p < {alpha}")
    ax.scatter(
        value[~sig], y[~sig], facecolor="white", edgecolor="C3", zorder=3, label="not significant"
    )
    ax.axvline(1.0, color="0.2", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yticks(y, [f"{f} = {c}" for f, c in zip(rows["feature"], rows["category"], strict=True)])
    kind = "loss-stratified (Mantel-Haenszel) odds ratio" if mh else "odds ratio"
    ax.set_xlabel(f"{kind} of being an outlier (log scale, {1 - alpha:.0%} CI)")
    ax.set_ylabel("metadata category")
    ax.set_title("Which tokens do runs disagree on? Outlier enrichment by category")
    ax.legend(loc="lower right", fontsize=9)
    return fig


def agreement_over_training_plot(
    agreement: pd.DataFrame,
    method: str = "pearson",
    labels: Mapping[str, str] | None = None,
    sizes: Mapping[str, str] | None = None,
    max_pair_legend: int = 15,
) -> Figure:
    """Pairwise correlation vs training step (`agreement_over_training` output), one line per
    pair with its CI band; same-size pairs solid, cross-size pairs dashed. Up to
    `max_pair_legend` pairs each get a colour and a legend entry (runs named with seeds);
    with more pairs and `sizes` (run -> size), lines are coloured by group instead (the seed
    pairs of each size in that size's colour, cross-size pairs grey), one legend entry per
    group: 45 separately coloured lines could not be told apart."""
    from seedscope.core.plots import size_colors

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    pairs = agreement.groupby(["run_a", "run_b"], sort=False)
    by_group = sizes is not None and pairs.ngroups > max_pair_legend
    group_colors = size_colors(list(dict.fromkeys(sizes.values()))) if sizes else {}
    seen: set[str] = set()
    for i, ((a, b), grp) in enumerate(pairs):
        grp = grp.sort_values("step")
        same = grp["same_size"].iloc[0]
        ls = "--" if (same is not pd.NA and same is not None and not bool(same)) else "-"
        color: object = f"C{i % 10}"
        label = f"{_label(labels, a)} vs {_label(labels, b)}"
        if by_group:
            assert sizes is not None
            within = sizes.get(a) == sizes.get(b)
            group = f"seed pairs, {sizes.get(a)}" if within else "pairs across sizes"
            color = group_colors[sizes.get(a)] if within else "0.5"
            label = "_nolegend_" if group in seen else group
            seen.add(group)
        ax.plot(grp["step"], grp[method], ls=ls, color=color, lw=1, label=label)
        if f"{method}_low" in grp and grp[f"{method}_low"].notna().any():
            ax.fill_between(
                grp["step"],
                grp[f"{method}_low"],
                grp[f"{method}_high"],
                color=color,
                alpha=0.05 if by_group else 0.15,
                lw=0,
            )
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{method.capitalize()} r of per-token log-probs")
    ax.set_title("Agreement between runs over training")
    if by_group or pairs.ngroups <= max_pair_legend:
        ax.legend(fontsize=9, ncol=1 if by_group else 2)
    return fig


# --------------------------------------------------------------------------- seeds vs sizes
# A claim about seeds compares runs of the same size; a difference between sizes is a size
# effect and is reported under its own name. Runs are grouped by `sizes: run -> size`.


def size_groups(runs: Sequence[str], sizes: Mapping[str, str]) -> dict[str, list[str]]:
    """size -> its runs (in the given order); every run needs a size."""
    missing = [r for r in runs if r not in sizes]
    if missing:
        raise SeedscopeError(f"Runs {missing} have no size.", "give every run a size.")
    groups: dict[str, list[str]] = {}
    for run in runs:
        groups.setdefault(str(sizes[run]), []).append(run)
    return groups


def seed_pairs(runs: Sequence[str], sizes: Mapping[str, str]) -> dict[str, list[tuple[str, str]]]:
    """Pairs of runs: 'within <size>' for each size with >= 2 runs, and 'across sizes'."""
    groups = size_groups(runs, sizes)
    out: dict[str, list[tuple[str, str]]] = {}
    for size, members in groups.items():
        if len(members) >= 2:
            out[f"within {size}"] = list(itertools.combinations(members, 2))
    across = [(a, b) for a, b in itertools.combinations(runs, 2) if sizes[a] != sizes[b]]
    if across:
        out["across sizes"] = across
    return out


def seed_divergence(logprobs: Mapping[str, np.ndarray], sizes: Mapping[str, str]) -> np.ndarray:
    """Per-token spread between seeds of the same size, in nats, `[n_windows, window]`.

    sqrt of the mean over sizes (those with >= 2 seeds) of the per-size variance of the
    log-prob across seeds (ddof=1). Two sizes that differ do not make a token divergent; NaN
    where a token is not finite under every run.
    """
    check_logprobs(logprobs)
    groups = [g for g in size_groups(list(logprobs), sizes).values() if len(g) >= 2]
    if not groups:
        raise SeedscopeError(
            "No size has two seeds, so there is no seed divergence to measure.",
            "include at least two runs of one size.",
        )
    valid = common_valid(logprobs)
    var = np.zeros(valid.shape)
    for group in groups:
        stack = np.stack([np.asarray(logprobs[r], dtype=np.float64) for r in group])
        var += stack.var(axis=0, ddof=1)
    out = np.sqrt(var / len(groups))
    out[~valid] = np.nan
    return out


def size_difference(logprobs: Mapping[str, np.ndarray], sizes: Mapping[str, str]) -> np.ndarray:
    """Per-token difference between sizes, in nats, `[n_windows, window]`: the range (max -
    min) of the per-size mean log-prob (= |difference| for two sizes); 0 with one size."""
    check_logprobs(logprobs)
    groups = size_groups(list(logprobs), sizes)
    means = np.stack(
        [
            np.mean([np.asarray(logprobs[r], dtype=np.float64) for r in g], axis=0)
            for g in groups.values()
        ]
    )
    out = means.max(axis=0) - means.min(axis=0)
    out[~common_valid(logprobs)] = np.nan
    return out


def size_divergence(
    logprobs: Mapping[str, np.ndarray], sizes: Mapping[str, str], min_se: float = 1e-6
) -> np.ndarray:
    """Per-token size divergence scaled by seed noise, `[n_windows, window]`: the largest
    Welch |t| over pairs of sizes, |mean_a - mean_b| / sqrt(var_a / n_a + var_b / n_b) with
    the variances between seeds of each size. Ranking by the raw difference (`size_difference`)
    lets seed noise pose as size: E[d^2] = delta^2 + sigma^2 (1/n_a + 1/n_b), so tokens with
    noisy seeds top the list with no size effect at all. The SE is floored at `min_se` nats
    (a size with one run, or identical twins, has no seed variance: the rank is then that of
    the difference). 0 with one size."""
    check_logprobs(logprobs)
    groups = size_groups(list(logprobs), sizes)
    stats = []
    for g in groups.values():
        x = np.stack([np.asarray(logprobs[r], dtype=np.float64) for r in g])
        var = x.var(axis=0, ddof=1) if len(g) > 1 else np.zeros(x.shape[1:])
        stats.append((x.mean(axis=0), var / len(g)))
    out = np.zeros(np.shape(next(iter(logprobs.values()))), dtype=np.float64)
    for (m_a, v_a), (m_b, v_b) in itertools.combinations(stats, 2):
        with np.errstate(invalid="ignore"):
            t = np.abs(m_a - m_b) / np.maximum(np.sqrt(v_a + v_b), min_se)
        out = np.fmax(out, t)
    out[~common_valid(logprobs)] = np.nan
    return out


def top_fraction_mask(score: np.ndarray, fraction: float, floor: float = 0.0) -> np.ndarray:
    """Bool mask of the `fraction` of finite tokens with the largest score, keeping only
    scores above `floor`: when no token differs by more than `floor`, no token is selected
    (identical runs have no "most divergent" tokens)."""
    if not 0 < fraction < 1:
        raise SeedscopeError(f"fraction={fraction} is not in (0, 1).", "use e.g. 0.01.")
    score = np.asarray(score, dtype=np.float64)
    n_top = max(1, int(round(fraction * np.isfinite(score).sum())))
    mask = np.zeros(score.size, dtype=bool)
    top = _top_k(score, n_top)
    mask[top[score.ravel()[top] > floor]] = True
    return mask.reshape(score.shape)


def _moments_by_pair(
    arrays: Mapping[str, np.ndarray], valid: np.ndarray, pairs: Sequence[tuple[str, str]]
) -> np.ndarray:
    """Per-window moments `[n_pairs, n_windows, 6]` of every pair (columns centred first)."""
    centred = {r: np.where(valid, a - a[valid].mean(), 0.0) for r, a in arrays.items()}
    return np.stack([pair_moments(centred[a], centred[b], valid) for a, b in pairs])


def seed_agreement(
    logprobs: Mapping[str, np.ndarray],
    sizes: Mapping[str, str],
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Mean pairwise agreement (Pearson and Spearman r of per-token log-probs) within each
    size, within sizes pooled, across sizes, and within minus across, with CIs that resample
    seeds AND windows (the Multi-Bootstrap of Sellam et al. 2022).

    Each replicate draws windows with replacement (shared by every pair) and, within each
    size, as many runs as the size has, with replacement; the group's statistic is the mean
    over the pairs of distinct drawn runs (`stats.pair_replicate_mean`), so "within minus
    across" has its CI from the same draws. With few seeds the percentile CI under-covers:
    every row also carries the range of its pair values and a t-interval from the
    leave-one-seed-out jackknife (`t_low`, `t_high`: the statistic recomputed without each
    run, jackknife SE x t(n - 1); NaN with < 3 runs). Pairs share runs, so a t-interval over
    per-run means would be too narrow. Spearman uses ranks taken once on all tokens.
    Columns: group, method, value, ci_low, ci_high, t_low, t_high, pair_min, pair_max,
    n_runs, n_pairs, n_tokens, n_boot.
    """
    shape = check_logprobs(logprobs)
    runs = list(logprobs)
    groups = seed_pairs(runs, sizes)
    if not any(name.startswith("within") for name in groups):
        raise SeedscopeError(
            "No size has two seeds: seed agreement needs pairs of runs of one size.",
            "include at least two runs of one size.",
        )
    valid = common_valid(logprobs)
    all_pairs = list(itertools.combinations(runs, 2))
    pos = {r: i for i, r in enumerate(runs)}
    rng = np.random.default_rng(seed)
    weights = bootstrap_weights(shape[0], n_boot, int(rng.integers(2**31)))
    counts = resample_runs_within(
        [[pos[r] for r in g] for g in size_groups(runs, sizes).values()], len(runs), n_boot, rng
    )
    values = {r: np.asarray(logprobs[r], dtype=np.float64) for r in runs}
    ranks = {}
    for r in runs:
        rk = np.zeros(shape)
        rk[valid] = scipy.stats.rankdata(values[r][valid])
        ranks[r] = rk
    rows = []
    for method, arrays in (("pearson", values), ("spearman", ranks)):
        moments = _moments_by_pair(arrays, valid, all_pairs)  # [n_pairs, n_windows, 6]
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = pearson_statistic(np.einsum("bw,pwk->bpk", weights, moments))  # [B, P]
        stats = _PairStats(
            method=method,
            est=pearson_statistic(moments.sum(axis=1)),
            reps=reps,
            index={p: i for i, p in enumerate(all_pairs)},
            pos=pos,
            counts=counts,
            ci=ci,
            n_tokens=int(valid.sum()),
            n_boot=n_boot,
        )
        rows.extend(_agreement_rows(stats, groups, runs))
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class _PairStats:
    """One method's per-pair statistics, with their replicates and what every row shares."""

    method: str
    est: np.ndarray  # [P] per pair, on all windows
    reps: np.ndarray  # [B, P] per pair, per replicate's windows
    index: dict[tuple[str, str], int]  # pair -> column
    pos: dict[str, int]  # run -> position
    counts: np.ndarray  # [B, n_runs] times each run is drawn per replicate
    ci: float
    n_tokens: int
    n_boot: int

    def mean(self, pairs: Sequence[tuple[str, str]]) -> tuple[float, np.ndarray]:
        """A pair set's mean statistic and its Multi-Bootstrap replicates."""
        cols = [self.index[p] for p in pairs]
        idx = [(self.pos[a], self.pos[b]) for a, b in pairs]
        return float(np.mean(self.est[cols])), pair_replicate_mean(
            self.reps[:, cols], idx, self.counts
        )

    def row(
        self,
        group: str,
        value: tuple[float, np.ndarray],
        pair_sets: Sequence[Sequence[tuple[str, str]]],
        members: Sequence[str],
        pair_values: np.ndarray,
        n_runs: int,
        n_pairs: int,
    ) -> dict[str, object]:
        """One output row: the value, its percentile CI and its seed-jackknife t-interval."""
        t_low, t_high = _seed_jackknife(self.est, self.index, pair_sets, members, self.ci)
        return _agreement_row(
            group,
            self.method,
            value[0],
            value[1],
            (1 - self.ci) / 2,
            t_low,
            t_high,
            pair_values,
            n_runs,
            n_pairs,
            self.n_tokens,
            self.n_boot,
        )


def _agreement_rows(
    stats: _PairStats, groups: Mapping[str, list[tuple[str, str]]], runs: Sequence[str]
) -> list[dict[str, object]]:
    """Rows per group (each size, across sizes), within sizes pooled, within minus across."""
    rows, value_of = [], {}
    for name, pairs in groups.items():
        value_of[name] = stats.mean(pairs)
        members = sorted({r for p in pairs for r in p}, key=stats.pos.get)
        cols = [stats.index[p] for p in pairs]
        rows.append(
            stats.row(
                name, value_of[name], [pairs], members, stats.est[cols], len(members), len(pairs)
            )
        )
    within = [n for n in groups if n.startswith("within")]
    pooled_pairs = [p for n in within for p in groups[n]]
    pooled = stats.mean(pooled_pairs)
    if len(within) > 1:
        members = sorted({r for p in pooled_pairs for r in p}, key=stats.pos.get)
        pooled_values = stats.est[[stats.index[p] for p in pooled_pairs]]
        rows.append(
            stats.row(
                "within sizes",
                pooled,
                [pooled_pairs],
                members,
                pooled_values,
                len(members),
                len(pooled_pairs),
            )
        )
    if "across sizes" in groups:
        across = groups["across sizes"]
        per_run = []
        for r in runs:
            w = [stats.est[stats.index[p]] for p in pooled_pairs if r in p]
            a = [stats.est[stats.index[p]] for p in across if r in p]
            if w and a:
                per_run.append(np.mean(w) - np.mean(a))
        difference = (
            pooled[0] - value_of["across sizes"][0],
            pooled[1] - value_of["across sizes"][1],
        )
        rows.append(
            stats.row(
                "within minus across",
                difference,
                [pooled_pairs, across],
                runs,
                np.asarray(per_run),
                len(per_run),
                len(pooled_pairs) + len(across),
            )
        )
    return rows


def _seed_jackknife(
    est: np.ndarray,
    index: Mapping[tuple[str, str], int],
    pair_sets: Sequence[Sequence[tuple[str, str]]],
    members: Sequence[str],
    ci: float,
) -> tuple[float, float]:
    """t-interval of a mean pair statistic (of one pair set, or the first minus the second)
    from the leave-one-seed-out jackknife over `members`: SE x t(n - 1). NaN bounds with fewer
    than 3 members or when dropping a run leaves a set without pairs."""
    import scipy.stats

    def stat(drop: str | None) -> float:
        means = []
        for pairs in pair_sets:
            vals = [est[index[p]] for p in pairs if drop not in p]
            if not vals:
                return np.nan
            means.append(float(np.mean(vals)))
        return means[0] - means[1] if len(means) == 2 else means[0]

    n = len(members)
    loo = np.asarray([stat(r) for r in members]) if n >= 3 else np.full(1, np.nan)
    if not np.isfinite(loo).all():
        return np.nan, np.nan
    se = float(np.sqrt((n - 1) / n * ((loo - loo.mean()) ** 2).sum()))
    half = float(scipy.stats.t.ppf(0.5 + ci / 2, n - 1)) * se
    full = stat(None)
    return full - half, full + half


def _agreement_row(
    group: str,
    method: str,
    value: float,
    reps: np.ndarray,
    alpha: float,
    t_low: float,
    t_high: float,
    pair_values: np.ndarray,
    n_runs: int,
    n_pairs: int,
    n_tokens: int,
    n_boot: int,
) -> dict[str, object]:
    finite = reps[np.isfinite(reps)]
    low, high = (
        np.percentile(finite, [100 * alpha, 100 * (1 - alpha)]) if finite.size else (np.nan,) * 2
    )
    pair_values = np.asarray(pair_values, dtype=np.float64)
    return {
        "group": group,
        "method": method,
        "value": float(value),
        "ci_low": float(low),
        "ci_high": float(high),
        "t_low": float(t_low),
        "t_high": float(t_high),
        "pair_min": float(pair_values.min()) if pair_values.size else np.nan,
        "pair_max": float(pair_values.max()) if pair_values.size else np.nan,
        "n_runs": int(n_runs),
        "n_pairs": int(n_pairs),
        "n_tokens": n_tokens,
        "n_boot": n_boot,
    }


def loss_strata(logprobs: Mapping[str, np.ndarray], n_strata: int = 10) -> np.ndarray:
    """Difficulty stratum of every token, int `[n_windows, window]`: the decile (for
    n_strata=10) of its mean loss over runs; -1 where a token is not finite under every run."""
    check_logprobs(logprobs)
    valid = common_valid(logprobs)
    mean_loss = -np.mean([np.asarray(v, dtype=np.float64) for v in logprobs.values()], axis=0)
    out = np.full(valid.shape, -1, dtype=np.int64)
    ranks = scipy.stats.rankdata(mean_loss[valid], method="average")
    out[valid] = np.minimum((ranks - 1) * n_strata // valid.sum(), n_strata - 1).astype(np.int64)
    return out


def enrichment_bootstrap(
    mask: np.ndarray,
    meta: pd.DataFrame,
    columns: Sequence[str],
    strata: np.ndarray,
    window_len: int,
    n_boot: int = 200,
    seed: int = 0,
    ci: float = 0.95,
    min_tokens: int = 10,
    with_position: bool = True,
) -> pd.DataFrame:
    """Enrichment of the tokens in `mask` in every metadata category, with CIs that resample
    whole windows (tokens of one window are not independent) and a difficulty-stratified
    (Mantel-Haenszel) odds ratio beside the plain one.

    mask, strata: `[n_windows, window]` (window-major like `meta`); strata from
    `loss_strata` (-1 = not counted). Per window, stratum and category the 2x2 counts are
    kept, so a replicate is a weighted sum of window counts. odds_ratio (Haldane +0.5 when a
    cell is 0) and mh_odds_ratio get percentile CIs (ci_low/ci_high, mh_low/mh_high); p_value
    tests log MH OR = 0 with its bootstrap SE (`stats.wald_p`); p_adjusted is Benjamini-
    Hochberg over all rows. Categories with fewer than `min_tokens` tokens are left out.
    Columns: feature, category, n_tokens, n_outliers, outlier_rate, odds_ratio, ci_low,
    ci_high, mh_odds_ratio, mh_low, mh_high, p_value, p_adjusted; sorted by mh_low, high first.
    Empty when the mask selects no token.
    """
    n_windows = np.size(mask) // window_len
    check_meta(meta, n_windows * window_len, columns)
    mask = np.asarray(mask, dtype=bool).ravel()
    strata = np.asarray(strata, dtype=np.int64).ravel()
    keep = strata >= 0
    if not (mask & keep).any():
        return pd.DataFrame(columns=_ENRICHMENT_COLUMNS)
    weights = bootstrap_weights(n_windows, n_boot, seed)
    counts = _StratumCounts.of(mask, strata, keep, n_windows, window_len)
    alpha = (1 - ci) / 2
    rows = []
    for feature, codes, labels in _features(meta, columns, window_len, with_position):
        rows += _feature_enrichment(
            feature, codes[keep], labels, counts, weights, alpha, min_tokens
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=_ENRICHMENT_COLUMNS)
    table["p_adjusted"] = bh_adjust(table["p_value"].to_numpy())
    return table.sort_values(
        ["mh_low", "mh_odds_ratio"], ascending=[False, False], ignore_index=True, na_position="last"
    )[_ENRICHMENT_COLUMNS]


_ENRICHMENT_COLUMNS = [
    "feature",
    "category",
    "n_tokens",
    "n_outliers",
    "outlier_rate",
    "odds_ratio",
    "ci_low",
    "ci_high",
    "mh_odds_ratio",
    "mh_low",
    "mh_high",
    "p_value",
    "p_adjusted",
]


@dataclass(frozen=True)
class _StratumCounts:
    """Counted tokens per (window, difficulty stratum): all of them and the outliers."""

    key: np.ndarray  # (window, stratum) cell of every counted token
    outlier: np.ndarray  # bool, every counted token
    total: np.ndarray  # [n_windows, n_strata]
    outliers: np.ndarray  # [n_windows, n_strata]
    n_windows: int
    n_strata: int

    @classmethod
    def of(
        cls, mask: np.ndarray, strata: np.ndarray, keep: np.ndarray, n_windows: int, window_len: int
    ) -> _StratumCounts:
        """Count the tokens `keep` selects (flat `mask` and `strata`, window-major)."""
        n_strata = int(strata.max()) + 1
        win = np.repeat(np.arange(n_windows), window_len)
        ws = win[keep] * n_strata + strata[keep]
        tot_ws = np.bincount(ws, minlength=n_windows * n_strata).reshape(n_windows, n_strata)
        out_ws = np.bincount(ws, weights=mask[keep], minlength=n_windows * n_strata).reshape(
            n_windows, n_strata
        )
        return cls(ws, mask[keep], tot_ws, out_ws, n_windows, n_strata)


def _feature_enrichment(
    feature: str,
    codes: np.ndarray,
    labels: Sequence[str],
    c: _StratumCounts,
    weights: np.ndarray,
    alpha: float,
    min_tokens: int,
) -> list[dict[str, object]]:
    """One row per category of `feature` with at least `min_tokens` counted tokens (`codes`:
    each counted token's category): plain and MH odds ratios, their CIs and the MH p-value."""
    n_windows, n_strata, n_boot = c.n_windows, c.n_strata, weights.shape[0]
    n_cat = len(labels)
    key = c.key * n_cat + codes
    size = n_windows * n_strata * n_cat
    n_wsj = np.bincount(key, minlength=size).reshape(n_windows, n_strata * n_cat)
    a_wsj = np.bincount(key, weights=c.outlier, minlength=size).reshape(n_windows, -1)
    use = np.flatnonzero(n_wsj.reshape(n_windows, n_strata, n_cat).sum((0, 1)) >= min_tokens)
    if use.size == 0:
        return []
    shape = (n_strata, n_cat)
    a, n_in = a_wsj.sum(0).reshape(shape), n_wsj.sum(0).reshape(shape)
    plain, mh = _odds_ratios(a, n_in, c.outliers.sum(0)[:, None], c.total.sum(0)[:, None])
    rep_plain, rep_mh = _odds_ratios(
        (weights @ a_wsj).reshape(n_boot, *shape),
        (weights @ n_wsj).reshape(n_boot, *shape),
        (weights @ c.outliers)[..., None],
        (weights @ c.total)[..., None],
    )
    with np.errstate(divide="ignore"):
        log_mh, log_rep = np.log(mh), np.log(rep_mh)
    log_rep = np.where(np.isfinite(log_rep), log_rep, np.nan)
    p = wald_p(log_mh, log_rep)
    qs = [100 * alpha, 100 * (1 - alpha)]
    lo_p, hi_p = quiet_nan(np.nanpercentile, rep_plain, qs, axis=0)
    lo_m, hi_m = quiet_nan(np.nanpercentile, rep_mh, qs, axis=0)
    n_tok, n_out = n_in.sum(0), a.sum(0)
    return [
        {
            "feature": feature,
            "category": labels[j],
            "n_tokens": int(n_tok[j]),
            "n_outliers": int(n_out[j]),
            "outlier_rate": float(n_out[j] / n_tok[j]),
            "odds_ratio": float(plain[j]),
            "ci_low": float(lo_p[j]),
            "ci_high": float(hi_p[j]),
            "mh_odds_ratio": float(mh[j]),
            "mh_low": float(lo_m[j]),
            "mh_high": float(hi_m[j]),
            "p_value": float(p[j]),
        }
        for j in use
    ]


def _odds_ratios(
    a: np.ndarray, n_in: np.ndarray, out: np.ndarray, tot: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Plain (Haldane-corrected when a cell is 0) and Mantel-Haenszel odds ratios from
    per-stratum counts `[..., n_strata, n_cat]`: a = outliers in the category, n_in = tokens
    in it, out / tot = outliers / tokens of the stratum (broadcast over categories)."""
    b, c = n_in - a, out - a
    d = tot - n_in - c
    strata = np.stack(np.broadcast_arrays(a, b, c, d))
    # Haldane (+0.5) on the strata with a zero cell that hold tokens of both kinds
    fix = np.any(strata == 0, axis=0) & (n_in > 0) & (tot - n_in > 0)
    sa, sb, sc, sd = np.where(fix, strata + 0.5, strata)
    with np.errstate(invalid="ignore", divide="ignore"):
        n_s = sa + sb + sc + sd
        mh = (sa * sd / n_s).sum(-2) / (sb * sc / n_s).sum(-2)
    cells = np.stack([x.sum(-2) for x in (a, b, c, d)])
    cells = np.where(np.any(cells == 0, axis=0), cells + 0.5, cells)
    return cells[0] * cells[3] / (cells[1] * cells[2]), mh


def enrichment_headline(
    table: pd.DataFrame, min_tokens: int, alpha: float = 0.05
) -> pd.Series | None:
    """The headline enrichment: among rows BH-significant at `alpha` with >= `min_tokens`
    tokens and an odds ratio above 1, the one with the largest lower CI bound of the
    stratified (MH) odds ratio — not the largest point estimate of a tiny category. None when
    no row qualifies."""
    if table.empty:
        return None
    ok = table[
        (table["p_adjusted"] < alpha)
        & (table["n_tokens"] >= min_tokens)
        & (table["mh_odds_ratio"] > 1)
        & np.isfinite(table["mh_low"])
    ]
    if ok.empty:
        return None
    return ok.sort_values(["mh_low", "n_tokens"], ascending=[False, False]).iloc[0]


# --------------------------------------------------------------------------- analysis 2, seeds

_STATUSES = ("closed", "shrank", "persisted", "grew")


def gap_change(
    logprobs_mid: Mapping[str, np.ndarray],
    logprobs_final: Mapping[str, np.ndarray],
    meta: pd.DataFrame,
    columns: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    margin: float,
    alpha: float = 0.05,
    n_boot: int = 1000,
    seed: int = 0,
    min_windows: int = 5,
    sizes: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Do capability gaps present at mid-training close by the end? Closed means "equivalent
    to no gap", never "no longer significant".

    Per pair and metadata category, the gap = mean log-prob of run a minus run b at the mid
    and at the final step, bootstrapped on the SAME resampled windows (paired). At each step
    every gap is tested (`stats.wald_p`) and Benjamini-Hochberg controls the FDR at `alpha`
    over all tests of that step. A gap is open at mid when it is significant AND not already
    equivalent to none (its mid (1 - 2 alpha) CI reaches beyond +-margin: a gap smaller than
    the margin cannot close, however many tokens make it significant). For each open gap,
    with BH over the open gaps for the equivalence p (TOST, max of the two one-sided p) and
    for the change p (change = |gap_final| - |gap_mid|, Wald from its paired replicates):
    - closed: the final gap is equivalent to none within +-margin AND the change is
      significantly negative (a gap that did not shrink did not close);
    - else shrank / grew: the change is significantly negative / positive;
    - else persisted.
    fraction_closed (closed / open) gets a CI that resamples windows and runs (runs within
    their size when `sizes` is given): in each replicate every gap is re-classified from its
    replicate values (the BH cut-offs and SEs held fixed) and the fraction is taken over the
    gaps of the pairs among the drawn runs. Returns (one row per open gap, summary).
    """
    if margin <= 0:
        raise SeedscopeError(f"margin={margin} must be positive.", "use e.g. 0.02 (nats).")
    shape = check_logprobs(logprobs_mid)
    if check_logprobs(logprobs_final) != shape or set(logprobs_mid) != set(logprobs_final):
        raise SeedscopeError(
            "Mid and final log-probs cover different runs or eval windows.",
            "load both steps for the same runs on the same eval set.",
        )
    check_meta(meta, shape[0] * shape[1], columns)
    runs = list(logprobs_mid)
    pair_list = _pairs(runs, pairs)
    rng = np.random.default_rng(seed)
    weights = bootstrap_weights(shape[0], n_boot, int(rng.integers(2**31)))
    features = _features(meta, columns, shape[1], False)
    gaps = _paired_gaps(logprobs_mid, logprobs_final, pair_list, features, weights, shape)
    verdict = _classify_gaps(gaps, alpha, margin, min_windows)
    table = _gap_table(gaps, verdict, alpha)
    open_b, closed_b = _replicate_verdicts(gaps, verdict, margin)
    frac_b = _fraction_closed_replicates(gaps.keys, runs, pair_list, sizes, open_b, closed_b, rng)
    return table, _gap_summary(table, verdict, frac_b, alpha, margin)


@dataclass(frozen=True)
class _PairedGaps:
    """Every (pair, feature, category) gap at mid and final, with its window replicates."""

    keys: list[tuple[str, str, str, str]]  # (run_a, run_b, feature, category), one per gap G
    est: np.ndarray  # [2, G]: mid, final
    reps: np.ndarray  # [2, B, G]: the same resampled windows at both steps (paired)
    n_tokens: list[int]
    n_windows: list[int]


def _paired_gaps(
    logprobs_mid: Mapping[str, np.ndarray],
    logprobs_final: Mapping[str, np.ndarray],
    pair_list: Sequence[tuple[str, str]],
    features: Sequence[tuple[str, np.ndarray, list[str]]],
    weights: np.ndarray,
    shape: tuple[int, int],
) -> _PairedGaps:
    """Mean log-prob gaps (a minus b) per category at both steps, on shared window weights."""
    n_windows, window_len = shape
    win = np.repeat(np.arange(n_windows), window_len)
    keys, est, reps, n_tok, n_win = [], [], [], [], []
    for a, b in pair_list:
        per_step = []
        for lp in (logprobs_mid, logprobs_final):
            x = np.asarray(lp[a], dtype=np.float64).ravel()
            y = np.asarray(lp[b], dtype=np.float64).ravel()
            per_step.append((x - y, np.isfinite(x) & np.isfinite(y)))
        keep = per_step[0][1] & per_step[1][1]
        for feature, codes, labels in features:
            n_cat = len(labels)
            key = win[keep] * n_cat + codes[keep]

            def per(wts: np.ndarray | None, key: np.ndarray = key, n_cat: int = n_cat):
                return np.bincount(key, weights=wts, minlength=n_windows * n_cat).reshape(
                    n_windows, n_cat
                )

            counts = per(None)
            sums = np.stack([per(d[keep]) for d, _ in per_step])  # [2, n_windows, n_cat]
            with np.errstate(invalid="ignore", divide="ignore"):
                point = sums.sum(1) / counts.sum(0)  # [2, n_cat]
                rep = (weights @ sums) / (weights @ counts)  # [2, B, n_cat]
            for j in np.flatnonzero(counts.sum(0) > 0):
                keys.append((a, b, feature, labels[j]))
                est.append(point[:, j])
                reps.append(rep[:, :, j])
                n_tok.append(int(counts[:, j].sum()))
                n_win.append(int((counts[:, j] > 0).sum()))
    est_arr = np.asarray(est, dtype=np.float64).T  # [2, G]
    rep_arr = np.moveaxis(np.asarray(reps, dtype=np.float64), 0, -1)  # [2, B, G]
    return _PairedGaps(keys, est_arr, rep_arr, n_tok, n_win)


@dataclass(frozen=True)
class _GapVerdict:
    """The tests of every gap: significance per step (BH), equivalence (TOST), change."""

    enough: np.ndarray  # [G] seen in at least min_windows windows
    se: np.ndarray  # [2, G] bootstrap SEs
    p_adj: np.ndarray  # [2, G] BH-adjusted p of a gap at each step
    sig: np.ndarray  # [2, G]
    z_tost: float  # the (1 - 2 alpha) CI's z
    is_open: np.ndarray  # [G] significant at mid and not within the margin already
    z_eq: np.ndarray  # [G] (margin - |gap_final|) / se_final
    p_eq_adj: np.ndarray  # [G] BH-adjusted TOST p, open gaps only
    change: np.ndarray  # [G] |gap_final| - |gap_mid|
    change_reps: np.ndarray  # [B, G]
    se_change: np.ndarray  # [G]
    p_change_adj: np.ndarray  # [G] BH-adjusted, open gaps only
    equivalent: np.ndarray  # [G]
    shrank: np.ndarray  # [G]
    status: np.ndarray  # [G] closed / shrank / grew / persisted


def _classify_gaps(gaps: _PairedGaps, alpha: float, margin: float, min_windows: int) -> _GapVerdict:
    """Test each gap at both steps, then classify the open ones (the rules: `gap_change`)."""
    est_arr, rep_arr = gaps.est, gaps.reps
    enough = np.asarray(gaps.n_windows) >= min_windows
    se = quiet_nan(np.nanstd, rep_arr, axis=1, ddof=1)  # [2, G]
    p = np.stack([wald_p(est_arr[s], rep_arr[s]) for s in range(2)])
    p_adj = np.stack([bh_adjust(np.where(enough, p[s], np.nan)) for s in range(2)])
    sig = (p_adj < alpha) & enough
    z_tost = float(scipy.stats.norm.ppf(1 - alpha))
    mid_low, mid_high = est_arr[0] - z_tost * se[0], est_arr[0] + z_tost * se[0]
    is_open = sig[0] & ~((mid_low > -margin) & (mid_high < margin))
    with np.errstate(invalid="ignore", divide="ignore"):
        # TOST: max(p_low, p_high) = sf((margin - |gap|) / se); a zero SE is exact.
        z_eq = (margin - np.abs(est_arr[1])) / se[1]
        p_eq = np.where(
            se[1] > 0, scipy.stats.norm.sf(z_eq), np.where(np.abs(est_arr[1]) < margin, 0.0, 1.0)
        )
    change = np.abs(est_arr[1]) - np.abs(est_arr[0])
    change_reps = np.abs(rep_arr[1]) - np.abs(rep_arr[0])
    se_change = quiet_nan(np.nanstd, change_reps, axis=0, ddof=1)
    p_change = wald_p(change, change_reps)
    p_eq_adj = bh_adjust(np.where(is_open, p_eq, np.nan))
    p_change_adj = bh_adjust(np.where(is_open, p_change, np.nan))
    equivalent = is_open & (p_eq_adj < alpha)
    moved = is_open & (p_change_adj < alpha)
    shrank = moved & (change < 0)
    status = np.where(
        equivalent & shrank,
        "closed",
        np.where(shrank, "shrank", np.where(moved & (change > 0), "grew", "persisted")),
    )
    return _GapVerdict(
        enough=enough,
        se=se,
        p_adj=p_adj,
        sig=sig,
        z_tost=z_tost,
        is_open=is_open,
        z_eq=z_eq,
        p_eq_adj=p_eq_adj,
        change=change,
        change_reps=change_reps,
        se_change=se_change,
        p_change_adj=p_change_adj,
        equivalent=equivalent,
        shrank=shrank,
        status=status,
    )


def _gap_table(gaps: _PairedGaps, v: _GapVerdict, alpha: float) -> pd.DataFrame:
    """One row per gap open at mid: both steps' gaps, the final CI, the change and verdict."""
    est_arr = gaps.est
    fin_low, fin_high = est_arr[1] - v.z_tost * v.se[1], est_arr[1] + v.z_tost * v.se[1]
    qs = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    ch_low, ch_high = quiet_nan(np.nanpercentile, v.change_reps, qs, axis=0)
    table = pd.DataFrame(gaps.keys, columns=_GAP_KEY).assign(
        n_tokens=gaps.n_tokens,
        n_windows=gaps.n_windows,
        gap_mid=est_arr[0],
        p_mid_adjusted=v.p_adj[0],
        gap_final=est_arr[1],
        final_low=fin_low,
        final_high=fin_high,
        p_equivalent_adjusted=v.p_eq_adj,
        p_final_adjusted=v.p_adj[1],
        significant_final=v.sig[1],
        change=v.change,
        change_low=ch_low,
        change_high=ch_high,
        p_change_adjusted=v.p_change_adj,
        status=v.status,
    )
    return table[v.is_open].reset_index(drop=True)


def _z_cut(z: np.ndarray, called: np.ndarray) -> float:
    """BH's cut-off as a |z|: the smallest one it called (p-values underflow to 0)."""
    return float(np.nanmin(np.where(called, z, np.nan))) if called.any() else np.inf


def _replicate_verdicts(
    gaps: _PairedGaps, v: _GapVerdict, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """(open, closed) `[B, G]`: each replicate's gaps re-classified with the BH cut-offs and
    the SEs held fixed."""
    est_arr, rep_arr, se = gaps.est, gaps.reps, v.se
    with np.errstate(invalid="ignore", divide="ignore"):
        sig_b = (np.abs(rep_arr[0]) >= _z_cut(np.abs(est_arr[0]) / se[0], v.sig[0]) * se[0]) & (
            v.enough
        )
        open_b = sig_b & ((np.abs(rep_arr[0]) + v.z_tost * se[0]) >= margin)  # [B, G]
        eq_b = (margin - np.abs(rep_arr[1])) >= _z_cut(v.z_eq, v.equivalent) * se[1]
        shrank_b = -v.change_reps >= _z_cut(-v.change / v.se_change, v.shrank) * v.se_change
    return open_b, open_b & eq_b & shrank_b


def _fraction_closed_replicates(
    keys: Sequence[tuple[str, str, str, str]],
    runs: Sequence[str],
    pair_list: list[tuple[str, str]],
    sizes: Mapping[str, str] | None,
    open_b: np.ndarray,
    closed_b: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Fraction closed per replicate `[B]`, over the gaps of the pairs among the runs drawn
    (runs resampled within their size when `sizes` is given)."""
    n_boot = open_b.shape[0]
    pos = {r: i for i, r in enumerate(runs)}
    pair_of_gap = np.asarray([pair_list.index((k[0], k[1])) for k in keys], dtype=np.int64)
    groups = (
        [[pos[r] for r in g] for g in size_groups(runs, sizes).values()]
        if sizes is not None
        else [list(range(len(runs)))]
    )
    counts_b = resample_runs_within(groups, len(runs), n_boot, rng)
    n_pairs = len(pair_list)
    sig_pair = np.zeros((n_boot, n_pairs))
    closed_pair = np.zeros((n_boot, n_pairs))
    np.add.at(sig_pair.T, pair_of_gap, open_b.T.astype(np.float64))
    np.add.at(closed_pair.T, pair_of_gap, closed_b.T.astype(np.float64))
    idx = [(pos[a], pos[b]) for a, b in pair_list]
    with np.errstate(invalid="ignore", divide="ignore"):
        return pair_replicate_mean(closed_pair, idx, counts_b) / pair_replicate_mean(
            sig_pair, idx, counts_b
        )


def _gap_summary(
    table: pd.DataFrame, v: _GapVerdict, frac_b: np.ndarray, alpha: float, margin: float
) -> dict[str, float]:
    """Counts per verdict and the fraction of open gaps that closed, with its CI."""
    n = len(table)
    counts_status = table["status"].value_counts()
    frac = float(counts_status.get("closed", 0)) / n if n else np.nan
    finite = frac_b[np.isfinite(frac_b)]
    low, high = (
        np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        if n and finite.size
        else (np.nan, np.nan)
    )
    return {
        "n_tests": int(v.enough.sum()),
        "n_significant_mid": n,
        "n_within_margin_mid": int((v.sig[0] & ~v.is_open).sum()),
        **{f"n_{s}": int(counts_status.get(s, 0)) for s in _STATUSES},
        "n_significant_final": int(v.sig[1].sum()),
        "fraction_closed": frac,
        "fraction_closed_low": float(low),
        "fraction_closed_high": float(high),
        "alpha": float(alpha),
        "margin": float(margin),
    }

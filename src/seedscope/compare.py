"""Analyses 1-2: how token-level predictions of seed runs agree, where they differ, and whether
the differences close with training.

Every input is the central table: `logprobs: dict[run -> float [n_windows, window]]`, entry
`[w, t]` = log P(token t of window w | tokens 0..t-1 of window w), so position 0 is NaN
(nothing to condition on). `meta` has one row per eval token in window-major order (row
`w * window + t`). Token index = that flat row number. All CIs come from the window bootstrap
of `seedscope.stats`, with one weight matrix shared by every pair and category.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.stats
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from seedscope.errors import SeedscopeError
from seedscope.stats import (
    BootstrapResult,
    bh_adjust,
    bootstrap_weights,
    fisher_p,
    odds_ratio_ci,
    pearson_statistic,
    proportion_ci,
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

    A gap is `significant` when its CI excludes 0 and the category spans >= `min_windows`
    windows ("something run a does and run b does not", or the reverse when negative).
    Tokens: finite under both runs. Columns: run_a, run_b, feature, category, n_tokens,
    n_windows, mean_a, mean_b, gap, gap_low, gap_high, significant, better (run with the
    higher mean log-prob when significant, else None).
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
            for j in np.flatnonzero(n_tok > 0):
                sig = bool(n_win[j] >= min_windows and (res.low[j] > 0 or res.high[j] < 0))
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
                        "significant": sig,
                        "better": (a if gap > 0 else b) if sig else None,
                    }
                )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- analysis 2

_GAP_KEY = ["run_a", "run_b", "feature", "category"]


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
) -> Figure:
    """All pairs of runs as 2-D histograms of per-token log-probs (log colour scale, identity
    line), lower triangle; run histograms on the diagonal; Pearson r in the upper triangle.
    Readable at 1M tokens. `labels`: run -> display label (name with seed)."""
    runs = list(runs or logprobs)
    check_logprobs({r: logprobs[r] for r in runs}, min_runs=2)
    valid = common_valid({r: logprobs[r] for r in runs})
    data = {r: np.asarray(logprobs[r], dtype=np.float64)[valid] for r in runs}
    lo = min(float(np.quantile(v, clip_quantile)) for v in data.values())
    hi = max(float(v.max()) for v in data.values())
    edges = np.linspace(lo, hi, bins + 1)
    n = len(runs)
    fig = Figure(figsize=(2.3 * n + 1, 2.3 * n), layout="constrained")
    axes = fig.subplots(n, n, squeeze=False)
    mesh = None
    for i, ri in enumerate(runs):
        for j, rj in enumerate(runs):
            ax = axes[i, j]
            if i == j:
                ax.hist(np.clip(data[ri], lo, hi), bins=edges, color="0.4")
                ax.set_yticks([])
            elif i > j:
                hist, _, _ = np.histogram2d(data[rj], data[ri], bins=[edges, edges])
                mesh = ax.pcolormesh(
                    edges, edges, hist.T, norm=LogNorm(vmin=1), cmap="viridis", rasterized=True
                )
                ax.plot([lo, hi], [lo, hi], color="red", lw=0.8, ls="--")
            else:
                r = float(np.corrcoef(data[ri], data[rj])[0, 1])
                ax.text(0.5, 0.5, f"r = {r:.3f}", ha="center", va="center", fontsize=11)
                ax.set_axis_off()
            if i == n - 1:
                ax.set_xlabel(f"log-prob under {_label(labels, rj)} (nats)", fontsize=8)
            if j == 0 and i != 0:
                ax.set_ylabel(f"log-prob under {_label(labels, ri)} (nats)", fontsize=8)
    if mesh is not None:
        fig.colorbar(mesh, ax=axes, shrink=0.6, label="tokens per bin (log scale)")
    fig.suptitle(f"Per-token log-probs, every pair of runs ({int(valid.sum()):,} tokens)")
    return fig


def correlation_heatmap(
    agreement: pd.DataFrame, method: str = "pearson", labels: Mapping[str, str] | None = None
) -> Figure:
    """Heatmap of `pairwise_agreement` correlations (`method`: 'pearson' or 'spearman')."""
    import seaborn as sns

    if method not in agreement.columns:
        raise SeedscopeError(f"No column {method!r} in the table.", "use pearson or spearman.")
    runs = list(dict.fromkeys([*agreement["run_a"], *agreement["run_b"]]))
    mat = pd.DataFrame(np.eye(len(runs)), index=runs, columns=runs)
    for a, b, v in agreement[["run_a", "run_b", method]].itertuples(index=False):
        mat.loc[a, b] = mat.loc[b, a] = v
    names = [_label(labels, r) for r in runs]
    mat.index, mat.columns = names, names
    fig = Figure(figsize=(1.0 * len(runs) + 3, 0.9 * len(runs) + 2), layout="constrained")
    ax = fig.subplots()
    off = mat.to_numpy()[~np.eye(len(runs), dtype=bool)]
    sns.heatmap(
        mat,
        annot=True,
        fmt=".3f",
        cmap="mako",
        ax=ax,
        vmin=float(off.min()),
        vmax=1,
        cbar_kws={"label": f"{method.capitalize()} r of per-token log-probs"},
    )
    ax.set_title(f"{method.capitalize()} correlation of per-token log-probs between runs")
    ax.set_xlabel("run")
    ax.set_ylabel("run")
    return fig


def enrichment_forest(enrich: pd.DataFrame, top: int = 25, alpha: float = 0.05) -> Figure:
    """Forest plot of `enrichment` rows: odds ratio with CI on a log axis (top `top` rows by
    odds ratio); filled markers = BH-adjusted p < alpha."""
    rows = enrich.head(top).iloc[::-1]
    fig = Figure(figsize=(7, 0.3 * len(rows) + 1.5), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(rows))
    sig = rows["p_adjusted"].to_numpy() < alpha
    err = np.vstack([rows["odds_ratio"] - rows["ci_low"], rows["ci_high"] - rows["odds_ratio"]])
    ax.errorbar(rows["odds_ratio"], y, xerr=err, fmt="none", ecolor="0.4", capsize=2)
    ax.scatter(rows["odds_ratio"][sig], y[sig], color="C3", zorder=3, label=f"BH p < {alpha}")
    ax.scatter(
        rows["odds_ratio"][~sig],
        y[~sig],
        facecolor="white",
        edgecolor="C3",
        zorder=3,
        label="not significant",
    )
    ax.axvline(1.0, color="0.2", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yticks(y, [f"{f} = {c}" for f, c in zip(rows["feature"], rows["category"], strict=True)])
    ax.set_xlabel("odds ratio of being an outlier (log scale, 95% CI)")
    ax.set_ylabel("metadata category")
    ax.set_title("Which tokens do runs disagree on? Outlier enrichment by category")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def agreement_over_training_plot(
    agreement: pd.DataFrame,
    method: str = "pearson",
    labels: Mapping[str, str] | None = None,
) -> Figure:
    """Pairwise correlation vs training step (`agreement_over_training` output), one line per
    pair with its CI band; same-size pairs solid, cross-size pairs dashed."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for i, ((a, b), grp) in enumerate(agreement.groupby(["run_a", "run_b"], sort=False)):
        grp = grp.sort_values("step")
        same = grp["same_size"].iloc[0]
        ls = "--" if (same is not pd.NA and same is not None and not bool(same)) else "-"
        color = f"C{i % 10}"
        ax.plot(
            grp["step"],
            grp[method],
            ls=ls,
            color=color,
            lw=1,
            label=f"{_label(labels, a)} vs {_label(labels, b)}",
        )
        if f"{method}_low" in grp and grp[f"{method}_low"].notna().any():
            ax.fill_between(
                grp["step"],
                grp[f"{method}_low"],
                grp[f"{method}_high"],
                color=color,
                alpha=0.15,
                lw=0,
            )
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{method.capitalize()} r of per-token log-probs")
    ax.set_title("Agreement between runs over training")
    if agreement[["run_a", "run_b"]].drop_duplicates().shape[0] <= 15:
        ax.legend(fontsize=7, ncol=2)
    return fig

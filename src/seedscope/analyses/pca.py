"""Analysis 3: the shared and run-specific directions of per-token loss, by PCA.

The matrix is tokens x runs (or tokens x (runs x checkpoints)) of per-token loss = -log-prob,
tokens with a NaN under any column dropped (position 0 of each window), columns centred. A
component's loadings say which runs move together (all one sign: shared difficulty; one run
against the others: that run's idiosyncrasy); its scores say which tokens, and regressing the
scores on each metadata feature says what kind of tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from seedscope.analyses.compare import check_meta, position_bucket
from seedscope.core.errors import SeedscopeError


@dataclass(frozen=True)
class LossMatrix:
    """Centred losses `[n_tokens_kept, n_columns]` and what each row and column is.

    token_index: flat (window-major) eval-token index of each row; runs/steps: the run (and
    checkpoint step, None for a single checkpoint) of each column; labels: column names;
    n_eval_tokens: all eval tokens (n_windows * window) before dropping.
    """

    values: np.ndarray
    token_index: np.ndarray
    labels: list[str]
    runs: list[str]
    steps: list[int | None]
    column_means: np.ndarray
    window_len: int
    n_eval_tokens: int


def loss_matrix(logprobs: Mapping[str, np.ndarray]) -> LossMatrix:
    """Tokens x runs matrix of centred losses from run -> log-probs `[n_windows, window]`."""
    return _build({(run, None): arr for run, arr in logprobs.items()})


def loss_matrix_checkpoints(
    logprobs_by_step: Mapping[int, Mapping[str, np.ndarray]],
) -> LossMatrix:
    """Tokens x (runs x checkpoints) matrix from step -> run -> log-probs; columns are ordered
    run-major ('<run>@<step>', steps ascending)."""
    if not logprobs_by_step:
        raise SeedscopeError("No checkpoints given.", "pass {step: {run: logprobs}}.")
    runs = list(dict.fromkeys(r for lp in logprobs_by_step.values() for r in lp))
    cols = {}
    for run in runs:
        for step in sorted(logprobs_by_step):
            if run not in logprobs_by_step[step]:
                raise SeedscopeError(
                    f"Run {run!r} has no log-probs at step {step}.",
                    "give every run at every step (or drop the run).",
                )
            cols[(run, int(step))] = logprobs_by_step[step][run]
    return _build(cols)


def _build(columns: Mapping[tuple[str, int | None], np.ndarray]) -> LossMatrix:
    if len(columns) < 2:
        raise SeedscopeError("PCA needs at least 2 runs.", "pass more runs' log-probs.")
    shapes = {np.shape(a) for a in columns.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise SeedscopeError(
            f"Log-prob arrays must share one 2-D shape [n_windows, window]; got {shapes}.",
            "compute every run's log-probs on the same eval windows.",
        )
    window_len = next(iter(shapes))[1]
    flat = [np.asarray(a, dtype=np.float32).ravel() for a in columns.values()]
    keep = np.ones(flat[0].size, dtype=bool)
    for col in flat:
        keep &= np.isfinite(col)
    token_index = np.flatnonzero(keep)
    if token_index.size < 3:
        raise SeedscopeError("Fewer than 3 tokens are finite in every column.", "check inputs.")
    values = np.empty((token_index.size, len(flat)), dtype=np.float32)
    for j, col in enumerate(flat):
        values[:, j] = -col[token_index]
    means = values.mean(axis=0, dtype=np.float64)
    values -= means.astype(np.float32)
    keys = list(columns)
    labels = [run if step is None else f"{run}@{step}" for run, step in keys]
    return LossMatrix(
        values=values,
        token_index=token_index,
        labels=labels,
        runs=[run for run, _ in keys],
        steps=[step for _, step in keys],
        column_means=means,
        window_len=window_len,
        n_eval_tokens=flat[0].size,
    )


@dataclass(frozen=True)
class PCAResult:
    """explained_variance_ratio `[k]`; loadings DataFrame `[k components, n_columns]` (unit
    vectors, sign fixed so loadings sum >= 0, so a positive PC1 score = more loss); scores
    `[n_tokens_kept, k]`; the matrix it came from."""

    explained_variance_ratio: np.ndarray
    loadings: pd.DataFrame
    scores: np.ndarray
    matrix: LossMatrix

    @property
    def components(self) -> list[str]:
        return list(self.loadings.index)


def fit_pca(
    matrix: LossMatrix,
    n_components: int | None = None,
    seed: int = 0,
    randomized_above: int = 10**7,
) -> PCAResult:
    """scikit-learn PCA of the centred loss matrix.

    n_components: default all columns (at most n_columns). The randomised solver (fixed
    `random_state=seed`) is used when the matrix has more than `randomized_above` entries and
    fewer components than columns are asked for; otherwise the exact ('full') solver.
    """
    from sklearn.decomposition import PCA

    n_cols = matrix.values.shape[1]
    k = n_cols if n_components is None else int(n_components)
    if not 1 <= k <= min(n_cols, matrix.values.shape[0]):
        raise SeedscopeError(
            f"n_components={k} is out of range for a matrix with {n_cols} columns.",
            f"use 1..{n_cols}.",
        )
    solver = "randomized" if matrix.values.size > randomized_above and k < n_cols else "full"
    pca = PCA(n_components=k, svd_solver=solver, random_state=seed)
    scores = pca.fit_transform(matrix.values)
    comps = pca.components_.astype(np.float64)
    flip = np.where(comps.sum(axis=1) < 0, -1.0, 1.0)
    comps *= flip[:, None]
    scores = scores * flip[None, :]
    names = [f"PC{i + 1}" for i in range(k)]
    return PCAResult(
        explained_variance_ratio=np.asarray(pca.explained_variance_ratio_, dtype=np.float64),
        loadings=pd.DataFrame(comps, index=names, columns=matrix.labels),
        scores=np.asarray(scores, dtype=np.float64),
        matrix=matrix,
    )


def component_extremes(result: PCAResult, k: int = 20, n_components: int = 3) -> pd.DataFrame:
    """The k tokens with the highest and the lowest score on each of the top components.

    Columns: component, end ('high' | 'low'), rank (0 = most extreme), token_index, window,
    pos, score — window/pos index the eval tokens for the notebook to decode with context.
    """
    rows = []
    w = result.matrix.window_len
    for c, name in enumerate(result.components[:n_components]):
        score = result.scores[:, c]
        order = np.argsort(score, kind="stable")
        for end, idx in (("high", order[::-1][:k]), ("low", order[:k])):
            tok = result.matrix.token_index[idx]
            rows.append(
                pd.DataFrame(
                    {
                        "component": name,
                        "end": end,
                        "rank": np.arange(idx.size),
                        "token_index": tok,
                        "window": tok // w,
                        "pos": tok % w,
                        "score": score[idx],
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


def _group_r2(y: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """R^2 of OLS of each column of y `[n, k]` on one-hot(codes) with intercept = between-group
    sum of squares / total sum of squares."""
    n_cat = int(codes.max()) + 1
    counts = np.bincount(codes, minlength=n_cat).astype(np.float64)
    out = np.empty(y.shape[1])
    for j in range(y.shape[1]):
        col = y[:, j]
        sums = np.bincount(codes, weights=col, minlength=n_cat)
        nz = counts > 0
        total = float(((col - col.mean()) ** 2).sum())
        between = float((sums[nz] ** 2 / counts[nz]).sum() - col.sum() ** 2 / col.size)
        out[j] = between / total if total > 0 else np.nan
    return out


def score_predictors(
    result: PCAResult,
    meta: pd.DataFrame,
    columns: Sequence[str],
    n_components: int = 3,
    with_position: bool = True,
) -> pd.DataFrame:
    """How well each metadata feature alone predicts each component's scores.

    Every feature is treated as categorical (one-hot, NaN its own level); R^2 of the linear
    regression of the scores on it (= share of score variance between its categories). With
    `with_position`, position in window (base-4 buckets) is added as 'position'. Columns:
    component, feature, n_levels, r2; sorted by component then R^2 (high first).
    """
    check_meta(meta, result.matrix.n_eval_tokens, columns)
    rows_meta = meta.iloc[result.matrix.token_index]
    k = min(n_components, result.scores.shape[1])
    y = result.scores[:, :k]
    feats: list[tuple[str, np.ndarray]] = []
    for col in columns:
        codes, _ = pd.factorize(rows_meta[col], sort=True, use_na_sentinel=False)
        feats.append((col, codes.astype(np.int64)))
    if with_position:
        pos = result.matrix.token_index % result.matrix.window_len
        feats.append(
            (
                "position",
                np.asarray(position_bucket(pos, result.matrix.window_len).codes, dtype=np.int64),
            )
        )
    rows = []
    for feature, codes in feats:
        r2 = _group_r2(y, codes)
        for c in range(k):
            rows.append(
                {
                    "component": result.components[c],
                    "feature": feature,
                    "n_levels": int(np.unique(codes).size),
                    "r2": float(r2[c]),
                }
            )
    out = pd.DataFrame(rows)
    out["_order"] = out["component"].map({c: i for i, c in enumerate(result.components)})
    out = out.sort_values(["_order", "r2"], ascending=[True, False], ignore_index=True)
    return out.drop(columns="_order")


def describe_loadings(
    loadings: pd.Series,
    runs: Sequence[str],
    steps: Sequence[int | None],
    sizes: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    dominance: float = 2.0,
) -> str:
    """Plain words for one loading vector (computed from the numbers only):
    'shared difficulty (all loadings same sign)'; '<run> vs the rest' (one column's |loading|
    is >= `dominance` x any other's, or its sign is alone); '<size> vs <size> runs' / 'early vs
    late checkpoints' when the sign splits exactly by size / by step; else 'contrast: A, B vs C'.
    """
    z = loadings.to_numpy(dtype=np.float64)
    cols = list(loadings.index)
    name = {c: _col_label(c, r, s, labels) for c, r, s in zip(cols, runs, steps, strict=True)}
    sign = np.sign(z)
    if np.all(sign >= 0) or np.all(sign <= 0):
        return "shared difficulty (all loadings same sign)"
    mag = np.abs(z)
    top = int(np.argmax(mag))
    others = np.delete(mag, top)
    alone = int((sign == sign[top]).sum()) == 1
    if mag[top] >= dominance * others.max() or alone:
        return f"{name[cols[top]]} vs the rest"
    pos = sign > 0
    split = _split_by([sizes.get(r) for r in runs] if sizes else None, pos)
    if split is not None:
        return f"{split[0]} vs {split[1]} runs"
    if any(s is not None for s in steps):
        step_split = _step_split(np.asarray([s if s is not None else -1 for s in steps]), pos)
        if step_split is not None:
            return step_split
    run_split = _split_by(list(runs), pos) if len(set(runs)) < len(runs) else None
    if run_split is not None:
        return f"{_name(labels, run_split[0])} vs {_name(labels, run_split[1])}"
    plus = ", ".join(name[c] for c, p in zip(cols, pos, strict=True) if p)
    minus = ", ".join(name[c] for c, p in zip(cols, pos, strict=True) if not p)
    return f"contrast: {plus} vs {minus}"


def _name(labels: Mapping[str, str] | None, run: str) -> str:
    return labels.get(run, run) if labels else run


def _col_label(col: str, run: str, step: int | None, labels: Mapping[str, str] | None) -> str:
    return _name(labels, run) if step is None else f"{_name(labels, run)} @ step {step}"


def _split_by(groups: Sequence[str | None] | None, pos: np.ndarray) -> tuple[str, str] | None:
    """(group on the positive side, group on the negative side) if the sign splits columns
    exactly into two groups, else None."""
    if groups is None or any(g is None for g in groups):
        return None
    g = np.asarray(groups, dtype=object)
    plus, minus = set(g[pos]), set(g[~pos])
    if len(plus) == 1 and len(minus) == 1 and plus != minus:
        return str(next(iter(plus))), str(next(iter(minus)))
    return None


def _step_split(steps: np.ndarray, pos: np.ndarray) -> str | None:
    if steps[pos].size and steps[~pos].size:
        if steps[pos].max() < steps[~pos].min():
            return "early vs late checkpoints"
        if steps[~pos].max() < steps[pos].min():
            return "late vs early checkpoints"
    return None


def describe_components(
    result: PCAResult,
    predictors: pd.DataFrame | None = None,
    n_components: int = 3,
    sizes: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    """One plain-words line per top component, e.g. 'PC1: shared difficulty (all loadings
    same sign), 0.62 of variance; best predictor: tag (R^2=0.41)', from loadings, explained
    variance and `score_predictors` output only."""
    lines = []
    for c, comp in enumerate(result.components[:n_components]):
        text = describe_loadings(
            result.loadings.loc[comp], result.matrix.runs, result.matrix.steps, sizes, labels
        )
        line = f"{comp}: {text}, {result.explained_variance_ratio[c]:.2f} of variance"
        if predictors is not None:
            sub = predictors[predictors["component"] == comp]
            if not sub.empty:
                best = sub.sort_values("r2", ascending=False).iloc[0]
                line += f"; best predictor: {best['feature']} (R^2={best['r2']:.2f})"
        lines.append(line)
    return lines


# --------------------------------------------------------------------------- figures


def scree_plot(result: PCAResult) -> Figure:
    """Explained variance ratio per component, with the cumulative share."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(1, result.explained_variance_ratio.size + 1)
    ax.bar(x, result.explained_variance_ratio, color="C0", label="per component")
    ax.plot(x, np.cumsum(result.explained_variance_ratio), "o-", color="C1", label="cumulative")
    ax.set_xticks(x, result.components)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("principal component of per-token loss")
    ax.set_ylabel("fraction of loss variance explained")
    ax.set_title("Scree plot: per-token loss across runs")
    ax.legend()
    return fig


def loadings_plot(
    result: PCAResult,
    n_components: int = 3,
    colors: Mapping[str, object] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Figure:
    """Bar chart of each top component's loadings, one bar per column, coloured by run
    (`colors`: run -> colour, default `seedscope.core.plots.run_colors`)."""
    from seedscope.core.plots import run_colors

    runs = result.matrix.runs
    colors = colors or run_colors(list(dict.fromkeys(runs)))
    k = min(n_components, len(result.components))
    n_cols = len(result.matrix.labels)
    fig = Figure(figsize=(max(6, 0.35 * n_cols + 2), 2.6 * k), layout="constrained")
    axes = fig.subplots(k, 1, squeeze=False)[:, 0]
    ticks = [
        _col_label(c, r, s, labels)
        for c, r, s in zip(result.matrix.labels, runs, result.matrix.steps, strict=True)
    ]
    for c, ax in enumerate(axes):
        comp = result.components[c]
        ax.bar(
            np.arange(n_cols), result.loadings.loc[comp].to_numpy(), color=[colors[r] for r in runs]
        )
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_ylabel(f"{comp} loading")
        ax.set_title(f"{comp}: {result.explained_variance_ratio[c]:.2f} of variance", fontsize=10)
        ax.set_xticks(
            np.arange(n_cols),
            ticks if c == k - 1 else [""] * n_cols,
            rotation=60,
            ha="right",
            fontsize=10,
        )
    axes[-1].set_xlabel("run (checkpoint)")
    fig.suptitle("PCA loadings of per-token loss (unit-length components)")
    return fig


def score_distribution_plot(
    result: PCAResult,
    meta: pd.DataFrame,
    predictors: pd.DataFrame,
    component: str = "PC1",
    max_levels: int = 20,
) -> Figure:
    """Box plot of one component's scores grouped by its best predictor (from
    `score_predictors`); at most `max_levels` most frequent levels shown."""
    import seaborn as sns

    sub = predictors[predictors["component"] == component]
    if sub.empty:
        raise SeedscopeError(f"No predictors for {component}.", "run score_predictors first.")
    best = sub.sort_values("r2", ascending=False).iloc[0]
    feature = str(best["feature"])
    c = result.components.index(component)
    if feature == "position":
        pos = result.matrix.token_index % result.matrix.window_len
        group = pd.Series(position_bucket(pos, result.matrix.window_len)).astype(str).to_numpy()
    else:
        group = meta[feature].iloc[result.matrix.token_index].astype(str).to_numpy()
    frame = pd.DataFrame({"score": result.scores[:, c], feature: group})
    keep = frame[feature].value_counts().index[:max_levels]
    frame = frame[frame[feature].isin(keep)]
    order = frame.groupby(feature)["score"].median().sort_values().index
    fig = Figure(figsize=(8, 0.3 * len(order) + 2), layout="constrained")
    ax = fig.subplots()
    sns.boxplot(
        data=frame, x="score", y=feature, order=list(order), showfliers=False, ax=ax, color="C0"
    )
    ax.set_xlabel(f"{component} score (nats of loss, projected)")
    ax.set_ylabel(feature)
    ax.set_title(f"{component} scores by {feature} (R^2 = {best['r2']:.2f})")
    return fig


def explained_variance_ci(
    matrix: LossMatrix, n_boot: int = 200, seed: int = 0, n_components: int = 3, ci: float = 0.95
) -> pd.DataFrame:
    """Window-bootstrap CIs of the explained-variance ratios of the top components.

    The covariance of the columns is a sum of per-window moment matrices, so a replicate is
    a weighted sum of those (no refitting on 1M rows): resample windows, rebuild the
    covariance, take its eigenvalues. Columns: component, ratio, ci_low, ci_high.
    """
    from seedscope.core.stats import bootstrap_weights

    x = matrix.values
    windows = matrix.token_index // matrix.window_len
    n_windows = int(matrix.n_eval_tokens // matrix.window_len)
    k = x.shape[1]
    # Per-window sums of x and of x x^T: [n_windows, k] and [n_windows, k, k].
    sums = np.zeros((n_windows, k))
    np.add.at(sums, windows, x)
    outer = np.zeros((n_windows, k, k))
    np.add.at(outer, windows, x[:, :, None] * x[:, None, :])
    counts = np.bincount(windows, minlength=n_windows).astype(np.float64)

    def ratios(n: np.ndarray, s: np.ndarray, o: np.ndarray) -> np.ndarray:
        mean = s / n[..., None]
        cov = o / n[..., None, None] - mean[..., :, None] * mean[..., None, :]
        eig = np.linalg.eigvalsh(cov)[..., ::-1]
        return eig / eig.sum(axis=-1, keepdims=True)

    point = ratios(counts.sum(), sums.sum(0), outer.sum(0))
    w = bootstrap_weights(n_windows, n_boot, seed)
    reps = ratios(w @ counts, w @ sums, np.einsum("bw,wij->bij", w, outer))
    alpha = (1 - ci) / 2
    low, high = np.percentile(reps, [100 * alpha, 100 * (1 - alpha)], axis=0)
    m = min(n_components, k)
    return pd.DataFrame(
        {
            "component": [f"PC{i + 1}" for i in range(m)],
            "ratio": point[:m],
            "ci_low": low[:m],
            "ci_high": high[:m],
        }
    )


# --------------------------------------------------------------------------- seeds, tested
# The raw matrix mixes shared difficulty, size and seed; the seed question is asked of the
# matrix with each token's mean over the seeds of its size removed ("centred within size").
# A component is described in words only if it beats a permutation null (parallel analysis)
# and its spread is above a floor in nats.


def loss_matrix_within_size(
    logprobs: Mapping[str, np.ndarray], sizes: Mapping[str, str]
) -> LossMatrix:
    """Tokens x runs of losses centred within size: per token, the mean loss of the seeds of
    the run's size is subtracted (sizes with one seed are dropped). What is left differs
    between seeds only; its columns of one size sum to zero per token."""
    groups: dict[str, list[str]] = {}
    for run in logprobs:
        groups.setdefault(str(sizes[run]), []).append(run)
    keep = [r for g in groups.values() if len(g) >= 2 for r in g]
    if len(keep) < 2:
        raise SeedscopeError(
            "No size has two seeds, so there is no within-size (seed) matrix.",
            "include at least two runs of one size.",
        )
    matrix = loss_matrix({r: logprobs[r] for r in keep})
    values = matrix.values.astype(np.float64)
    for members in groups.values():
        cols = [keep.index(r) for r in members if r in keep]
        if len(cols) >= 2:
            values[:, cols] -= values[:, cols].mean(axis=1, keepdims=True)
    return LossMatrix(
        values=values.astype(np.float32),
        token_index=matrix.token_index,
        labels=matrix.labels,
        runs=matrix.runs,
        steps=matrix.steps,
        column_means=matrix.column_means,
        window_len=matrix.window_len,
        n_eval_tokens=matrix.n_eval_tokens,
    )


def seed_variance_share(raw: LossMatrix, seed_view: LossMatrix, sizes: Mapping[str, str]) -> float:
    """Share of per-token loss variance that lies between seeds of one size: per run of the
    seed view, the variance of its within-size-centred losses times n_s / (n_s - 1) (centring
    on the mean of n_s seeds removes 1/n_s of the seed variance), summed, over the raw
    variance of the same runs. 0 when the raw losses do not vary."""
    n_per: dict[str, int] = {}
    for run in seed_view.runs:
        n_per[sizes[run]] = n_per.get(sizes[run], 0) + 1
    scale = np.asarray([n_per[sizes[r]] / (n_per[sizes[r]] - 1) for r in seed_view.runs])
    seed_var = np.var(seed_view.values.astype(np.float64), axis=0, ddof=1) * scale
    cols = [raw.labels.index(label) for label in seed_view.labels]
    raw_var = np.var(raw.values[:, cols].astype(np.float64), axis=0, ddof=1)
    total = float(raw_var.sum())
    return float(seed_var.sum()) / total if total > 0 else 0.0


def _eig(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, >= 0) and eigenvectors (columns) of the column covariance."""
    x = np.asarray(values, dtype=np.float64)
    x = x - x.mean(axis=0)
    cov = x.T @ x / max(x.shape[0] - 1, 1)
    eig, vec = np.linalg.eigh(cov)
    return np.maximum(eig[::-1], 0.0), vec[:, ::-1]


def permute_within_rows(
    values: np.ndarray,
    groups: Sequence[Sequence[int]],
    rng: np.random.Generator,
    blocks: np.ndarray | None = None,
) -> np.ndarray:
    """Shuffle each row's values among the columns of each group (runs exchangeable): keeps
    every token's spread and any structure shared by all runs of a group, destroys any
    consistent split of the runs. With `blocks` (a block id per row, e.g. the eval window),
    every row of a block gets the same permutation: tokens of one window share a seed x
    window offset, which a per-token shuffle would destroy and then read as structure."""
    out = np.array(values, dtype=np.float64, copy=True)
    codes = None if blocks is None else np.unique(np.asarray(blocks), return_inverse=True)[1]
    for group in groups:
        cols = np.asarray(group, dtype=np.int64)
        if cols.size < 2:
            continue
        if codes is None:
            order = np.argsort(rng.random((out.shape[0], cols.size)), axis=1)
        else:
            order = np.argsort(rng.random((int(codes.max()) + 1, cols.size)), axis=1)[codes]
        out[:, cols] = np.take_along_axis(out[:, cols], order, axis=1)
    return out


def parallel_analysis(
    values: np.ndarray,
    groups: Sequence[Sequence[int]] | None = None,
    n_permutations: int = 19,
    seed: int = 0,
    alpha: float = 0.05,
    max_tokens: int = 100_000,
    blocks: np.ndarray | None = None,
) -> pd.DataFrame:
    """Which components have more variance than under a permutation null (Horn's parallel
    analysis)?

    values: `[n_tokens, n_columns]`. Null: `groups=None` shuffles every column's tokens
    independently (no shared structure at all, the classic test); with `groups` (lists of
    column indices), each token's values are permuted among the columns of each group
    (`permute_within_rows`: the columns of a group are exchangeable; with `blocks`, one
    permutation per block of rows, e.g. per eval window). Component k passes when
    its eigenvalue exceeds the k-th eigenvalue of the null data with p = (1 + #null >= real) /
    (n_permutations + 1) <= alpha. At most `max_tokens` rows (seeded subsample) are used.
    Columns: component, eigenvalue, null_max, p_value, passes.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(values, dtype=np.float64)
    if x.shape[0] > max_tokens:
        rows = np.sort(rng.choice(x.shape[0], max_tokens, replace=False))
        x = x[rows]
        blocks = None if blocks is None else np.asarray(blocks)[rows]
    real, _ = _eig(x)
    null = np.empty((n_permutations, real.size))
    for i in range(n_permutations):
        if groups is None:
            perm = np.column_stack([rng.permutation(x[:, j]) for j in range(x.shape[1])])
        else:
            perm = permute_within_rows(x, groups, rng, blocks)
        null[i] = _eig(perm)[0]
    # A tolerance on ties: identical data (all-zero residuals) must not "beat" its own null.
    tol = 1e-9 * max(float(real.max()), 1e-300)
    exceed = (null >= real[None, :] - tol).sum(axis=0)
    p = (1 + exceed) / (n_permutations + 1)
    return pd.DataFrame(
        {
            "component": [f"PC{i + 1}" for i in range(real.size)],
            "eigenvalue": real,
            "null_max": null.max(axis=0),
            "p_value": p,
            "passes": p <= alpha,
        }
    )


def _principal_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Largest principal angle (degrees) between the column spaces of a and b."""
    import scipy.linalg

    return float(np.degrees(scipy.linalg.subspace_angles(a, b).max()))


def subspace_stability(
    matrix: LossMatrix,
    n_described: int,
    seeds: Mapping[str, int],
    sizes: Mapping[str, str],
    raw: Mapping[str, np.ndarray],
    n_boot: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """How stable is the subspace of the first `n_described` components of a within-size
    matrix? Largest principal angle (degrees) to the full-data subspace:
    - leave one seed out: drop the runs with that seed (in every size), re-centre within
      size, refit; the full loadings are restricted to the kept columns;
    - window bootstrap: covariances from resampled windows (per-window moment sums).
    Rows: kind ('leave-one-seed-out' | 'bootstrap'), left_out (seed or replicate), angle_deg.
    Empty when nothing is described.
    """
    from seedscope.core.stats import bootstrap_weights

    if n_described < 1:
        return pd.DataFrame(columns=["kind", "left_out", "angle_deg"])
    _, vec = _eig(matrix.values)
    basis = vec[:, :n_described]
    rows = []
    for s in sorted({int(seeds[r]) for r in matrix.runs}):
        kept = [r for r in matrix.runs if int(seeds[r]) != s]
        per_size: dict[str, int] = {}
        for r in kept:
            per_size[sizes[r]] = per_size.get(sizes[r], 0) + 1
        kept = [r for r in kept if per_size[sizes[r]] >= 2]
        if len(kept) <= n_described:
            continue
        sub = loss_matrix_within_size({r: raw[r] for r in kept}, sizes)
        _, sub_vec = _eig(sub.values)
        cols = [matrix.runs.index(r) for r in sub.runs]
        restricted, _ = np.linalg.qr(basis[cols])
        rows.append(
            {
                "kind": "leave-one-seed-out",
                "left_out": s,
                "angle_deg": _principal_angle(restricted, sub_vec[:, :n_described]),
            }
        )
    x = matrix.values.astype(np.float64)
    windows = matrix.token_index // matrix.window_len
    n_windows = int(matrix.n_eval_tokens // matrix.window_len)
    k = x.shape[1]
    counts = np.bincount(windows, minlength=n_windows).astype(np.float64)
    sums = np.stack([np.bincount(windows, x[:, i], n_windows) for i in range(k)], axis=1)
    outer = np.empty((n_windows, k, k))
    for i in range(k):
        for j in range(i, k):
            outer[:, i, j] = outer[:, j, i] = np.bincount(windows, x[:, i] * x[:, j], n_windows)
    w = bootstrap_weights(n_windows, n_boot, seed)
    n, s_, o = w @ counts, w @ sums, np.einsum("bw,wij->bij", w, outer)
    mean = s_ / n[:, None]
    cov = o / n[:, None, None] - mean[:, :, None] * mean[:, None, :]
    _, vecs = np.linalg.eigh(cov)
    for b in range(n_boot):
        rows.append(
            {
                "kind": "bootstrap",
                "left_out": b,
                "angle_deg": _principal_angle(basis, vecs[b][:, ::-1][:, :n_described]),
            }
        )
    return pd.DataFrame(rows)


def seed_components(
    matrix: LossMatrix,
    groups: Sequence[Sequence[int]] | None,
    n_permutations: int = 19,
    seed: int = 0,
    alpha: float = 0.05,
    min_sd: float = 0.01,
    first_groups: Sequence[Sequence[int]] | None = None,
    test_first_separately: bool = False,
) -> pd.DataFrame:
    """Eigen-decomposition of a loss matrix with, per component: explained-variance ratio,
    sd of its scores (nats), parallel-analysis p-value, and `described` = passes the
    permutation null AND sd >= `min_sd` nats. With `test_first_separately` (the raw view),
    PC1 is tested against column shuffling (is there shared difficulty at all?) and later
    components against `groups` (runs exchangeable, permuted once per eval window: tokens of
    a window share a seed x window offset). Columns: component,
    eigenvalue, ratio, sd, p_value, described. A zero-variance matrix describes nothing.
    """
    real, _ = _eig(matrix.values)
    total = float(real.sum())
    windows = matrix.token_index // matrix.window_len
    test = parallel_analysis(matrix.values, groups, n_permutations, seed, alpha, blocks=windows)
    if test_first_separately:
        first = parallel_analysis(matrix.values, None, n_permutations, seed + 1, alpha)
        test.loc[0, ["p_value", "passes"]] = first.loc[0, ["p_value", "passes"]]
    sd = np.sqrt(real)
    ratio = real / total if total > 0 else np.zeros_like(real)
    return pd.DataFrame(
        {
            "component": [f"PC{i + 1}" for i in range(real.size)],
            "eigenvalue": real,
            "ratio": ratio,
            "sd": sd,
            "p_value": test["p_value"].to_numpy(),
            "described": test["passes"].to_numpy() & (sd >= min_sd),
        }
    )


def seed_component_lines(
    components: pd.DataFrame,
    matrix: LossMatrix,
    labels: Mapping[str, str] | None = None,
    sizes: Mapping[str, str] | None = None,
    n_show: int = 3,
    seeds: Mapping[str, int] | None = None,
) -> list[str]:
    """Plain words per component of `seed_components`: described ones from their loadings
    (`describe_loadings`; with `seeds`, a sign split by seed value that holds in every size
    reads 'seeds 49 vs seeds 21 (same side in every size)'), the others as 'no structure
    beyond noise' with the test's p."""
    _, vec = _eig(matrix.values)
    lines = []
    for c, row in components.head(n_show).iterrows():
        head = f"{row['component']}: "
        tail = (
            f", {row['ratio']:.3f} of variance (sd {row['sd']:.3g} nats, p = {row['p_value']:.2g})"
        )
        if not row["described"]:
            lines.append(head + "no structure beyond noise" + tail)
            continue
        load = pd.Series(vec[:, c], index=matrix.labels)
        if load.sum() < 0:
            load = -load
        text = describe_loadings(load, matrix.runs, matrix.steps, sizes, labels)
        split = _seed_split(load.to_numpy(), matrix.runs, seeds, sizes)
        lines.append(head + (split or text) + tail)
    return lines


def _seed_split(
    loading: np.ndarray,
    runs: Sequence[str],
    seeds: Mapping[str, int] | None,
    sizes: Mapping[str, str] | None,
) -> str | None:
    """'seeds A vs seeds B (same side in every size)' when the sign of the loadings splits
    the runs by seed value, every seed present in >= 2 sizes; else None."""
    if not seeds or not sizes or len({sizes[r] for r in runs}) < 2:
        return None
    side: dict[int, set[bool]] = {}
    n_sizes: dict[int, set[str]] = {}
    for value, run in zip(loading, runs, strict=True):
        side.setdefault(int(seeds[run]), set()).add(bool(value > 0))
        n_sizes.setdefault(int(seeds[run]), set()).add(sizes[run])
    if any(len(s) != 1 for s in side.values()) or any(len(s) < 2 for s in n_sizes.values()):
        return None
    plus = sorted(k for k, s in side.items() if True in s)
    minus = sorted(k for k, s in side.items() if False in s)
    if not plus or not minus:
        return None
    return (
        f"seeds {', '.join(map(str, plus))} vs seeds {', '.join(map(str, minus))} "
        "(same side in every size)"
    )

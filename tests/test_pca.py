"""Known answers for analysis 3: PCA recovers planted loss directions and what drives them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seedscope.analyses.pca import (
    component_extremes,
    describe_components,
    fit_pca,
    loadings_plot,
    loss_matrix,
    loss_matrix_checkpoints,
    score_distribution_plot,
    score_predictors,
    scree_plot,
)
from seedscope.core.errors import SeedscopeError

N_W, W = 200, 100
RUNS = ["s1", "s2", "s3", "m1", "m2", "m3"]
SIZES = {r: ("small" if r.startswith("s") else "medium") for r in RUNS}


def _meta(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = N_W * W
    return pd.DataFrame(
        {
            "tag": rng.choice(["text", "bracket", "fact"], size=n, p=[0.7, 0.1, 0.2]),
            "token_class": rng.choice(["punctuation", "digit", "other"], size=n),
        }
    )


def _to_logprobs(loss: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """loss `[n_tokens, n_runs]` -> run -> log-prob `[N_W, W]` with position 0 NaN."""
    out = {}
    for j, name in enumerate(names):
        lp = (-loss[:, j]).reshape(N_W, W).astype(np.float32)
        lp[:, 0] = np.nan
        out[name] = lp
    return out


def _planted(seed: int = 0):
    """Loss = 3 + s1 * u1 + s2 * u2 + noise: u1 shared (all positive), u2 = medium vs small;
    s2 is larger on `bracket` tokens (a planted feature relation)."""
    rng = np.random.default_rng(seed)
    meta = _meta(seed)
    n = N_W * W
    u1 = np.array([1.0, 1.2, 0.8, 1.1, 0.9, 1.0])
    u1 /= np.linalg.norm(u1)
    u2 = np.array([-1.0, -1, -1, 1, 1, 1]) / np.sqrt(6)
    u2 -= (u2 @ u1) * u1
    u2 /= np.linalg.norm(u2)
    bracket = (meta["tag"] == "bracket").to_numpy()
    s1 = rng.normal(size=n) * 2.0
    s2 = 1.5 * bracket + rng.normal(size=n)
    loss = 3 + np.outer(s1, u1) + np.outer(s2, u2) + rng.normal(size=(n, 6)) * 0.05
    return _to_logprobs(loss, RUNS), meta, u1, u2, s1, s2


def test_pca_recovers_planted_directions_and_feature():
    lp, meta, u1, u2, _, s2 = _planted()
    mat = loss_matrix(lp)
    assert mat.values.shape == (N_W * (W - 1), 6)
    np.testing.assert_allclose(mat.values.mean(axis=0), 0, atol=1e-4)
    res = fit_pca(mat, seed=0)
    load = res.loadings.to_numpy()
    assert abs(load[0] @ u1) > 0.99
    assert abs(load[1] @ u2) > 0.99
    assert (load[0] > 0).all()  # sign convention: loadings sum >= 0
    kept = mat.token_index
    var1, var2 = 4.0, np.var(s2[kept])
    total = var1 + var2 + 6 * 0.05**2
    np.testing.assert_allclose(
        res.explained_variance_ratio[:2], [var1 / total, var2 / total], atol=0.02
    )
    pred = score_predictors(res, meta, ["tag", "token_class"], n_components=2)
    pc2 = pred[pred.component == "PC2"]
    assert pc2.iloc[0].feature == "tag"
    b = (meta["tag"].to_numpy()[kept] == "bracket").astype(float)
    expected_r2 = 1.5**2 * b.var() / var2
    assert pc2.iloc[0].r2 == pytest.approx(expected_r2, abs=0.02)
    assert pred[pred.component == "PC1"].r2.max() == pytest.approx(0.0, abs=0.01)
    lines = describe_components(res, pred, n_components=2, sizes=SIZES)
    assert lines[0].startswith("PC1: shared difficulty (all loadings same sign), ")
    assert lines[1].startswith("PC2: ")
    assert "medium vs small runs" in lines[1] or "small vs medium runs" in lines[1]
    assert lines[1].endswith(f"best predictor: tag (R^2={pc2.iloc[0].r2:.2f})")
    assert f"{res.explained_variance_ratio[0]:.2f} of variance" in lines[0]


def test_randomized_solver_agrees_with_full():
    lp, *_ = _planted(seed=1)
    mat = loss_matrix(lp)
    full = fit_pca(mat, n_components=2, seed=0)
    rand = fit_pca(mat, n_components=2, seed=0, randomized_above=0)
    for c in range(2):
        assert abs(full.loadings.iloc[c] @ rand.loadings.iloc[c]) > 0.999
    np.testing.assert_allclose(
        full.explained_variance_ratio, rand.explained_variance_ratio, rtol=1e-3
    )


def test_one_run_idiosyncrasy_is_named():
    rng = np.random.default_rng(2)
    n = N_W * W
    shared = rng.normal(size=(n, 1)) * 2
    own = np.zeros((n, 4))
    own[:, 2] = rng.normal(size=n)  # only run c has its own direction
    loss = 3 + shared + own + rng.normal(size=(n, 4)) * 0.05
    names = ["a", "b", "c", "d"]
    res = fit_pca(loss_matrix(_to_logprobs(loss, names)), n_components=2)
    lines = describe_components(res, n_components=2, labels={"c": "c (seed 81)"})
    assert lines[1].startswith("PC2: c (seed 81) vs the rest, ")
    # Known answer: 2nd eigenvector of the planted covariance 4 * 11' + e_c e_c' + 0.0025 I.
    cov = 4 * np.ones((4, 4)) + np.diag([0, 0, 1.0, 0]) + 0.0025 * np.eye(4)
    expected = np.linalg.eigh(cov)[1][:, -2]
    assert abs(res.loadings.loc["PC2"].to_numpy() @ expected) > 0.99


def test_extremes_are_the_planted_tokens():
    lp, meta, *_ = _planted(seed=3)
    planted = [(10, 50), (99, 3), (180, 70)]
    for w, p in planted:
        for r in RUNS:
            lp[r][w, p] -= 30.0  # much harder for every run: top PC1 scores
    res = fit_pca(loss_matrix(lp), n_components=2)
    ext = component_extremes(res, k=3, n_components=2)
    high = ext[(ext.component == "PC1") & (ext.end == "high")]
    assert set(zip(high.window, high.pos, strict=True)) == set(planted)
    assert high.score.is_monotonic_decreasing
    low = ext[(ext.component == "PC1") & (ext.end == "low")]
    assert low.score.is_monotonic_increasing
    assert (low.score.to_numpy() < high.score.to_numpy().min()).all()


def test_checkpoint_matrix_and_step_contrast():
    rng = np.random.default_rng(4)
    n = N_W * W
    shared = rng.normal(size=(n, 1)) * 2
    late = rng.normal(size=n)  # moves early and late checkpoints apart
    by_step = {}
    for step, sign in ((100, 1.0), (200, -1.0)):
        loss = 3 + shared + sign * late[:, None] + rng.normal(size=(n, 2)) * 0.05
        by_step[step] = _to_logprobs(loss, ["r0", "r1"])
    mat = loss_matrix_checkpoints(by_step)
    assert mat.labels == ["r0@100", "r0@200", "r1@100", "r1@200"]
    assert mat.steps == [100, 200, 100, 200]
    res = fit_pca(mat, n_components=2)
    lines = describe_components(res, n_components=2)
    assert lines[0].startswith("PC1: shared difficulty")
    assert lines[1].startswith("PC2: early vs late checkpoints") or lines[1].startswith(
        "PC2: late vs early checkpoints"
    )
    np.testing.assert_allclose(np.abs(res.loadings.loc["PC2"]), 0.5, atol=0.02)


def test_bad_inputs_raise():
    lp, meta, *_ = _planted()
    with pytest.raises(SeedscopeError, match="at least 2"):
        loss_matrix({"s1": lp["s1"]})
    res = fit_pca(loss_matrix(lp), n_components=2)
    with pytest.raises(SeedscopeError, match="rows"):
        score_predictors(res, meta.iloc[:10], ["tag"])
    with pytest.raises(SeedscopeError, match="out of range"):
        fit_pca(loss_matrix(lp), n_components=7)


def test_figures():
    lp, meta, *_ = _planted()
    res = fit_pca(loss_matrix(lp), n_components=3)
    pred = score_predictors(res, meta, ["tag", "token_class"])
    scree = scree_plot(res)
    assert scree.axes[0].get_ylabel() == "fraction of loss variance explained"
    bars = loadings_plot(res, n_components=2)
    assert len(bars.axes) == 2 and bars.get_suptitle()
    assert len(bars.axes[0].patches) == 6
    dist = score_distribution_plot(res, meta, pred, component="PC2")
    assert dist.axes[0].get_ylabel() == "tag"
    assert "PC2" in dist.axes[0].get_title()


def test_explained_variance_ci_matches_sklearn_and_covers_planted():
    from seedscope.analyses.pca import explained_variance_ci, fit_pca, loss_matrix

    rng = np.random.default_rng(3)
    n_windows, window = 300, 16
    shared = rng.normal(size=(n_windows, window)) * 2.0
    logprobs = {
        f"r{i}": (shared + rng.normal(size=(n_windows, window))).astype(np.float32)
        for i in range(4)
    }
    for v in logprobs.values():
        v[:, 0] = np.nan
    matrix = loss_matrix(logprobs)
    table = explained_variance_ci(matrix, n_boot=100, seed=0, n_components=2)
    sk = fit_pca(matrix, n_components=4).explained_variance_ratio
    np.testing.assert_allclose(table["ratio"].to_numpy(), sk[:2], rtol=1e-6)
    # planted: eigenvalues 4*4+1 and 1 (x3) -> PC1 ratio 17/20
    assert table["ci_low"][0] <= 17 / 20 <= table["ci_high"][0]
    assert table["ci_low"][0] < table["ratio"][0] < table["ci_high"][0]

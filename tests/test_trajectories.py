"""Tests for seedscope.trajectories against planted curve shapes and hand-computed cases."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from seedscope import trajectories as tr
from seedscope.errors import SeedscopeError

matplotlib.use("Agg")

# the mini-suite schedule: dense early, sparse late (54 checkpoints)
STEPS = np.array(
    sorted(set(range(0, 101, 10)) | set(range(120, 601, 20)) | set(range(650, 1501, 50)))
)
X = np.log(STEPS + 1.0)
U = (X - X[0]) / (X[-1] - X[0])


@pytest.fixture(scope="module")
def synthetic():
    # 0.25 nats: the middle of the noise range of real token curves (0.1-0.3)
    losses, truth = tr.synthetic_trajectories(60, STEPS, noise_sd=0.25, seed=7)
    return losses, truth, tr.classify_trajectories(losses, STEPS)


def test_confusion_matrix_at_realistic_noise(synthetic):
    _, truth, pred = synthetic
    cm = tr.confusion_matrix(truth["class"], pred["class"])
    assert list(cm.index) == list(tr.CLASSES)
    np.testing.assert_allclose(cm.sum(axis=1), 1.0)
    assert np.all(np.diag(cm) >= 0.95), cm
    assert (truth["class"] == pred["class"]).mean() >= 0.97


def test_transition_steps_recovered_on_synthetic(synthetic):
    _, truth, pred = synthetic
    ok = (truth["class"] == "s_shaped") & (pred["class"] == "s_shaped")
    err = np.abs(
        np.log(pred.loc[ok, "transition_step"] + 1) - np.log(truth.loc[ok, "transition_step"] + 1)
    )
    assert np.median(err) < 0.1  # median within 10% of the step
    np.testing.assert_allclose(pred.loc[ok, "end_loss"], truth.loc[ok, "end_loss"], atol=0.5)


def test_planted_logistic_parameters():
    m, w = 0.7, 0.03  # midpoint and width on the rescaled log-step axis
    clean = 2.0 + 3.0 * expit(-(U - m) / w)
    rng = np.random.default_rng(0)
    noisy = clean + rng.normal(0, 0.1, (20, U.size))
    df = tr.classify_trajectories(noisy, STEPS)
    assert (df["class"] == "s_shaped").all()
    planted_step = np.exp(X[0] + m * (X[-1] - X[0])) - 1
    np.testing.assert_allclose(df["transition_step"], planted_step, rtol=0.1)
    np.testing.assert_allclose(df["width"], w * (X[-1] - X[0]), rtol=0.35)
    np.testing.assert_allclose(df["start_loss"], 5.0, atol=0.15)
    np.testing.assert_allclose(df["end_loss"], 2.0, atol=0.1)
    assert (df["direction"] == "down").all()


def test_known_shapes_without_noise_and_directions():
    rng = np.random.default_rng(1)
    curves = np.stack(
        [
            np.full(U.size, 4.0),
            3.0 + 2.0 * np.exp(-3.0 * U),
            3.0 + 2.0 * expit((U - 0.6) / 0.03),  # S-shaped rise
            3.0 - 4.0 * (U - 0.6) ** 2,  # rise then fall
            3.0 + 4.0 * (U - 0.5) ** 2,  # fall then rise
        ]
    )
    df = tr.classify_trajectories(curves + rng.normal(0, 0.02, curves.shape), STEPS)
    assert list(df["class"]) == ["flat", "smooth", "s_shaped", "non_monotone", "non_monotone"]
    assert list(df["direction"]) == ["none", "down", "up", "rise_fall", "fall_rise"]
    assert df.loc[0, "start_loss"] == pytest.approx(4.0, abs=0.02)
    for cls in tr.CLASSES:
        assert f"bic_{cls}" in df.columns


def test_three_d_input_names_runs_and_tokens():
    losses, _ = tr.synthetic_trajectories(3, STEPS, 0.1, seed=0)  # 12 tokens
    stacked = np.stack([losses, losses[::-1]])  # 2 runs
    df = tr.classify_trajectories(stacked, STEPS, run_names=["a", "b"], refine=False)
    assert len(df) == 24
    assert list(df["run"].unique()) == ["a", "b"]
    assert list(df.loc[df["run"] == "a", "token"]) == list(range(12))
    np.testing.assert_array_equal(
        df.loc[df["run"] == "a", "class"].to_numpy(),
        df.loc[df["run"] == "b", "class"].to_numpy()[::-1],
    )
    with pytest.raises(SeedscopeError):
        tr.classify_trajectories(stacked, STEPS, run_names=["a"])


def test_refine_with_joblib_matches_loop():
    losses, _ = tr.synthetic_trajectories(4, STEPS, 0.2, seed=3)
    a = tr.classify_trajectories(losses, STEPS, n_jobs=1)
    b = tr.classify_trajectories(losses, STEPS, n_jobs=2)
    np.testing.assert_allclose(a["transition_step"], b["transition_step"], rtol=1e-9)


def test_bad_input_raises_before_work():
    with pytest.raises(SeedscopeError, match="n_steps"):
        tr.classify_trajectories(np.zeros((3, 5)), STEPS)
    bad = np.zeros((2, STEPS.size))
    bad[0, 3] = np.nan
    with pytest.raises(SeedscopeError, match="NaN"):
        tr.classify_trajectories(bad, STEPS)


def test_estimate_noise_recovers_planted_sd():
    losses, _ = tr.synthetic_trajectories(25, STEPS, 0.3, seed=5)
    assert tr.estimate_noise(losses, STEPS) == pytest.approx(0.3, rel=0.1)


def test_confusion_matrix_by_hand():
    cm = tr.confusion_matrix(
        ["flat", "flat", "smooth", "s_shaped"], ["flat", "smooth", "smooth", "flat"]
    )
    assert cm.loc["flat", "flat"] == pytest.approx(0.5)
    assert cm.loc["flat", "smooth"] == pytest.approx(0.5)
    assert cm.loc["s_shaped", "flat"] == pytest.approx(1.0)
    assert cm.loc["non_monotone"].sum() == pytest.approx(0.0)


def _classes(run: str, n_s: int, n: int) -> pd.DataFrame:
    return pd.DataFrame({"run": run, "class": ["s_shaped"] * n_s + ["smooth"] * (n - n_s)})


def test_s_shaped_fraction_difference_by_hand():
    div = pd.concat([_classes("a", 60, 100), _classes("b", 40, 100)])
    base = pd.concat([_classes("a", 20, 100), _classes("b", 20, 100)])
    out = tr.s_shaped_fraction_difference(div, base, n_boot=4000, seed=0).set_index("scheme")
    assert out["estimate"].to_numpy() == pytest.approx([0.3, 0.3, 0.3])
    assert out.loc["tokens", "divergent_frac"] == pytest.approx(0.5)
    assert out.loc["tokens", "baseline_frac"] == pytest.approx(0.2)
    # per-run differences are 0.4 and 0.2: resampling runs gives means in [0.2, 0.4]
    assert out.loc["runs", "ci_low"] == pytest.approx(0.2)
    assert out.loc["runs", "ci_high"] == pytest.approx(0.4)
    # token resampling: sd of the difference ~ sqrt(sum p(1-p)/n)/2 ~ 0.041 -> CI ~ +-0.08
    lo, hi = out.loc["tokens", ["ci_low", "ci_high"]]
    assert lo == pytest.approx(0.3 - 1.96 * 0.0412, abs=0.02)
    assert hi == pytest.approx(0.3 + 1.96 * 0.0412, abs=0.02)
    same = tr.s_shaped_fraction_difference(base, base, n_boot=500, seed=1)
    assert same["estimate"].to_numpy() == pytest.approx([0.0, 0.0, 0.0])
    assert (same["ci_low"] <= 0).all() and (same["ci_high"] >= 0).all()


def test_transition_spread_by_hand():
    df = pd.DataFrame(
        {
            "run": ["a", "b", "c", "a", "b", "c"],
            "token": [0, 0, 0, 1, 1, 1],
            "class": ["s_shaped", "s_shaped", "smooth", "s_shaped", "flat", "smooth"],
            "transition_step": [99.0, 9999.0, 5.0, 50.0, 1.0, 1.0],
            "end_loss": [2.0, 3.0, 9.0, 1.0, 1.0, 1.0],
        }
    )
    out = tr.transition_spread(df).set_index("token")
    assert out.loc[0, "n_runs"] == 3
    assert out.loc[0, "n_s_shaped"] == 2
    assert out.loc[0, "transition_range_log10"] == pytest.approx(2.0)  # log10(100) .. log10(10000)
    assert out.loc[0, "transition_sd_log10"] == pytest.approx(np.std([2.0, 4.0], ddof=1))
    assert out.loc[0, "end_loss_range"] == pytest.approx(1.0)
    assert np.isnan(out.loc[1, "transition_sd_log10"])  # S-shaped in only one run


def test_figures():
    losses, _ = tr.synthetic_trajectories(2, STEPS, 0.1, seed=0)
    stacked = np.stack([losses, losses + 0.1])
    df = tr.classify_trajectories(stacked, STEPS, run_names=["x21", "x49"], refine=False)
    fig = tr.plot_class_examples(
        stacked, STEPS, df, ["x21", "x49"], labels={"x21": "x21 (seed 21)", "x49": "x49 (seed 49)"}
    )
    ax = fig.axes[0]
    assert ax.get_xlabel() == "training step (log scale)"
    assert ax.get_ylabel() == "loss (nats)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["x21 (seed 21)", "x49 (seed 49)"]
    fig2 = tr.plot_transition_steps(df)
    assert fig2.axes[0].get_xlabel() == "transition step (log scale)"
    assert fig2.axes[0].get_title()

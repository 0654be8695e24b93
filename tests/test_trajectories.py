"""Tests for seedscope.analyses.trajectories against planted curve shapes and hand-computed cases."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from seedscope.analyses import trajectories as tr
from seedscope.core.errors import SeedscopeError

matplotlib.use("Agg")

# the mini-suite schedule: dense early, sparse late (54 checkpoints)
STEPS = np.array(
    sorted(set(range(0, 101, 10)) | set(range(120, 601, 20)) | set(range(650, 1501, 50)))
)
X = np.log(STEPS + 1.0)
U = (X - X[0]) / (X[-1] - X[0])


@pytest.fixture(scope="module")
def synthetic():
    # 0.25 nats of iid noise (the real noise is measured by validate_at_real_noise)
    losses, truth = tr.synthetic_trajectories(60, STEPS, noise_sd=0.25, seed=7)
    return losses, truth, tr.classify_trajectories(losses, STEPS)


def test_confusion_matrix_at_realistic_noise(synthetic):
    _, truth, pred = synthetic
    cm = tr.confusion_matrix(truth["class"], pred["class"])
    assert list(cm.index) == list(tr.CLASSES)
    np.testing.assert_allclose(cm.sum(axis=1), 1.0)
    # late S-curves whose lower plateau is short read as a step that ends after the data
    # (smooth): S recall is the price of "both plateaus observed"; a false S claim is rare
    assert cm.loc["flat", "flat"] >= 0.95 and cm.loc["non_monotone", "non_monotone"] >= 0.95
    assert cm.loc["smooth", "smooth"] >= 0.95, cm
    assert cm.loc["s_shaped", "s_shaped"] >= 0.85, cm
    assert cm["s_shaped"].drop("s_shaped").max() <= 0.02, cm
    assert (truth["class"] == pred["class"]).mean() >= 0.95


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
    """Tokens 0..n-1 of one run, the first n_s S-shaped."""
    return pd.DataFrame(
        {"run": run, "token": np.arange(n), "class": ["s_shaped"] * n_s + ["smooth"] * (n - n_s)}
    )


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
    # tokens drawn jointly across runs: the statistic is a mean over tokens of the token's
    # mean over runs z; divergent z = 1 (40), 0.5 (20), 0 (40): var 0.2; baseline z = 1
    # (20), 0 (80): var 0.16 -> sd of the difference sqrt((0.2 + 0.16) / 100) = 0.06
    lo, hi = out.loc["tokens", ["ci_low", "ci_high"]]
    assert lo == pytest.approx(0.3 - 1.96 * 0.06, abs=0.015)
    assert hi == pytest.approx(0.3 + 1.96 * 0.06, abs=0.015)
    same = tr.s_shaped_fraction_difference(base, base, n_boot=500, seed=1)
    assert same["estimate"].to_numpy() == pytest.approx([0.0, 0.0, 0.0])
    assert (same["ci_low"] <= 0).all() and (same["ci_high"] >= 0).all()


def test_multi_bootstrap_counts_a_token_once_however_many_runs_repeat_it():
    # 5 runs that classify every token alike: 5 runs hold no more token evidence than one,
    # so the CI is that of one run, +-1.96 sqrt(0.25/100 + 0.16/100) = +-0.1255 (resampling
    # each run's tokens independently would give +-0.056, 2.2x too narrow)
    div = pd.concat([_classes(r, 50, 100) for r in "abcde"])
    base = pd.concat([_classes(r, 20, 100) for r in "abcde"])
    out = tr.s_shaped_fraction_difference(div, base, n_boot=4000, seed=2).set_index("scheme")
    half = (out.loc["runs+tokens", "ci_high"] - out.loc["runs+tokens", "ci_low"]) / 2
    assert half == pytest.approx(1.96 * np.sqrt(0.25 / 100 + 0.16 / 100), rel=0.1)
    assert out.loc["runs", "ci_low"] == pytest.approx(0.3)  # runs agree: no run spread
    with pytest.raises(SeedscopeError, match="some runs only"):
        tr.s_shaped_fraction_difference(div.iloc[1:], base)


def test_match_baseline_known_answer_and_amplitude_confound():
    rng = np.random.default_rng(0)
    target = rng.normal(0, 1, (20, 2))
    decoys = rng.normal(5, 1, (50, 2))
    pool = np.concatenate([decoys, target[::-1] + 1e-3])  # exact twins, reversed
    chosen = tr.match_baseline(target, pool)
    np.testing.assert_array_equal(chosen, 50 + np.arange(20)[::-1])
    assert len(set(chosen)) == 20  # without replacement
    with pytest.raises(SeedscopeError, match="candidate"):
        tr.match_baseline(target, pool, exclude=np.arange(70) >= 5)
    # planted confound: P(S-shaped) depends on amplitude only; the divergent tokens have
    # large amplitudes. Against random tokens they look "more S-shaped"; against tokens
    # matched on amplitude and final loss, the difference vanishes.
    n_pool, n_div = 3000, 150
    amp = rng.uniform(0.1, 3.0, n_pool)
    end = rng.uniform(1, 5, n_pool)
    s = rng.random((5, n_pool)) < amp / 3.0  # [runs, tokens]
    div = rng.choice(np.flatnonzero(amp > 1.5), n_div, replace=False)  # large amplitudes
    rand = rng.choice(np.setdiff1d(np.arange(n_pool), div), n_div, replace=False)
    feats = np.stack([end, amp], axis=1)
    exclude = np.zeros(n_pool, bool)
    exclude[div] = True
    matched = tr.match_baseline(feats[div], feats, exclude=exclude)
    assert np.abs(amp[matched] - amp[div]).mean() < 0.05

    def frame(idx):
        return pd.DataFrame(
            {
                "run": np.repeat(list("abcde"), len(idx)),
                "token": np.tile(np.arange(len(idx)), 5),
                "class": np.where(s[:, idx].ravel(), "s_shaped", "smooth"),
            }
        )

    vs_random = tr.s_shaped_fraction_difference(frame(div), frame(rand), 1000, 0).iloc[-1]
    vs_matched = tr.s_shaped_fraction_difference(frame(div), frame(matched), 1000, 0).iloc[-1]
    assert vs_random["ci_low"] > 0.1  # planted: 0.75 vs ~0.52 S-shaped
    assert vs_matched["ci_low"] < 0 < vs_matched["ci_high"]


def _ar1(rng, n, steps, phi, sd):
    e = np.zeros((n, steps))
    for t in range(steps):
        e[:, t] = (phi * e[:, t - 1] if t else 0.0) + rng.normal(0, sd, n)
    return e


def test_autocorrelated_noise_on_flat_curves_makes_no_shape_claim():
    rng = np.random.default_rng(0)
    steps = STEPS[1:]
    for phi in (0.5, 0.8):
        flat = 3.0 + _ar1(rng, 300, steps.size, phi, 0.2)
        df = tr.classify_trajectories(flat, steps, refine=False)
        # an iid BIC calls ~6% (phi 0.5) and ~20% (phi 0.8) of these S-shaped
        assert (df["class"] == "s_shaped").mean() <= 0.02, phi
        assert (df["class"] == "flat").mean() >= 0.9, phi
        assert df.attrs["autocorrelation"] == pytest.approx(phi, abs=0.2)
        iid = tr.classify_trajectories(flat, steps, refine=False, autocorrelation=0.0)
        assert (iid["class"] == "s_shaped").mean() > 0.02  # the problem being fixed
    # the same noise over a planted S-curve: still found
    u = (np.log(steps + 1.0) - np.log(steps[0] + 1.0)) / np.ptp(np.log(steps + 1.0))
    planted = 2.0 + 3.0 * expit(-(u - 0.5) / 0.04) + _ar1(rng, 100, steps.size, 0.5, 0.2)
    assert (tr.classify_trajectories(planted, steps)["class"] == "s_shaped").mean() >= 0.85


def test_s_shaped_needs_both_plateaus_inside_the_steps():
    rng = np.random.default_rng(3)
    # a logistic whose midpoint is the last checkpoint: the lower plateau is never observed
    edge = 2.0 + 3.0 * expit(-(U - 1.0) / 0.03) + rng.normal(0, 0.05, (20, U.size))
    inside = 2.0 + 3.0 * expit(-(U - 0.6) / 0.03) + rng.normal(0, 0.05, (20, U.size))
    assert not (tr.classify_trajectories(edge, STEPS)["class"] == "s_shaped").any()
    assert (tr.classify_trajectories(inside, STEPS)["class"] == "s_shaped").all()


def test_block_resample_keeps_scale_and_autocorrelation():
    rng = np.random.default_rng(1)
    resid = _ar1(rng, 200, 60, 0.7, 0.3)
    noise = tr.block_resample(resid, 500, block=8, seed=0)
    assert noise.shape == (500, 60)
    np.testing.assert_allclose(noise.std(axis=1), 1.0)
    c = noise - noise.mean(axis=1, keepdims=True)
    lag1 = np.mean((c[:, 1:] * c[:, :-1]).sum(axis=1) / (c**2).sum(axis=1))
    assert lag1 == pytest.approx(0.7 * 7 / 8, abs=0.12)  # 1 in 8 neighbours straddle blocks


def test_validation_at_real_noise_recovers_the_noise_level_and_classes():
    rng = np.random.default_rng(0)
    steps = STEPS[1:]
    real, _ = tr.synthetic_trajectories(25, steps, 0.0, seed=3)
    marginal = 0.15 / np.sqrt(1 - 0.6**2)  # sd of AR(1) noise with phi 0.6, innovations 0.15
    real = real + _ar1(rng, len(real), steps.size, 0.6, 0.15)
    conf, summary = tr.validate_at_real_noise(real, steps, n_per_class=25, seed=0)
    assert list(summary["quantile"]) == [0.5, 0.75, 0.9]
    assert summary["noise_sd"].iloc[0] == pytest.approx(marginal, rel=0.25)
    assert (summary["accuracy"] >= 0.7).all(), summary
    assert (summary["flat_s_rate"] <= 0.04).all()
    assert (summary["s_recall"] >= 0.5).all(), summary  # a finding, reported per level
    assert (summary["s_false_rate"] <= 0.05).all(), summary
    assert set(conf["true_class"]) == set(tr.CLASSES)
    np.testing.assert_allclose(conf[list(tr.CLASSES)].sum(axis=1), 1.0)


def test_seed_spread_test_against_the_fit_error():
    spread = pd.DataFrame(
        {"token": [0, 1, 2], "n_s_shaped": [5, 5, 1], "transition_sd_log10": [0.05, 0.5, np.nan]}
    )
    out, summary = tr.seed_spread_test(spread, recovery_sd=0.05)
    # token 0: sd equal to the fit error -> chi2(4) at 4 -> p = 0.406; token 1: 10x wider
    assert out.loc[0, "p_value"] == pytest.approx(0.40601, abs=1e-4)
    assert out.loc[1, "p_value"] < 1e-6
    assert bool(out.loc[1, "wider_than_fit"]) and not bool(out.loc[0, "wider_than_fit"])
    assert np.isnan(out.loc[2, "p_value"])
    assert summary["n_tokens"] == 2 and summary["fraction_wider"] == pytest.approx(0.5)
    assert summary["ratio"] == pytest.approx(np.median([0.05, 0.5]) / 0.05)


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
    # one legend for the whole grid, runs named with their seeds
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["x21 (seed 21)", "x49 (seed 49)"]
    fig2 = tr.plot_transition_steps(df)
    assert fig2.axes[0].get_xlabel() == "transition step (log scale)"
    assert fig2.axes[0].get_title()
    # runs keep the suite's order and colours and are named by their labels
    s_df = pd.DataFrame(
        {
            "run": ["x21", "x49", "x81"] * 3,
            "class": ["s_shaped"] * 6 + ["smooth"] * 3,
            "transition_step": [10.0, 20.0, 40.0, 100.0, 200.0, 400.0, 5.0, 5.0, 5.0],
        }
    )
    named = {r: f"{r} (seed {r[1:]})" for r in ("x21", "x49", "x81")}
    fig3 = tr.plot_transition_steps(s_df, run_order=["x81", "x49", "x21"], labels=named)
    texts = [t.get_text() for t in fig3.axes[0].get_legend().get_texts()]
    assert texts == ["x81 (seed 81)", "x49 (seed 49)", "x21 (seed 21)"]


def test_paired_bootstrap_uses_the_matching():
    # matched pairs share their S verdict except 10 of 100 (divergent S, match not): the
    # paired difference is 0.1 with per-pair variance 0.09 -> CI half 1.96 * 0.03 = 0.059;
    # drawing the two sets independently ignores the pairing: half 1.96 * sqrt(2 * 0.25 /
    # 100) ~ 0.14, so an unpaired CI would include 0 and a paired one does not
    rng = np.random.default_rng(4)
    s = rng.random(100) < 0.45
    s_div = s.copy()
    s_div[np.flatnonzero(~s)[:10]] = True

    def frame(flags):
        return pd.DataFrame(
            {
                "run": np.repeat(list("ab"), len(flags)),
                "token": np.tile(np.arange(len(flags)), 2),
                "class": np.where(np.tile(flags, 2), "s_shaped", "smooth"),
            }
        )

    paired = tr.s_shaped_fraction_difference(frame(s_div), frame(s), 4000, 0, paired=True)
    unpaired = tr.s_shaped_fraction_difference(frame(s_div), frame(s), 4000, 0)
    p, u = paired.iloc[-1], unpaired.iloc[-1]
    assert p["estimate"] == u["estimate"] == pytest.approx(0.1)
    assert (p["ci_high"] - p["ci_low"]) / 2 == pytest.approx(1.96 * 0.03, rel=0.2)
    assert p["ci_low"] > 0 > u["ci_low"]
    with pytest.raises(SeedscopeError, match="as many"):
        tr.s_shaped_fraction_difference(frame(s_div), frame(s[:50]), paired=True)


def test_a_set_that_wanders_more_keeps_its_own_autocorrelation():
    # flat curves with AR(1) noise phi 0.8, compared with a calmer reference (rho 0.5):
    # borrowing the reference's rho calls ~5% of them S-shaped; the larger of the two
    # (their own) keeps them flat
    rng = np.random.default_rng(5)
    steps = STEPS[1:]
    flat = 3.0 + _ar1(rng, 300, steps.size, 0.8, 0.2)
    borrowed = tr.classify_trajectories(flat, steps, refine=False, autocorrelation=0.5)
    assert (borrowed["class"] == "s_shaped").mean() > 0.02  # the problem being fixed
    own = tr.classify_trajectories(flat, steps, refine=False, min_autocorrelation=0.5)
    assert own.attrs["autocorrelation"] == own.attrs["own_autocorrelation"] > 0.5
    assert (own["class"] == "s_shaped").mean() <= 0.01
    assert (own["class"] == "flat").mean() >= 0.9
    # a calmer set is raised to the reference's value
    calm = 3.0 + rng.normal(0, 0.2, (100, steps.size))
    raised = tr.classify_trajectories(calm, steps, refine=False, min_autocorrelation=0.5)
    assert raised.attrs["own_autocorrelation"] < 0.2 and raised.attrs["autocorrelation"] == 0.5


def test_curve_features_match_on_noise_as_well_as_amplitude():
    # two pools with the same amplitudes and final losses, one noisy and wandering (AR(1)
    # phi 0.7, sd 0.4), one calm (iid, sd 0.05); the targets are noisy. Matching on final
    # loss and drop alone picks calm tokens about half the time; with the noise features,
    # the noisy ones
    rng = np.random.default_rng(6)
    steps = STEPS[1:]
    u = (np.log(steps + 1.0) - np.log(steps[0] + 1.0)) / np.ptp(np.log(steps + 1.0))
    n = 60
    amp, end = rng.uniform(1, 3, n), rng.uniform(1, 4, n)
    clean = end[:, None] + amp[:, None] * np.exp(-3 * u)[None, :]
    noisy = np.stack([clean + _ar1(rng, n, steps.size, 0.7, 0.4) for _ in range(3)])
    calm = np.stack([clean + rng.normal(0, 0.05, (n, steps.size)) for _ in range(3)])
    target = np.stack([clean[:20] + _ar1(rng, 20, steps.size, 0.7, 0.4) for _ in range(3)])
    pool = np.concatenate([noisy, calm], axis=1)  # tokens 0-59 noisy, 60-119 calm
    feats = tr.curve_features(pool, steps, autocorrelation=0.5)
    assert feats.shape == (2 * n, 4)
    assert np.median(feats[:n, 2]) > 4 * np.median(feats[n:, 2])  # residual sd
    assert np.median(feats[:n, 3]) > np.median(feats[n:, 3]) + 0.3  # lag-1 autocorrelation
    with_noise = tr.match_baseline(tr.curve_features(target, steps, 0.5), feats)
    assert (with_noise < n).mean() >= 0.9
    old = tr.match_baseline(tr.curve_features(target), tr.curve_features(pool))
    assert (old < n).mean() < 0.8  # amplitude-only matching: noise not like-for-like


def _shared_s_curves(rng, n_tok, n_runs, sd, shift=0.0):
    """Tokens with one S-curve each; every run adds AR(1) noise (phi 0.5, innovations
    `sd`) and moves the midpoint by N(0, shift) (u units; 0 = no seed effect)."""
    steps = STEPS[1:]
    u = (np.log(steps + 1.0) - np.log(steps[0] + 1.0)) / np.ptp(np.log(steps + 1.0))
    amp = rng.uniform(0.4, 3.0, n_tok)
    m, w = rng.uniform(0.3, 0.7, n_tok), rng.uniform(0.02, 0.05, n_tok)
    out = []
    for _ in range(n_runs):
        mm = m + rng.normal(0, shift, n_tok) if shift else m
        clean = 2.0 + amp[:, None] * expit(-(u[None, :] - mm[:, None]) / w[:, None])
        out.append(clean + _ar1(rng, n_tok, steps.size, 0.5, sd))
    return steps, np.stack(out)


def test_seed_spread_null_when_tested_tokens_are_noisier_than_the_validation_set():
    # null: every run shares each token's S-curve; the tested tokens (noise 0.3) are
    # noisier than the tokens the classifier was validated on (noise 0.2). A pooled
    # recovery error from the calmer tokens calls ~15% of these tokens' spread "wider than
    # the fit" (chi-square); each token's own refits keep the false claims near alpha.
    rng = np.random.default_rng(0)
    steps, calm = _shared_s_curves(rng, 60, 1, 0.2)
    _, summary = tr.validate_at_real_noise(calm[0], steps, n_per_class=40, seed=0)
    pooled = float(summary.iloc[0]["transition_error_sd_log10"])
    steps, div = _shared_s_curves(rng, 60, 5, 0.3)
    classes = tr.classify_trajectories(div, steps)
    spread = tr.transition_spread(classes)
    _, old = tr.seed_spread_test(spread, pooled)
    assert old["fraction_wider"] > 0.1  # the problem being fixed
    rec = tr.token_recovery_sd(div, steps, classes, classes.attrs["autocorrelation"], seed=0)
    assert set(rec["token"]) == set(spread.loc[spread["n_s_shaped"] >= 2, "token"])
    out, new = tr.seed_spread_test(spread, rec)
    assert new["n_tokens"] >= 25
    assert new["fraction_wider"] <= 0.05
    assert out["p_value"].notna().sum() == new["n_tokens"]
    # planted: the transition moves across seeds (sd 0.08 of the log-step range)
    steps, moved = _shared_s_curves(rng, 40, 5, 0.3, shift=0.08)
    c2 = tr.classify_trajectories(moved, steps)
    r2 = tr.token_recovery_sd(moved, steps, c2, c2.attrs["autocorrelation"], seed=0)
    _, planted = tr.seed_spread_test(tr.transition_spread(c2), r2)
    assert planted["fraction_wider"] >= 0.6
    assert planted["ratio"] > 2

"""Known answers for analyses 1-2: planted correlations, outliers, gaps and their closing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from seedscope.analyses.compare import (
    agreement_over_training,
    agreement_over_training_plot,
    attach_context,
    capability_gaps,
    common_valid,
    correlation_heatmap,
    enrichment,
    enrichment_forest,
    gap_convergence,
    odd_one_out,
    outlier_mask,
    pair_outliers,
    pairwise_agreement,
    position_bucket,
    scatter_grid,
)
from seedscope.core.errors import SeedscopeError
from seedscope.core.stats import proportion_ci

N_W, W = 200, 100  # 20k eval tokens
TAGS = ["text", "bracket", "fact", "email"]


def _meta(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = N_W * W
    return pd.DataFrame(
        {
            "window": np.repeat(np.arange(N_W), W),
            "pos": np.tile(np.arange(W), N_W),
            "token_id": np.arange(n),
            "tag": rng.choice(TAGS, size=n, p=[0.6, 0.1, 0.2, 0.1]),
            "token_class": rng.choice(["punctuation", "digit", "other"], size=n),
            "bracket_depth": rng.integers(0, 3, size=n),
        }
    )


def _nan0(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    a[:, 0] = np.nan
    return a


def _runs(noise_sd: float, seed: int = 0, n: int = 3) -> dict[str, np.ndarray]:
    """Shared signal (var 1, with a window effect) + independent noise (var noise_sd^2)."""
    rng = np.random.default_rng(seed)
    shared = -3 + (rng.normal(size=(N_W, 1)) * 0.5 + rng.normal(size=(N_W, W))) / np.sqrt(1.25)
    return {f"r{i}": _nan0(shared + rng.normal(size=(N_W, W)) * noise_sd) for i in range(n)}


def test_planted_correlation_within_ci():
    lp = _runs(noise_sd=np.sqrt(0.5))
    lp["r2"] = lp["r2"] - 0.2  # r0 - r2 = +0.2 nats on average
    sizes = {"r0": "small", "r1": "small", "r2": "medium"}
    out = pairwise_agreement(lp, n_boot=400, seed=0, sizes=sizes)
    rho = 1 / 1.5  # var(shared) / (var(shared) + var(noise))
    assert len(out) == 3
    for row in out.itertuples():
        assert row.pearson_low <= rho <= row.pearson_high
        assert row.pearson == pytest.approx(rho, abs=0.02)
        # Spearman of a bivariate normal: (6 / pi) asin(rho / 2)
        assert row.spearman == pytest.approx(6 / np.pi * np.arcsin(rho / 2), abs=0.02)
        assert row.sd_diff == pytest.approx(1.0, abs=0.03)  # sqrt(2 * 0.5)
        assert row.n_tokens == N_W * (W - 1)
    r02 = out[(out.run_a == "r0") & (out.run_b == "r2")].iloc[0]
    assert r02.mean_diff_low <= 0.2 <= r02.mean_diff_high
    assert r02.mean_diff == pytest.approx(0.2, abs=0.03)
    assert out["same_size"].tolist() == [True, False, False]


def test_agreement_over_training_follows_planted_noise():
    steps = {100: _runs(noise_sd=1.0, seed=1, n=2), 200: _runs(noise_sd=0.5, seed=2, n=2)}
    out = agreement_over_training(steps, n_boot=100, seed=0)
    assert out["step"].tolist() == [100, 200]
    np.testing.assert_allclose(out["pearson"], [1 / 2, 1 / 1.25], atol=0.02)
    fig = agreement_over_training_plot(out, labels={"r0": "r0 (seed 1)"})
    assert isinstance(fig, Figure)
    assert fig.axes[0].get_xlabel() == "training step"


def _outlier_runs(seed: int = 0) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Runs a, b agree (noise 0.1) except on `bracket` tokens, where b adds noise of sd 2."""
    rng = np.random.default_rng(seed)
    meta = _meta(seed)
    base = -3 + rng.normal(size=(N_W, W))
    bracket = (meta["tag"] == "bracket").to_numpy().reshape(N_W, W)
    a = base + rng.normal(size=(N_W, W)) * 0.1
    b = base + rng.normal(size=(N_W, W)) * 0.1 + np.where(bracket, rng.normal(size=(N_W, W)) * 2, 0)
    return {"a": _nan0(a), "b": _nan0(b)}, meta


def test_planted_outlier_category_has_top_odds_ratio():
    lp, meta = _outlier_runs()
    mask = outlier_mask(lp, "a", "b", top_fraction=0.02)
    valid = common_valid(lp)
    assert mask.sum() == round(0.02 * valid.sum())
    enr = enrichment(mask, meta, ["tag", "token_class", "bracket_depth"], valid=valid, window_len=W)
    top = enr.iloc[0]
    assert (top.feature, top.category) == ("tag", "bracket")
    assert top.ci_low > 1 and top.p_adjusted < 1e-10
    assert set(enr["feature"]) == {"tag", "token_class", "bracket_depth", "position"}
    # An unrelated feature: odds ratios near 1, none significant after BH.
    cls = enr[enr.feature == "token_class"]
    assert (cls.p_adjusted > 0.05).all()
    np.testing.assert_allclose(cls.odds_ratio, 1.0, atol=0.35)
    # Outlier tables: the top-k by |difference| are bracket tokens.
    out = pair_outliers(lp, "a", "b", k=20)
    top_abs = out[out.kind == "abs_diff"]
    assert (meta["tag"].to_numpy()[top_abs.token_index] == "bracket").all()
    np.testing.assert_allclose(top_abs["diff"].abs(), np.sort(top_abs["diff"].abs())[::-1])
    fig = enrichment_forest(enr)
    assert fig.axes[0].get_xscale() == "log"
    assert "odds ratio" in fig.axes[0].get_xlabel()


def test_residual_outliers_find_points_off_the_pair_relation():
    rng = np.random.default_rng(3)
    x = -3 + rng.normal(size=(N_W, W))
    y = 2 * x + 1 + rng.normal(size=(N_W, W)) * 0.05
    planted = [(5, 10), (50, 20), (120, 77)]
    for w, p in planted:
        y[w, p] += 1.0  # off the line, but |x - y| stays ordinary
    lp = {"a": _nan0(x), "b": _nan0(y)}
    out = pair_outliers(lp, "a", "b", k=3)
    resid = out[out.kind == "residual"]
    assert set(zip(resid.window, resid.pos, strict=True)) == set(planted)
    np.testing.assert_allclose(resid.residual, 1.0, atol=0.2)
    absd = out[out.kind == "abs_diff"]
    assert not set(zip(absd.window, absd.pos, strict=True)) & set(planted)


def test_odd_one_out_finds_the_deviating_run():
    lp = _runs(noise_sd=0.05, seed=4, n=5)
    planted = [(3, 30), (70, 5), (150, 60)]
    for w, p in planted:
        lp["r3"][w, p] += 5.0
    out = odd_one_out(lp, k=3)
    assert set(zip(out.window, out.pos, strict=True)) == set(planted)
    assert (out.run == "r3").all()
    np.testing.assert_allclose(out.deviation, 5.0, atol=0.3)
    assert (out.runner_up_abs_deviation < 1).all() and (out.runner_up_abs_deviation >= 0).all()


def test_attach_context_marks_target_and_calls_topk_only_for_rows():
    lp = _runs(noise_sd=0.1, n=2)
    tokens = np.arange(N_W * W)
    table = pd.DataFrame({"run_a": ["r0"], "run_b": ["r1"], "window": [2], "pos": [40]})
    calls = []

    def topk(run: str, window: int, pos: int) -> list[tuple[str, float]]:
        calls.append((run, window, pos))
        return [("x", 0.5), ("y", 0.25)]

    def decode(ids):
        return "".join(f"<{i}>" for i in ids)

    out = attach_context(table, tokens, decode, lp, topk=topk, n_before=30)
    assert out.loc[0, "context"] == "".join(f"<{i}>" for i in range(210, 240)) + "⟦<240>⟧"
    assert out.loc[0, "target"] == "<240>"
    assert calls == [("r0", 2, 40), ("r1", 2, 40)]
    assert out.loc[0, "top_run_a"] == "'x' 0.50, 'y' 0.25"
    near_start = attach_context(table.assign(pos=3), tokens, decode, lp, runs=["r0"])
    assert near_start.loc[0, "context"] == "<200><201><202>⟦<203>⟧"
    assert near_start.loc[0, "logprob_r0"] == pytest.approx(float(lp["r0"][2, 3]))


def _gap_runs(gap: float, seed: int) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Run a is better than b by `gap` nats on `fact` tokens, equal elsewhere."""
    rng = np.random.default_rng(seed)
    meta = _meta(0)
    fact = (meta["tag"] == "fact").to_numpy().reshape(N_W, W)
    base = -3 + rng.normal(size=(N_W, 1)) * 0.5 + rng.normal(size=(N_W, W))
    a = base + rng.normal(size=(N_W, W)) * 0.3 + np.where(fact, gap, 0.0)
    b = base + rng.normal(size=(N_W, W)) * 0.3
    return {"a": _nan0(a), "b": _nan0(b)}, meta


def test_planted_capability_gap_found_and_null_not_flagged():
    lp, meta = _gap_runs(gap=0.5, seed=7)
    gaps = capability_gaps(lp, meta, ["tag"], n_boot=500, seed=0)
    by_cat = gaps.set_index("category")
    fact = by_cat.loc["fact"]
    assert fact.significant and fact.better == "a"
    assert fact.gap_low <= 0.5 <= fact.gap_high
    assert fact.gap == pytest.approx(0.5, abs=0.03)
    assert fact.mean_a - fact.mean_b == pytest.approx(fact.gap)
    for cat in ("text", "bracket", "email"):
        assert not by_cat.loc[cat, "significant"]
        assert by_cat.loc[cat, "gap_low"] <= 0 <= by_cat.loc[cat, "gap_high"]
    assert by_cat["n_tokens"].sum() == N_W * (W - 1)


def test_convergence_classification_by_hand():
    key = {"run_a": "a", "run_b": "b", "feature": "tag"}
    mid = pd.DataFrame(
        [
            {
                **key,
                "category": c,
                "gap": g,
                "gap_low": g - 0.1,
                "gap_high": g + 0.1,
                "significant": s,
            }
            for c, g, s in [
                ("p", 0.5, True),
                ("q", -0.4, True),
                ("r", 0.3, True),
                ("s", 0.6, True),
                ("t", 0.05, False),
            ]
        ]
    )
    fin = pd.DataFrame(
        [
            {
                **key,
                "category": c,
                "gap": g,
                "gap_low": g - 0.1,
                "gap_high": g + 0.1,
                "significant": s,
            }
            for c, g, s in [
                ("p", 0.02, False),
                ("q", -0.5, True),
                ("r", -0.3, True),
                ("s", 0.01, False),
                ("t", 0.4, True),
            ]
        ]
    )
    table, summary = gap_convergence(mid, fin)
    status = dict(zip(table.category, table.status, strict=True))
    assert status == {"p": "closed", "q": "persisted", "r": "reversed", "s": "closed"}
    assert (summary["n_significant_mid"], summary["n_closed"]) == (4, 2)
    assert (summary["n_persisted"], summary["n_reversed"]) == (1, 1)
    frac, low, high = proportion_ci(2, 4)
    assert summary["fraction_closed"] == pytest.approx(0.5)
    assert (summary["fraction_closed_low"], summary["fraction_closed_high"]) == (low, high)


def test_planted_gap_closes_between_mid_and_final():
    mid_lp, meta = _gap_runs(gap=0.5, seed=8)
    fin_lp, _ = _gap_runs(gap=0.0, seed=9)
    g_mid = capability_gaps(mid_lp, meta, ["tag"], n_boot=300, seed=0)
    g_fin = capability_gaps(fin_lp, meta, ["tag"], n_boot=300, seed=0)
    table, summary = gap_convergence(g_mid, g_fin)
    assert table.category.tolist() == ["fact"]
    assert table.status.tolist() == ["closed"]
    assert summary["fraction_closed"] == pytest.approx(1.0)


def test_position_bucket_labels():
    cat = position_bucket(np.array([0, 1, 3, 4, 15, 16, 99]), 100)
    assert list(cat.astype(str)) == ["0", "1-3", "1-3", "4-15", "4-15", "16-63", "64-99"]


def test_bad_inputs_raise_before_work():
    lp = _runs(noise_sd=0.1, n=2)
    with pytest.raises(SeedscopeError, match="rows"):
        capability_gaps(lp, _meta().iloc[:100], ["tag"])
    with pytest.raises(SeedscopeError, match="shape"):
        pairwise_agreement({"a": lp["r0"], "b": lp["r1"][:10]})
    with pytest.raises(SeedscopeError, match="not in the log-probs"):
        pair_outliers(lp, "r0", "nope")


def test_figures_are_titled_and_labelled():
    lp = _runs(noise_sd=0.5)
    labels = {r: f"{r} (seed {i})" for i, r in enumerate(lp)}
    fig = scatter_grid(lp, labels=labels, bins=40)
    axes = np.array(fig.axes[:9]).reshape(3, 3)
    assert axes[2, 0].get_xlabel() == "log-prob (nats)"
    assert axes[2, 0].get_ylabel() == "r2 (seed 2)\nlog-prob (nats)"
    assert axes[0, 0].get_title() == "r0\n(seed 0)"  # columns named with their seed
    assert fig.get_suptitle()
    agreement = pairwise_agreement(lp, n_boot=0)
    assert agreement["pearson_low"].isna().all()
    heat = correlation_heatmap(agreement, labels=labels)
    assert "correlation" in heat.axes[0].get_title()
    assert [t.get_text() for t in heat.axes[0].get_xticklabels()] == list(labels.values())


def test_heatmap_groups_runs_by_size_in_their_colours():
    lp = _runs(noise_sd=0.5, n=4)
    labels = {r: f"{r} (seed {i})" for i, r in enumerate(lp)}
    sizes = {"r0": "big", "r1": "small", "r2": "big", "r3": "small"}
    colors = {"r0": "red", "r1": "blue", "r2": "green", "r3": "black"}
    heat = correlation_heatmap(pairwise_agreement(lp, n_boot=0), "pearson", labels, sizes, colors)
    ticks = heat.axes[0].get_yticklabels()
    assert [t.get_text() for t in ticks] == [labels[r] for r in ("r0", "r2", "r1", "r3")]
    assert [t.get_color() for t in ticks] == ["red", "green", "blue", "black"]
    blocks = [p for p in heat.axes[0].patches if not p.get_fill()]
    assert [(b.get_xy(), b.get_width()) for b in blocks] == [((0, 0), 2), ((2, 2), 2)]

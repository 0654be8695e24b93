"""Seed-aware statistics of analyses 1-3 on planted truth and on null data: seed divergence
is within size, gaps close by equivalence (not by losing power), CIs include seed sampling,
enrichment survives window clustering and difficulty, PCA names only real components."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seedscope.analyses import compare, pca
from seedscope.core.stats import pair_replicate_mean, resample_runs_within, t_interval, wald_p

N_W, W = 300, 64


def _nan0(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32).copy()
    a[:, 0] = np.nan
    return a


def _suite(
    rng: np.random.Generator,
    n_per_size: int = 4,
    seed_sd: float = 0.2,
    size_shift: np.ndarray | float = 0.0,
    seed_extra: np.ndarray | float = 0.0,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Log-probs of small and medium runs: shared difficulty + size shift (medium only) +
    per-seed noise (sd `seed_sd`, times 1 + `seed_extra` per token)."""
    shared = -3 + rng.normal(size=(N_W, W))
    logprobs, sizes = {}, {}
    for size in ("small", "medium"):
        for i in range(n_per_size):
            shift = size_shift if size == "medium" else 0.0
            noise = rng.normal(size=(N_W, W)) * seed_sd * (1 + seed_extra)
            logprobs[f"{size}-{i}"] = _nan0(shared + shift + noise)
            sizes[f"{size}-{i}"] = size
    return logprobs, sizes


def _meta(rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame({"tag": rng.choice(["x", "y", "z"], size=N_W * W, p=[0.1, 0.1, 0.8])})


# --------------------------------------------------------------------------- stats helpers


def test_t_interval_known_answer():
    mean, low, high = t_interval([1.0, 2.0, 3.0], 0.95)
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n)
    assert (mean, low, high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert np.isnan(t_interval([1.0])[1])


def test_runs_are_resampled_within_their_group_only():
    counts = resample_runs_within([[0, 1], [2, 3, 4]], 5, 500, np.random.default_rng(0))
    assert counts[:, :2].sum(axis=1) == pytest.approx(np.full(500, 2.0))
    assert counts[:, 2:].sum(axis=1) == pytest.approx(np.full(500, 3.0))
    assert counts[:, 0].mean() == pytest.approx(1.0, abs=0.1)


def test_pair_replicate_mean_weighs_pairs_of_drawn_runs():
    reps = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])  # pairs (0,1), (0,2), (1,2)
    counts = np.array([[1.0, 1.0, 1.0], [2.0, 0.0, 1.0]])
    out = pair_replicate_mean(reps, [(0, 1), (0, 2), (1, 2)], counts)
    # replicate 2 drew run 0 twice and run 2 once: only pair (0, 2), weight 2
    assert out == pytest.approx([0.2, 0.2])
    alone = pair_replicate_mean(reps, [(0, 1), (0, 2), (1, 2)], np.array([[3.0, 0.0, 0.0]]))
    assert np.isnan(alone[0])


def test_wald_p_identical_runs_and_known_value():
    reps = np.random.default_rng(0).normal(size=(4000, 1))
    assert wald_p(np.array([1.96]), reps)[0] == pytest.approx(0.05, abs=0.005)
    assert wald_p(np.array([0.0]), np.zeros((10, 1)))[0] == 1.0


# --------------------------------------------------------------------------- 1. seed divergence


def test_seed_divergent_tokens_follow_seed_not_size_effects():
    """Planted: a large size effect on category x, a seed effect on category y."""
    rng = np.random.default_rng(1)
    meta = _meta(rng)
    tag = meta["tag"].to_numpy().reshape(N_W, W)
    logprobs, sizes = _suite(
        rng, size_shift=np.where(tag == "x", -3.0, 0.0), seed_extra=np.where(tag == "y", 3.0, 0.0)
    )
    div = compare.seed_divergence(logprobs, sizes)
    mask = compare.top_fraction_mask(div, 0.02)
    strata = compare.loss_strata(logprobs)
    table = compare.enrichment_bootstrap(mask, meta, ["tag"], strata, W, n_boot=100)
    rows = table[table["feature"] == "tag"].set_index("category")
    assert rows.loc["y", "mh_low"] > 5 and rows.loc["y", "p_adjusted"] < 0.05
    assert rows.loc["x", "n_outliers"] == pytest.approx(0, abs=2)
    head = compare.enrichment_headline(table, min_tokens=100)
    assert (head["feature"], head["category"]) == ("tag", "y")
    # The old statistic (sd across all runs) is driven by the size effect on x instead.
    old = np.std(np.stack(list(logprobs.values())), axis=0)
    old_mask = compare.top_fraction_mask(old, 0.02)
    assert (tag[old_mask] == "x").mean() > 0.9
    # Size differences are their own, named quantity: they find x.
    size_mask = compare.top_fraction_mask(compare.size_divergence(logprobs, sizes), 0.02)
    assert (tag[size_mask] == "x").mean() > 0.9


def test_seed_noise_does_not_pose_as_size_divergence():
    """Null for sizes: no size effect, seed noise 4x larger on category y (10% of tokens).
    Ranked by the raw difference between sizes, all top tokens were y; ranked by the Welch t
    they are y about as often as y is common."""
    rng = np.random.default_rng(3)
    meta = _meta(rng)
    tag = meta["tag"].to_numpy().reshape(N_W, W)
    logprobs, sizes = _suite(rng, n_per_size=5, seed_extra=np.where(tag == "y", 3.0, 0.0))
    mask = compare.top_fraction_mask(compare.size_divergence(logprobs, sizes), 0.01)
    assert mask.sum() > 100 and (tag[mask] == "y").mean() < 0.2
    raw = compare.top_fraction_mask(compare.size_difference(logprobs, sizes), 0.01)
    assert (tag[raw] == "y").mean() > 0.9


def test_identical_twins_have_no_seed_divergence():
    rng = np.random.default_rng(2)
    base, sizes = _suite(rng, n_per_size=1)
    logprobs = {**base, "small-twin": base["small-0"], "medium-twin": base["medium-0"]}
    sizes = {**sizes, "small-twin": "small", "medium-twin": "medium"}
    div = compare.seed_divergence(logprobs, sizes)
    assert np.nanmax(div) == 0.0
    mask = compare.top_fraction_mask(div, 0.01, floor=0.01)
    assert not mask.any()
    table = compare.enrichment_bootstrap(
        mask, _meta(rng), ["tag"], compare.loss_strata(logprobs), W, n_boot=20
    )
    assert table.empty and compare.enrichment_headline(table, 10) is None
    # ... while the sizes still differ.
    assert np.nanmax(compare.size_difference(logprobs, sizes)) > 0
    assert compare.top_fraction_mask(compare.size_divergence(logprobs, sizes), 0.01).any()


# --------------------------------------------------------------------------- 2. gaps


def _gap_suite(rng, gap_mid: dict[str, float], gap_final: dict[str, float], meta):
    """Two seeds of one size, per-category gaps at mid and final (run a ahead by the gap)."""
    tag = meta["tag"].to_numpy().reshape(N_W, W)
    base = -3 + rng.normal(size=(N_W, W))
    steps = []
    for gaps in (gap_mid, gap_final):
        shift = np.zeros((N_W, W))
        for cat, g in gaps.items():
            shift[tag == cat] = g
        steps.append(
            {
                "a": _nan0(base + shift + rng.normal(size=(N_W, W)) * 0.3),
                "b": _nan0(base + rng.normal(size=(N_W, W)) * 0.3),
            }
        )
    return steps


def test_unchanged_gaps_are_not_closed_whatever_the_category_size():
    """Planted: the same gap (0.15 nats) at mid and final in one big category (70% of
    tokens) and ten small ones (0.3% each). "No longer significant" closes small ones by
    chance; equivalence closes none, big or small."""
    rng = np.random.default_rng(3)
    small = [f"s{i}" for i in range(10)]
    meta = pd.DataFrame(
        {"tag": rng.choice(["big", "rest", *small], N_W * W, p=[0.7, 0.27] + [0.003] * 10)}
    )
    gaps = {"big": 0.15, **dict.fromkeys(small, 0.15)}
    mid, fin = _gap_suite(rng, gaps, gaps, meta)
    table, summary = compare.gap_change(mid, fin, meta, ["tag"], [("a", "b")], 0.02, n_boot=200)
    status = table.set_index("category")["status"]
    assert "big" in status.index and status.index.isin(small).sum() >= 8
    assert (status != "closed").all() and summary["n_closed"] == 0
    # The old rule called some of the small ones "closed" on the same data.
    old, _ = compare.gap_convergence(
        compare.capability_gaps(mid, meta, ["tag"], n_boot=200),
        compare.capability_gaps(fin, meta, ["tag"], n_boot=200),
    )
    assert (old.set_index("category")["status"] == "closed").sum() >= 1


def test_unchanged_gaps_below_the_margin_are_not_closed():
    """Planted: the same gap (0.012 nats, below the 0.02 margin) at mid and final, in a big
    category (90% of tokens: significant by power alone) and a small one. Nothing changed, so
    nothing closed: a gap already within the margin at mid is not open, and closing needs a
    change CI below 0 (the old rule called the big one "closed", fraction_closed = 1)."""
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"tag": rng.choice(["big", "small"], N_W * W, p=[0.9, 0.1])})
    gaps = {"big": 0.012, "small": 0.012}
    mid, fin = _gap_suite(rng, gaps, gaps, meta)
    table, summary = compare.gap_change(mid, fin, meta, ["tag"], [("a", "b")], 0.02, n_boot=200)
    assert summary["n_closed"] == 0 and (table["status"] != "closed").all()
    assert not summary["fraction_closed"] > 0
    # The same unchanged gap above the margin (0.05 nats): open at mid, still not closed.
    gaps = {"big": 0.05, "small": 0.05}
    mid, fin = _gap_suite(rng, gaps, gaps, meta)
    table, summary = compare.gap_change(mid, fin, meta, ["tag"], [("a", "b")], 0.02, n_boot=200)
    assert "big" in set(table["category"]) and summary["n_closed"] == 0


def test_a_gap_that_grows_is_never_closed():
    """Planted: a gap of 0.1 nats at mid that grows to 0.3 is "grew", whatever the margin."""
    rng = np.random.default_rng(11)
    meta = pd.DataFrame({"tag": rng.choice(["big", "rest"], N_W * W, p=[0.8, 0.2])})
    mid, fin = _gap_suite(rng, {"big": 0.1}, {"big": 0.3}, meta)
    table, _ = compare.gap_change(mid, fin, meta, ["tag"], [("a", "b")], 0.05, n_boot=200)
    assert table.set_index("category").loc["big", "status"] == "grew"


def test_shrinking_gaps_are_called_closed():
    rng = np.random.default_rng(4)
    meta = pd.DataFrame({"tag": rng.choice(["big", "mid", "rest"], N_W * W, p=[0.5, 0.2, 0.3])})
    mid, fin = _gap_suite(rng, {"big": 0.3, "mid": 0.3}, {"big": 0.0, "mid": 0.0}, meta)
    table, summary = compare.gap_change(
        mid, fin, meta, ["tag"], [("a", "b")], margin=0.05, n_boot=200
    )
    status = table.set_index("category")["status"]
    assert status["big"] == "closed" and status["mid"] == "closed"
    assert summary["fraction_closed"] == 1.0
    # A gap that halves is "shrank", not closed.
    mid, fin = _gap_suite(rng, {"big": 0.4}, {"big": 0.2}, meta)
    table, _ = compare.gap_change(mid, fin, meta, ["tag"], [("a", "b")], margin=0.05, n_boot=200)
    assert table.set_index("category").loc["big", "status"] == "shrank"


def test_no_gaps_no_claims_and_alpha_drives_the_tests():
    rng = np.random.default_rng(5)
    meta = _meta(rng)
    mid, fin = _gap_suite(rng, {}, {}, meta)
    table, summary = compare.gap_change(mid, fin, meta, ["tag"], [("a", "b")], 0.02, n_boot=200)
    assert summary["n_significant_mid"] == 0 and table.empty
    assert np.isnan(summary["fraction_closed"])
    # Weak planted gaps: a stricter alpha can only find fewer.
    mid, fin = _gap_suite(rng, {"x": 0.02, "y": 0.02, "z": 0.02}, {}, meta)
    loose = compare.capability_gaps(mid, meta, ["tag"], n_boot=200, ci=0.9)
    strict = compare.capability_gaps(mid, meta, ["tag"], n_boot=200, ci=0.999)
    assert strict["significant"].sum() < loose["significant"].sum()


def test_fraction_closed_ci_resamples_seeds():
    """Four seeds of one size: pairs with the odd seed keep their gap, the others close.
    The CI over seeds must be wide (which seeds are drawn decides the fraction)."""
    rng = np.random.default_rng(6)
    meta = pd.DataFrame({"tag": rng.choice(["x", "rest"], N_W * W, p=[0.5, 0.5])})
    tag = meta["tag"].to_numpy().reshape(N_W, W)
    base = -3 + rng.normal(size=(N_W, W))
    mid, fin = {}, {}
    for i in range(4):
        odd = 0.3 if i == 0 else 0.0
        mid[f"r{i}"] = _nan0(
            base + np.where(tag == "x", 0.3 * i, 0) + rng.normal(size=base.shape) * 0.2
        )
        fin[f"r{i}"] = _nan0(
            base + np.where(tag == "x", odd, 0) + rng.normal(size=base.shape) * 0.2
        )
    sizes = dict.fromkeys(mid, "small")
    pairs = compare.seed_pairs(list(mid), sizes)["within small"]
    _, summary = compare.gap_change(mid, fin, meta, ["tag"], pairs, 0.05, n_boot=300, sizes=sizes)
    assert summary["fraction_closed"] == pytest.approx(0.5)
    assert summary["fraction_closed_high"] - summary["fraction_closed_low"] > 0.4


# --------------------------------------------------------------------------- 3. seed CIs


def test_tiny_gaps_in_big_categories_are_significant_but_not_material():
    """Planted: the same gap of 0.01 nats (below the 0.02 margin) in a category of 80% of
    tokens and 0.3 nats in one of 10%: both significant, only the second material."""
    rng = np.random.default_rng(15)
    meta = _meta(rng)
    mid, _ = _gap_suite(rng, {"z": 0.01, "x": 0.3}, {}, meta)
    gaps = compare.capability_gaps(mid, meta, ["tag"], n_boot=200)
    rows = gaps.set_index("category")
    assert rows.loc["z", "significant"] and rows.loc["x", "significant"]
    assert gaps["significant"].mean() == pytest.approx(2 / 3)
    assert compare.material_gap_fraction(gaps, 0.02) == pytest.approx(1 / 3)
    assert compare.material_gap_fraction(gaps.iloc[:0], 0.02) == 0.0


def test_seed_agreement_ci_covers_seed_sampling():
    """One seed per size is much noisier: the Multi-Bootstrap CI (seeds x windows) must be
    far wider than the window-only CI of the same mean."""
    rng = np.random.default_rng(7)
    logprobs, sizes = _suite(rng, n_per_size=5)
    logprobs["small-0"] = _nan0(logprobs["small-0"] + rng.normal(size=(N_W, W)) * 1.0)
    table = compare.seed_agreement(logprobs, sizes, n_boot=300)
    row = table.set_index(["group", "method"]).loc[("within small", "pearson")]
    windows_only = compare.pairwise_agreement({k: logprobs[k] for k in logprobs if "small" in k})
    assert (
        row["ci_high"] - row["ci_low"]
        > 5 * (windows_only["pearson_high"] - windows_only["pearson_low"]).mean()
    )


def test_seed_jackknife_t_interval_covers_the_mean_over_seeds():
    """Planted seed effects on agreement: run i has its own noise level s_i (log-normal), so
    pair (i, j) has r = 1 / sqrt((1 + s_i^2)(1 + s_j^2)) and pairs that share a run share its
    effect. Over 200 suites of 5 seeds the t-interval must cover the population mean r about
    95% of the time (a t over per-run means of pairs, which ignores the sharing, gave 67%)."""
    rng = np.random.default_rng(12)

    def noise_levels(k: int) -> np.ndarray:
        return np.exp(rng.normal(np.log(0.7), 0.6, k))

    truth = np.mean(1 / np.sqrt(1 + noise_levels(10**6) ** 2)) ** 2
    hits = 0
    for _ in range(200):
        shared = rng.normal(size=(40, 32))
        lp = {
            f"s{i}": shared + s * rng.normal(size=(40, 32)) for i, s in enumerate(noise_levels(5))
        }
        row = compare.seed_agreement(lp, dict.fromkeys(lp, "small"), n_boot=2).iloc[0]
        hits += row["t_low"] <= truth <= row["t_high"]
    assert 0.88 <= hits / 200 <= 0.99


def test_within_minus_across_finds_size_effects_only_when_planted():
    rng = np.random.default_rng(8)
    logprobs, sizes = _suite(rng, size_shift=rng.normal(size=(N_W, W)) * 0.5)
    diff = compare.seed_agreement(logprobs, sizes, n_boot=200).set_index(["group", "method"])
    assert diff.loc[("within minus across", "pearson"), "ci_low"] > 0
    rng = np.random.default_rng(9)
    logprobs, sizes = _suite(rng)  # sizes are just more seeds
    diff = compare.seed_agreement(logprobs, sizes, n_boot=200).set_index(["group", "method"])
    row = diff.loc[("within minus across", "pearson")]
    assert row["ci_low"] < 0 < row["ci_high"]


def test_identical_twins_agree_perfectly():
    rng = np.random.default_rng(10)
    base, sizes = _suite(rng, n_per_size=1)
    logprobs = {**base, "small-twin": base["small-0"], "medium-twin": base["medium-0"]}
    sizes = {**sizes, "small-twin": "small", "medium-twin": "medium"}
    table = compare.seed_agreement(logprobs, sizes, n_boot=50).set_index(["group", "method"])
    for size in ("small", "medium"):
        for method in ("pearson", "spearman"):
            row = table.loc[(f"within {size}", method)]
            assert row[["value", "ci_low", "ci_high"]].to_numpy() == pytest.approx([1, 1, 1])
    assert table.loc[("across sizes", "pearson"), "value"] < 0.999


# --------------------------------------------------------------------------- 4. enrichment


def test_enrichment_cis_see_window_clustering():
    """x-outliers come in whole windows (10 of 300), other outliers are scattered: the window
    bootstrap CI of x's odds ratio is much wider than the token-independent (Woolf) one."""
    rng = np.random.default_rng(11)
    meta = _meta(rng)
    tag = meta["tag"].to_numpy().reshape(N_W, W)
    mask = rng.random((N_W, W)) < 0.01
    mask[rng.choice(N_W, 10, replace=False)] |= tag[:10] == "x"
    strata = np.zeros((N_W, W), dtype=np.int64)
    boot = compare.enrichment_bootstrap(mask, meta, ["tag"], strata, W, n_boot=300)
    woolf = compare.enrichment(mask, meta, ["tag"])
    b = boot.set_index(["feature", "category"]).loc[("tag", "x")]
    w = woolf.set_index(["feature", "category"]).loc[("tag", "x")]
    assert b["odds_ratio"] == pytest.approx(w["odds_ratio"])
    width = np.log(b["ci_high"]) - np.log(b["ci_low"])
    assert width > 1.5 * (np.log(w["ci_high"]) - np.log(w["ci_low"]))


def test_stratified_odds_ratio_removes_difficulty_confounding():
    """Category x is hard; a token's chance of diverging depends on its difficulty decile
    only: the plain odds ratio of x is large, the loss-stratified one is ~1."""
    rng = np.random.default_rng(12)
    meta = _meta(rng)
    tag = meta["tag"].to_numpy().reshape(N_W, W)
    difficulty = rng.normal(size=(N_W, W)) + np.where(tag == "x", 2.0, 0.0)
    logprobs = {f"r{i}": _nan0(-3 - difficulty) for i in range(3)}
    strata = compare.loss_strata(logprobs, 10)
    mask = rng.random((N_W, W)) < np.where(strata >= 8, 0.2, 0.01)
    table = compare.enrichment_bootstrap(mask, meta, ["tag"], strata, W, n_boot=200)
    x = table.set_index(["feature", "category"]).loc[("tag", "x")]
    assert x["odds_ratio"] > 3
    assert x["mh_low"] < 1 < x["mh_high"]
    assert x["mh_odds_ratio"] == pytest.approx(1, abs=0.25)


def test_headline_is_largest_lower_bound_among_big_significant_categories():
    table = pd.DataFrame(
        {
            "feature": ["f"] * 3,
            "category": ["tiny", "big", "null"],
            "n_tokens": [20, 50_000, 40_000],
            "odds_ratio": [40.0, 3.0, 1.0],
            "mh_odds_ratio": [40.0, 3.0, 1.0],
            "mh_low": [2.0, 2.5, 0.9],
            "p_adjusted": [0.01, 1e-9, 0.8],
        }
    )
    assert compare.enrichment_headline(table, min_tokens=1000)["category"] == "big"
    assert compare.enrichment_headline(table, min_tokens=10)["category"] == "big"
    assert compare.enrichment_headline(table.iloc[[2]], min_tokens=10) is None


# --------------------------------------------------------------------------- 5. PCA


def _exchangeable(rng, n: int, split: float = 0.0):
    shared = -3 + rng.normal(size=(N_W, W))
    direction = rng.normal(size=(N_W, W))
    logprobs = {}
    for i in range(n):
        sign = (1 if i < 2 else -1) if split else 0
        logprobs[f"s{i}"] = _nan0(
            shared + rng.normal(size=(N_W, W)) * 0.3 + split * sign * direction
        )
    return logprobs, dict.fromkeys(logprobs, "small")


def test_exchangeable_seeds_have_no_component_beyond_pc1():
    rng = np.random.default_rng(13)
    logprobs, sizes = _exchangeable(rng, 6)
    seed_view = pca.loss_matrix_within_size(logprobs, sizes)
    tests = pca.seed_components(seed_view, [list(range(6))], seed=1)
    assert not tests["described"].any()
    lines = pca.seed_component_lines(tests, seed_view)
    assert all("no structure beyond noise" in line for line in lines)
    raw = pca.seed_components(
        pca.loss_matrix(logprobs), [list(range(6))], seed=1, test_first_separately=True
    )
    assert raw["described"].tolist() == [True] + [False] * 5


def test_seed_by_window_offsets_are_not_components():
    """Null: 5 exchangeable seeds whose noise has a per-(seed, window) offset (sd 0.15 nats;
    no consistent split of the runs). Tokens of a window share the offset, so the null
    permutes runs once per window; a per-token shuffle described a component in most such
    suites."""
    described = []
    for rep in range(2):
        rng = np.random.default_rng(100 + rep)
        shared = -3 + rng.normal(size=(N_W, W))
        lp = {
            f"s{i}": _nan0(
                shared + rng.normal(0, 0.15, size=(N_W, 1)) + rng.normal(size=(N_W, W)) * 0.3
            )
            for i in range(5)
        }
        seed_view = pca.loss_matrix_within_size(lp, dict.fromkeys(lp, "small"))
        tests = pca.seed_components(seed_view, [list(range(5))], seed=rep)
        described.append(int(tests["described"].sum()))
    assert described == [0, 0]


def test_seed_variance_share_recovers_the_planted_share():
    """Planted: shared difficulty (variance 1) + seed noise (variance 0.25) in 2 sizes x 3
    seeds: the seed share of variance is 0.25 / 1.25 = 0.2. Centring on the mean of 3 seeds
    keeps only 2/3 of the seed variance (0.133 before the n/(n-1) correction)."""
    logprobs, sizes = _suite(np.random.default_rng(14), n_per_size=3, seed_sd=0.5)
    raw = pca.loss_matrix(logprobs)
    share = pca.seed_variance_share(raw, pca.loss_matrix_within_size(logprobs, sizes), sizes)
    assert share == pytest.approx(0.2, abs=0.01)


def test_planted_two_vs_three_split_is_recovered_and_described():
    rng = np.random.default_rng(14)
    logprobs, sizes = _exchangeable(rng, 5, split=0.3)
    seed_view = pca.loss_matrix_within_size(logprobs, sizes)
    tests = pca.seed_components(seed_view, [list(range(5))], seed=1)
    assert tests["described"].tolist() == [True, False, False, False, False]
    line = pca.seed_component_lines(tests, seed_view)[0]
    assert "s0, s1" in line and "s2, s3, s4" in line
    stab = pca.subspace_stability(seed_view, 1, {f"s{i}": i for i in range(5)}, sizes, logprobs, 50)
    assert stab[stab["kind"] == "bootstrap"]["angle_deg"].max() < 5
    assert len(stab[stab["kind"] == "leave-one-seed-out"]) == 5


def test_identical_seeds_describe_nothing_and_stay_finite():
    rng = np.random.default_rng(15)
    base, _ = _exchangeable(rng, 1)
    logprobs = {"a": base["s0"], "b": base["s0"], "c": base["s0"]}
    sizes = dict.fromkeys(logprobs, "small")
    seed_view = pca.loss_matrix_within_size(logprobs, sizes)
    tests = pca.seed_components(seed_view, [[0, 1, 2]])
    assert not tests["described"].any()
    assert np.isfinite(tests[["eigenvalue", "ratio", "sd", "p_value"]].to_numpy()).all()


def test_seed_split_shared_across_sizes_is_named_by_seed():
    """Seeds 0 and 1 share a direction in both sizes (as a shared data order would): the
    seed component is described by seed, on the same side in every size."""
    rng = np.random.default_rng(16)
    shared = -3 + rng.normal(size=(N_W, W))
    direction = rng.normal(size=(N_W, W))
    logprobs, sizes, seeds = {}, {}, {}
    for size in ("small", "medium"):
        for i in range(5):
            sign = 1 if i < 2 else -1
            run = f"{size}-{i}"
            noise = rng.normal(size=(N_W, W)) * 0.3
            logprobs[run] = _nan0(shared + noise + 0.3 * sign * direction)
            sizes[run], seeds[run] = size, i
    seed_view = pca.loss_matrix_within_size(logprobs, sizes)
    tests = pca.seed_components(seed_view, [list(range(5)), list(range(5, 10))], seed=2)
    assert tests["described"].tolist()[:2] == [True, False]
    line = pca.seed_component_lines(tests, seed_view, sizes=sizes, seeds=seeds)[0]
    assert "seeds 0, 1 vs seeds 2, 3, 4 (same side in every size)" in line or (
        "seeds 2, 3, 4 vs seeds 0, 1 (same side in every size)" in line
    )


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("loss_correlation", {"alpha": 0.7}, "loss_correlation.alpha must be in"),
        ("loss_correlation", {"divergence_floor": -1}, "divergence_floor must be in"),
        ("loss_correlation", {"enrichment_min_tokens": 0}, "enrichment_min_tokens must be"),
        ("convergence", {"margin": 0}, "convergence.margin must be in"),
        ("loss_correlation", {"margin": 1.5}, "loss_correlation.margin must be in"),
        ("convergence", {"alpha": 0}, "convergence.alpha must be in"),
        ("loss_pca", {"n_permutations": 9}, "cannot reach p <= alpha"),
        ("loss_pca", {"min_component_sd": 0}, "min_component_sd must be positive"),
    ],
)
def test_bad_seed_statistics_params_fail_early(section, values, message):
    from seedscope.core.errors import SeedscopeError
    from seedscope.stages.common import stage_config

    with pytest.raises(SeedscopeError, match=message):
        stage_config(section, values)
    assert stage_config(section, {}) is not None  # the defaults are valid


def test_enrichment_forest_shows_the_stratified_odds_ratio_at_the_level_used():
    rng = np.random.default_rng(17)
    meta = _meta(rng)
    mask = rng.random((N_W, W)) < np.where(meta["tag"].to_numpy().reshape(N_W, W) == "x", 0.1, 0.01)
    strata = np.zeros((N_W, W), dtype=np.int64)
    table = compare.enrichment_bootstrap(mask, meta, ["tag"], strata, W, n_boot=50)
    fig = compare.enrichment_forest(table, alpha=0.1)
    label = fig.axes[0].get_xlabel()
    assert "Mantel-Haenszel" in label and "90% CI" in label

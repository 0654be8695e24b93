"""Stage 5 · per-token loss trajectories: classify each selected token's curve (flat,
smooth, S-shaped, non-monotone), test whether the class and the transition step depend on
the seed. Science: `seedscope.analyses.trajectories`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from seedscope.core.config import ResolvedSuite
from seedscope.stages.common import (
    StageResult,
    fresh_outputs,
    resolve_suite,
    run_labels,
    run_sizes,
    stage_config,
    stage_provenance,
    token_losses_root,
)


def trajectory_subset(resolved: ResolvedSuite) -> Any:
    """Flat (window-major) indices of the tokens evaluated at every checkpoint: all tokens
    after position 0 of a seeded set of whole windows (so window bootstraps still apply)."""
    import numpy as np

    return np.load(token_losses_root(resolved) / "trajectory_tokens.npy")


def trajectory_losses(resolved: ResolvedSuite, min_step: int = 1):
    """Losses `[n_runs, n_subset, n_steps]` on the trajectory subset and the steps. Steps
    below `min_step` are dropped: at initialisation every token's loss is ~log(vocab), which
    would make every curve start with the same drop."""
    import numpy as np

    from seedscope.logprobs.engine import load_trajectories

    stacks, steps = [], None
    for run in resolved.run_names:
        run_steps, values = load_trajectories(token_losses_root(resolved), run)
        if steps is not None and not np.array_equal(steps, run_steps):
            raise ValueError(f"run {run} has trajectory steps that differ from the others")
        steps = run_steps
        stacks.append(-values)
    losses = np.stack(stacks)
    keep = steps >= min_step
    return losses[:, :, keep], steps[keep]


def select_trajectory_tokens(
    resolved: ResolvedSuite, n_divergent: int, n_random: int, seed: int
) -> pd.DataFrame:
    """Which subset tokens to classify: the `n_divergent` whose final-step log-probs differ
    most between seeds of the same size (`compare.seed_divergence`: a size difference is
    not a seed difference; tokens on which the seeds agree exactly are never divergent) and
    `n_random` drawn uniformly (seeded) from the whole subset as the baseline. One row per
    subset token: index (flat eval index), divergence, divergent (bool), random (bool)."""
    import numpy as np

    from seedscope.analyses.compare import seed_divergence
    from seedscope.logprobs.engine import load_logprobs

    subset = trajectory_subset(resolved)
    final = load_logprobs(token_losses_root(resolved), resolved.run_names, resolved.final_step)
    values = {r: np.asarray(v).ravel()[subset][None, :] for r, v in final.items()}
    divergence = seed_divergence(values, run_sizes(resolved)).ravel()
    order = np.argsort(-np.nan_to_num(divergence, nan=-np.inf), kind="stable")
    divergent = np.zeros(subset.size, dtype=bool)
    divergent[order[: min(n_divergent, subset.size)]] = True
    divergent &= np.nan_to_num(divergence) > 0
    rng = np.random.default_rng(seed)
    random = np.zeros(subset.size, dtype=bool)
    random[rng.choice(subset.size, size=min(n_random, subset.size), replace=False)] = True
    return pd.DataFrame(
        {"index": subset, "divergence": divergence, "divergent": divergent, "random": random}
    )


@dataclass
class _TrajectoryResults:
    """What `trajectories_stage` computes, shared by its save, figure and metric steps."""

    selection: pd.DataFrame
    div_idx: Any
    divergent: pd.DataFrame
    rho: float
    noise_by_set: pd.DataFrame
    classes: pd.DataFrame
    confusion_all: pd.DataFrame
    validation: pd.DataFrame
    mid_q: pd.Series
    confusion: pd.DataFrame
    noise: float
    accuracy: float
    path: pd.DataFrame
    spread: pd.DataFrame
    spread_test: dict[str, float]
    fractions: pd.DataFrame


@dataclass(frozen=True, kw_only=True)
class TrajectoriesResult(StageResult):
    """Analysis 5: each token's loss curve classified (smooth / S-shaped / ...), the classifier
    validated on curves of known shape, and the path-dependence tests across seeds."""

    config: Any
    steps: Any  # the checkpoint steps of the curves
    classes: pd.DataFrame  # per (run, token) curve: its shape class, fit and token set
    fractions: pd.DataFrame  # share of each class per token set (divergent, random, matched)
    validation: pd.DataFrame  # the classifier on synthetic curves, per real noise level
    confusion: pd.DataFrame  # its confusion matrix at the median real noise
    accuracy: float  # ... and its accuracy there
    noise: float  # that median noise (residual sd)
    noise_by_set: pd.DataFrame  # residual noise per token set
    autocorrelation: float  # lag-1 autocorrelation of the random tokens' residuals
    path: pd.DataFrame  # S-shaped share, divergent tokens vs the random and matched sets
    spread: pd.DataFrame  # per divergent token: spread of transition steps across seeds
    spread_test: dict[str, float]  # that spread against each token's own fit error


def trajectories_stage(suite: dict[str, Any], trajectories: dict[str, Any]) -> TrajectoriesResult:
    """Stage `trajectories` (analysis 5): shapes of per-token loss curves, path dependence."""
    resolved = resolve_suite(suite)
    cfg = stage_config("trajectories", trajectories)
    out, _ = fresh_outputs("trajectories")
    losses, steps, selection = _load_trajectory_inputs(resolved, cfg)
    r = _compute_trajectory_results(losses, steps, selection, resolved.run_names, cfg)
    _save_trajectory_tables(out, r)
    figures = _register_trajectory_figures(losses, steps, r, resolved, cfg)
    metrics = _write_trajectory_metrics(r, steps, resolved, cfg)
    return TrajectoriesResult(
        config=cfg,
        steps=steps,
        classes=r.classes,
        fractions=r.fractions,
        validation=r.validation,
        confusion=r.confusion,
        accuracy=r.accuracy,
        noise=r.noise,
        noise_by_set=r.noise_by_set,
        autocorrelation=r.rho,
        path=r.path,
        spread=r.spread,
        spread_test=r.spread_test,
        figures=figures,
        metrics=metrics,
    )


def _load_trajectory_inputs(resolved: ResolvedSuite, cfg: Any) -> tuple[Any, Any, pd.DataFrame]:
    """The subset's loss curves `[n_runs, n_subset, n_steps]`, their steps, the selection."""
    losses, steps = trajectory_losses(resolved)
    selection = select_trajectory_tokens(resolved, cfg.n_divergent, cfg.n_random, cfg.seed)
    return losses, steps, selection


def _compute_trajectory_results(
    losses: Any, steps: Any, selection: pd.DataFrame, runs: list[str], cfg: Any
) -> _TrajectoryResults:
    """Classify the token sets, validate the classifier, test path dependence and spread."""
    import numpy as np

    div_idx, rand_idx, rho, divergent, baseline, matched, matched_idx = _classify_token_sets(
        losses, steps, selection, runs
    )
    noise_by_set = _noise_by_set(divergent, baseline, matched)
    selection["matched"] = np.isin(np.arange(len(selection)), matched_idx)
    classes = pd.concat(
        [
            divergent.assign(set="divergent"),
            baseline.assign(set="random"),
            matched.assign(set="matched"),
        ],
        ignore_index=True,
    )
    confusion_all, validation, mid_q, confusion = _validate_classifier(
        losses[:, rand_idx], steps, rho, cfg
    )
    path = _path_dependence(divergent, baseline, matched, cfg)
    spread, spread_test = _seed_transition_spread(losses[:, div_idx], steps, divergent, cfg)
    fractions = classes.groupby(["set", "class"]).size() / classes.groupby("set").size()
    fractions = fractions.rename("fraction").reset_index()
    return _TrajectoryResults(
        selection=selection,
        div_idx=div_idx,
        divergent=divergent,
        rho=rho,
        noise_by_set=noise_by_set,
        classes=classes,
        confusion_all=confusion_all,
        validation=validation,
        mid_q=mid_q,
        confusion=confusion,
        noise=float(mid_q["noise_sd"]),
        accuracy=float(mid_q["accuracy"]),
        path=path,
        spread=spread,
        spread_test=spread_test,
        fractions=fractions,
    )


def _classify_token_sets(losses: Any, steps: Any, selection: pd.DataFrame, runs: list[str]):
    """Classify the random, seed-divergent and matched-baseline tokens' curves."""
    import numpy as np

    from seedscope.analyses import trajectories as tj

    div_idx = np.flatnonzero(selection["divergent"].to_numpy())
    rand_idx = np.flatnonzero(selection["random"].to_numpy())
    # the residual autocorrelation sets the BIC's n_eff: measured on the random
    # (representative) tokens; every other set uses the larger of its own and that one, so
    # a set whose curves wander more is not classified with a calmer set's n_eff
    baseline = tj.classify_trajectories(losses[:, rand_idx], steps, run_names=runs)
    rho = baseline.attrs["autocorrelation"]
    divergent = tj.classify_trajectories(
        losses[:, div_idx], steps, run_names=runs, min_autocorrelation=rho
    )
    # a baseline matched on mean final loss, total drop, residual sd and residual lag-1
    # autocorrelation: S-shape detection depends on amplitude and noise, and seed-divergent
    # tokens differ from random ones in both
    features = tj.curve_features(losses, steps, rho)
    matched_idx = tj.match_baseline(
        features[div_idx], features, exclude=selection["divergent"].to_numpy()
    )
    matched = tj.classify_trajectories(
        losses[:, matched_idx], steps, run_names=runs, min_autocorrelation=rho
    )
    return div_idx, rand_idx, rho, divergent, baseline, matched, matched_idx


def _noise_by_set(
    divergent: pd.DataFrame, baseline: pd.DataFrame, matched: pd.DataFrame
) -> pd.DataFrame:
    """Residual autocorrelation and noise of each token set, one row per set."""
    return pd.DataFrame(
        [
            {
                "set": name,
                "autocorrelation_own": frame.attrs["own_autocorrelation"],
                "autocorrelation_used": frame.attrs["autocorrelation"],
                "resid_sd_median": float(frame["resid_sd"].median()),
                "resid_ar1_median": float(frame["resid_ar1"].median()),
            }
            for name, frame in (
                ("divergent", divergent),
                ("random", baseline),
                ("matched", matched),
            )
        ]
    )


def _validate_classifier(random_losses: Any, steps: Any, rho: float, cfg: Any):
    """Classifier validation at real noise, and its row and confusion at the median noise."""
    import numpy as np

    from seedscope.analyses import trajectories as tj

    confusion_all, validation = tj.validate_at_real_noise(
        random_losses,
        steps,
        n_per_class=cfg.n_synthetic,
        quantiles=cfg.noise_quantiles,
        block=cfg.block,
        seed=cfg.seed,
        autocorrelation=rho,
    )
    mid_q = validation.iloc[int(np.argmin(np.abs(validation["quantile"] - 0.5)))]
    confusion = (
        confusion_all[confusion_all["quantile"] == mid_q["quantile"]]
        .set_index("true_class")[list(tj.CLASSES)]
        .rename_axis("true")
    )
    return confusion_all, validation, mid_q, confusion


def _path_dependence(
    divergent: pd.DataFrame, baseline: pd.DataFrame, matched: pd.DataFrame, cfg: Any
) -> pd.DataFrame:
    """S-shaped fraction difference, divergent vs the random and the matched baseline."""
    from seedscope.analyses import trajectories as tj

    path = tj.s_shaped_fraction_difference(divergent, baseline, n_boot=cfg.n_boot, seed=cfg.seed)
    path_matched = tj.s_shaped_fraction_difference(
        divergent, matched, n_boot=cfg.n_boot, seed=cfg.seed, paired=True
    )
    return pd.concat(
        [path.assign(baseline="random"), path_matched.assign(baseline="matched")],
        ignore_index=True,
    )


def _seed_transition_spread(div_losses: Any, steps: Any, divergent: pd.DataFrame, cfg: Any):
    """Transition-step spread across seeds of the divergent tokens, against their fit error."""
    from seedscope.analyses import trajectories as tj

    # each token's spread is tested against its own fit error (its mean curve + its own
    # block-resampled residuals, refitted), not the random tokens' pooled error
    recovery = tj.token_recovery_sd(
        div_losses,
        steps,
        divergent,
        divergent.attrs["autocorrelation"],
        n_refits=cfg.n_refits,
        block=cfg.block,
        seed=cfg.seed,
    )
    return tj.seed_spread_test(tj.transition_spread(divergent), recovery, cfg.alpha)


def _save_trajectory_tables(out: Any, r: _TrajectoryResults) -> None:
    """Write the stage's parquet tables to results/trajectories."""
    from seedscope.core.io import write_parquet

    write_parquet(out / "noise_by_set.parquet", r.noise_by_set)
    write_parquet(out / "selection.parquet", r.selection)
    write_parquet(out / "classes.parquet", r.classes)
    write_parquet(out / "confusion.parquet", r.confusion_all)
    write_parquet(out / "validation.parquet", r.validation)
    write_parquet(out / "path_dependence.parquet", r.path)
    write_parquet(out / "transition_spread.parquet", r.spread)
    write_parquet(out / "class_fractions.parquet", r.fractions)


def _register_trajectory_figures(
    losses: Any, steps: Any, r: _TrajectoryResults, resolved: ResolvedSuite, cfg: Any
) -> dict[str, str]:
    """Save and register the stage's figures: {figure name: path}, in drawing order."""
    from seedscope.analyses import trajectories as tj
    from seedscope.stages.common import register_figure

    runs = resolved.run_names
    labels = run_labels(resolved)
    classes = r.classes
    return {
        "class_examples": register_figure(
            tj.plot_class_examples(
                losses[:, r.div_idx], steps, r.divergent, runs, labels, cfg.seed
            ),
            "trajectories",
            "class_examples",
            "Example loss trajectories of each shape, all seeds",
            tj.plot_class_examples,
            key=True,
        ),
        "transition_steps": register_figure(
            tj.plot_transition_steps(
                classes[classes["class"] == "s_shaped"], run_order=runs, labels=labels
            ),
            "trajectories",
            "transition_steps",
            "When S-shaped tokens make their transition",
            tj.plot_transition_steps,
        ),
        "confusion": register_figure(
            tj.plot_confusion(r.confusion, r.noise),
            "trajectories",
            "confusion",
            "Validation of the shape classifier on synthetic curves",
            tj.plot_confusion,
        ),
    }


def _trajectory_headlines(r: _TrajectoryResults, cfg: Any) -> dict[str, Any]:
    """The stage's headline numbers, keyed by metric name."""
    import numpy as np

    from seedscope.core.metrics import headline

    path, divergent, spread_test, validation = r.path, r.divergent, r.spread_test, r.validation
    mid_q, noise, accuracy, rho = r.mid_q, r.noise, r.accuracy, r.rho
    both = path[(path["scheme"] == "runs+tokens") & (path["baseline"] == "random")].iloc[0]
    both_m = path[(path["scheme"] == "runs+tokens") & (path["baseline"] == "matched")].iloc[0]
    top_q = validation.iloc[-1]
    heads = {
        "s_fraction_difference": headline(
            both["estimate"],
            "S-shaped fraction, seed-divergent minus random tokens "
            "(Multi-Bootstrap CI over runs and tokens)",
            (both["ci_low"], both["ci_high"]),
        ),
        "s_fraction_difference_matched": headline(
            both_m["estimate"],
            "S-shaped fraction, seed-divergent minus tokens matched one-to-one on final loss, "
            "drop, residual sd and autocorrelation (Multi-Bootstrap CI over runs and pairs)",
            (both_m["ci_low"], both_m["ci_high"]),
        ),
        "s_fraction_divergent": headline(
            both["divergent_frac"], "fraction of seed-divergent token curves S-shaped"
        ),
        "s_fraction_random": headline(
            both["baseline_frac"], "fraction of random token curves S-shaped"
        ),
        "s_fraction_matched": headline(
            both_m["baseline_frac"], "fraction of matched baseline token curves S-shaped"
        ),
        "classifier_accuracy": headline(
            accuracy,
            "shape classifier accuracy on synthetic curves with block-resampled real "
            f"residuals at the noise quantile nearest the median ({mid_q['quantile']:.0%}: "
            f"{noise:.2f} nats)",
        ),
        "classifier_s_false_rate": headline(
            float(top_q["s_false_rate"]),
            "share of non-S synthetic curves called S-shaped at the "
            f"{top_q['quantile']:.0%} noise quantile ({top_q['noise_sd']:.2f} nats)",
        ),
        "residual_autocorrelation": headline(
            rho,
            "lag-1 autocorrelation of the residuals of the random tokens' curves (sets the "
            "BIC's n_eff; other sets use the larger of theirs and this)",
        ),
        "residual_autocorrelation_divergent": headline(
            divergent.attrs["autocorrelation"],
            "lag-1 residual autocorrelation used for the seed-divergent tokens (own estimate "
            f"{divergent.attrs['own_autocorrelation']:.2f})",
        ),
    }
    if np.isfinite(spread_test["median_sd_log10"]):
        heads["transition_sd_decades"] = headline(
            spread_test["median_sd_log10"],
            "median across tokens of the sd across seeds of the transition step (decades)",
        )
    if np.isfinite(spread_test["fraction_wider"]):
        heads["transition_spread_wider_than_fit"] = headline(
            spread_test["fraction_wider"],
            "share of tokens whose transition-step spread across seeds exceeds the token's "
            f"own fit error (F test against its refits, BH q < {cfg.alpha:g})",
        )
    return heads


def _write_trajectory_metrics(
    r: _TrajectoryResults, steps: Any, resolved: ResolvedSuite, cfg: Any
) -> dict[str, Any]:
    """Write metrics/trajectories.json: headlines, detail tables and provenance."""
    from seedscope.core.metrics import write_metrics

    return write_metrics(
        "trajectories",
        _trajectory_headlines(r, cfg),
        details={
            "class_fractions": r.fractions.to_dict("records"),
            "noise_sd": r.noise,
            "validation": r.validation.to_dict("records"),
            "path_dependence": r.path.to_dict("records"),
            "transition_spread_test": r.spread_test,
            "noise_by_set": r.noise_by_set.to_dict("records"),
        },
        provenance=stage_provenance("trajectories", resolved, [int(s) for s in steps], cfg),
    )


def classifier_sentence(validation: pd.DataFrame, noise_by_set: pd.DataFrame) -> str:
    """The shape classifier's trade-off and the noise of each token set, in plain words, from
    `trajectories_stage`'s `validation` and `noise_by_set` tables."""
    lo, hi = validation.iloc[0], validation.iloc[-1]
    sets = "; ".join(
        f"{r['set']}: residual sd {r['resid_sd_median']:.3f} nats, lag-1 autocorrelation "
        f"{r['autocorrelation_own']:.2f} (used {r['autocorrelation_used']:.2f})"
        for _, r in noise_by_set.iterrows()
    )
    return (
        f"The classifier trades recall of S-shaped curves for fewer false shape claims: at "
        f"the {lo['quantile']:.0%} noise quantile ({lo['noise_sd']:.2f} nats) it finds "
        f"{lo['s_recall']:.0%} of planted S-curves and calls {lo['s_false_rate']:.1%} of "
        f"other curves S-shaped; at the {hi['quantile']:.0%} quantile ({hi['noise_sd']:.2f} "
        f"nats) {hi['s_recall']:.0%} and {hi['s_false_rate']:.1%}. An S-shaped fraction "
        "therefore misses many true S-curves, and about the false-claim rate of the other "
        f"curves adds to it. Noise by set (medians over curves): {sets}. Each set is "
        "classified with the larger of its own autocorrelation and the random tokens' one."
    )


def spread_sentence(spread_test: dict[str, float], alpha: float = 0.05) -> str:
    """Transition-step spread across seeds against each token's own fit error, in words."""
    n = int(spread_test["n_tokens"])
    if not n:
        return "No token is S-shaped in two or more runs, so no transition spread is tested."
    return (
        f"Transition step spread across seeds: median sd {spread_test['median_sd_log10']:.3f} "
        f"decades over {n} tokens S-shaped in >= 2 runs and with a recovery error, vs each "
        f"token's own fit error (its mean curve plus its own block-resampled residuals, "
        f"refitted; median {spread_test['recovery_sd_log10']:.3f} decades, median ratio "
        f"{spread_test['ratio']:.2f}): {spread_test['fraction_wider']:.1%} of tokens spread "
        f"wider than their fit error (F test, BH q < {alpha:g})."
    )


def path_dependence_sentence(path: pd.DataFrame) -> str:
    """Plain-words verdict on path dependence, from `trajectories_stage`'s `path` table
    (Multi-Bootstrap rows, against the random and the matched baseline)."""
    parts = []
    for base, name in (
        ("random", "random tokens"),
        ("matched", "tokens matched on final loss, drop and residual noise"),
    ):
        row = path[(path["scheme"] == "runs+tokens") & (path["baseline"] == base)]
        if row.empty:
            continue
        r = row.iloc[0]
        verdict = "higher" if r["ci_low"] > 0 else "lower" if r["ci_high"] < 0 else "not different"
        parts.append(
            f"Against {name}: {r['divergent_frac']:.1%} of seed-divergent token curves are "
            f"S-shaped vs {r['baseline_frac']:.1%}, difference {r['estimate']:+.3f} (95% CI "
            f"{r['ci_low']:+.3f} to {r['ci_high']:+.3f}, Multi-Bootstrap over "
            f"{int(r['n_runs'])} runs and tokens): {verdict}."
        )  # fmt: skip
    return " ".join(parts)

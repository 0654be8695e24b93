"""Stage 6 · the induction-head phase change: reads the head scores, copy losses and ICL
scores the sweep measured, finds each run's change point, compares seeds and sizes, and
lines it up with the training-loss bump. Science: `seedscope.analyses.induction`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from seedscope.core.config import ResolvedSuite
from seedscope.stages.common import (
    StageResult,
    fresh_outputs,
    induction_probe,
    resolve_suite,
    run_labels,
    run_sizes,
    stage_config,
    stage_provenance,
    token_losses_root,
    training_log_path,
)


def training_curve(resolved: ResolvedSuite, run: str, steps: list[int]):
    """A run's training loss at the checkpoint steps >= 1, estimated without a shift
    (`induction.centred_training_loss`: a local linear fit centred on each step): the
    curve whose non-convex bump Olsson et al. relate to the induction phase change.
    Returns (steps, loss)."""
    import numpy as np

    from seedscope.analyses import induction as ind

    log = training_log(resolved, run)
    if log is None:  # a hub suite that publishes no training log (e.g. Pythia)
        return np.asarray([], dtype=int), np.asarray([], dtype=float)
    at = [s for s in steps if s >= 1]
    return ind.centred_training_loss(log["step"].to_numpy(), log["loss"].to_numpy(), at)


@dataclass
class _Inputs:
    """What the stage reads: the suite, its config, the probe's steps and measured tables."""

    resolved: ResolvedSuite
    cfg: Any
    steps: list[int]
    out: Path
    bands: Any
    tables: dict[str, Any]
    info: Any


@dataclass
class _Computed:
    """What the stage computes: per-checkpoint tables, per-run changes, cross-run tests."""

    head_table: pd.DataFrame
    curves: pd.DataFrame
    changes: list[dict[str, Any]]
    change_table: pd.DataFrame
    lags: pd.DataFrame
    coincidence: dict[str, Any]
    formed: pd.DataFrame
    summary: pd.DataFrame
    size_list: list[str]
    comparison: dict[str, Any] | None


@dataclass(frozen=True, kw_only=True)
class InductionResult(StageResult):
    """Analysis 6: head scores over training, each run's phase change (or none), and how the
    changes vary across seeds and sizes and line up with the ICL score and the loss bump."""

    config: Any
    curves: pd.DataFrame  # per (run, checkpoint): best head score, copy-loss ratio, ICL score
    heads: pd.DataFrame  # per (run, checkpoint, head): induction score
    changes: pd.DataFrame  # per run: phase change (onset, midpoint, end, CI) or none; formed?
    summary: pd.DataFrame  # midpoints by size, over the runs where a head formed
    comparison: dict[str, Any] | None  # first vs last size; None unless 2+ sizes formed heads
    lags: pd.DataFrame  # per run: induction jump vs ICL jump and loss bump, in log-steps
    coincidence: dict[str, Any]  # do they go together more than in mismatched seeds?
    icl_bands: Any  # the ICL score's (early, late) loss columns


def induction_stage(suite: dict[str, Any], induction: dict[str, Any]) -> InductionResult:
    """Stage `induction` (analysis 6): head scores over training and the phase change."""
    inputs = _load_inputs(suite, induction)
    computed = _compute(inputs)
    _save_tables(inputs.out, computed)
    figs = _register_figures(inputs.resolved, computed)
    metrics = _write_stage_metrics(inputs, computed)
    return InductionResult(
        config=inputs.cfg,
        curves=computed.curves,
        heads=computed.head_table,
        changes=computed.change_table,
        summary=computed.summary,
        comparison=computed.comparison,
        lags=computed.lags,
        coincidence=computed.coincidence,
        icl_bands=inputs.bands,
        figures=figs,
        metrics=metrics,
    )


def _load_inputs(suite: dict[str, Any], induction: dict[str, Any]) -> _Inputs:
    """Resolve suite and config, clear the outputs and read the sweep's probe tables."""
    from seedscope.analyses import induction as ind
    from seedscope.logprobs.sweep import read_probe_tables

    resolved = resolve_suite(suite)
    cfg = stage_config("induction", induction)
    probe = induction_probe(resolved, cfg)
    steps = sorted(probe.steps)
    out, _ = fresh_outputs("induction")
    bands = ind.icl_bands(probe.icl_windows.shape[1] - 1, cfg.icl_early, cfg.icl_late)
    # measured by stage token_losses while each checkpoint was loaded (one fetch each)
    root, names, digest = token_losses_root(resolved), resolved.run_names, probe.digest()
    tables = {
        t: read_probe_tables(root, probe.name, t, names, steps, digest)
        for t in ("scores", "copy", "icl", "all_ids", "info")
    }
    info = tables["info"][(names[0], steps[0])].iloc[0]
    return _Inputs(resolved, cfg, steps, out, bands, tables, info)


def _compute(inputs: _Inputs) -> _Computed:
    """Score every checkpoint, fit each run's phase change, then compare runs and sizes."""
    from seedscope.analyses import induction as ind

    resolved, cfg = inputs.resolved, inputs.cfg
    head_table, curves, per_seq, all_ids = _score_checkpoints(inputs)
    changes, lag_rows = _phase_changes(inputs, curves, per_seq, all_ids)
    change_table = pd.DataFrame(changes)
    lags = pd.DataFrame(lag_rows)
    coincidence = {
        other: ind.coincidence_test(
            change_table, "midpoint", col, by="size", n_perm=cfg.n_perm, seed=cfg.seed
        )
        for other, col in (("icl", "icl_step"), ("bump", "bump_step"))
    }
    formed = change_table[change_table["formed"] & change_table["jump_detected"]]
    summary = (
        ind.phase_change_summary(formed, value="midpoint", by="size")
        if len(formed)
        else pd.DataFrame()
    )
    size_list = resolved.suite.sizes()
    comparison = None
    if len(size_list) >= 2 and formed["size"].nunique() >= 2:
        comparison = ind.compare_sizes(formed, a=size_list[0], b=size_list[-1], value="midpoint")
    return _Computed(
        head_table, curves, changes, change_table, lags, coincidence, formed, summary,
        size_list, comparison,
    )  # fmt: skip


def _score_checkpoints(inputs: _Inputs):
    """Per (run, step): head scores, the best-head curve row, per-sequence values, all-ids."""
    import numpy as np

    tables, steps, names = inputs.tables, inputs.steps, inputs.resolved.run_names
    head_rows, curve_rows, per_seq, all_ids = [], [], {}, {}
    for run, step in [(run, step) for run in names for step in steps]:
        scores = tables["scores"][(run, step)]
        heads = scores.groupby(["layer", "head", "head_name"], as_index=False)[
            ["induction", "tl_induction", "prev_token"]
        ].mean()
        best = heads.loc[heads["induction"].idxmax()]
        best_seq = scores[scores["head_name"] == best["head_name"]].sort_values("seq")
        icl = tables["icl"][(run, step)]["icl"].to_numpy()
        copy = tables["copy"][(run, step)]
        first, second = copy["first_copy_loss"].to_numpy(), copy["second_copy_loss"].to_numpy()
        per_seq[(run, step)] = (best_seq["induction"].to_numpy(), icl)
        if step == steps[-1]:  # the same probe over every id of the vocabulary, beside it
            every = tables["all_ids"][(run, step)].iloc[0]
            all_ids[run] = (float(every["induction"]), float(every["copy_loss_ratio"]))
        head_rows.append(heads.assign(run=run, step=step))
        curve_rows.append(
            {
                "run": run,
                "step": step,
                "induction": float(best["induction"]),
                "best_head": best["head_name"],
                "tl_induction": float(heads["tl_induction"].max()),
                "tl_best_head": heads.loc[heads["tl_induction"].idxmax(), "head_name"],
                "prev_token": float(heads["prev_token"].max()),
                "icl": float(np.mean(icl)),
                "first_copy_loss": float(np.mean(first)),
                "second_copy_loss": float(np.mean(second)),
                "copy_loss_ratio": float(np.mean(second) / np.mean(first)),
            }
        )
    head_table = pd.concat(head_rows, ignore_index=True)
    curves = pd.DataFrame(curve_rows)
    return head_table, curves, per_seq, all_ids


def _phase_changes(inputs: _Inputs, curves: pd.DataFrame, per_seq: dict, all_ids: dict):
    """Fit each run in turn: its phase-change row and its lag rows (ICL jump, loss bump)."""
    resolved = inputs.resolved
    sizes = run_sizes(resolved)
    changes, lag_rows = [], []
    for run in resolved.run_names:
        fit = _fit_run(inputs, run, curves, per_seq)
        lag_rows.extend(_lag_rows(run, sizes[run], fit))
        changes.append(_change_row(inputs, run, sizes[run], fit, all_ids[run]))
    return changes, lag_rows


def _fit_run(inputs: _Inputs, run: str, curves: pd.DataFrame, per_seq: dict) -> dict[str, Any]:
    """One run's induction and ICL jump fits, training-loss bump and final-checkpoint test."""
    import numpy as np

    from seedscope.analyses import induction as ind

    cfg, steps = inputs.cfg, inputs.steps
    nan = float("nan")
    ind_values = np.stack([per_seq[(run, s)][0] for s in steps])  # [n_steps, n_seqs]
    icl_values = np.stack([per_seq[(run, s)][1] for s in steps])  # [n_steps, n_windows]
    # bootstraps (for CIs and lags) run only where a jump is detected
    shape_rules = {
        "min_r2": cfg.phase_min_r2,
        "max_width_fraction": cfg.phase_max_width_fraction,
        "min_plateau_points": cfg.phase_min_plateau_points,
        "return_boot": True,
    }
    jump, ind_boot = ind.fit_phase_change(
        steps, ind_values, cfg.n_boot, cfg.seed,
        min_amplitude=cfg.phase_min_amplitude, **shape_rules,
    )  # fmt: skip
    icl_jump, icl_boot = ind.fit_phase_change(
        steps, icl_values, cfg.n_boot, cfg.seed + 1,
        min_amplitude=cfg.icl_min_amplitude, **shape_rules,
    )  # fmt: skip
    curve_steps, loss = training_curve(inputs.resolved, run, steps)
    has_log = len(curve_steps) >= 5  # the bump needs a logged loss at >= 5 checkpoints
    bump = ind.training_loss_bump(curve_steps, loss) if has_log else None
    final = curves[(curves["run"] == run) & (curves["step"] == steps[-1])].iloc[0]
    formed = bool(
        final["induction"] >= cfg.formed_score and final["copy_loss_ratio"] <= cfg.formed_copy_ratio
    )
    return {
        "jump": jump,
        "ind_boot": ind_boot,
        "icl_jump": icl_jump,
        "icl_boot": icl_boot,
        "has_log": has_log,
        "bump": bump,
        "final": final,
        "formed": formed,
        "ind_step": jump.midpoint if formed and jump.detected else nan,
        "icl_step": icl_jump.midpoint if icl_jump.detected else nan,
        "bump_step": bump["steepest"] if bump else nan,
    }


def _lag_rows(run: str, size: str, fit: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's signed lags of the ICL jump and the training-loss bump after its induction jump."""
    import numpy as np

    from seedscope.analyses import induction as ind

    nan = float("nan")
    ind_step, ind_boot = fit["ind_step"], fit["ind_boot"]
    rows = []
    for other, value, boot in (
        ("icl", fit["icl_step"], fit["icl_boot"]),
        ("bump", fit["bump_step"], None),
    ):
        lag = (
            ind.signed_lags(ind_step, value, ind_boot, boot)
            if np.isfinite(ind_step) and np.isfinite(value)
            else {"lag": nan, "ci_low": nan, "ci_high": nan}
        )
        # the training-loss bump has no bootstrap: its side is held fixed, so the CI
        # covers only the induction (and, for the ICL jump, the ICL) midpoint's error
        scope = "induction side only" if other == "bump" else "both sides"
        rows.append({"run": run, "size": size, "versus": other, **lag, "ci_covers": scope})
    return rows


def _change_row(
    inputs: _Inputs, run: str, size: str, fit: dict[str, Any], all_ids: tuple[float, float]
) -> dict[str, Any]:
    """A run's row of the phase-change table, from its fits and final checkpoint."""
    import numpy as np

    steps = inputs.steps
    jump, icl_jump, bump = fit["jump"], fit["icl_jump"], fit["bump"]
    formed, final = fit["formed"], fit["final"]
    return {
        "run": run,
        "size": size,
        "seed": inputs.resolved.suite.run(run).seed,
        "step": jump.step if formed and jump.detected else np.nan,
        "midpoint": fit["ind_step"],
        "fitted_step": jump.midpoint,
        "ci_low": jump.ci_low,
        "ci_high": jump.ci_high,
        "onset": jump.onset,
        "end": jump.end,
        "r2": jump.r2,
        "amplitude": jump.amplitude,
        "jump_detected": jump.detected,
        "no_jump_reason": jump.reason,
        "icl_step": fit["icl_step"],
        "icl_detected": icl_jump.detected,
        "icl_no_jump_reason": icl_jump.reason,
        "bump_step": fit["bump_step"],
        "training_log": fit["has_log"],
        "bump_start": bump["start"] if bump else np.nan,
        "bump_end": bump["end"] if bump else np.nan,
        "formed": formed,
        "final_induction": float(final["induction"]),
        "final_tl_induction": float(final["tl_induction"]),
        "final_copy_loss_ratio": float(final["copy_loss_ratio"]),
        "final_induction_all_ids": all_ids[0],
        "final_copy_loss_ratio_all_ids": all_ids[1],
        "n_checkpoints_in_change": int(
            np.sum((np.asarray(steps) >= jump.onset) & (np.asarray(steps) <= jump.end))
        ),
    }


def _save_tables(out: Path, c: _Computed) -> None:
    """Write the stage's parquet tables, then the induction-score plot CSV, in that order."""
    from seedscope.core.io import atomic_path, write_parquet
    from seedscope.core.paths import metrics_dir

    write_parquet(out / "head_scores.parquet", c.head_table)
    write_parquet(out / "curves.parquet", c.curves)
    write_parquet(out / "phase_changes.parquet", c.change_table)
    write_parquet(out / "lags.parquet", c.lags)
    write_parquet(out / "phase_change_summary.parquet", c.summary)
    with atomic_path(metrics_dir() / "plots" / "induction_score.csv") as tmp:
        c.curves.groupby("step", as_index=False)["induction"].mean().rename(
            columns={"induction": "induction_score"}
        ).to_csv(tmp, index=False, float_format="%.6g")


def _register_figures(resolved: ResolvedSuite, c: _Computed) -> dict[str, str]:
    """Draw and register the stage's figures; returns {figure name: path} in drawing order."""
    import numpy as np

    from seedscope.analyses import induction as ind
    from seedscope.stages.common import register_figure

    curves, names = c.curves, resolved.run_names
    labels = run_labels(resolved)
    detected = {r["run"]: r["step"] for r in c.changes if np.isfinite(r["step"])}
    figs: dict[str, str] = {}

    def add(fig, name: str, title: str, function, key: bool = False) -> None:  # type: ignore[no-untyped-def]
        figs[name] = register_figure(fig, "induction", name, title, function, key=key)

    over_training = ind.plot_induction_over_training
    add(
        over_training(curves, detected, labels, names),
        "induction_over_training",
        "Best-head induction score over training, phase changes marked",
        over_training,
        key=True,
    )
    add(
        over_training(
            curves, None, labels, names,
            value="copy_loss_ratio", title="Second-copy / first-copy loss over training",
        ),
        "copy_loss_ratio",
        "Loss on the second copy of a repeated random sequence relative to the first",
        over_training,
    )  # fmt: skip
    add(
        over_training(
            curves, None, labels, names,
            value="icl", title="In-context-learning score over training",
        ),
        "icl_over_training",
        "In-context-learning score (late minus early token loss) over training",
        over_training,
    )  # fmt: skip
    for run in names:
        add(
            ind.plot_head_heatmap(
                c.head_table[c.head_table["run"] == run],
                "induction",
                f"Induction score per head: {labels[run]}",
            ),
            f"heads_{run}",
            f"Induction score of every head over training, {labels[run]}",
            ind.plot_head_heatmap,
        )
    return figs


def _headline_metrics(cfg: Any, c: _Computed) -> dict[str, Any]:
    """The stage's headline numbers: formation, jumps, per-size steps and coincidence."""
    import numpy as np

    from seedscope.core.metrics import headline
    from seedscope.core.stats import t_interval

    change_table, formed = c.change_table, c.formed
    heads_metrics = {
        "fraction_formed": headline(
            float(change_table["formed"].mean()),
            f"fraction of runs whose best head ends at induction score >= {cfg.formed_score:g} "
            f"with second-copy loss <= {cfg.formed_copy_ratio:g} x the first",
        ),
        "fraction_jump_detected": headline(
            float((change_table["formed"] & change_table["jump_detected"]).mean()),
            "fraction of runs that formed a head through a detected jump "
            f"(amplitude >= {cfg.phase_min_amplitude:g}, fit r2 >= {cfg.phase_min_r2:g}, "
            f"10-90% rise within {cfg.phase_max_width_fraction:.0%} of the log-step range, "
            f">= {cfg.phase_min_plateau_points} checkpoints on each plateau)",
        ),
        "best_final_induction": headline(
            float(change_table["final_induction"].max()),
            "best final-checkpoint prefix-matching score over runs (perfect head = 1)",
        ),
        "best_final_tl_induction": headline(
            float(change_table["final_tl_induction"].max()),
            "best final-checkpoint TransformerLens 'mul' induction score (perfect head ~0.5)",
        ),
    }
    for size in c.size_list:
        part = formed[formed["size"] == size]["midpoint"].to_numpy(dtype=float)
        if part.size:
            mean, low, high = t_interval(np.log(part + 1.0))
            heads_metrics[f"phase_change_step_{size}"] = headline(
                float(np.exp(mean) - 1.0),
                f"geometric-mean induction phase-change step, {size} ({part.size} seeds; "
                "t-interval over seeds on the log-step axis)",
                (float(np.exp(low) - 1.0), float(np.exp(high) - 1.0)),
            )
            heads_metrics[f"phase_change_sd_{size}"] = headline(
                float(np.log(part + 1.0).std(ddof=1)) if part.size > 1 else float("nan"),
                f"sd across seeds of the phase-change log-step, {size}",
            )
    for other, res in c.coincidence.items():
        if np.isfinite(res["p_value"]):
            heads_metrics[f"coincidence_{other}_p"] = headline(
                res["p_value"],
                f"permutation p: induction and {other} steps closer in the same run than in "
                "mismatched seeds of the same size",
            )
            heads_metrics[f"lag_{other}_matched"] = headline(
                res["matched"], f"mean |log-step lag| induction vs {other}, same run"
            )
    return heads_metrics


def _write_stage_metrics(inputs: _Inputs, c: _Computed):
    """Write the stage's metrics file: headlines, details and provenance; returns it."""
    from seedscope.core.metrics import write_metrics

    cfg, info = inputs.cfg, inputs.info
    return write_metrics(
        "induction",
        _headline_metrics(cfg, c),
        details={
            "phase_changes": c.change_table.to_dict("records"),
            "size_comparison": c.comparison,
            "lags": c.lags.to_dict("records"),
            "coincidence": c.coincidence,
            "icl_bands": [list(b) for b in inputs.bands],
            "probe": {
                "min_count": cfg.probe_min_count,
                "n_ids": int(info["n_ids"]),
                "accidental_repeats": float(info["accidental_repeats"]),
            },
        },
        provenance=stage_provenance("induction", inputs.resolved, inputs.steps, cfg),
    )


def induction_sentence(
    changes: pd.DataFrame, comparison: dict[str, Any] | None, cfg: Any = None
) -> str:
    """Plain-words summary of the phase changes, read from the computed table; `cfg` (the
    stage's InductionParams) names the thresholds used."""
    import numpy as np

    parts = []
    if cfg is not None:
        parts.append(
            f"A run *forms* an induction head when its best head ends at a prefix-matching "
            f"score >= {cfg.formed_score:g} with second-copy loss <= "
            f"{cfg.formed_copy_ratio:g} x the first-copy loss; a *jump* needs a logistic fit "
            f"of amplitude >= {cfg.phase_min_amplitude:g} and r2 >= {cfg.phase_min_r2:g}, "
            f"a 10-90% rise within {cfg.phase_max_width_fraction:.0%} of the log-step range, "
            f"and >= {cfg.phase_min_plateau_points} checkpoints on each plateau (a jump at "
            "the first or last checkpoint alone is not a phase change)."
        )
    for size, part in changes.groupby("size", sort=False):
        formed = part[part["formed"] & part["jump_detected"]]
        if formed.empty:
            n_formed = int(part["formed"].sum())
            parts.append(
                f"**{size}**: no run forms an induction head through a detected jump "
                f"({n_formed}/{len(part)} pass the final-checkpoint criteria; best final "
                f"score {part['final_induction'].max():.2f}, "
                f"{part['final_induction_all_ids'].max():.2f} on the all-ids probe)."
            )
            continue
        steps = formed["midpoint"].to_numpy(dtype=float)
        logs = np.log10(steps + 1.0)
        parts.append(
            f"**{size}**: {len(formed)}/{len(part)} runs form induction heads; phase change "
            f"at steps {', '.join(f'{s:.0f}' for s in steps)} (range {steps.min():.0f}–"
            f"{steps.max():.0f}, sd across seeds "
            f"{np.std(logs, ddof=1) if len(logs) > 1 else float('nan'):.2f} decades)."
        )
    if comparison:
        diff = comparison["mean_diff"]
        when = "later" if diff > 0 else "earlier" if diff < 0 else "at the same step"
        amount = f"{abs(diff):.0f} steps {when}" if diff else when
        parts.append(
            f"The larger size's phase-change midpoint comes {amount} on average "
            f"(Mann–Whitney p = {comparison['mannwhitney_p']:.2g}, "
            f"{comparison['n_a']} vs {comparison['n_b']} seeds)."
        )
    return " ".join(parts)


def coincidence_sentence(changes: pd.DataFrame, coincidence: dict[str, Any] | None = None) -> str:
    """Do the induction jump, the ICL jump and the training-loss bump go together, run by run,
    more than in mismatched seeds of the same size? Read from the computed tests."""
    import numpy as np

    no_log = changes[~changes["training_log"]]["run"].tolist() if "training_log" in changes else []
    missing = (
        f" The suite provides no training log for {', '.join(no_log)} (no trainer_state.json "
        "log_history with its checkpoints), so the training-loss bump is not estimated there."
        if no_log
        else ""
    )
    formed = changes[changes["formed"] & changes["jump_detected"]]
    if formed.empty:
        return (
            "No run formed an induction head through a detected jump, so there is no jump "
            "to compare." + missing
        )
    parts = []
    for other, name in (("icl", "ICL-score jump"), ("bump", "training-loss bump")):
        res = (coincidence or {}).get(other)
        if not res or not np.isfinite(res.get("p_value", np.nan)):
            parts.append(f"Too few runs ({int(res['n']) if res else 0}) have both an induction "
                         f"jump and a {name} to test their coincidence.")  # fmt: skip
            continue
        dropped = int(res.get("n_dropped", 0))
        parts.append(
            f"Induction jump vs {name} over {int(res['n'])} runs"
            + (f" ({dropped} more in sizes with a single such run, untested)" if dropped else "")
            + f": mean |lag| {res['matched']:.2f} log-steps in the same run vs "
            f"{res['mismatched']:.2f} for mismatched seeds of the same size (permutation p = "
            f"{res['p_value']:.2g}; within-size correlation r = {res['r']:.2f}, permutation "
            f"p = {res.get('r_p_value', float('nan')):.2g}; only "
            f"{res.get('n_arrangements', float('nan')):.0f} distinct shufflings of seeds "
            "within sizes exist, so p cannot fall below their inverse)."
        )
    if "bump" in (coincidence or {}):
        parts.append(
            "Lag CIs against the training-loss bump cover the induction side only (the "
            "bump's own error is not resampled)."
        )
    return " ".join(parts) + missing


def training_log(resolved: ResolvedSuite, run: str) -> pd.DataFrame | None:
    """A run's training loss as stage `train` recorded it (`step`, `loss`): the trainer's log
    for the mini-suite, the final checkpoint's `trainer_state.json` `log_history` for hub
    suites that publish one (CRFM); None when the suite provides none (Pythia's logs are
    published apart from its checkpoints)."""
    path = training_log_path(resolved, run)
    if not path.is_file():
        return None
    log = pd.read_parquet(path)
    return log if len(log) else None

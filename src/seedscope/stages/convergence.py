"""Stage 2 · mid-training divergence: the agreement analysis at the mid checkpoint, the gaps
between seeds there, and whether each is closed by the end (an equivalence margin, not a
lost p-value); agreement over every checkpoint of the token subset. Science:
`seedscope.analyses.compare`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from seedscope.core.config import ResolvedSuite
from seedscope.stages.agreement import (
    AgreementResult,
    across_size_pairs,
    agreement_analysis,
    check_topk,
    within_size_pairs,
)
from seedscope.stages.common import (
    StageResult,
    fresh_outputs,
    load_eval_data,
    meta_columns,
    resolve_suite,
    run_labels,
    run_sizes,
    stage_config,
    stage_provenance,
    token_losses_root,
)


def subset_logprobs_by_step(resolved: ResolvedSuite) -> dict[int, dict[str, Any]]:
    """step -> run -> log-probs `[n_subset_windows, window - 1]` on the trajectory subset,
    for every checkpoint the sweep evaluated."""
    import numpy as np

    from seedscope.logprobs.engine import load_trajectories

    tokens, _ = load_eval_data()
    n_cols = tokens.shape[1] - 1
    by_step: dict[int, dict[str, Any]] = {}
    for run in resolved.run_names:
        steps, values = load_trajectories(token_losses_root(resolved), run)
        for j, step in enumerate(steps):
            column = values[:, j].astype(np.float64).reshape(-1, n_cols)
            by_step.setdefault(int(step), {})[run] = column
    return {s: v for s, v in by_step.items() if len(v) == len(resolved.run_names)}


@dataclass(frozen=True, kw_only=True)
class ConvergenceResult(StageResult):
    """Analysis 2: agreement at mid and final, mid-training gaps and what became of them."""

    config: Any
    mid: AgreementResult  # analysis 1 at the mid step (figures, outliers, enrichment, gaps)
    final: AgreementResult  # agreement tables alone at the final step
    gap_table: pd.DataFrame  # per (seed pair, category): mid gap, final gap, verdict
    gap_summary: dict[str, Any]  # counts closed / shrank / persisted / grew, fraction closed
    size_gap_table: pd.DataFrame  # the same for pairs of different sizes (empty: one size)
    size_gap_summary: dict[str, Any] | None
    over_training: pd.DataFrame  # pairwise agreement at every checkpoint (token subset)


def convergence_stage(suite: dict[str, Any], convergence: dict[str, Any]) -> ConvergenceResult:
    """Stage `convergence` (analysis 2): agreement at mid; do mid-training gaps close?

    Seed gaps (pairs of one size) answer the question; gaps between sizes are reported
    apart. "Closed" = equivalent to no gap within `margin` nats, never "no longer
    significant" (`compare.gap_change`)."""
    resolved = resolve_suite(suite)
    cfg = stage_config("convergence", convergence)
    check_topk(resolved, resolved.mid_step, cfg.top_k, "convergence")
    out, _ = fresh_outputs("convergence")
    mid = agreement_analysis("convergence", resolved, resolved.mid_step, cfg)
    final = agreement_analysis(
        "convergence", resolved, resolved.final_step, cfg, agreement_only=True
    )
    meta, lp_mid, lp_final = _load_mid_and_final(resolved)
    changes, tables = _compute_gap_changes(meta, lp_mid, lp_final, resolved, cfg)
    over = _compute_agreement_over_training(resolved, cfg)
    _save_tables(out, {**tables, "agreement_over_training": over})
    fig = _register_over_training_figure(over, resolved)
    plot = _write_over_training_plot(over)
    metrics = _write_convergence_metrics(resolved, cfg, mid, final, changes, plot)
    return ConvergenceResult(
        config=cfg,
        mid=mid,
        final=final,
        **changes,
        over_training=over,
        figures={"agreement_over_training": fig},
        metrics=metrics,
    )


def _load_mid_and_final(resolved: ResolvedSuite) -> tuple[pd.DataFrame, Any, Any]:
    """Load the eval metadata and every run's log-probs at the mid and final steps."""
    from seedscope.logprobs.engine import load_logprobs

    _, meta = load_eval_data()
    root, runs = token_losses_root(resolved), resolved.run_names
    lp_mid = load_logprobs(root, runs, resolved.mid_step)
    lp_final = load_logprobs(root, runs, resolved.final_step)
    return meta, lp_mid, lp_final


def _compute_gap_changes(
    meta: pd.DataFrame, lp_mid: Any, lp_final: Any, resolved: ResolvedSuite, cfg: Any
) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """What became of mid-training seed (and size) gaps by the end; and the tables to write."""
    from seedscope.analyses import compare

    change_args = {
        "margin": cfg.margin,
        "alpha": cfg.alpha,
        "n_boot": cfg.n_boot,
        "seed": cfg.seed,
        "sizes": run_sizes(resolved),
    }
    columns = meta_columns(meta)
    table, summary = compare.gap_change(
        lp_mid, lp_final, meta, columns, within_size_pairs(resolved), **change_args
    )
    tables = {"gap_convergence": table}
    size_table, size_summary = pd.DataFrame(), None
    if across_size_pairs(resolved):
        size_table, size_summary = compare.gap_change(
            lp_mid, lp_final, meta, columns, across_size_pairs(resolved), **change_args
        )
        tables["size_gap_convergence"] = size_table
    changes = {
        "gap_table": table,
        "gap_summary": summary,
        "size_gap_table": size_table,
        "size_gap_summary": size_summary,
    }
    return changes, tables


def _compute_agreement_over_training(resolved: ResolvedSuite, cfg: Any) -> pd.DataFrame:
    """Pairwise agreement at every checkpoint, on the trajectory token subset."""
    from seedscope.analyses import compare

    return compare.agreement_over_training(
        subset_logprobs_by_step(resolved),
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        sizes=run_sizes(resolved),
        ci=1 - cfg.alpha,
    )


def _save_tables(out: Any, tables: dict[str, pd.DataFrame]) -> None:
    """Write each table as <out>/<name>.parquet, in order."""
    from seedscope.core.io import write_parquet

    for name, table in tables.items():
        write_parquet(out / f"{name}.parquet", table)


def _register_over_training_figure(over: pd.DataFrame, resolved: ResolvedSuite) -> str:
    """Save the key figure: pairwise Pearson r over training; its path."""
    from seedscope.analyses import compare
    from seedscope.stages.common import register_figure

    return register_figure(
        compare.agreement_over_training_plot(
            over, "pearson", run_labels(resolved), run_sizes(resolved)
        ),
        "convergence",
        "agreement_over_training",
        "Pairwise Pearson r of per-token log-probs over training",
        compare.agreement_over_training_plot,
        key=True,
    )


def _write_over_training_plot(over: pd.DataFrame) -> pd.DataFrame:
    """Write the dvc plot (mean within-size Pearson per step, tracked by git); return it."""
    from seedscope.core.io import atomic_path
    from seedscope.core.paths import metrics_dir

    within = over[over["same_size"].astype(bool)]
    plot = within.groupby("step", as_index=False)["pearson"].mean()
    with atomic_path(metrics_dir() / "plots" / "agreement_over_training.csv") as tmp:
        plot.to_csv(tmp, index=False, float_format="%.6g")
    return plot


def _write_convergence_metrics(
    resolved: ResolvedSuite,
    cfg: Any,
    mid: AgreementResult,
    final: AgreementResult,
    changes: dict[str, Any],
    plot: pd.DataFrame,
) -> dict[str, Any]:
    """Write metrics/convergence.json: headlines, gap summaries and provenance."""
    from seedscope.core.metrics import write_metrics

    heads = {
        **_agreement_headlines(resolved, cfg, mid, final),
        **_gap_headlines(cfg, changes["gap_summary"], changes["size_gap_summary"]),
        **_trajectory_headlines(plot),
    }
    summary, size_summary = changes["gap_summary"], changes["size_gap_summary"]
    clean = {k: (v if v == v else None) for k, v in summary.items()}  # NaN -> None
    clean_size = {k: (v if v == v else None) for k, v in (size_summary or {}).items()}
    return write_metrics(
        "convergence",
        heads,
        details={"gap_summary": clean, "size_gap_summary": clean_size},
        provenance=stage_provenance(
            "convergence", resolved, [resolved.mid_step, resolved.final_step], cfg
        ),
    )


def _agreement_headlines(
    resolved: ResolvedSuite, cfg: Any, mid: AgreementResult, final: AgreementResult
) -> dict[str, Any]:
    """Headlines: mean Pearson r of each pair group at the mid and final steps."""
    from seedscope.core.metrics import headline

    heads = {}
    level = f"{1 - cfg.alpha:.0%}"
    for when, res, step in (
        ("mid", mid, resolved.mid_step),
        ("final", final, resolved.final_step),
    ):
        for name, g in res.groups.items():
            heads[f"{when}_pearson_" + name.replace(" ", "_")] = headline(
                g["value"],
                f"mean Pearson r, pairs {name}, at {when} step {step} ({level} Multi-Bootstrap "
                "CI over seeds and windows)",
                (g["ci_low"], g["ci_high"]),
            )
    return heads


def _gap_headlines(
    cfg: Any, summary: dict[str, Any], size_summary: dict[str, Any] | None
) -> dict[str, Any]:
    """Headlines: mid-training seed (and size) gaps and what became of them by the end."""
    from seedscope.core.metrics import headline

    heads = {}
    level = f"{1 - cfg.alpha:.0%}"
    heads["n_gaps_mid"] = headline(
        summary["n_significant_mid"],
        f"seed capability gaps (pairs of one size) open at mid-training: significant (BH, FDR "
        f"{cfg.alpha}) and not within +-{cfg.margin} nats",
    )
    for status in ("closed", "shrank", "persisted", "grew"):
        heads[f"n_gaps_{status}"] = headline(
            summary[f"n_{status}"], f"mid-training seed gaps that {status} by the end"
        )
    heads["fraction_gaps_closed"] = headline(
        summary["fraction_closed"],
        f"fraction of open mid-training seed gaps closed by the end (shrank, and final gap "
        f"within +-{cfg.margin} nats; {level} CI over seeds and windows)",
        (summary["fraction_closed_low"], summary["fraction_closed_high"]),
    )
    if size_summary is not None:
        heads["n_size_gaps_mid"] = headline(
            size_summary["n_significant_mid"],
            f"size capability gaps (pairs of different sizes) open at mid-training: "
            f"significant (BH, FDR {cfg.alpha}) and not within +-{cfg.margin} nats",
        )
        heads["fraction_size_gaps_closed"] = headline(
            size_summary["fraction_closed"],
            f"fraction of mid-training size gaps closed by the end (within +-{cfg.margin} nats)",
            (size_summary["fraction_closed_low"], size_summary["fraction_closed_high"]),
        )
    return heads


def _trajectory_headlines(plot: pd.DataFrame) -> dict[str, Any]:
    """Headlines: mean within-size Pearson r at the first and last evaluated steps."""
    from seedscope.core.metrics import headline

    first, last = plot.iloc[0], plot.iloc[-1]
    return {
        "pearson_first_step": headline(
            first["pearson"],
            f"mean within-size Pearson r at step {int(first['step'])} (trajectory token subset)",
        ),
        "pearson_last_step": headline(
            last["pearson"],
            f"mean within-size Pearson r at step {int(last['step'])} (trajectory token subset)",
        ),
    }


def agreement_summary(res: ConvergenceResult) -> pd.DataFrame:
    """Mean pairwise Pearson r per pair group at mid-training and at the end, with the
    Multi-Bootstrap CI (seeds and windows), the t-interval over runs and the pair range."""
    rows = []
    for when, at in (("mid", res.mid), ("final", res.final)):
        table = at.seed_agreement
        for row in table[table["method"] == "pearson"].to_dict("records"):
            rows.append(
                {
                    "checkpoint": f"{when} (step {at.step})",
                    "pairs": row["group"],
                    "mean Pearson r": row["value"],
                    "ci_low": row["ci_low"],
                    "ci_high": row["ci_high"],
                    "t_low": row["t_low"],
                    "t_high": row["t_high"],
                    "pair_min": row["pair_min"],
                    "pair_max": row["pair_max"],
                    "n_runs": row["n_runs"],
                }
            )
    return pd.DataFrame(rows)


def convergence_sentence(
    summary: dict[str, Any], mid_step: int, final_step: int, what: str = "seed"
) -> str:
    """The one-sentence answer: have mid-training capability gaps (`what`: 'seed' = pairs
    of one size, 'size' = pairs of different sizes) closed by the end? Closed = the final
    gap is equivalent to none within the margin; the FDR level and margin printed are the
    ones used."""
    n = int(summary["n_significant_mid"])
    alpha, margin = summary["alpha"], summary["margin"]
    tests = (
        f"{summary['n_tests']} {what} gaps tested at step {mid_step}, Benjamini-Hochberg at "
        f"FDR {alpha:g}"
    )
    within = int(summary.get("n_within_margin_mid", 0))
    small = (
        f"; {within} more were significant but already within ±{margin:g} nats, so not open"
        if within
        else ""
    )
    if n == 0:
        return (
            f"No {what} capability gap was open at step {mid_step} (significant and not within "
            f"±{margin:g} nats; {tests}{small}), so there was nothing to close."
        )
    frac = summary["fraction_closed"]
    counts = ", ".join(
        f"{int(summary[f'n_{s}'])} {s}" for s in ("closed", "shrank", "persisted", "grew")
    )
    ci = ""
    if summary["fraction_closed_low"] == summary["fraction_closed_low"]:
        ci = (
            f" ({frac:.0%} closed, {1 - alpha:.0%} CI over seeds and windows "
            f"{summary['fraction_closed_low']:.0%}–{summary['fraction_closed_high']:.0%})"
        )
    return (
        f"Of {n} {what} capability gaps open at step {mid_step} (significant and not within "
        f"±{margin:g} nats; {tests}{small}), by step {final_step}: {counts}{ci}. Closed means "
        f"the gap shrank and the final gap is equivalent to none within ±{margin:g} nats of "
        "mean log-prob (TOST), not merely that it stopped being significant; shrank / grew = "
        "the change |final gap| − |mid gap| is significantly below / above 0 (both with "
        f"Benjamini-Hochberg at FDR {alpha:g} over the open gaps)."
    )

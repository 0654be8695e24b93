"""Stage 4 · behaviours over runs and checkpoints: reads the probe scores the sweep measured,
fits emergence steps, compares seeds and sizes, saves tables, figures and metrics. The
science is in `seedscope.analyses.behaviours`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from seedscope.stages.common import (
    StageResult,
    behaviour_probe,
    fresh_outputs,
    json_records,
    resolve_suite,
    run_sizes,
    stage_config,
    stage_provenance,
    token_losses_root,
)


@dataclass
class _BehaviourResults:
    """What `behaviours_stage` computes, shared by its save, figure and metric steps."""

    table: pd.DataFrame
    emergence: pd.DataFrame
    spread: pd.DataFrame
    mid_final: pd.DataFrame
    final: pd.DataFrame
    final_summary: dict[str, Any]
    final_accuracy: pd.DataFrame
    scoring: pd.DataFrame


@dataclass(frozen=True, kw_only=True)
class BehavioursResult(StageResult):
    """Analysis 4: the battery's scores over runs x checkpoints, emergence steps and their
    spread between seeds, the final scores, and the sentences that state the findings."""

    dropped: dict[str, int]  # behaviour -> items dropped: prompt + longest option > context
    items: Any  # the whole battery (dropped items included)
    table: pd.DataFrame  # score per (run, checkpoint, behaviour)
    emergence: pd.DataFrame  # per (run, behaviour): the step it emerged, if it did
    spread: pd.DataFrame  # per behaviour: spread of emergence steps between seeds
    final: pd.DataFrame  # final scores, seed spread and size difference (with CIs)
    final_summary: dict[str, Any]
    scoring: pd.DataFrame  # how much the scoring rule changes the final scores
    sentences: dict[str, str]  # final, emergence, mid_vs_final, scoring
    mid_vs_final: pd.DataFrame  # behaviours present at mid in one run and not another


def behaviours_stage(suite: dict[str, Any], behaviours: dict[str, Any]) -> BehavioursResult:
    """Stage `behaviours` (analysis 4): the battery over every run x checkpoint."""
    resolved = resolve_suite(suite)
    cfg = stage_config("behaviours", behaviours)
    probe = behaviour_probe(resolved, cfg)
    steps = sorted(probe.steps)
    out, _ = fresh_outputs("behaviours")
    items = probe.items
    scores, dropped, item_scores = _load_probe_scores(resolved, probe, steps)
    r = _compute_behaviour_results(scores, item_scores, resolved, steps, cfg)
    _save_behaviour_tables(out, items, item_scores, r)
    figures = _register_behaviour_figures(r, resolved, cfg)
    metrics = _write_behaviour_metrics(r, dropped, resolved, steps, cfg)
    return BehavioursResult(
        dropped=dropped,
        items=items,
        table=r.table,
        emergence=r.emergence,
        spread=r.spread,
        final=pd.concat([r.final, r.final_accuracy], ignore_index=True),
        final_summary=r.final_summary,
        scoring=r.scoring,
        sentences=_behaviour_sentences(r, item_scores, cfg),
        mid_vs_final=r.mid_final,
        figures=figures,
        metrics=metrics,
    )


def _load_probe_scores(resolved: Any, probe: Any, steps: list[int]):
    """Probe scores per (run, step), probes dropped per behaviour, and all item scores."""
    from seedscope.logprobs.sweep import read_probe_tables

    # measured by stage token_losses while each checkpoint was loaded (one fetch each)
    root, names, digest = token_losses_root(resolved), resolved.run_names, probe.digest()
    scores = read_probe_tables(root, probe.name, "scores", names, steps, digest)
    first = read_probe_tables(root, probe.name, "dropped", names[:1], steps[:1], digest)
    dropped = {str(r.behaviour): int(r.n_dropped) for r in next(iter(first.values())).itertuples()}
    item_scores = pd.concat(
        [frame.assign(run=run, step=step) for (run, step), frame in scores.items()],
        ignore_index=True,
    )
    return scores, dropped, item_scores


def _compute_behaviour_results(
    scores: Any, item_scores: pd.DataFrame, resolved: Any, steps: list[int], cfg: Any
) -> _BehaviourResults:
    """Behaviour table, emergence, seed spread, final scores and the scoring comparison."""
    from seedscope.analyses import behaviours as bh

    table = bh.behaviour_table(
        scores, suite=resolved.suite, n_boot=cfg.n_boot, seed=cfg.seed, groups=True
    )
    emergence = bh.emergence_table(table, cfg.score_threshold)
    spread = bh.emergence_summary(emergence)
    mid_final = bh.seed_spread_mid_vs_final(
        table, resolved.mid_step, resolved.final_step, "score", "all", item_scores,
        cfg.n_boot, cfg.seed,
    )  # fmt: skip
    final, final_summary = bh.final_scores(
        item_scores, steps[-1], run_sizes(resolved), "score", cfg.n_boot, cfg.seed
    )
    final_accuracy, _ = bh.final_scores(
        item_scores, steps[-1], run_sizes(resolved), "accuracy", cfg.n_boot, cfg.seed
    )
    scoring = bh.scoring_comparison(item_scores)
    return _BehaviourResults(
        table=table,
        emergence=emergence,
        spread=spread,
        mid_final=mid_final,
        final=final,
        final_summary=final_summary,
        final_accuracy=final_accuracy,
        scoring=scoring,
    )


def _save_behaviour_tables(
    out: Any, items: Any, item_scores: pd.DataFrame, r: _BehaviourResults
) -> None:
    """Write the stage's parquet tables to results/behaviours."""
    from seedscope.core.io import write_parquet

    write_parquet(
        out / "probes.parquet",
        pd.DataFrame(
            [
                {
                    "behaviour": i.behaviour,
                    "group": i.group,
                    "prompt": i.prompt,
                    "correct": i.correct,
                    "alternatives": list(i.alternatives),
                }
                for i in items
            ]
        ),
    )
    write_parquet(out / "item_scores.parquet", item_scores)
    write_parquet(out / "behaviour_table.parquet", r.table)
    write_parquet(out / "emergence.parquet", r.emergence)
    write_parquet(out / "emergence_summary.parquet", r.spread)
    write_parquet(out / "seed_spread_mid_vs_final.parquet", r.mid_final)
    write_parquet(out / "final_scores.parquet", pd.concat([r.final, r.final_accuracy]))
    write_parquet(out / "scoring_comparison.parquet", r.scoring)


def _register_behaviour_figures(r: _BehaviourResults, resolved: Any, cfg: Any) -> dict[str, str]:
    """Save and register the stage's figures: {figure name: path}, in drawing order."""
    from seedscope.analyses import behaviours as bh
    from seedscope.stages.common import register_figure

    figs = {
        "emergence": register_figure(
            bh.plot_emergence(r.emergence, resolved.run_names),
            "behaviours",
            "emergence",
            "Emergence step of each behaviour in each run",
            bh.plot_emergence,
            key=True,
        ),
        "size_comparison": register_figure(
            bh.plot_size_comparison(r.table, "score"),
            "behaviours",
            "size_comparison",
            "Chance-normalised behaviour score over training by model size",
            bh.plot_size_comparison,
        ),
    }
    for name in cfg.behaviour_names:
        figs[f"heatmap_{name}"] = register_figure(
            bh.plot_behaviour_heatmap(r.table, name, "score", run_order=resolved.run_names),
            "behaviours",
            f"heatmap_{name}",
            f"{name}: chance-normalised score per run and checkpoint",
            bh.plot_behaviour_heatmap,
        )
    return figs


def _behaviour_headlines(r: _BehaviourResults, steps: list[int], cfg: Any) -> dict[str, Any]:
    """The stage's headline numbers, keyed by metric name."""
    import numpy as np

    from seedscope.core.metrics import headline

    final, final_summary, spread = r.final, r.final_summary, r.spread
    heads = {
        "final_score_seed_sd": headline(
            final_summary["seed_sd"],
            f"sd across seeds (within size) of the chance-normalised score at step {steps[-1]}, "
            "mean over behaviours and sizes; CI: Multi-Bootstrap over seeds x item clusters "
            f"({final_summary['n_cells']} behaviour x size cells; with <= 5 seeds it "
            "under-covers)",
            (final_summary["ci_low"], final_summary["ci_high"]),
        )
    }
    for row in final.itertuples():
        heads[f"{row.behaviour}_final_score_{row.size}"] = headline(
            row.value,
            f"{row.behaviour}, {row.size}: chance-normalised score at step {steps[-1]}, mean "
            f"over {row.n_runs} seeds; CI: Multi-Bootstrap over seeds x {row.n_clusters} item "
            f"clusters; seeds range {row.run_min:.3g}-{row.run_max:.3g}",
            (row.ci_low, row.ci_high),
        )
    for row in spread.itertuples():
        heads[f"{row.behaviour}_emerged_runs_{row.size}"] = headline(
            row.n_emerged,
            f"{row.behaviour}, {row.size}: runs (of {row.n_runs}) whose score's CI lower bound "
            f"stays >= {cfg.score_threshold:g}",
        )
        if np.isfinite(row.km_median):
            heads[f"{row.behaviour}_emergence_median_{row.size}"] = headline(
                row.km_median,
                f"{row.behaviour}, {row.size}: Kaplan-Meier median emergence step "
                f"({row.emerged} emerged; range among the emerged runs "
                f"{row.min:g}-{row.max:g})",
                unit="training steps",
            )
    return heads


def _write_behaviour_metrics(
    r: _BehaviourResults, dropped: dict[str, int], resolved: Any, steps: list[int], cfg: Any
) -> dict[str, Any]:
    """Write metrics/behaviours.json: headlines, detail tables and provenance."""
    from seedscope.core.metrics import write_metrics

    return write_metrics(
        "behaviours",
        _behaviour_headlines(r, steps, cfg),
        details={
            "probes_dropped_longer_than_context": dropped,
            "score_threshold": cfg.score_threshold,
            "headline_scoring": cfg.scoring,
            "emergence": json_records(r.emergence),
            "emergence_summary": json_records(r.spread),
            "final_scores": json_records(r.final),
            "mid_vs_final": json_records(r.mid_final),
        },
        provenance=stage_provenance("behaviours", resolved, steps, cfg),
    )


def _behaviour_sentences(
    r: _BehaviourResults, item_scores: pd.DataFrame, cfg: Any
) -> dict[str, str]:
    """Plain-words findings: emergence, mid vs final spread, scoring, final scores."""
    from seedscope.analyses import behaviours as bh

    return {
        "emergence": bh.emergence_sentence(
            r.spread,
            cfg.score_threshold,
            item_scores.groupby("behaviour")["n_options"]
            .agg(lambda k: int(k.mode().iloc[0]))
            .to_dict(),  # a mapping: `if n_options` on a Series is ambiguous
        ),
        "mid_vs_final": bh.mid_final_sentence(r.mid_final),
        "scoring": bh.scoring_sentence(r.scoring, cfg.scoring),
        "final": bh.final_sentence(r.final, r.final_summary),
    }

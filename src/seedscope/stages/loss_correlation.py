"""Stage 1 · seed-pair agreement at the final checkpoint: the shared agreement analysis
(`seedscope.stages.agreement`), its headline metrics and the sentences that state them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pandas as pd

from seedscope.stages.agreement import AgreementResult, agreement_analysis, check_topk
from seedscope.stages.common import (
    fresh_outputs,
    json_records,
    resolve_suite,
    stage_config,
    stage_provenance,
)


def agreement_sentence(seed_agreement: pd.DataFrame, ci: float = 0.95) -> str:
    """The agreement finding in words, from `compare.seed_agreement` (Pearson rows): each
    group's mean r with its Multi-Bootstrap CI, the jackknife t-interval and range where seeds
    are few, and whether within-size agreement differs from across-size agreement."""
    rows = seed_agreement[seed_agreement["method"] == "pearson"].set_index("group")
    level = f"{ci:.0%}"
    parts = []
    for group, row in rows.iterrows():
        if group == "within minus across":
            continue
        text = (
            f"pairs {group}: mean Pearson r = {row['value']:.3f} ({level} CI over seeds and "
            f"windows {row['ci_low']:.3f}–{row['ci_high']:.3f}; {int(row['n_pairs'])} pairs of "
            f"{int(row['n_runs'])} runs, pair range {row['pair_min']:.3f}–{row['pair_max']:.3f}"
        )
        if row["t_low"] == row["t_low"]:  # not NaN
            text += f", leave-one-seed-out t-interval {row['t_low']:.3f}–{row['t_high']:.3f}"
        parts.append(text + ")")
    sentence = "; ".join(parts) + "."
    if "within minus across" in rows.index:
        d = rows.loc["within minus across"]
        if d["ci_low"] > 0:
            verdict = "runs of one size agree more than runs of different sizes"
        elif d["ci_high"] < 0:
            verdict = "runs of different sizes agree more than runs of one size"
        else:
            verdict = "within- and across-size agreement cannot be told apart"
        sentence += (
            f" Within minus across sizes: {d['value']:+.3f} ({level} CI "
            f"{d['ci_low']:+.3f} to {d['ci_high']:+.3f}): {verdict}."
        )
    per_size = [g for g in rows.index if g.startswith("within ") and g != "within sizes"]
    n_max = int(rows.loc[per_size, "n_runs"].max())
    if n_max == 2:
        sentence += (
            " With 2 seeds per size there is one pair per size: resampling seeds cannot show "
            "seed-to-seed variation, so these CIs reflect the eval windows only."
        )
    elif n_max <= 5:
        sentence += (
            f" With at most {n_max} seeds per size, a percentile bootstrap over seeds "
            "under-covers: read the leave-one-seed-out (jackknife) t-interval and the range "
            "beside it."
        )
    return sentence


def enrichment_sentence(res: AgreementResult, cfg: Any) -> str:
    """The enrichment finding in words: how many seed-divergent tokens, and the headline
    category (largest lower CI bound of the difficulty-stratified odds ratio among
    BH-significant categories with enough tokens), or that none qualifies."""
    n = res.n_seed_divergent
    if n == 0:
        return (
            f"No token differs between seeds of one size by more than {cfg.divergence_floor} "
            "nats: there are no seed-divergent tokens to characterise."
        )
    head = res.enrichment_headline
    level = f"{1 - cfg.alpha:.0%}"
    lead = (
        f"The {n:,} most seed-divergent tokens (top {cfg.outlier_fraction:.1%} by the spread "
        "between seeds of the same size)"
    )
    if head is None:
        return (
            f"{lead} are not enriched in any category of >= {cfg.enrichment_min_tokens:,} "
            f"tokens at FDR {cfg.alpha}."
        )
    return (
        f"{lead} are most reliably enriched in **{head['feature']} = {head['category']}** "
        f"({int(head['n_tokens']):,} tokens): odds ratio stratified by loss decile "
        f"{head['mh_odds_ratio']:.2f} ({level} window-bootstrap CI {head['mh_low']:.2f}–"
        f"{head['mh_high']:.2f}; unstratified {head['odds_ratio']:.2f}, "
        f"{head['ci_low']:.2f}–{head['ci_high']:.2f}; BH-adjusted p = "
        f"{head['p_adjusted']:.2g}). The CI resamples eval windows with the selection of "
        f"divergent tokens held fixed: it is conditional on these {res.n_seed_runs} seeds; "
        "other seeds would select other tokens."
    )


def loss_correlation_stage(
    suite: dict[str, Any], loss_correlation: dict[str, Any]
) -> AgreementResult:
    """Stage `loss_correlation` (analysis 1) on the final checkpoint."""
    from seedscope.core.metrics import write_metrics

    resolved = resolve_suite(suite)
    cfg = stage_config("loss_correlation", loss_correlation)
    check_topk(resolved, resolved.final_step, cfg.top_k, "loss_correlation")
    fresh_outputs("loss_correlation")
    res = agreement_analysis("loss_correlation", resolved, resolved.final_step, cfg)
    metrics = write_metrics(
        "loss_correlation",
        _loss_correlation_headlines(res, cfg),
        details={
            "seed_agreement": json_records(res.seed_agreement),
            "top_enriched": json_records(res.enrichment.head(10)),
            "top_size_enriched": json_records(_head(res.size_enrichment, 10)),
        },
        provenance=stage_provenance("loss_correlation", resolved, [resolved.final_step], cfg),
    )
    return replace(res, metrics=metrics)


def _head(table: pd.DataFrame | None, n: int) -> pd.DataFrame | None:
    return None if table is None else table.head(n)


def _loss_correlation_headlines(res: AgreementResult, cfg: Any) -> dict[str, Any]:
    """Headlines: agreement per pair group, seed-divergent tokens, enrichment, material gaps."""
    from seedscope.analyses import compare
    from seedscope.core.metrics import headline

    heads = {}
    level = f"{1 - cfg.alpha:.0%}"
    for row in res.seed_agreement.to_dict("records"):
        if row["method"] != "pearson" and row["group"] != "within sizes":
            continue
        key = f"{row['method']}_" + row["group"].replace(" ", "_")
        heads[key] = headline(
            row["value"],
            f"mean {row['method'].capitalize()} r of per-token log-probs, pairs {row['group']} "
            f"(final step; {level} Multi-Bootstrap CI over seeds and windows)",
            (row["ci_low"], row["ci_high"]),
        )
    heads["n_seed_divergent_tokens"] = headline(
        res.n_seed_divergent,
        f"tokens whose seeds (same size) differ by more than {cfg.divergence_floor} nats, top "
        f"{cfg.outlier_fraction:.1%}",
    )
    top = res.enrichment_headline
    if top is not None:
        heads["top_enriched_odds_ratio"] = headline(
            top["mh_odds_ratio"],
            f"loss-stratified odds ratio of seed-divergent tokens in "
            f"{top['feature']}={top['category']} (largest lower CI bound, >= "
            f"{cfg.enrichment_min_tokens} tokens, BH-significant)",
            (top["mh_low"], top["mh_high"]),
        )
    gaps = res.gaps
    heads["material_gap_fraction"] = headline(
        compare.material_gap_fraction(gaps, cfg.margin),
        f"fraction of (within-size pair, category) gaps at the final step that are material: "
        f"CI ({level}) entirely outside +-{cfg.margin} nats (significance alone measures power)",
    )
    if res.size_gaps is not None:
        heads["material_size_gap_fraction"] = headline(
            compare.material_gap_fraction(res.size_gaps, cfg.margin),
            f"fraction of (cross-size pair, category) gaps at the final step that are "
            f"material: CI ({level}) entirely outside +-{cfg.margin} nats: size effects",
        )
    return heads


def gaps_sentence(gaps: pd.DataFrame, what: str, alpha: float, step: int) -> str:
    """How many (pair, category) gaps of one kind ('seed': pairs of one size, 'size': pairs
    of different sizes) are significant at a step, with the FDR level used."""
    if gaps is None or len(gaps) == 0:
        return f"No {what} gaps were tested at step {step}."
    n_sig = int(gaps["significant"].sum())
    return (
        f"{n_sig} of {len(gaps)} {what} gaps (pair x category) are significant at step {step} "
        f"(Benjamini-Hochberg over all {len(gaps)} tests, FDR {alpha:g})."
    )

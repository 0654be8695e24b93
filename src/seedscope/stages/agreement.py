"""Analyses 1 and 2 share this: per-token log-probs of every pair of runs at one step,
compared (correlation with Multi-Bootstrap CIs, seed-divergent tokens with context and
top-k guesses, enrichment, category gaps), saved with their figures. The science is in
`seedscope.analyses.compare`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from seedscope.core.config import ResolvedSuite
from seedscope.core.paths import results_dir
from seedscope.stages.common import (
    StageResult,
    corpus_decoder,
    load_eval_data,
    meta_columns,
    run_labels,
    run_sizes,
    token_losses_root,
)


def check_topk(resolved: ResolvedSuite, step: int, k: int, section: str) -> None:
    """Before any work: the sweep kept at least `k` top-k guesses for every run at `step`
    (a one-line error naming `token_losses.top_k` otherwise)."""
    from seedscope.core.errors import SeedscopeError
    from seedscope.logprobs.engine import load_topk

    for run in resolved.run_names:
        kept = load_topk(token_losses_root(resolved), run, step).shape[-1]
        if kept < k:
            raise SeedscopeError(
                f"{section}.top_k = {k} but the sweep kept {kept} guesses per token.",
                f"set token_losses.top_k >= {k} (or {section}.top_k <= {kept}), then `dvc repro`.",
            )


def topk_lookup(resolved: ResolvedSuite, step: int, k: int, decode: Any):
    """A `topk(run, window, pos)` callable for outlier tables: the `k` most likely tokens
    (decoded) and their probabilities under P(. | tokens[:pos]), read from the top-k guesses
    the sweep kept in each full unit (same forward pass as the log-probs): no weights load."""
    import numpy as np

    from seedscope.logprobs.engine import load_topk

    tables: dict[str, np.ndarray] = {}

    def topk(run: str, window: int, pos: int) -> list[tuple[str, float]]:
        if run not in tables:
            tables[run] = load_topk(token_losses_root(resolved), run, step)
        row = tables[run][int(window), int(pos), :k]
        return [
            (decode([int(t)]), float(np.exp(np.float32(lp))))
            for t, lp in zip(row["id"], row["logprob"], strict=True)
        ]

    return topk


def pair_groups(resolved: ResolvedSuite) -> dict[str, list[tuple[str, str]]]:
    """Pairs of runs grouped as 'within <size>' (sizes with >= 2 seeds) and 'across sizes'."""
    from seedscope.analyses.compare import seed_pairs

    return seed_pairs(resolved.run_names, run_sizes(resolved))


def within_size_pairs(resolved: ResolvedSuite) -> list[tuple[str, str]]:
    """Every pair of runs of the same size: the pairs a claim about seeds may use."""
    return [
        p for name, ps in pair_groups(resolved).items() if name.startswith("within") for p in ps
    ]


def across_size_pairs(resolved: ResolvedSuite) -> list[tuple[str, str]]:
    """Every pair of runs of different sizes: size effects, reported apart."""
    return pair_groups(resolved).get("across sizes", [])


def odd_one_out_within_size(
    logprobs: dict[str, Any], sizes: dict[str, str], k: int, floor: float
) -> pd.DataFrame:
    """`compare.odd_one_out` inside each size with >= 3 seeds (a run is compared with the
    other seeds of its size, never with another size), keeping deviations above `floor` nats;
    columns as odd_one_out's plus `size`. Empty when no size has 3 seeds."""
    from seedscope.analyses.compare import odd_one_out, size_groups

    frames = []
    for size, members in size_groups(list(logprobs), sizes).items():
        if len(members) < 3:
            continue
        odd = odd_one_out({r: logprobs[r] for r in members}, k=k)
        frames.append(odd[odd["deviation"].abs() > floor].assign(size=size))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True, kw_only=True)
class AgreementResult(StageResult):
    """Analysis 1 at one step (stage 1 at the final step, stage 2 at mid and final). A table
    is None where it was not computed (`agreement_only`; size tables for a one-size suite)."""

    step: int
    agreement: pd.DataFrame  # every pair: Pearson, Spearman, mean / sd of differences, CIs
    seed_agreement: pd.DataFrame  # per pair group (within each size, across): Multi-Bootstrap
    groups: dict[str, dict[str, Any]]  # pair group -> its Pearson row
    enrichment: pd.DataFrame | None = None  # what seed-divergent tokens share
    enrichment_headline: dict[str, Any] | None = None  # its most reliable category, or None
    n_seed_divergent: int | None = None
    n_seed_runs: int | None = None
    size_enrichment: pd.DataFrame | None = None  # the same for size-divergent tokens
    n_size_divergent: int | None = None
    gaps: pd.DataFrame | None = None  # capability gaps between seeds of one size
    size_gaps: pd.DataFrame | None = None  # ... and between sizes
    outliers: pd.DataFrame | None = None  # seed-pair outliers with context and top-k
    odd_one_out: pd.DataFrame | None = None  # tokens one seed gets wrong alone
    config: Any = None


def agreement_analysis(
    stage: str,
    resolved: ResolvedSuite,
    step: int,
    cfg: Any,
    with_outliers: bool = True,
    agreement_only: bool = False,
) -> AgreementResult:
    """Analysis 1 at one step: agreement, outliers with context, enrichment, capability gaps
    (`agreement_only`: the agreement tables alone).

    Seed statistics use runs of the same size only (seed divergence, within-size gaps and
    outliers); size differences get their own tables (size divergence, cross-size gaps).
    Writes tables to results/<stage>/ and figures to figures/<stage>/; returns both."""
    data = _load_step_inputs(resolved, step)
    result = _compute_agreement(data, cfg, step)
    if agreement_only:
        _save_step_tables(stage, step, result)
        return AgreementResult(**result, config=cfg)
    result.update(_compute_divergent_tokens(data, cfg))
    result.update(_compute_capability_gaps(data, resolved, cfg))
    _save_step_tables(stage, step, result)
    result["figures"] = _register_agreement_figures(stage, data, result, cfg, step)
    if with_outliers:
        outliers = _compute_outliers(data, resolved, step, cfg)
        result.update(outliers)
        _save_outlier_tables(stage, step, outliers)
    return AgreementResult(**result, config=cfg)


@dataclass(frozen=True)
class _StepInputs:
    """What the analysis of one step reads: eval data, every run's log-probs, run facts."""

    tokens: Any
    meta: pd.DataFrame
    runs: list[str]
    logprobs: dict[str, Any]
    labels: dict[str, str]
    sizes: dict[str, str]
    columns: list[str]


# result key -> results/<stage>/<file>_step<N>.parquet, in the order they are written
_STEP_TABLES = (
    ("agreement", "agreement"),
    ("seed_agreement", "seed_agreement"),
    ("enrichment", "enrichment"),
    ("size_enrichment", "size_enrichment"),
    ("gaps", "capability_gaps"),
    ("size_gaps", "size_gaps"),
)


def _load_step_inputs(resolved: ResolvedSuite, step: int) -> _StepInputs:
    """Load the eval tokens and metadata and every run's per-token log-probs at `step`."""
    from seedscope.logprobs.engine import load_logprobs

    tokens, meta = load_eval_data()
    runs = resolved.run_names
    logprobs = load_logprobs(token_losses_root(resolved), runs, step)
    return _StepInputs(
        tokens=tokens,
        meta=meta,
        runs=runs,
        logprobs=logprobs,
        labels=run_labels(resolved),
        sizes=run_sizes(resolved),
        columns=meta_columns(meta),
    )


def _compute_agreement(data: _StepInputs, cfg: Any, step: int) -> dict[str, Any]:
    """Pairwise and per-group (Multi-Bootstrap) agreement, with each group's Pearson row."""
    from seedscope.analyses import compare

    level = 1 - cfg.alpha
    agreement = compare.pairwise_agreement(
        data.logprobs, cfg.n_boot, cfg.seed, sizes=data.sizes, ci=level
    )
    seed_agreement = compare.seed_agreement(
        data.logprobs, data.sizes, cfg.n_boot, cfg.seed, ci=level
    )
    pearson = seed_agreement[seed_agreement["method"] == "pearson"]
    groups = {
        row["group"]: {**row, "n_pairs": int(row["n_pairs"])}
        for row in pearson.to_dict("records")
        if row["group"] != "within minus across"
    }
    return {
        "agreement": agreement,
        "seed_agreement": seed_agreement,
        "groups": groups,
        "step": step,
    }


def _compute_divergent_tokens(data: _StepInputs, cfg: Any) -> dict[str, Any]:
    """Seed- and size-divergent tokens and what they have in common (enrichment)."""
    from seedscope.analyses import compare

    logprobs, sizes, window_len = data.logprobs, data.sizes, data.tokens.shape[1]
    # Seed-divergent tokens: spread between seeds of one size (never between sizes).
    strata = compare.loss_strata(logprobs, cfg.n_strata)
    divergence = compare.seed_divergence(logprobs, sizes)
    mask = compare.top_fraction_mask(divergence, cfg.outlier_fraction, cfg.divergence_floor)
    enrich = compare.enrichment_bootstrap(
        mask, data.meta, data.columns, strata, window_len, cfg.n_boot, cfg.seed, 1 - cfg.alpha
    )
    result: dict[str, Any] = {
        "enrichment": enrich,
        "n_seed_divergent": int(mask.sum()),
        "n_seed_runs": sum(1 for r in sizes if list(sizes.values()).count(sizes[r]) > 1),
    }
    result["enrichment_headline"] = compare.enrichment_headline(
        enrich, cfg.enrichment_min_tokens, cfg.alpha
    )
    # Size-divergent tokens: ranked by the difference between sizes over its seed noise
    # (Welch t; the raw difference would rank noisy tokens first), at least the floor in nats.
    if len(set(sizes.values())) > 1:
        size_mask = compare.top_fraction_mask(
            compare.size_divergence(logprobs, sizes), cfg.outlier_fraction
        ) & (compare.size_difference(logprobs, sizes) > cfg.divergence_floor)
        size_enrich = compare.enrichment_bootstrap(
            size_mask,
            data.meta,
            data.columns,
            strata,
            window_len,
            cfg.n_boot,
            cfg.seed,
            1 - cfg.alpha,
        )
        result.update(size_enrichment=size_enrich, n_size_divergent=int(size_mask.sum()))
    return result


def _compute_capability_gaps(
    data: _StepInputs, resolved: ResolvedSuite, cfg: Any
) -> dict[str, Any]:
    """Capability gaps per (pair, category): pairs of one size, then pairs of different sizes."""
    from seedscope.analyses import compare

    gap_args = {"n_boot": cfg.n_boot, "seed": cfg.seed, "ci": 1 - cfg.alpha}
    result = {
        "gaps": compare.capability_gaps(
            data.logprobs, data.meta, data.columns, pairs=within_size_pairs(resolved), **gap_args
        )
    }
    size_pairs = across_size_pairs(resolved)
    if size_pairs:
        result["size_gaps"] = compare.capability_gaps(
            data.logprobs, data.meta, data.columns, pairs=size_pairs, **gap_args
        )
    return result


def _save_step_tables(stage: str, step: int, result: dict[str, Any]) -> None:
    """Write the tables `result` holds to results/<stage>/<file>_step<step>.parquet."""
    from seedscope.core.io import write_parquet

    out = results_dir() / stage
    for key, file in _STEP_TABLES:
        if key in result:
            write_parquet(out / f"{file}_step{step}.parquet", result[key])


def _register_agreement_figures(
    stage: str, data: _StepInputs, result: dict[str, Any], cfg: Any, step: int
) -> dict[str, str]:
    """Save the heatmap, per-size scatter grids and enrichment forest; name -> path."""
    from seedscope.analyses import compare
    from seedscope.core.plots import run_colors
    from seedscope.stages.common import register_figure

    suffix = f"step{step}"
    # The key figure: every pair at once, runs grouped by size; then each size's seed pairs
    # as a scatter grid large enough to read (one grid of all pairs would not be).
    colors = run_colors(data.runs)
    name = f"pearson_heatmap_{suffix}"
    figures = {
        name: register_figure(
            compare.correlation_heatmap(
                result["agreement"], "pearson", data.labels, data.sizes, colors
            ),
            stage,
            name,
            f"Pearson correlation of per-token log-probs, every pair of runs, step {step}",
            compare.correlation_heatmap,
            key=(stage == "loss_correlation"),
        )
    }
    for size, members in compare.size_groups(data.runs, data.sizes).items():
        if len(members) < 2:
            continue
        title = f"Per-token log-probs, pairs of {size} runs (seeds), step {step}"
        name = f"scatter_grid_{''.join(c if c.isalnum() else '_' for c in size)}_{suffix}"
        figures[name] = register_figure(
            compare.scatter_grid(data.logprobs, members, data.labels, colors=colors, title=title),
            stage,
            name,
            title,
            compare.scatter_grid,
        )
    if len(result["enrichment"]):
        name = f"enrichment_{suffix}"
        figures[name] = register_figure(
            compare.enrichment_forest(result["enrichment"], alpha=cfg.alpha),
            stage,
            name,
            f"What the tokens seeds (of one size) disagree on have in common (step {step})",
            compare.enrichment_forest,
        )
    return figures


def _compute_outliers(
    data: _StepInputs, resolved: ResolvedSuite, step: int, cfg: Any
) -> dict[str, Any]:
    """Seed-pair outliers and odd-one-out tokens, with decoded context and top-k guesses."""
    from seedscope.analyses import compare

    logprobs, tokens = data.logprobs, data.tokens
    decode = corpus_decoder()
    k = cfg.n_outliers
    pair_frames = [
        compare.pair_outliers(logprobs, a, b, k, cfg.seed) for a, b in within_size_pairs(resolved)
    ]
    pairs_table = pd.concat(pair_frames, ignore_index=True)
    pairs_table = pairs_table[
        (pairs_table["kind"] == "abs_diff") & (pairs_table["diff"].abs() > cfg.divergence_floor)
    ].reset_index(drop=True)
    odd = odd_one_out_within_size(logprobs, data.sizes, k, cfg.divergence_floor)
    topk = topk_lookup(resolved, step, cfg.top_k, decode)
    pairs_table = compare.attach_context(
        pairs_table, tokens, decode, logprobs, topk=topk, n_before=cfg.context_tokens
    )
    if len(odd):
        odd = compare.attach_context(
            odd, tokens, decode, logprobs, topk=topk, n_before=cfg.context_tokens
        )
    return {"outliers": pairs_table, "odd_one_out": odd}


def _save_outlier_tables(stage: str, step: int, outliers: dict[str, Any]) -> None:
    """Write the pair outliers, and the odd-one-out table when it has rows."""
    from seedscope.core.io import write_parquet

    out = results_dir() / stage
    write_parquet(out / f"outliers_pairs_step{step}.parquet", outliers["outliers"])
    if len(outliers["odd_one_out"]):
        write_parquet(out / f"odd_one_out_step{step}.parquet", outliers["odd_one_out"])

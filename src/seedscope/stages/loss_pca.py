"""Stage 3 · principal components of per-token loss: the raw and the seed view, each
component tested against a permutation null before it is described. Science:
`seedscope.analyses.pca`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from seedscope.analyses.pca import PCAResult
from seedscope.core.config import ResolvedSuite
from seedscope.stages.common import (
    StageResult,
    corpus_decoder,
    fresh_outputs,
    json_records,
    load_eval_data,
    meta_columns,
    resolve_suite,
    run_labels,
    run_sizes,
    stage_config,
    stage_provenance,
    token_losses_root,
)


@dataclass(frozen=True, kw_only=True)
class LossPcaResult(StageResult):
    """Analysis 3: the raw view (shared difficulty, size) and the seed view (centred within
    size), each component tested before it is described; the runs x checkpoints view."""

    result: PCAResult  # the raw view's fit (loadings, scores)
    variance: pd.DataFrame  # explained variance per component, window-bootstrap CI
    predictors: pd.DataFrame  # best metadata predictors of each component's scores
    descriptions: list[str]  # the raw view's components in words (tested first)
    raw_tests: pd.DataFrame  # parallel analysis of the raw view
    seed_tests: pd.DataFrame  # ... of the seed view
    seed_descriptions: list[str]
    n_seed_components: int  # seed components that beat the null and spread enough
    stability: pd.DataFrame  # leave-one-seed-out and bootstrap subspace angles
    descriptions_checkpoints: list[str]
    extremes: pd.DataFrame  # each component's extreme tokens, with context


def loss_pca_stage(suite: dict[str, Any], loss_pca: dict[str, Any]) -> LossPcaResult:
    """Stage `loss_pca` (analysis 3): PCA of per-token losses across runs (and checkpoints).

    Two views: the raw matrix (shared difficulty, size) and the matrix centred within size
    (the seed question). A component is described in words only if it beats a permutation
    null (parallel analysis) and spreads by at least `min_component_sd` nats; described seed
    components get leave-one-seed-out and bootstrap subspace angles."""
    resolved = resolve_suite(suite)
    cfg = stage_config("loss_pca", loss_pca)
    out, _ = fresh_outputs("loss_pca")
    tokens, meta, final, mid = _load_losses(resolved)
    k = min(cfg.n_components, len(resolved.run_names))
    raw = _fit_raw_view(resolved, cfg, k, tokens, meta, final)
    seed = _fit_seed_view(resolved, cfg, k, final)
    ckpt = _fit_checkpoint_view(resolved, cfg, k, mid, final)
    _save_tables(out, raw, seed, ckpt)
    figures = _register_figures(resolved, cfg, k, meta, raw, seed, ckpt)
    metrics = _write_loss_pca_metrics(resolved, cfg, raw, seed, ckpt)
    return LossPcaResult(
        result=raw["result"],
        variance=raw["variance"],
        predictors=raw["predictors"],
        descriptions=raw["descriptions"],
        raw_tests=raw["tests"],
        seed_tests=seed["tests"],
        seed_descriptions=seed["lines"],
        n_seed_components=seed["n"],
        stability=seed["stability"],
        descriptions_checkpoints=ckpt["descriptions"],
        extremes=raw["extremes"],
        figures=figures,
        metrics=metrics,
    )


def _load_losses(resolved: ResolvedSuite) -> tuple[Any, Any, Any, Any]:
    """Eval tokens, their metadata, and every run's log-probs at the final and mid steps."""
    from seedscope.logprobs.engine import load_logprobs

    tokens, meta = load_eval_data()
    runs = resolved.run_names
    root = token_losses_root(resolved)
    final = load_logprobs(root, runs, resolved.final_step)
    mid = load_logprobs(root, runs, resolved.mid_step)
    return tokens, meta, final, mid


def _permutation_test_args(cfg: Any) -> dict[str, Any]:
    """The parallel-analysis settings every view's component tests share."""
    return {
        "n_permutations": cfg.n_permutations,
        "seed": cfg.seed,
        "alpha": cfg.alpha,
        "min_sd": cfg.min_component_sd,
    }


def _fit_raw_view(
    resolved: ResolvedSuite, cfg: Any, k: int, tokens: Any, meta: Any, final: Any
) -> dict[str, Any]:
    """The raw view: fit, variance CIs, tests, predictors, descriptions, extreme tokens."""
    from seedscope.analyses import compare, pca

    runs = resolved.run_names
    labels, sizes = run_labels(resolved), run_sizes(resolved)
    matrix = pca.loss_matrix(final)
    result = pca.fit_pca(matrix, n_components=k, seed=cfg.seed)
    variance = pca.explained_variance_ci(matrix, n_boot=cfg.n_boot, seed=cfg.seed, n_components=k)
    raw_tests = pca.seed_components(
        matrix,
        [list(range(len(runs)))],
        test_first_separately=True,
        **_permutation_test_args(cfg),
    )
    raw_tests["described"] = raw_tests["described"].cumprod().astype(bool)  # leading ones
    predictors = pca.score_predictors(result, meta, meta_columns(meta), n_components=min(3, k))
    described_raw = pca.describe_components(result, predictors, min(3, k), sizes, labels)
    descriptions = [
        line
        if raw_tests.loc[c, "described"]
        else f"PC{c + 1}: no structure beyond noise, {raw_tests.loc[c, 'ratio']:.3f} of variance "
        f"(parallel analysis p = {raw_tests.loc[c, 'p_value']:.2g})"
        for c, line in enumerate(described_raw)
    ]
    extremes = pca.component_extremes(result, k=cfg.n_extremes, n_components=min(3, k))
    extremes = compare.attach_context(
        extremes, tokens, corpus_decoder(), final, runs=[], n_before=cfg.context_tokens
    )
    return {
        "matrix": matrix,
        "result": result,
        "variance": variance,
        "tests": raw_tests,
        "predictors": predictors,
        "descriptions": descriptions,
        "extremes": extremes,
    }


def _fit_seed_view(resolved: ResolvedSuite, cfg: Any, k: int, final: Any) -> dict[str, Any]:
    """The seed view: losses centred within size, tested against runs exchangeable per token."""
    from seedscope.analyses import pca

    labels, sizes = run_labels(resolved), run_sizes(resolved)
    seeds = {r.name: r.seed for r in resolved.suite.runs}
    seed_matrix = pca.loss_matrix_within_size(final, sizes)
    size_cols: dict[str, list[int]] = {}
    for j, run in enumerate(seed_matrix.runs):
        size_cols.setdefault(sizes[run], []).append(j)
    seed_tests = pca.seed_components(
        seed_matrix, list(size_cols.values()), **_permutation_test_args(cfg)
    )
    seed_tests["described"] = seed_tests["described"].cumprod().astype(bool)  # leading ones
    n_seed = int(seed_tests["described"].sum())
    seed_lines = pca.seed_component_lines(
        seed_tests, seed_matrix, labels, sizes, n_show=min(3, k), seeds=seeds
    )
    stability = pca.subspace_stability(
        seed_matrix, n_seed, seeds, sizes, final, n_boot=cfg.n_boot, seed=cfg.seed
    )
    return {
        "matrix": seed_matrix,
        "tests": seed_tests,
        "n": n_seed,
        "lines": seed_lines,
        "stability": stability,
    }


def _fit_checkpoint_view(
    resolved: ResolvedSuite, cfg: Any, k: int, mid: Any, final: Any
) -> dict[str, Any]:
    """The variant: tokens x (runs x checkpoints), mid and final, tested like the raw view."""
    from seedscope.analyses import pca

    labels, sizes = run_labels(resolved), run_sizes(resolved)
    matrix_ckpt = pca.loss_matrix_checkpoints({resolved.mid_step: mid, resolved.final_step: final})
    result_ckpt = pca.fit_pca(
        matrix_ckpt, n_components=min(cfg.n_components, 2 * len(resolved.run_names)), seed=cfg.seed
    )
    ckpt_tests = pca.seed_components(
        matrix_ckpt,
        [list(range(len(matrix_ckpt.labels)))],
        test_first_separately=True,
        **_permutation_test_args(cfg),
    )
    ckpt_tests["described"] = ckpt_tests["described"].cumprod().astype(bool)
    descriptions_ckpt = [
        line
        if ckpt_tests.loc[c, "described"]
        else f"PC{c + 1}: no structure beyond noise (parallel analysis p = "
        f"{ckpt_tests.loc[c, 'p_value']:.2g})"
        for c, line in enumerate(
            pca.describe_components(result_ckpt, None, min(3, k), sizes, labels)
        )
    ]
    return {"result": result_ckpt, "descriptions": descriptions_ckpt}


def _save_tables(out: Any, raw: dict[str, Any], seed: dict[str, Any], ckpt: dict[str, Any]) -> None:
    """Write the views' tables to results/loss_pca (raw, then seed, then checkpoints)."""
    from seedscope.core.io import write_parquet

    write_parquet(out / "explained_variance.parquet", raw["variance"])
    write_parquet(out / "loadings.parquet", raw["result"].loadings.reset_index(names="component"))
    write_parquet(out / "predictors.parquet", raw["predictors"])
    write_parquet(out / "extremes.parquet", raw["extremes"])
    write_parquet(out / "raw_component_tests.parquet", raw["tests"])
    write_parquet(out / "seed_component_tests.parquet", seed["tests"])
    write_parquet(out / "seed_stability.parquet", seed["stability"])
    write_parquet(
        out / "loadings_checkpoints.parquet",
        ckpt["result"].loadings.reset_index(names="component"),
    )


def _register_figures(
    resolved: ResolvedSuite,
    cfg: Any,
    k: int,
    meta: Any,
    raw: dict[str, Any],
    seed: dict[str, Any],
    ckpt: dict[str, Any],
) -> dict[str, str]:
    """Draw and register the stage's figures; figure name -> path, in drawing order."""
    from seedscope.analyses import pca
    from seedscope.core.plots import run_colors
    from seedscope.stages.common import register_figure

    labels = run_labels(resolved)
    result, predictors = raw["result"], raw["predictors"]
    colors = run_colors(resolved.run_names)
    figs: dict[str, str] = {}

    def add(fig: Any, name: str, title: str, function: Any, key: bool = False) -> None:
        """Register one figure under `name` (figures/loss_pca/<name>.png)."""
        figs[name] = register_figure(fig, "loss_pca", name, title, function, key=key)

    add(
        pca.scree_plot(result),
        "scree",
        "Variance of per-token loss explained by each component",
        pca.scree_plot,
    )
    add(
        pca.loadings_plot(result, min(3, k), colors, labels),
        "loadings",
        "Loadings of the top components on each run",
        pca.loadings_plot,
        key=True,
    )
    add(
        pca.score_distribution_plot(result, meta, predictors, "PC1"),
        "pc1_by_predictor",
        "PC1 scores by their best predictor",
        pca.score_distribution_plot,
    )
    add(
        pca.loadings_plot(ckpt["result"], min(3, k), colors, labels),
        "loadings_checkpoints",
        "Loadings over runs x (mid, final) checkpoints",
        pca.loadings_plot,
    )
    if k >= 2:
        add(
            pca.score_distribution_plot(result, meta, predictors, "PC2"),
            "pc2_by_predictor",
            "PC2 scores by their best predictor",
            pca.score_distribution_plot,
        )
    n_seed = seed["n"]
    if n_seed:
        seed_result = pca.fit_pca(seed["matrix"], n_components=n_seed, seed=cfg.seed)
        add(
            pca.loadings_plot(seed_result, n_seed, colors, labels),
            "seed_loadings",
            "Loadings of the seed components (losses centred within size)",
            pca.loadings_plot,
        )
    return figs


def _write_loss_pca_metrics(
    resolved: ResolvedSuite,
    cfg: Any,
    raw: dict[str, Any],
    seed: dict[str, Any],
    ckpt: dict[str, Any],
) -> dict[str, Any]:
    """Headlines (variance per component, seed share, seed components) and details."""
    from seedscope.analyses import pca
    from seedscope.core.metrics import headline, write_metrics

    heads = {}
    for _, row in raw["variance"].head(3).iterrows():
        heads[f"{row['component'].lower()}_variance"] = headline(
            row["ratio"],
            f"fraction of per-token loss variance explained by {row['component']} (raw view)",
            (row["ci_low"], row["ci_high"]),
        )
    heads["seed_variance_share"] = headline(
        pca.seed_variance_share(raw["matrix"], seed["matrix"], run_sizes(resolved)),
        "share of per-token loss variance between seeds of one size (within-size centred, "
        "times n/(n-1) for the n seeds of a size)",
    )
    heads["n_seed_components"] = headline(
        seed["n"],
        f"seed components beyond noise (parallel analysis, {cfg.n_permutations} permutations, "
        f"alpha {cfg.alpha}; sd >= {cfg.min_component_sd} nats)",
    )
    return write_metrics(
        "loss_pca",
        heads,
        details={
            "components": raw["descriptions"],
            "seed_components": seed["lines"],
            "components_checkpoints": ckpt["descriptions"],
            "seed_component_tests": json_records(seed["tests"]),
            "raw_component_tests": json_records(raw["tests"]),
            "seed_stability": json_records(_stability_summary(seed["stability"])),
        },
        provenance=stage_provenance(
            "loss_pca", resolved, [resolved.mid_step, resolved.final_step], cfg
        ),
    )


def _stability_summary(stability: Any) -> Any:
    """Median, max and 95th percentile of the subspace angles per kind (None if no rows)."""
    import numpy as np

    return (
        stability.groupby("kind")["angle_deg"]
        .agg(["median", "max", lambda a: float(np.percentile(a, 95))])
        .set_axis(["median_deg", "max_deg", "p95_deg"], axis=1)
        .reset_index()
        if len(stability)
        else None
    )


def pca_sentence(res: LossPcaResult) -> str:
    """The seed finding of analysis 3 in words, from the tests (never typed)."""
    n = res.n_seed_components
    share = res.metrics["headline"]["seed_variance_share"]["value"] or 0.0
    lead = f"Between seeds of one size lies {share:.2%} of the per-token loss variance. "
    if n == 0:
        return lead + (
            "No component of it stands out from noise (parallel analysis against runs "
            "exchangeable per token): no structure beyond noise among the seeds."
        )
    stab = res.stability
    text = (
        lead
        + f"{n} seed component(s) beat the permutation null: "
        + "; ".join(res.seed_descriptions[:n])
    )
    if len(stab):
        parts = [
            f"{kind} largest angle median {grp.median():.0f}°, max {grp.max():.0f}°"
            for kind, grp in stab.groupby("kind")["angle_deg"]
        ]
        text += ". Stability of that subspace: " + "; ".join(parts)
    return text + "."

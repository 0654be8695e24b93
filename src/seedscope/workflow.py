"""What each pipeline stage does, as one function per stage: the notebooks call these.

A stage function validates its params (before heavy work), calls the science modules,
writes its outputs atomically under results/, figures/ and metrics/, and returns the data
the notebook displays. Keeping the glue here (not in notebooks) makes it testable.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from seedscope.config import ResolvedSuite, SuiteConfig, from_section, params_hash
from seedscope.io import read_json, write_json
from seedscope.paths import results_dir
from seedscope.provenance import provenance


def resolve_suite(suite: dict[str, Any]) -> ResolvedSuite:
    """params `suite` section -> the resolved suite (raises on any bad value)."""
    return from_section(SuiteConfig, suite, "suite").resolve()


def suites_stage(suite: dict[str, Any]) -> dict[str, Any]:
    """Stage `suites`: resolve the suite and write results/manifest.json."""
    cfg = from_section(SuiteConfig, suite, "suite")
    resolved = cfg.resolve()
    manifest = resolved.manifest()
    manifest["params_hash"] = params_hash(cfg)
    manifest["provenance"] = provenance(stage="suites")
    # The manifest is a pipeline input downstream: keep volatile fields out of its bytes.
    stable = {k: v for k, v in manifest.items() if k != "provenance"}
    write_json(results_dir() / "manifest.json", stable)
    return manifest


def read_manifest() -> dict[str, Any]:
    return read_json(results_dir() / "manifest.json")


def runs_table(manifest: dict[str, Any]) -> pd.DataFrame:
    """One row per run: name, repo id, seed, size."""
    return pd.DataFrame(manifest["runs"])[["name", "repo_id", "seed", "size", "varies"]]


def schedule_table(manifest: dict[str, Any]) -> pd.DataFrame:
    """The schedule summarised as runs of equal spacing: start, stop, every, count."""
    steps = manifest["steps"]
    rows: list[dict[str, int]] = []
    for a, b in zip(steps, steps[1:], strict=False):
        gap = b - a
        if rows and rows[-1]["every"] == gap and rows[-1]["stop"] == a:
            rows[-1]["stop"] = b
            rows[-1]["count"] += 1
        else:
            rows.append({"start": a, "stop": b, "every": gap, "count": 2 if not rows else 1})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- shared inputs


def stage_config(section: str, values: dict[str, Any] | None) -> Any:
    """A params section -> its validated config object (errors before any heavy work)."""
    from seedscope.pipeline import config_class

    return from_section(config_class(section), values, section)


def fresh_outputs(stage: str) -> tuple[Any, Any]:
    """Empty results/<stage> and figures/<stage> (a stage rewrites all its outputs)."""
    import shutil

    from seedscope.paths import figures_dir

    out = results_dir() / stage
    figs = figures_dir() / stage
    for folder in (out, figs):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    return out, figs


def run_labels(resolved: ResolvedSuite) -> dict[str, str]:
    """run name -> 'name (seed N)', the label every figure uses."""
    return {r.name: r.label for r in resolved.suite.runs}


def run_sizes(resolved: ResolvedSuite) -> dict[str, str]:
    return {r.name: r.size for r in resolved.suite.runs}


def stage_provenance(stage: str, resolved: ResolvedSuite, steps: list[int], *configs: Any):
    """Provenance of a stage's outputs: suite, runs, steps, params hash, versions, commit."""
    return provenance(
        stage=stage,
        suite=resolved.suite.name,
        runs=resolved.run_names,
        steps=[int(s) for s in steps],
        params_hash=params_hash(*configs),
    )


def load_eval_data() -> tuple[Any, pd.DataFrame]:
    """Eval tokens `[n_windows, window]` and their per-token metadata (window-major)."""
    import numpy as np

    from seedscope.paths import corpus_dir

    tokens = np.load(corpus_dir() / "eval_tokens.npy")
    meta = pd.read_parquet(corpus_dir() / "eval_meta.parquet")
    return tokens, meta


def token_losses_root(resolved: ResolvedSuite):  # type: ignore[no-untyped-def]
    from seedscope.paths import token_losses_dir

    return token_losses_dir() / resolved.suite.name


def corpus_decoder():  # type: ignore[no-untyped-def]
    """decode(token_ids) -> str with the suite's tokenizer (the corpus stage saved it)."""
    from transformers import AutoTokenizer

    from seedscope.paths import corpus_dir

    tokenizer = AutoTokenizer.from_pretrained(str(corpus_dir() / "tokenizer"))
    return lambda ids: tokenizer.decode(list(ids))


# ----------------------------------------------------------------------------- analysis 1

META_COLUMNS = (
    "token_class",
    "tag",
    "language",
    "bracket_depth",
    "freq_bucket",
    "seen_before",
    "second_copy",
    "phrase_freq_bucket",
)


def meta_columns(meta: pd.DataFrame) -> list[str]:
    """The categorical metadata columns this corpus records (any suite's metadata works)."""
    return [c for c in META_COLUMNS if c in meta.columns]


def check_topk(resolved: ResolvedSuite, step: int, k: int, section: str) -> None:
    """Before any work: the sweep kept at least `k` top-k guesses for every run at `step`
    (a one-line error naming `token_losses.top_k` otherwise)."""
    from seedscope.errors import SeedscopeError
    from seedscope.losses import load_topk

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

    from seedscope.losses import load_topk

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
    from seedscope.compare import seed_pairs

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
    from seedscope.compare import odd_one_out, size_groups

    frames = []
    for size, members in size_groups(list(logprobs), sizes).items():
        if len(members) < 3:
            continue
        odd = odd_one_out({r: logprobs[r] for r in members}, k=k)
        frames.append(odd[odd["deviation"].abs() > floor].assign(size=size))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def agreement_analysis(
    stage: str,
    resolved: ResolvedSuite,
    step: int,
    cfg: Any,
    with_outliers: bool = True,
    agreement_only: bool = False,
) -> dict[str, Any]:
    """Analysis 1 at one step: agreement, outliers with context, enrichment, capability gaps
    (`agreement_only`: the agreement tables alone).

    Seed statistics use runs of the same size only (seed divergence, within-size gaps and
    outliers); size differences get their own tables (size divergence, cross-size gaps).
    Writes tables to results/<stage>/ and figures to figures/<stage>/; returns both."""
    from seedscope import compare
    from seedscope.io import write_parquet
    from seedscope.losses import load_logprobs
    from seedscope.plots import register_figure, run_colors

    out = results_dir() / stage
    tokens, meta = load_eval_data()
    runs = resolved.run_names
    logprobs = load_logprobs(token_losses_root(resolved), runs, step)
    labels = run_labels(resolved)
    sizes = run_sizes(resolved)
    columns = meta_columns(meta)
    window_len = tokens.shape[1]
    suffix = f"step{step}"
    level = 1 - cfg.alpha
    agreement = compare.pairwise_agreement(logprobs, cfg.n_boot, cfg.seed, sizes=sizes, ci=level)
    write_parquet(out / f"agreement_{suffix}.parquet", agreement)
    seed_agreement = compare.seed_agreement(logprobs, sizes, cfg.n_boot, cfg.seed, ci=level)
    write_parquet(out / f"seed_agreement_{suffix}.parquet", seed_agreement)
    pearson = seed_agreement[seed_agreement["method"] == "pearson"]
    groups = {
        row["group"]: {**row, "n_pairs": int(row["n_pairs"])}
        for row in pearson.to_dict("records")
        if row["group"] != "within minus across"
    }
    result: dict[str, Any] = {
        "agreement": agreement,
        "seed_agreement": seed_agreement,
        "groups": groups,
        "step": step,
    }
    if agreement_only:
        return result

    # Seed-divergent tokens: spread between seeds of one size (never between sizes).
    strata = compare.loss_strata(logprobs, cfg.n_strata)
    divergence = compare.seed_divergence(logprobs, sizes)
    mask = compare.top_fraction_mask(divergence, cfg.outlier_fraction, cfg.divergence_floor)
    enrich = compare.enrichment_bootstrap(
        mask, meta, columns, strata, window_len, cfg.n_boot, cfg.seed, 1 - cfg.alpha
    )
    write_parquet(out / f"enrichment_{suffix}.parquet", enrich)
    result.update(
        enrichment=enrich,
        n_seed_divergent=int(mask.sum()),
        n_seed_runs=sum(1 for r in sizes if list(sizes.values()).count(sizes[r]) > 1),
    )
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
            size_mask, meta, columns, strata, window_len, cfg.n_boot, cfg.seed, 1 - cfg.alpha
        )
        result.update(size_enrichment=size_enrich, n_size_divergent=int(size_mask.sum()))
        write_parquet(out / f"size_enrichment_{suffix}.parquet", size_enrich)
    gap_args = {"n_boot": cfg.n_boot, "seed": cfg.seed, "ci": 1 - cfg.alpha}
    seed_pairs_ = within_size_pairs(resolved)
    gaps = compare.capability_gaps(logprobs, meta, columns, pairs=seed_pairs_, **gap_args)
    write_parquet(out / f"capability_gaps_{suffix}.parquet", gaps)
    result["gaps"] = gaps
    size_pairs = across_size_pairs(resolved)
    if size_pairs:
        size_gaps = compare.capability_gaps(logprobs, meta, columns, pairs=size_pairs, **gap_args)
        write_parquet(out / f"size_gaps_{suffix}.parquet", size_gaps)
        result["size_gaps"] = size_gaps

    # The key figure: every pair at once, runs grouped by size; then each size's seed pairs
    # as a scatter grid large enough to read (one grid of all pairs would not be).
    colors = run_colors(runs)
    result["figures"] = [
        register_figure(
            compare.correlation_heatmap(agreement, "pearson", labels, sizes, colors),
            stage,
            f"pearson_heatmap_{suffix}",
            f"Pearson correlation of per-token log-probs, every pair of runs, step {step}",
            "seedscope.compare.correlation_heatmap",
            key=(stage == "loss_correlation"),
        )
    ]
    for size, members in compare.size_groups(runs, sizes).items():
        if len(members) < 2:
            continue
        title = f"Per-token log-probs, pairs of {size} runs (seeds), step {step}"
        result["figures"].append(
            register_figure(
                compare.scatter_grid(logprobs, members, labels, colors=colors, title=title),
                stage,
                f"scatter_grid_{''.join(c if c.isalnum() else '_' for c in size)}_{suffix}",
                title,
                "seedscope.compare.scatter_grid",
            )
        )
    if len(enrich):
        result["figures"].append(
            register_figure(
                compare.enrichment_forest(enrich, alpha=cfg.alpha),
                stage,
                f"enrichment_{suffix}",
                f"What the tokens seeds (of one size) disagree on have in common (step {step})",
                "seedscope.compare.enrichment_forest",
            )
        )
    if with_outliers:
        decode = corpus_decoder()
        k = cfg.n_outliers
        pair_frames = [compare.pair_outliers(logprobs, a, b, k, cfg.seed) for a, b in seed_pairs_]
        pairs_table = pd.concat(pair_frames, ignore_index=True)
        pairs_table = pairs_table[
            (pairs_table["kind"] == "abs_diff") & (pairs_table["diff"].abs() > cfg.divergence_floor)
        ].reset_index(drop=True)
        odd = odd_one_out_within_size(logprobs, sizes, k, cfg.divergence_floor)
        topk = topk_lookup(resolved, step, cfg.top_k, decode)
        pairs_table = compare.attach_context(
            pairs_table, tokens, decode, logprobs, topk=topk, n_before=cfg.context_tokens
        )
        write_parquet(out / f"outliers_pairs_{suffix}.parquet", pairs_table)
        result["outliers"] = pairs_table
        if len(odd):
            odd = compare.attach_context(
                odd, tokens, decode, logprobs, topk=topk, n_before=cfg.context_tokens
            )
            write_parquet(out / f"odd_one_out_{suffix}.parquet", odd)
        result["odd_one_out"] = odd
    return result


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


def enrichment_sentence(res: dict[str, Any], cfg: Any) -> str:
    """The enrichment finding in words: how many seed-divergent tokens, and the headline
    category (largest lower CI bound of the difficulty-stratified odds ratio among
    BH-significant categories with enough tokens), or that none qualifies."""
    n = res["n_seed_divergent"]
    if n == 0:
        return (
            f"No token differs between seeds of one size by more than {cfg.divergence_floor} "
            "nats: there are no seed-divergent tokens to characterise."
        )
    head = res["enrichment_headline"]
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
        f"divergent tokens held fixed: it is conditional on these {res['n_seed_runs']} seeds; "
        "other seeds would select other tokens."
    )


def loss_correlation_stage(suite: dict[str, Any], loss_correlation: dict[str, Any]):
    """Stage `loss_correlation` (analysis 1) on the final checkpoint."""
    from seedscope import compare
    from seedscope.metrics import headline, write_metrics

    resolved = resolve_suite(suite)
    cfg = stage_config("loss_correlation", loss_correlation)
    check_topk(resolved, resolved.final_step, cfg.top_k, "loss_correlation")
    fresh_outputs("loss_correlation")
    res = agreement_analysis("loss_correlation", resolved, resolved.final_step, cfg)
    heads = {}
    level = f"{1 - cfg.alpha:.0%}"
    for row in res["seed_agreement"].to_dict("records"):
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
        res["n_seed_divergent"],
        f"tokens whose seeds (same size) differ by more than {cfg.divergence_floor} nats, top "
        f"{cfg.outlier_fraction:.1%}",
    )
    top = res["enrichment_headline"]
    if top is not None:
        heads["top_enriched_odds_ratio"] = headline(
            top["mh_odds_ratio"],
            f"loss-stratified odds ratio of seed-divergent tokens in "
            f"{top['feature']}={top['category']} (largest lower CI bound, >= "
            f"{cfg.enrichment_min_tokens} tokens, BH-significant)",
            (top["mh_low"], top["mh_high"]),
        )
    gaps = res["gaps"]
    heads["material_gap_fraction"] = headline(
        compare.material_gap_fraction(gaps, cfg.margin),
        f"fraction of (within-size pair, category) gaps at the final step that are material: "
        f"CI ({level}) entirely outside +-{cfg.margin} nats (significance alone measures power)",
    )
    if "size_gaps" in res:
        heads["material_size_gap_fraction"] = headline(
            compare.material_gap_fraction(res["size_gaps"], cfg.margin),
            f"fraction of (cross-size pair, category) gaps at the final step that are "
            f"material: CI ({level}) entirely outside +-{cfg.margin} nats: size effects",
        )
    res["metrics"] = write_metrics(
        "loss_correlation",
        heads,
        details={
            "seed_agreement": json_records(res["seed_agreement"]),
            "top_enriched": json_records(res["enrichment"].head(10)),
            "top_size_enriched": json_records(res.get("size_enrichment", pd.DataFrame()).head(10)),
        },
        provenance=stage_provenance("loss_correlation", resolved, [resolved.final_step], cfg),
    )
    res["config"] = cfg
    return res


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


def json_records(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
    """Table rows as JSON-safe dicts: NaN and inf become None (metrics files hold no NaN)."""
    import math

    if frame is None or len(frame) == 0:
        return []
    records = frame.to_dict("records")
    return [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}
        for rec in records
    ]


# ----------------------------------------------------------------------------- analysis 2


def trajectory_subset(resolved: ResolvedSuite) -> Any:
    """Flat (window-major) indices of the tokens evaluated at every checkpoint: all tokens
    after position 0 of a seeded set of whole windows (so window bootstraps still apply)."""
    import numpy as np

    return np.load(token_losses_root(resolved) / "trajectory_tokens.npy")


def subset_logprobs_by_step(resolved: ResolvedSuite) -> dict[int, dict[str, Any]]:
    """step -> run -> log-probs `[n_subset_windows, window - 1]` on the trajectory subset,
    for every checkpoint the sweep evaluated."""
    import numpy as np

    from seedscope.losses import load_trajectories

    tokens, _ = load_eval_data()
    n_cols = tokens.shape[1] - 1
    by_step: dict[int, dict[str, Any]] = {}
    for run in resolved.run_names:
        steps, values = load_trajectories(token_losses_root(resolved), run)
        for j, step in enumerate(steps):
            column = values[:, j].astype(np.float64).reshape(-1, n_cols)
            by_step.setdefault(int(step), {})[run] = column
    return {s: v for s, v in by_step.items() if len(v) == len(resolved.run_names)}


def convergence_stage(suite: dict[str, Any], convergence: dict[str, Any]):
    """Stage `convergence` (analysis 2): agreement at mid; do mid-training gaps close?

    Seed gaps (pairs of one size) answer the question; gaps between sizes are reported
    apart. "Closed" = equivalent to no gap within `margin` nats, never "no longer
    significant" (`compare.gap_change`)."""
    from seedscope import compare
    from seedscope.io import write_parquet
    from seedscope.losses import load_logprobs
    from seedscope.metrics import headline, write_metrics
    from seedscope.paths import metrics_dir
    from seedscope.plots import register_figure

    resolved = resolve_suite(suite)
    cfg = stage_config("convergence", convergence)
    check_topk(resolved, resolved.mid_step, cfg.top_k, "convergence")
    out, _ = fresh_outputs("convergence")
    mid = agreement_analysis("convergence", resolved, resolved.mid_step, cfg)
    final = agreement_analysis(
        "convergence", resolved, resolved.final_step, cfg, agreement_only=True
    )
    _, meta = load_eval_data()
    root, runs, sizes = token_losses_root(resolved), resolved.run_names, run_sizes(resolved)
    lp_mid = load_logprobs(root, runs, resolved.mid_step)
    lp_final = load_logprobs(root, runs, resolved.final_step)
    change_args = {
        "margin": cfg.margin,
        "alpha": cfg.alpha,
        "n_boot": cfg.n_boot,
        "seed": cfg.seed,
        "sizes": sizes,
    }
    columns = meta_columns(meta)
    table, summary = compare.gap_change(
        lp_mid, lp_final, meta, columns, within_size_pairs(resolved), **change_args
    )
    write_parquet(out / "gap_convergence.parquet", table)
    size_table, size_summary = pd.DataFrame(), None
    if across_size_pairs(resolved):
        size_table, size_summary = compare.gap_change(
            lp_mid, lp_final, meta, columns, across_size_pairs(resolved), **change_args
        )
        write_parquet(out / "size_gap_convergence.parquet", size_table)
    over = compare.agreement_over_training(
        subset_logprobs_by_step(resolved),
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        sizes=sizes,
        ci=1 - cfg.alpha,
    )
    write_parquet(out / "agreement_over_training.parquet", over)
    labels = run_labels(resolved)
    fig = register_figure(
        compare.agreement_over_training_plot(over, "pearson", labels, sizes),
        "convergence",
        "agreement_over_training",
        "Pairwise Pearson r of per-token log-probs over training",
        "seedscope.compare.agreement_over_training_plot",
        key=True,
    )
    # dvc plots: mean within-size Pearson per step (tracked by git).
    within = over[over["same_size"].astype(bool)]
    plot = within.groupby("step", as_index=False)["pearson"].mean()
    from seedscope.io import atomic_path

    with atomic_path(metrics_dir() / "plots" / "agreement_over_training.csv") as tmp:
        plot.to_csv(tmp, index=False, float_format="%.6g")
    first, last = plot.iloc[0], plot.iloc[-1]
    heads = {}
    level = f"{1 - cfg.alpha:.0%}"
    for when, res, step in (
        ("mid", mid, resolved.mid_step),
        ("final", final, resolved.final_step),
    ):
        for name, g in res["groups"].items():
            heads[f"{when}_pearson_" + name.replace(" ", "_")] = headline(
                g["value"],
                f"mean Pearson r, pairs {name}, at {when} step {step} ({level} Multi-Bootstrap "
                "CI over seeds and windows)",
                (g["ci_low"], g["ci_high"]),
            )
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
    heads["pearson_first_step"] = headline(
        first["pearson"],
        f"mean within-size Pearson r at step {int(first['step'])} (trajectory token subset)",
    )
    heads["pearson_last_step"] = headline(
        last["pearson"],
        f"mean within-size Pearson r at step {int(last['step'])} (trajectory token subset)",
    )
    clean = {k: (v if v == v else None) for k, v in summary.items()}  # NaN -> None
    clean_size = {k: (v if v == v else None) for k, v in (size_summary or {}).items()}
    metrics = write_metrics(
        "convergence",
        heads,
        details={"gap_summary": clean, "size_gap_summary": clean_size},
        provenance=stage_provenance(
            "convergence", resolved, [resolved.mid_step, resolved.final_step], cfg
        ),
    )
    return {
        "config": cfg,
        "mid": mid,
        "final": final,
        "gap_table": table,
        "gap_summary": summary,
        "size_gap_table": size_table,
        "size_gap_summary": size_summary,
        "over_training": over,
        "figure": fig,
        "metrics": metrics,
    }


def agreement_summary(res: dict[str, Any]) -> pd.DataFrame:
    """Mean pairwise Pearson r per pair group at mid-training and at the end, with the
    Multi-Bootstrap CI (seeds and windows), the t-interval over runs and the pair range."""
    rows = []
    for when in ("mid", "final"):
        table = res[when]["seed_agreement"]
        for row in table[table["method"] == "pearson"].to_dict("records"):
            rows.append(
                {
                    "checkpoint": f"{when} (step {res[when]['step']})",
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


# ----------------------------------------------------------------------------- analysis 3


def loss_pca_stage(suite: dict[str, Any], loss_pca: dict[str, Any]):
    """Stage `loss_pca` (analysis 3): PCA of per-token losses across runs (and checkpoints).

    Two views: the raw matrix (shared difficulty, size) and the matrix centred within size
    (the seed question). A component is described in words only if it beats a permutation
    null (parallel analysis) and spreads by at least `min_component_sd` nats; described seed
    components get leave-one-seed-out and bootstrap subspace angles."""
    import numpy as np

    from seedscope import compare, pca
    from seedscope.io import write_parquet
    from seedscope.losses import load_logprobs
    from seedscope.metrics import headline, write_metrics
    from seedscope.plots import register_figure, run_colors

    resolved = resolve_suite(suite)
    cfg = stage_config("loss_pca", loss_pca)
    out, _ = fresh_outputs("loss_pca")
    tokens, meta = load_eval_data()
    runs = resolved.run_names
    root = token_losses_root(resolved)
    final = load_logprobs(root, runs, resolved.final_step)
    labels, sizes = run_labels(resolved), run_sizes(resolved)
    seeds = {r.name: r.seed for r in resolved.suite.runs}
    test_args = {
        "n_permutations": cfg.n_permutations,
        "seed": cfg.seed,
        "alpha": cfg.alpha,
        "min_sd": cfg.min_component_sd,
    }
    matrix = pca.loss_matrix(final)
    k = min(cfg.n_components, len(runs))
    result = pca.fit_pca(matrix, n_components=k, seed=cfg.seed)
    variance = pca.explained_variance_ci(matrix, n_boot=cfg.n_boot, seed=cfg.seed, n_components=k)
    raw_tests = pca.seed_components(
        matrix, [list(range(len(runs)))], test_first_separately=True, **test_args
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
    write_parquet(out / "explained_variance.parquet", variance)
    write_parquet(out / "loadings.parquet", result.loadings.reset_index(names="component"))
    write_parquet(out / "predictors.parquet", predictors)
    write_parquet(out / "extremes.parquet", extremes)
    write_parquet(out / "raw_component_tests.parquet", raw_tests)
    # The seed view: losses centred within size, tested against runs exchangeable per token.
    seed_matrix = pca.loss_matrix_within_size(final, sizes)
    size_cols: dict[str, list[int]] = {}
    for j, run in enumerate(seed_matrix.runs):
        size_cols.setdefault(sizes[run], []).append(j)
    seed_tests = pca.seed_components(seed_matrix, list(size_cols.values()), **test_args)
    seed_tests["described"] = seed_tests["described"].cumprod().astype(bool)  # leading ones
    n_seed = int(seed_tests["described"].sum())
    seed_lines = pca.seed_component_lines(
        seed_tests, seed_matrix, labels, sizes, n_show=min(3, k), seeds=seeds
    )
    stability = pca.subspace_stability(
        seed_matrix, n_seed, seeds, sizes, final, n_boot=cfg.n_boot, seed=cfg.seed
    )
    write_parquet(out / "seed_component_tests.parquet", seed_tests)
    write_parquet(out / "seed_stability.parquet", stability)
    # The variant: tokens x (runs x checkpoints), mid and final, tested like the raw view.
    mid = load_logprobs(root, runs, resolved.mid_step)
    matrix_ckpt = pca.loss_matrix_checkpoints({resolved.mid_step: mid, resolved.final_step: final})
    result_ckpt = pca.fit_pca(
        matrix_ckpt, n_components=min(cfg.n_components, 2 * len(runs)), seed=cfg.seed
    )
    ckpt_tests = pca.seed_components(
        matrix_ckpt,
        [list(range(len(matrix_ckpt.labels)))],
        test_first_separately=True,
        **test_args,
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
    write_parquet(
        out / "loadings_checkpoints.parquet", result_ckpt.loadings.reset_index(names="component")
    )
    colors = run_colors(runs)
    figs = [
        register_figure(
            pca.scree_plot(result),
            "loss_pca",
            "scree",
            "Variance of per-token loss explained by each component",
            "seedscope.pca.scree_plot",
        ),
        register_figure(
            pca.loadings_plot(result, min(3, k), colors, labels),
            "loss_pca",
            "loadings",
            "Loadings of the top components on each run",
            "seedscope.pca.loadings_plot",
            key=True,
        ),
        register_figure(
            pca.score_distribution_plot(result, meta, predictors, "PC1"),
            "loss_pca",
            "pc1_by_predictor",
            "PC1 scores by their best predictor",
            "seedscope.pca.score_distribution_plot",
        ),
        register_figure(
            pca.loadings_plot(result_ckpt, min(3, k), colors, labels),
            "loss_pca",
            "loadings_checkpoints",
            "Loadings over runs x (mid, final) checkpoints",
            "seedscope.pca.loadings_plot",
        ),
    ]
    if k >= 2:
        figs.append(
            register_figure(
                pca.score_distribution_plot(result, meta, predictors, "PC2"),
                "loss_pca",
                "pc2_by_predictor",
                "PC2 scores by their best predictor",
                "seedscope.pca.score_distribution_plot",
            )
        )
    if n_seed:
        seed_result = pca.fit_pca(seed_matrix, n_components=n_seed, seed=cfg.seed)
        figs.append(
            register_figure(
                pca.loadings_plot(seed_result, n_seed, colors, labels),
                "loss_pca",
                "seed_loadings",
                "Loadings of the seed components (losses centred within size)",
                "seedscope.pca.loadings_plot",
            )
        )
    heads = {}
    for _, row in variance.head(3).iterrows():
        heads[f"{row['component'].lower()}_variance"] = headline(
            row["ratio"],
            f"fraction of per-token loss variance explained by {row['component']} (raw view)",
            (row["ci_low"], row["ci_high"]),
        )
    heads["seed_variance_share"] = headline(
        pca.seed_variance_share(matrix, seed_matrix, sizes),
        "share of per-token loss variance between seeds of one size (within-size centred, "
        "times n/(n-1) for the n seeds of a size)",
    )
    heads["n_seed_components"] = headline(
        n_seed,
        f"seed components beyond noise (parallel analysis, {cfg.n_permutations} permutations, "
        f"alpha {cfg.alpha}; sd >= {cfg.min_component_sd} nats)",
    )
    metrics = write_metrics(
        "loss_pca",
        heads,
        details={
            "components": descriptions,
            "seed_components": seed_lines,
            "components_checkpoints": descriptions_ckpt,
            "seed_component_tests": json_records(seed_tests),
            "raw_component_tests": json_records(raw_tests),
            "seed_stability": json_records(
                stability.groupby("kind")["angle_deg"]
                .agg(["median", "max", lambda a: float(np.percentile(a, 95))])
                .set_axis(["median_deg", "max_deg", "p95_deg"], axis=1)
                .reset_index()
                if len(stability)
                else None
            ),
        },
        provenance=stage_provenance(
            "loss_pca", resolved, [resolved.mid_step, resolved.final_step], cfg
        ),
    )
    return {
        "result": result,
        "variance": variance,
        "predictors": predictors,
        "descriptions": descriptions,
        "raw_tests": raw_tests,
        "seed_tests": seed_tests,
        "seed_descriptions": seed_lines,
        "n_seed_components": n_seed,
        "stability": stability,
        "descriptions_checkpoints": descriptions_ckpt,
        "extremes": extremes,
        "figures": figs,
        "metrics": metrics,
    }


def pca_sentence(res: dict[str, Any]) -> str:
    """The seed finding of analysis 3 in words, from the tests (never typed)."""
    n = res["n_seed_components"]
    share = res["metrics"]["headline"]["seed_variance_share"]["value"] or 0.0
    lead = f"Between seeds of one size lies {share:.2%} of the per-token loss variance. "
    if n == 0:
        return lead + (
            "No component of it stands out from noise (parallel analysis against runs "
            "exchangeable per token): no structure beyond noise among the seeds."
        )
    stab = res["stability"]
    text = (
        lead
        + f"{n} seed component(s) beat the permutation null: "
        + "; ".join(res["seed_descriptions"][:n])
    )
    if len(stab):
        parts = [
            f"{kind} largest angle median {grp.median():.0f}°, max {grp.max():.0f}°"
            for kind, grp in stab.groupby("kind")["angle_deg"]
        ]
        text += ". Stability of that subspace: " + "; ".join(parts)
    return text + "."


# ----------------------------------------------------------------------------- analysis 4


AUTO_STEPS = 24  # checkpoints `steps: auto` picks from a suite's schedule


def auto_steps(schedule: Any, final: int, mid: int, n: int = AUTO_STEPS) -> list[int]:
    """A spread of `n` steps of `schedule` up to `final`: the first, `mid` and `final`, and
    the rest as near as the schedule allows to steps evenly spaced on the log-step axis
    (where learning curves change): the densest such spread of at most `n` steps. The whole
    schedule when it holds `n` steps or fewer.

    >>> auto_steps(range(0, 1001, 10), final=1000, mid=500, n=6)
    [0, 10, 50, 220, 500, 1000]
    """
    import numpy as np

    pool = sorted(int(s) for s in schedule if int(s) <= final)
    if len(pool) <= n:
        return pool
    fixed = {pool[0], mid, final}
    positive = np.asarray([s for s in pool if s > 0], dtype=float)
    best = sorted(fixed)
    for k in range(2, 4 * len(pool)):
        targets = np.log(np.geomspace(positive[0], final, k))
        near = np.abs(np.log(positive)[:, None] - targets[None, :]).argmin(0)
        spread = fixed | {int(positive[i]) for i in near}
        if len(spread) > n:
            break
        best = sorted(spread)
    return best


def resolve_steps(resolved: ResolvedSuite, steps: Any) -> list[int]:
    """A stage's `steps` against the suite's own schedule -> sorted schedule steps.

    'all' (every checkpoint), 'auto' (a spread of `AUTO_STEPS` of them, see `auto_steps`),
    or a list mixing 'first', 'mid', 'final', 'auto' and schedule integers. Steps past
    the resolved final step are never picked by 'all'/'auto'."""
    schedule = resolved.suite.steps
    if steps == "all":
        return [s for s in schedule if s <= resolved.final_step]
    values = steps if isinstance(steps, list | tuple) else [steps]
    named = {"first": schedule[0], "mid": resolved.mid_step, "final": resolved.final_step}
    out: set[int] = set()
    for value in values:
        if value == "auto":
            out.update(auto_steps(schedule, resolved.final_step, resolved.mid_step))
        elif value == "all":
            out.update(s for s in schedule if s <= resolved.final_step)
        elif isinstance(value, str) and value in named:
            out.add(named[value])
        elif isinstance(value, str) and value.isdigit():
            out.add(resolved.suite.check_step(int(value)))
        else:
            out.add(resolved.suite.check_step(value))
    return sorted(out)


def behaviour_probe(resolved: ResolvedSuite, cfg: Any):  # type: ignore[no-untyped-def]
    """The behaviour battery as a sweep probe (`behaviours.BehaviourProbe`) at the stage's
    steps: stage `token_losses` measures it, stage `behaviours` reads its tables."""
    from seedscope import behaviours as bh
    from seedscope.paths import corpus_dir

    steps = [resolved.suite.check_step(s) for s in resolve_steps(resolved, cfg.steps)]
    truth = read_json(corpus_dir() / "ground_truth.json") if cfg.source == "planted" else None
    items = bh.probes_for(cfg.source, cfg.n_per_behaviour, cfg.seed, truth, cfg.behaviour_names)
    lexicons, letters = bh.language_lexicons(cfg.source, truth)
    return bh.BehaviourProbe(
        tuple(items), str(corpus_dir() / "tokenizer"), lexicons, letters, cfg.scoring,
        cfg.batch_size, frozenset(steps), cfg.threads,
    )  # fmt: skip


def induction_probe(resolved: ResolvedSuite, cfg: Any):  # type: ignore[no-untyped-def]
    """Analysis 6's per-checkpoint measurements as a sweep probe (`induction.InductionProbe`)
    at the stage's steps: stage `token_losses` measures it, stage `induction` reads it."""
    import numpy as np

    from seedscope import induction as ind
    from seedscope.paths import corpus_dir

    steps = [resolved.suite.check_step(s) for s in resolve_steps(resolved, cfg.steps)]
    tokens, _ = load_eval_data()
    return ind.InductionProbe(
        str(corpus_dir() / "tokenizer"), _probe_counts(), cfg.probe_min_count, cfg.n_seqs,
        cfg.half_len, cfg.seed, cfg.batch_size, np.asarray(tokens[: cfg.icl_windows]),
        tuple(cfg.icl_early), tuple(cfg.icl_late), frozenset(steps), cfg.threads,
    )  # fmt: skip


def behaviours_stage(suite: dict[str, Any], behaviours: dict[str, Any]):
    """Stage `behaviours` (analysis 4): the battery over every run x checkpoint."""
    import numpy as np

    from seedscope import behaviours as bh
    from seedscope.io import write_parquet
    from seedscope.metrics import headline, write_metrics
    from seedscope.plots import register_figure
    from seedscope.sweep import read_probe_tables

    resolved = resolve_suite(suite)
    cfg = stage_config("behaviours", behaviours)
    probe = behaviour_probe(resolved, cfg)
    steps = sorted(probe.steps)
    out, _ = fresh_outputs("behaviours")
    items = probe.items
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
    # measured by stage token_losses while each checkpoint was loaded (one fetch each)
    root, names, digest = token_losses_root(resolved), resolved.run_names, probe.digest()
    scores = read_probe_tables(root, probe.name, "scores", names, steps, digest)
    first = read_probe_tables(root, probe.name, "dropped", names[:1], steps[:1], digest)
    dropped = {str(r.behaviour): int(r.n_dropped) for r in next(iter(first.values())).itertuples()}
    item_scores = pd.concat(
        [frame.assign(run=run, step=step) for (run, step), frame in scores.items()],
        ignore_index=True,
    )
    write_parquet(out / "item_scores.parquet", item_scores)
    table = bh.behaviour_table(
        scores, suite=resolved.suite, n_boot=cfg.n_boot, seed=cfg.seed, groups=True
    )
    write_parquet(out / "behaviour_table.parquet", table)
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
    write_parquet(out / "emergence.parquet", emergence)
    write_parquet(out / "emergence_summary.parquet", spread)
    write_parquet(out / "seed_spread_mid_vs_final.parquet", mid_final)
    write_parquet(out / "final_scores.parquet", pd.concat([final, final_accuracy]))
    write_parquet(out / "scoring_comparison.parquet", scoring)
    figs = [
        register_figure(
            bh.plot_emergence(emergence, resolved.run_names),
            "behaviours",
            "emergence",
            "Emergence step of each behaviour in each run",
            "seedscope.behaviours.plot_emergence",
            key=True,
        ),
        register_figure(
            bh.plot_size_comparison(table, "score"),
            "behaviours",
            "size_comparison",
            "Chance-normalised behaviour score over training by model size",
            "seedscope.behaviours.plot_size_comparison",
        ),
    ]
    for name in cfg.behaviour_names:
        figs.append(
            register_figure(
                bh.plot_behaviour_heatmap(table, name, "score", run_order=resolved.run_names),
                "behaviours",
                f"heatmap_{name}",
                f"{name}: chance-normalised score per run and checkpoint",
                "seedscope.behaviours.plot_behaviour_heatmap",
            )
        )
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
    metrics = write_metrics(
        "behaviours",
        heads,
        details={
            "probes_dropped_longer_than_context": dropped,
            "score_threshold": cfg.score_threshold,
            "headline_scoring": cfg.scoring,
            "emergence": json_records(emergence),
            "emergence_summary": json_records(spread),
            "final_scores": json_records(final),
            "mid_vs_final": json_records(mid_final),
        },
        provenance=stage_provenance("behaviours", resolved, steps, cfg),
    )
    return {
        "dropped": dropped,
        "items": items,
        "table": table,
        "emergence": emergence,
        "spread": spread,
        "final": pd.concat([final, final_accuracy], ignore_index=True),
        "final_summary": final_summary,
        "scoring": scoring,
        "sentences": {
            "emergence": bh.emergence_sentence(
                spread,
                cfg.score_threshold,
                item_scores.groupby("behaviour")["n_options"]
                .agg(lambda k: int(k.mode().iloc[0]))
                .to_dict(),  # a mapping: `if n_options` on a Series is ambiguous
            ),
            "mid_vs_final": bh.mid_final_sentence(mid_final),
            "scoring": bh.scoring_sentence(scoring, cfg.scoring),
            "final": bh.final_sentence(final, final_summary),
        },
        "mid_vs_final": mid_final,
        "figures": figs,
        "metrics": metrics,
    }


# ----------------------------------------------------------------------------- analysis 5


def trajectory_losses(resolved: ResolvedSuite, min_step: int = 1):
    """Losses `[n_runs, n_subset, n_steps]` on the trajectory subset and the steps. Steps
    below `min_step` are dropped: at initialisation every token's loss is ~log(vocab), which
    would make every curve start with the same drop."""
    import numpy as np

    from seedscope.losses import load_trajectories

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

    from seedscope.compare import seed_divergence
    from seedscope.losses import load_logprobs

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


def trajectories_stage(suite: dict[str, Any], trajectories: dict[str, Any]):
    """Stage `trajectories` (analysis 5): shapes of per-token loss curves, path dependence."""
    import numpy as np

    from seedscope import trajectories as tj
    from seedscope.io import write_parquet
    from seedscope.metrics import headline, write_metrics
    from seedscope.plots import register_figure

    resolved = resolve_suite(suite)
    cfg = stage_config("trajectories", trajectories)
    out, _ = fresh_outputs("trajectories")
    losses, steps = trajectory_losses(resolved)
    selection = select_trajectory_tokens(resolved, cfg.n_divergent, cfg.n_random, cfg.seed)
    write_parquet(out / "selection.parquet", selection)
    runs = resolved.run_names
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
    noise_by_set = pd.DataFrame(
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
    write_parquet(out / "noise_by_set.parquet", noise_by_set)
    selection["matched"] = np.isin(np.arange(len(selection)), matched_idx)
    write_parquet(out / "selection.parquet", selection)
    classes = pd.concat(
        [
            divergent.assign(set="divergent"),
            baseline.assign(set="random"),
            matched.assign(set="matched"),
        ],
        ignore_index=True,
    )
    write_parquet(out / "classes.parquet", classes)
    confusion_all, validation = tj.validate_at_real_noise(
        losses[:, rand_idx],
        steps,
        n_per_class=cfg.n_synthetic,
        quantiles=cfg.noise_quantiles,
        block=cfg.block,
        seed=cfg.seed,
        autocorrelation=rho,
    )
    write_parquet(out / "confusion.parquet", confusion_all)
    write_parquet(out / "validation.parquet", validation)
    mid_q = validation.iloc[int(np.argmin(np.abs(validation["quantile"] - 0.5)))]
    confusion = (
        confusion_all[confusion_all["quantile"] == mid_q["quantile"]]
        .set_index("true_class")[list(tj.CLASSES)]
        .rename_axis("true")
    )
    noise = float(mid_q["noise_sd"])
    accuracy = float(mid_q["accuracy"])
    path = tj.s_shaped_fraction_difference(divergent, baseline, n_boot=cfg.n_boot, seed=cfg.seed)
    path_matched = tj.s_shaped_fraction_difference(
        divergent, matched, n_boot=cfg.n_boot, seed=cfg.seed, paired=True
    )
    path = pd.concat(
        [path.assign(baseline="random"), path_matched.assign(baseline="matched")],
        ignore_index=True,
    )
    write_parquet(out / "path_dependence.parquet", path)
    # each token's spread is tested against its own fit error (its mean curve + its own
    # block-resampled residuals, refitted), not the random tokens' pooled error
    recovery = tj.token_recovery_sd(
        losses[:, div_idx],
        steps,
        divergent,
        divergent.attrs["autocorrelation"],
        n_refits=cfg.n_refits,
        block=cfg.block,
        seed=cfg.seed,
    )
    spread, spread_test = tj.seed_spread_test(tj.transition_spread(divergent), recovery, cfg.alpha)
    write_parquet(out / "transition_spread.parquet", spread)
    fractions = classes.groupby(["set", "class"]).size() / classes.groupby("set").size()
    fractions = fractions.rename("fraction").reset_index()
    write_parquet(out / "class_fractions.parquet", fractions)
    labels = run_labels(resolved)
    figs = [
        register_figure(
            tj.plot_class_examples(losses[:, div_idx], steps, divergent, runs, labels, cfg.seed),
            "trajectories",
            "class_examples",
            "Example loss trajectories of each shape, all seeds",
            "seedscope.trajectories.plot_class_examples",
            key=True,
        ),
        register_figure(
            tj.plot_transition_steps(
                classes[classes["class"] == "s_shaped"], run_order=runs, labels=labels
            ),
            "trajectories",
            "transition_steps",
            "When S-shaped tokens make their transition",
            "seedscope.trajectories.plot_transition_steps",
        ),
        register_figure(
            tj.plot_confusion(confusion, noise),
            "trajectories",
            "confusion",
            "Validation of the shape classifier on synthetic curves",
            "seedscope.trajectories.plot_confusion",
        ),
    ]
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
    metrics = write_metrics(
        "trajectories",
        heads,
        details={
            "class_fractions": fractions.to_dict("records"),
            "noise_sd": noise,
            "validation": validation.to_dict("records"),
            "path_dependence": path.to_dict("records"),
            "transition_spread_test": spread_test,
            "noise_by_set": noise_by_set.to_dict("records"),
        },
        provenance=stage_provenance("trajectories", resolved, [int(s) for s in steps], cfg),
    )
    return {
        "classes": classes,
        "confusion": confusion,
        "validation": validation,
        "spread_test": spread_test,
        "noise_by_set": noise_by_set,
        "config": cfg,
        "autocorrelation": rho,
        "accuracy": accuracy,
        "noise": noise,
        "path": path,
        "spread": spread,
        "fractions": fractions,
        "figures": figs,
        "metrics": metrics,
        "steps": steps,
    }


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


# ----------------------------------------------------------------------------- corpus


def corpus_stage(corpus: dict[str, Any]) -> dict[str, Any]:
    """Stage `corpus`: build the eval (and, for the mini-suite, train) tokens and metadata."""
    from seedscope.corpus import build_corpus
    from seedscope.metrics import headline, write_metrics
    from seedscope.paths import corpus_dir

    cfg = stage_config("corpus", corpus)
    stats = build_corpus(cfg, corpus_dir())
    _, meta = load_eval_data()
    heads = {
        "n_train_tokens": headline(stats["train"]["n_tokens"], "train tokens"),
        "n_eval_tokens": headline(len(meta), "eval tokens (windows x window length)"),
    }
    metrics = write_metrics(
        "corpus",
        heads,
        details={"stats": stats},
        provenance=provenance(stage="corpus", params_hash=params_hash(cfg)),
    )
    return {"stats": stats, "meta": meta, "metrics": metrics, "config": cfg}


def tag_summary(meta: pd.DataFrame) -> pd.DataFrame:
    """Eval tokens per phenomenon tag and language, with their share."""
    keys = [c for c in ("tag", "language") if c in meta.columns]
    table = meta.groupby(keys, dropna=False).size().rename("tokens").reset_index()
    table["share"] = table["tokens"] / table["tokens"].sum()
    return table.sort_values("tokens", ascending=False, ignore_index=True)


def sample_window_text(meta: pd.DataFrame, window: int = 0, width: int = 128) -> pd.DataFrame:
    """One eval window as a table of tokens with their tags (to eyeball the planted data)."""
    cols = [
        c
        for c in (
            "pos",
            "token",
            "token_class",
            "tag",
            "role",
            "language",
            "bracket_depth",
            "seen_before",
            "second_copy",
        )
        if c in meta.columns
    ]
    return meta.loc[meta["window"] == window, cols].head(width).reset_index(drop=True)


# ----------------------------------------------------------------------------- analysis 6


def training_curve(resolved: ResolvedSuite, run: str, steps: list[int]):
    """A run's training loss at the checkpoint steps >= 1, estimated without a shift
    (`induction.centred_training_loss`: a local linear fit centred on each step): the
    curve whose non-convex bump Olsson et al. relate to the induction phase change.
    Returns (steps, loss)."""
    import numpy as np

    from seedscope import induction as ind

    log = training_log(resolved, run)
    if log is None:  # a hub suite that publishes no training log (e.g. Pythia)
        return np.asarray([], dtype=int), np.asarray([], dtype=float)
    at = [s for s in steps if s >= 1]
    return ind.centred_training_loss(log["step"].to_numpy(), log["loss"].to_numpy(), at)


def _probe_counts():  # type: ignore[no-untyped-def]
    """Training token counts from the corpus stage, or None (hub suites with no counts)."""
    import numpy as np

    from seedscope.paths import corpus_dir

    path = corpus_dir() / "train_token_counts.npy"
    return np.load(path) if path.exists() else None


def induction_stage(suite: dict[str, Any], induction: dict[str, Any]):
    """Stage `induction` (analysis 6): head scores over training and the phase change."""
    import numpy as np

    from seedscope import induction as ind
    from seedscope.io import atomic_path, write_parquet
    from seedscope.metrics import headline, write_metrics
    from seedscope.paths import metrics_dir
    from seedscope.plots import register_figure
    from seedscope.stats import t_interval
    from seedscope.sweep import read_probe_tables

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
    write_parquet(out / "head_scores.parquet", head_table)
    write_parquet(out / "curves.parquet", curves)
    sizes = run_sizes(resolved)
    changes, lag_rows = [], []
    nan = float("nan")
    for run in resolved.run_names:
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
        curve_steps, loss = training_curve(resolved, run, steps)
        has_log = len(curve_steps) >= 5  # the bump needs a logged loss at >= 5 checkpoints
        bump = ind.training_loss_bump(curve_steps, loss) if has_log else None
        final = curves[(curves["run"] == run) & (curves["step"] == steps[-1])].iloc[0]
        formed = bool(
            final["induction"] >= cfg.formed_score
            and final["copy_loss_ratio"] <= cfg.formed_copy_ratio
        )
        ind_step = jump.midpoint if formed and jump.detected else nan
        icl_step = icl_jump.midpoint if icl_jump.detected else nan
        bump_step = bump["steepest"] if bump else nan
        for other, value, boot in (("icl", icl_step, icl_boot), ("bump", bump_step, None)):
            lag = (
                ind.signed_lags(ind_step, value, ind_boot, boot)
                if np.isfinite(ind_step) and np.isfinite(value)
                else {"lag": nan, "ci_low": nan, "ci_high": nan}
            )
            # the training-loss bump has no bootstrap: its side is held fixed, so the CI
            # covers only the induction (and, for the ICL jump, the ICL) midpoint's error
            scope = "induction side only" if other == "bump" else "both sides"
            lag_rows.append(
                {"run": run, "size": sizes[run], "versus": other, **lag, "ci_covers": scope}
            )
        changes.append(
            {
                "run": run,
                "size": sizes[run],
                "seed": resolved.suite.run(run).seed,
                "step": jump.step if formed and jump.detected else np.nan,
                "midpoint": ind_step,
                "fitted_step": jump.midpoint,
                "ci_low": jump.ci_low,
                "ci_high": jump.ci_high,
                "onset": jump.onset,
                "end": jump.end,
                "r2": jump.r2,
                "amplitude": jump.amplitude,
                "jump_detected": jump.detected,
                "no_jump_reason": jump.reason,
                "icl_step": icl_step,
                "icl_detected": icl_jump.detected,
                "icl_no_jump_reason": icl_jump.reason,
                "bump_step": bump_step,
                "training_log": has_log,
                "bump_start": bump["start"] if bump else np.nan,
                "bump_end": bump["end"] if bump else np.nan,
                "formed": formed,
                "final_induction": float(final["induction"]),
                "final_tl_induction": float(final["tl_induction"]),
                "final_copy_loss_ratio": float(final["copy_loss_ratio"]),
                "final_induction_all_ids": all_ids[run][0],
                "final_copy_loss_ratio_all_ids": all_ids[run][1],
                "n_checkpoints_in_change": int(
                    np.sum((np.asarray(steps) >= jump.onset) & (np.asarray(steps) <= jump.end))
                ),
            }
        )
    change_table = pd.DataFrame(changes)
    write_parquet(out / "phase_changes.parquet", change_table)
    lags = pd.DataFrame(lag_rows)
    write_parquet(out / "lags.parquet", lags)
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
    write_parquet(out / "phase_change_summary.parquet", summary)
    size_list = resolved.suite.sizes()
    comparison = None
    if len(size_list) >= 2 and formed["size"].nunique() >= 2:
        comparison = ind.compare_sizes(formed, a=size_list[0], b=size_list[-1], value="midpoint")
    with atomic_path(metrics_dir() / "plots" / "induction_score.csv") as tmp:
        curves.groupby("step", as_index=False)["induction"].mean().rename(
            columns={"induction": "induction_score"}
        ).to_csv(tmp, index=False, float_format="%.6g")
    labels = run_labels(resolved)
    detected = {r["run"]: r["step"] for r in changes if np.isfinite(r["step"])}
    figs = [
        register_figure(
            ind.plot_induction_over_training(curves, detected, labels, resolved.run_names),
            "induction",
            "induction_over_training",
            "Best-head induction score over training, phase changes marked",
            "seedscope.induction.plot_induction_over_training",
            key=True,
        )
    ]
    figs.append(
        register_figure(
            ind.plot_induction_over_training(
                curves,
                None,
                labels,
                resolved.run_names,
                value="copy_loss_ratio",
                title="Second-copy / first-copy loss over training",
            ),
            "induction",
            "copy_loss_ratio",
            "Loss on the second copy of a repeated random sequence relative to the first",
            "seedscope.induction.plot_induction_over_training",
        )
    )
    figs.append(
        register_figure(
            ind.plot_induction_over_training(
                curves,
                None,
                labels,
                resolved.run_names,
                value="icl",
                title="In-context-learning score over training",
            ),
            "induction",
            "icl_over_training",
            "In-context-learning score (late minus early token loss) over training",
            "seedscope.induction.plot_induction_over_training",
        )
    )
    for run in resolved.run_names:
        figs.append(
            register_figure(
                ind.plot_head_heatmap(
                    head_table[head_table["run"] == run],
                    "induction",
                    f"Induction score per head: {labels[run]}",
                ),
                "induction",
                f"heads_{run}",
                f"Induction score of every head over training, {labels[run]}",
                "seedscope.induction.plot_head_heatmap",
            )
        )
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
    for size in size_list:
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
    for other, res in coincidence.items():
        if np.isfinite(res["p_value"]):
            heads_metrics[f"coincidence_{other}_p"] = headline(
                res["p_value"],
                f"permutation p: induction and {other} steps closer in the same run than in "
                "mismatched seeds of the same size",
            )
            heads_metrics[f"lag_{other}_matched"] = headline(
                res["matched"], f"mean |log-step lag| induction vs {other}, same run"
            )
    metrics = write_metrics(
        "induction",
        heads_metrics,
        details={
            "phase_changes": change_table.to_dict("records"),
            "size_comparison": comparison,
            "lags": lags.to_dict("records"),
            "coincidence": coincidence,
            "icl_bands": [list(b) for b in bands],
            "probe": {
                "min_count": cfg.probe_min_count,
                "n_ids": int(info["n_ids"]),
                "accidental_repeats": float(info["accidental_repeats"]),
            },
        },
        provenance=stage_provenance("induction", resolved, steps, cfg),
    )
    return {
        "curves": curves,
        "heads": head_table,
        "changes": change_table,
        "summary": summary,
        "comparison": comparison,
        "lags": lags,
        "coincidence": coincidence,
        "icl_bands": bands,
        "config": cfg,
        "figures": figs,
        "metrics": metrics,
    }


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


# ----------------------------------------------------------------------------- report


def report_stage(suite: dict[str, Any], report: dict[str, Any]):
    """Stage `report`: reports/index.html from every stage's metrics and figures."""
    from seedscope.report import build_report

    resolve_suite(suite)
    cfg = stage_config("report", report)
    manifest = read_manifest()
    return build_report(manifest, cfg.title, provenance(stage="report"))


# ----------------------------------------------------------------------------- training


def train_stage(suite: dict[str, Any], corpus: dict[str, Any], train: dict[str, Any]):
    """Stage `train`: the mini-suite, written as a hub cache under results/hub."""
    import numpy as np

    from seedscope import train as tr
    from seedscope.io import atomic_path
    from seedscope.metrics import headline, write_metrics
    from seedscope.paths import corpus_dir, metrics_dir, mini_hub_cache
    from seedscope.plots import plot_curves, register_figure
    from seedscope.train import TrainConfig

    resolved = resolve_suite(suite)
    stage_config("corpus", corpus)
    cfg = from_section(TrainConfig, train, "train")
    if resolved.suite.local_cache is None:
        return pretrained_train_stage(resolved, cfg)
    log_dir = results_dir() / "train"
    summary = tr.train_suite(resolved.suite, corpus_dir(), mini_hub_cache(), cfg, log_dir)
    train_tokens = np.load(corpus_dir() / "train_tokens.npy", mmap_mode="r")
    eval_tokens = np.load(corpus_dir() / "eval_tokens.npy", mmap_mode="r")
    unigram = tr.unigram_loss(train_tokens, eval_tokens)
    curves = []
    for run in resolved.suite.runs:
        log = pd.read_parquet(training_log_path(resolved, run.name))
        curves.append(log.assign(run=run.name))
    curves = pd.concat(curves, ignore_index=True)
    plot_dir = metrics_dir() / "plots" / "train_loss"
    for run, part in curves.groupby("run", sort=False):
        smooth = part.set_index("step")["loss"].rolling(25, min_periods=1).mean()
        with atomic_path(plot_dir / f"{run}.csv") as tmp:
            smooth.iloc[::10].rename("loss").reset_index().to_csv(
                tmp, index=False, float_format="%.5g"
            )
    labels = run_labels(resolved)
    fig = register_figure(
        plot_curves(
            curves,
            "step",
            "loss",
            labels,
            resolved.run_names,
            smooth=25,
            title="Training loss per run",
            ylabel="train loss (nats/token)",
            hline=(unigram, "unigram baseline"),
        ),
        "train",
        "training_loss",
        "Training loss of every run (smoothed over 25 steps)",
        "seedscope.plots.plot_curves",
        key=True,
    )
    heads = {
        "unigram_loss": headline(unigram, "unigram baseline loss on the eval tokens", unit="nats")
    }
    for size, part in summary.groupby("size", sort=False):
        heads[f"eval_loss_{size}"] = headline(
            part["final_eval_loss"].mean(),
            f"final eval loss, {size} (mean over seeds; "
            f"range {part['final_eval_loss'].min():.3f}–{part['final_eval_loss'].max():.3f})",
            unit="nats",
        )
    metrics = write_metrics(
        "train",
        heads,
        details={
            "runs": summary.drop(columns=list(tr.VOLATILE_SUMMARY_KEYS), errors="ignore").to_dict(
                "records"
            )
        },
        provenance=stage_provenance("train", resolved, list(resolved.suite.steps), cfg),
    )
    return {
        "summary": summary,
        "unigram": unigram,
        "curves": curves,
        "figure": fig,
        "metrics": metrics,
        "probes": checkpoint_probes(resolved)
        .pivot_table(index="step", columns="run", values="induction_score")
        .round(3),
    }


def training_log_path(resolved: ResolvedSuite, run: str):  # type: ignore[no-untyped-def]
    """Where stage `train` keeps a run's training loss (`step`, `loss` per logged step)."""
    from seedscope.train import loss_log_path

    return loss_log_path(results_dir() / "train", resolved.suite.run(run))


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


def pretrained_train_stage(resolved: ResolvedSuite, cfg: Any) -> dict[str, Any]:
    """Stage `train` for a hub suite: nothing is trained (the runs are pre-trained); each
    run's training loss is read from its final checkpoint's `trainer_state.json` where the
    suite publishes one, and written where the mini-suite's trainer writes its log, so that
    every later stage reads one format."""
    import shutil

    import numpy as np

    from seedscope.checkpoints import fetch_trainer_state, loss_history
    from seedscope.io import atomic_path, write_parquet
    from seedscope.metrics import headline, write_metrics
    from seedscope.paths import metrics_dir, mini_hub_cache
    from seedscope.plots import plot_curves, register_figure

    fresh_outputs("train")
    # results/hub is a declared output (the mini-suite's cache): here it only says where
    # the checkpoints are
    with atomic_path(mini_hub_cache() / "README.md") as tmp:
        tmp.write_text(
            f"{resolved.suite.name} is a hub suite: its checkpoints are read from the "
            "Hugging Face hub cache (HF_HUB_CACHE / HF_HOME), not from this folder.\n"
        )
    plot_dir = metrics_dir() / "plots" / "train_loss"
    shutil.rmtree(plot_dir, ignore_errors=True)
    plot_dir.mkdir(parents=True, exist_ok=True)
    curves, missing = [], []
    for run in resolved.suite.runs:
        rows = loss_history(fetch_trainer_state(resolved.suite, run, resolved.final_step))
        log = pd.DataFrame(rows, columns=["step", "loss"])
        if log.empty:
            missing.append(run.name)
        else:
            write_parquet(training_log_path(resolved, run.name), log)
            curves.append(log.assign(run=run.name))
        # one file per run even without a log: dvc.yaml declares the folder as plot data
        with atomic_path(plot_dir / f"{run.name}.csv") as tmp:
            log.to_csv(tmp, index=False, float_format="%.5g")
    found = len(resolved.suite.runs) - len(missing)
    note = (
        f"{resolved.suite.name} is a pre-trained hub suite: nothing is trained here; its "
        f"checkpoints are read from the hub cache. Training loss: read from the final "
        f"checkpoint's trainer_state.json (log_history) for {found} of "
        f"{len(resolved.suite.runs)} runs"
        + (
            f"; the suite publishes no training log with its checkpoints for "
            f"{', '.join(missing)}, so analyses that need one (the induction stage's "
            "training-loss bump) say so."
            if missing
            else "."
        )
    )
    heads = {
        "n_runs_with_training_log": headline(found, "runs whose checkpoints carry a training log")
    }
    figure = None
    if curves:
        frame = pd.concat(curves, ignore_index=True)
        labels = run_labels(resolved)
        figure = register_figure(
            plot_curves(
                frame,
                "step",
                "loss",
                labels,
                resolved.run_names,  # runs without a log keep their colour slot
                smooth=1,
                title="Training loss per run (from trainer_state.json)",
                ylabel="train loss (nats/token)",
            ),
            "train",
            "training_loss",
            "Training loss of every run, as logged by its trainer",
            "seedscope.plots.plot_curves",
            key=True,
        )
        sizes = run_sizes(resolved)
        last = frame.sort_values("step").groupby("run").tail(1)
        for size in resolved.suite.sizes():
            part = last[last["run"].map(sizes) == size]["loss"]
            if len(part):
                heads[f"final_train_loss_{size}"] = headline(
                    float(np.mean(part)),
                    f"last logged training loss, {size} (mean over {len(part)} seeds)",
                    unit="nats",
                )
    summary = pd.DataFrame(
        [
            {"run": r.name, "size": r.size, "seed": r.seed, "training_log": r.name not in missing}
            for r in resolved.suite.runs
        ]
    )
    metrics = write_metrics(
        "train",
        heads,
        details={"note": note, "runs": summary.to_dict("records")},
        provenance=stage_provenance("train", resolved, [resolved.final_step], cfg),
    )
    return {"summary": summary, "metrics": metrics, "figure": figure, "probes": None, "note": note}


def checkpoint_probes(resolved: ResolvedSuite) -> pd.DataFrame:
    """The trainer's per-checkpoint probes (eval loss, copy-loss ratio, induction score)."""
    from seedscope.hubcache import repo_slug

    frames = []
    for run in resolved.suite.runs:
        path = results_dir() / "train" / f"{repo_slug(run.repo_id)}.checkpoints.parquet"
        frames.append(pd.read_parquet(path).assign(run=run.name))
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- token losses


def trajectory_windows_index(n_windows: int, window: int, n_tokens: int, seed: int) -> Any:
    """Flat indices of every token after position 0 in a seeded sample of whole windows
    holding about `n_tokens` tokens: the subset evaluated at every checkpoint."""
    import numpy as np

    k = max(1, min(n_windows, -(-n_tokens // (window - 1))))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n_windows, size=k, replace=False))
    pos = np.arange(1, window)
    return (chosen[:, None] * window + pos[None, :]).ravel()


def clear_other_suites(resolved: ResolvedSuite) -> list[str]:
    """Delete what results/token_losses holds besides this suite's folder and the unit
    table (another suite's sweep, persisted from an earlier run); return what went."""
    import shutil

    from seedscope.paths import token_losses_dir

    root = token_losses_dir()
    keep = {resolved.suite.name, "units.parquet"}
    removed = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.name in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path.name)
    return removed


def token_losses_stage(
    suite: dict[str, Any],
    token_losses: dict[str, Any],
    behaviours: dict[str, Any] | None = None,
    induction: dict[str, Any] | None = None,
):  # type: ignore[no-untyped-def]
    """Stage `token_losses`: per-token log-probs of every run at the steps analyses need,
    and, in the same units (one fetch per checkpoint), the behaviour battery and the
    induction probe at their stages' steps."""
    import numpy as np

    from seedscope.io import write_parquet
    from seedscope.losses import load_logprobs
    from seedscope.metrics import headline, write_metrics
    from seedscope.paths import corpus_dir
    from seedscope.sweep import run_sweep

    resolved = resolve_suite(suite)
    cfg = stage_config("token_losses", token_losses)
    windows = np.load(corpus_dir() / "eval_tokens.npy", mmap_mode="r")
    index = trajectory_windows_index(
        windows.shape[0], windows.shape[1], cfg.trajectory_tokens, cfg.seed
    )
    steps = [
        s
        if s not in ("mid", "final")
        else {"mid": resolved.mid_step, "final": resolved.final_step}[s]
        for s in cfg.steps
    ]
    run_cfg = type(cfg)(**{**cfg.__dict__, "steps": tuple(steps)})
    # results/token_losses is a persisted DVC output (dvc.yaml `persist: true`): DVC leaves
    # it in place when it reruns the stage, so a killed sweep resumes inside `dvc repro`.
    # It stays what a fresh sweep would write: other suites' folders go, a folder made with
    # other settings (eval windows, trajectory subset, dtype) is emptied, units outside
    # this sweep are pruned, and a unit whose checkpoint's commit changed is recomputed.
    clear_other_suites(resolved)
    # the pipeline passes both sections; a caller may leave one out (None: not measured)
    probes = [
        make(resolved, stage_config(section, values))
        for make, section, values in (
            (behaviour_probe, "behaviours", behaviours),
            (induction_probe, "induction", induction),
        )
        if values is not None
    ]
    units = run_sweep(
        resolved.suite,
        windows,
        token_losses_root(resolved),
        run_cfg,
        trajectory_index=index,
        runs=resolved.run_names,
        restart=True,
        prune=True,
        probes=probes,
    )
    # what was computed now vs resumed stays out of the file: a resumed sweep writes the
    # same bytes as an uninterrupted one
    write_parquet(
        results_dir() / "token_losses" / "units.parquet",
        units[["run", "step", "kind"]],
    )
    means = []
    for step in (resolved.mid_step, resolved.final_step):
        lp = load_logprobs(token_losses_root(resolved), resolved.run_names, step)
        means += [
            {"run": r, "step": step, "mean_loss": float(-np.nanmean(v))} for r, v in lp.items()
        ]
    means = pd.DataFrame(means)
    heads = {}
    final = means[means["step"] == resolved.final_step]
    sizes = run_sizes(resolved)
    for size in resolved.suite.sizes():
        part = final[final["run"].map(sizes) == size]["mean_loss"]
        heads[f"final_loss_{size}"] = headline(
            part.mean(), f"mean eval loss at the final step, {size} (over seeds)", unit="nats"
        )
    heads["n_units"] = headline(len(units), "(run, step) units evaluated")
    heads["n_eval_tokens"] = headline(int(windows.size), "eval tokens per full unit")
    metrics = write_metrics(
        "token_losses",
        heads,
        details={"mean_loss": means.to_dict("records")},
        provenance=stage_provenance(
            "token_losses", resolved, [resolved.mid_step, resolved.final_step], cfg
        ),
    )
    return {"units": units, "means": means, "metrics": metrics}

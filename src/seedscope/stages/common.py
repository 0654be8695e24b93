"""What every stage's glue shares: the typed result a stage returns (`StageResult`), the
resolved suite, validated params sections, fresh output folders, run labels and sizes,
provenance, the eval tokens, step resolution, the probes the sweep measures, and
`register_figure` (a figure saved with the function that drew it).

The closure of code deps (`seedscope.pipeline.codedeps`) counts this module by function:
a stage depends only on the helpers it calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from seedscope.core.config import ResolvedSuite, SuiteConfig, from_section, params_hash
from seedscope.core.io import read_json
from seedscope.core.paths import results_dir
from seedscope.core.provenance import provenance
from seedscope.core.steps import resolve_steps


@dataclass(frozen=True, kw_only=True)
class StageResult:
    """What a stage function hands its notebook: its figures by name (`figures["scatter_grid_
    small_step608"]` -> the PNG `register_figure` saved) and its headline metrics (as written
    to metrics/<stage>.json). Each stage's result class adds its own typed tables and values
    (`AgreementResult`, `LossPcaResult`, ...), defined beside its stage function."""

    figures: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def resolve_suite(suite: dict[str, Any]) -> ResolvedSuite:
    """params `suite` section -> the resolved suite (raises on any bad value)."""
    return from_section(SuiteConfig, suite, "suite").resolve()


def stage_config(section: str, values: dict[str, Any] | None) -> Any:
    """A params section -> its validated config object (errors before any heavy work)."""
    from seedscope.pipeline.runner import config_class

    return from_section(config_class(section), values, section)


def fresh_outputs(stage: str) -> tuple[Any, Any]:
    """Empty results/<stage> and figures/<stage> (a stage rewrites all its outputs)."""
    import shutil

    from seedscope.core.paths import figures_dir

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

    from seedscope.core.paths import corpus_dir

    tokens = np.load(corpus_dir() / "eval_tokens.npy")
    meta = pd.read_parquet(corpus_dir() / "eval_meta.parquet")
    return tokens, meta


def token_losses_root(resolved: ResolvedSuite):  # type: ignore[no-untyped-def]
    from seedscope.core.paths import token_losses_dir

    return token_losses_dir() / resolved.suite.name


def corpus_decoder():  # type: ignore[no-untyped-def]
    """decode(token_ids) -> str with the suite's tokenizer (the corpus stage saved it)."""
    from transformers import AutoTokenizer

    from seedscope.core.paths import corpus_dir

    tokenizer = AutoTokenizer.from_pretrained(str(corpus_dir() / "tokenizer"))
    return lambda ids: tokenizer.decode(list(ids))


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


def behaviour_probe(resolved: ResolvedSuite, cfg: Any):  # type: ignore[no-untyped-def]
    """The behaviour battery as a sweep probe (`behaviours.BehaviourProbe`) at the stage's
    steps: stage `token_losses` measures it, stage `behaviours` reads its tables."""
    from seedscope.analyses import behaviours as bh
    from seedscope.core.paths import corpus_dir

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

    from seedscope.analyses import induction as ind
    from seedscope.core.paths import corpus_dir

    steps = [resolved.suite.check_step(s) for s in resolve_steps(resolved, cfg.steps)]
    tokens, _ = load_eval_data()
    return ind.InductionProbe(
        str(corpus_dir() / "tokenizer"), _probe_counts(), cfg.probe_min_count, cfg.n_seqs,
        cfg.half_len, cfg.seed, cfg.batch_size, np.asarray(tokens[: cfg.icl_windows]),
        tuple(cfg.icl_early), tuple(cfg.icl_late), frozenset(steps), cfg.threads,
    )  # fmt: skip


def _probe_counts():  # type: ignore[no-untyped-def]
    """Training token counts from the corpus stage, or None (hub suites with no counts)."""
    import numpy as np

    from seedscope.core.paths import corpus_dir

    path = corpus_dir() / "train_token_counts.npy"
    return np.load(path) if path.exists() else None


def training_log_path(resolved: ResolvedSuite, run: str):  # type: ignore[no-untyped-def]
    """Where stage `train` keeps a run's training loss (`step`, `loss` per logged step)."""
    from seedscope.models.train import loss_log_path

    return loss_log_path(results_dir() / "train", resolved.suite.run(run))


def register_figure(
    fig,  # type: ignore[no-untyped-def]
    stage: str,
    name: str,
    title: str,
    function: Callable[..., Any],
    key: bool = False,
) -> str:
    """Save `fig` as figures/<stage>/<name>.png and record where it came from.

    `figures/<stage>/index.json` maps each figure to its title, the package function that
    computed it (read from the function object, never typed by hand), the notebook and
    the stage: the report's "reproduce this figure" table.
    `key=True` marks the stage's headline figure (its thumbnail on the report page);
    `problems` lists what `figure_problems` finds missing (axis labels), empty when none;
    `smallest_text_pt` is the smallest text as the book shows it (`smallest_text_pt`).
    """
    import math

    import matplotlib.pyplot as plt

    from seedscope.core.io import read_json, write_json
    from seedscope.core.paths import figures_dir
    from seedscope.core.plots import figure_problems, save_figure, smallest_text_pt
    from seedscope.pipeline.registry import STAGES

    folder = figures_dir() / stage
    path = folder / f"{name}.png"
    if not fig.axes or not any(ax.get_title() or fig._suptitle for ax in fig.axes):
        fig.suptitle(title)
    problems = figure_problems(fig)
    text_pt = smallest_text_pt(fig)
    save_figure(fig, path)
    plt.close(fig)
    index_path = folder / "index.json"
    index = read_json(index_path) if index_path.exists() else {}
    index[name] = {
        "file": f"{name}.png",
        "title": title,
        "function": f"{function.__module__}.{function.__qualname__}",
        "stage": stage,
        "notebook": f"notebooks/{STAGES[stage].notebook}.ipynb",
        "key": key,
        "problems": problems,
        "smallest_text_pt": round(text_pt, 1) if math.isfinite(text_pt) else None,
    }
    write_json(index_path, index)
    return str(path)

"""Stage 0c · training: train the mini-suite (`seedscope.models.train`) or, for a hub suite,
read each run's training log; training-loss curves and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from seedscope.core.config import ResolvedSuite, from_section
from seedscope.core.paths import results_dir
from seedscope.stages.common import (
    StageResult,
    fresh_outputs,
    resolve_suite,
    run_labels,
    run_sizes,
    stage_config,
    stage_provenance,
    training_log_path,
)


@dataclass(frozen=True, kw_only=True)
class TrainResult(StageResult):
    """Stage 0c: the runs trained (mini-suite) or read (hub suite), their training-loss
    curves (figure `training_loss`, absent for a hub suite that publishes no log)."""

    summary: pd.DataFrame  # per run: size, seed, final eval loss (mini-suite) or log found
    unigram: float | None = None  # the unigram baseline loss (mini-suite)
    curves: pd.DataFrame | None = None  # per (run, step): training loss (mini-suite)
    probes: pd.DataFrame | None = None  # trainer's induction probe, step x run (mini-suite)
    note: str | None = None  # what was read instead of trained (hub suite)


def train_stage(
    suite: dict[str, Any], corpus: dict[str, Any], train: dict[str, Any]
) -> TrainResult:
    """Stage `train`: the mini-suite, written as a hub cache under results/hub."""
    from seedscope.models.train import TrainConfig

    resolved = resolve_suite(suite)
    stage_config("corpus", corpus)
    cfg = from_section(TrainConfig, train, "train")
    if resolved.suite.local_cache is None:
        return pretrained_train_stage(resolved, cfg)
    summary = _train_mini_suite(resolved, cfg)
    unigram = _unigram_baseline()
    curves = _read_training_curves(resolved)
    _save_smoothed_curves(curves)
    fig = _plot_training_loss(resolved, curves, unigram)
    metrics = _write_train_metrics(resolved, cfg, summary, unigram)
    return TrainResult(
        summary=summary,
        unigram=unigram,
        curves=curves,
        figures={"training_loss": fig},
        metrics=metrics,
        probes=checkpoint_probes(resolved)
        .pivot_table(index="step", columns="run", values="induction_score")
        .round(3),
    )


def _train_mini_suite(resolved: ResolvedSuite, cfg: Any) -> pd.DataFrame:
    """Train every run of the mini-suite into the hub cache; the per-run summary."""
    from seedscope.core.paths import corpus_dir, mini_hub_cache
    from seedscope.models import train as tr

    log_dir = results_dir() / "train"
    return tr.train_suite(resolved.suite, corpus_dir(), mini_hub_cache(), cfg, log_dir)


def _unigram_baseline() -> float:
    """Loss of an add-one unigram model of the training tokens on the eval tokens."""
    import numpy as np

    from seedscope.core.paths import corpus_dir
    from seedscope.models import train as tr

    train_tokens = np.load(corpus_dir() / "train_tokens.npy", mmap_mode="r")
    eval_tokens = np.load(corpus_dir() / "eval_tokens.npy", mmap_mode="r")
    return tr.unigram_loss(train_tokens, eval_tokens)


def _read_training_curves(resolved: ResolvedSuite) -> pd.DataFrame:
    """Every run's training log (`step`, `loss`), stacked with a `run` column."""
    curves = []
    for run in resolved.suite.runs:
        log = pd.read_parquet(training_log_path(resolved, run.name))
        curves.append(log.assign(run=run.name))
    return pd.concat(curves, ignore_index=True)


def _save_smoothed_curves(curves: pd.DataFrame) -> None:
    """Write each run's 25-step smoothed loss (every 10th step) as DVC plot data."""
    from seedscope.core.io import atomic_path
    from seedscope.core.paths import metrics_dir

    plot_dir = metrics_dir() / "plots" / "train_loss"
    for run, part in curves.groupby("run", sort=False):
        smooth = part.set_index("step")["loss"].rolling(25, min_periods=1).mean()
        with atomic_path(plot_dir / f"{run}.csv") as tmp:
            smooth.iloc[::10].rename("loss").reset_index().to_csv(
                tmp, index=False, float_format="%.5g"
            )


def _plot_training_loss(resolved: ResolvedSuite, curves: pd.DataFrame, unigram: float) -> str:
    """Register the smoothed training-loss curves against the unigram baseline."""
    from seedscope.core.plots import plot_curves
    from seedscope.stages.common import register_figure

    labels = run_labels(resolved)
    return register_figure(
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
        plot_curves,
        key=True,
    )


def _write_train_metrics(
    resolved: ResolvedSuite, cfg: Any, summary: pd.DataFrame, unigram: float
) -> dict[str, Any]:
    """Headlines (unigram baseline, final eval loss per size) and the per-run summary."""
    from seedscope.core.metrics import headline, write_metrics
    from seedscope.models import train as tr

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
    return write_metrics(
        "train",
        heads,
        details={
            "runs": summary.drop(columns=list(tr.VOLATILE_SUMMARY_KEYS), errors="ignore").to_dict(
                "records"
            )
        },
        provenance=stage_provenance("train", resolved, list(resolved.suite.steps), cfg),
    )


def pretrained_train_stage(resolved: ResolvedSuite, cfg: Any) -> TrainResult:
    """Stage `train` for a hub suite: nothing is trained (the runs are pre-trained); each
    run's training loss is read from its final checkpoint's `trainer_state.json` where the
    suite publishes one, and written where the mini-suite's trainer writes its log, so that
    every later stage reads one format."""
    fresh_outputs("train")
    _write_hub_readme(resolved)
    logs = _fetch_trainer_logs(resolved)
    _save_trainer_logs(resolved, logs)
    missing = [name for name, log in logs if log.empty]
    found = len(resolved.suite.runs) - len(missing)
    note = _pretrained_note(resolved, found, missing)
    curves = [log.assign(run=name) for name, log in logs if not log.empty]
    frame = pd.concat(curves, ignore_index=True) if curves else None
    figure = _plot_logged_training_loss(resolved, frame) if frame is not None else None
    summary = pd.DataFrame(
        [
            {"run": r.name, "size": r.size, "seed": r.seed, "training_log": r.name not in missing}
            for r in resolved.suite.runs
        ]
    )
    metrics = _write_pretrained_metrics(resolved, cfg, found, frame, summary, note)
    figures = {"training_loss": figure} if figure is not None else {}
    return TrainResult(summary=summary, metrics=metrics, figures=figures, note=note)


def _write_hub_readme(resolved: ResolvedSuite) -> None:
    """Say in results/hub (a declared output) that a hub suite's checkpoints live elsewhere."""
    from seedscope.core.io import atomic_path
    from seedscope.core.paths import mini_hub_cache

    # results/hub is a declared output (the mini-suite's cache): here it only says where
    # the checkpoints are
    with atomic_path(mini_hub_cache() / "README.md") as tmp:
        tmp.write_text(
            f"{resolved.suite.name} is a hub suite: its checkpoints are read from the "
            "Hugging Face hub cache (HF_HUB_CACHE / HF_HOME), not from this folder.\n"
        )


def _fetch_trainer_logs(resolved: ResolvedSuite) -> list[tuple[str, pd.DataFrame]]:
    """(run, training log `step`, `loss`) per run, from its final trainer_state.json."""
    from seedscope.models.checkpoints import fetch_trainer_state, loss_history

    logs = []
    for run in resolved.suite.runs:
        rows = loss_history(fetch_trainer_state(resolved.suite, run, resolved.final_step))
        logs.append((run.name, pd.DataFrame(rows, columns=["step", "loss"])))
    return logs


def _save_trainer_logs(resolved: ResolvedSuite, logs: list[tuple[str, pd.DataFrame]]) -> None:
    """Write each non-empty log where the trainer would, and every log as DVC plot data."""
    import shutil

    from seedscope.core.io import atomic_path, write_parquet
    from seedscope.core.paths import metrics_dir

    plot_dir = metrics_dir() / "plots" / "train_loss"
    shutil.rmtree(plot_dir, ignore_errors=True)
    plot_dir.mkdir(parents=True, exist_ok=True)
    for name, log in logs:
        if not log.empty:
            write_parquet(training_log_path(resolved, name), log)
        # one file per run even without a log: dvc.yaml declares the folder as plot data
        with atomic_path(plot_dir / f"{name}.csv") as tmp:
            log.to_csv(tmp, index=False, float_format="%.5g")


def _pretrained_note(resolved: ResolvedSuite, found: int, missing: list[str]) -> str:
    """The note on where a hub suite's checkpoints and training losses come from."""
    return (
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


def _plot_logged_training_loss(resolved: ResolvedSuite, frame: pd.DataFrame) -> str:
    """Register the training-loss curves the runs' trainers logged."""
    from seedscope.core.plots import plot_curves
    from seedscope.stages.common import register_figure

    labels = run_labels(resolved)
    return register_figure(
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
        plot_curves,
        key=True,
    )


def _write_pretrained_metrics(
    resolved: ResolvedSuite,
    cfg: Any,
    found: int,
    frame: pd.DataFrame | None,
    summary: pd.DataFrame,
    note: str,
) -> dict[str, Any]:
    """Headlines (runs with a log, last logged loss per size), the note and the runs."""
    import numpy as np

    from seedscope.core.metrics import headline, write_metrics

    heads = {
        "n_runs_with_training_log": headline(found, "runs whose checkpoints carry a training log")
    }
    if frame is not None:
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
    return write_metrics(
        "train",
        heads,
        details={"note": note, "runs": summary.to_dict("records")},
        provenance=stage_provenance("train", resolved, [resolved.final_step], cfg),
    )


def checkpoint_probes(resolved: ResolvedSuite) -> pd.DataFrame:
    """The trainer's per-checkpoint probes (eval loss, copy-loss ratio, induction score)."""
    from seedscope.models.hubcache import repo_slug

    frames = []
    for run in resolved.suite.runs:
        path = results_dir() / "train" / f"{repo_slug(run.repo_id)}.checkpoints.parquet"
        frames.append(pd.read_parquet(path).assign(run=run.name))
    return pd.concat(frames, ignore_index=True)

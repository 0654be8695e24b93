"""Stage 0d · the central table: sweep every (run, checkpoint) unit once, writing per-token
log-probs (and, in the same unit, top-k guesses and the behaviour and induction probes).
Engine and sweep: `seedscope.logprobs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from seedscope.core.config import ResolvedSuite
from seedscope.core.paths import results_dir
from seedscope.stages.common import (
    StageResult,
    behaviour_probe,
    induction_probe,
    resolve_suite,
    run_sizes,
    stage_config,
    stage_provenance,
    token_losses_root,
)


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

    from seedscope.core.paths import token_losses_dir

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


@dataclass(frozen=True, kw_only=True)
class TokenLossesResult(StageResult):
    """Stage 0d: the sweep's units and every run's mean loss per evaluated step."""

    units: pd.DataFrame  # per (run, step, kind) unit: status (computed / skipped), timing
    means: pd.DataFrame  # per (run, step): mean eval loss at the mid and the final step


def token_losses_stage(
    suite: dict[str, Any],
    token_losses: dict[str, Any],
    behaviours: dict[str, Any] | None = None,
    induction: dict[str, Any] | None = None,
) -> TokenLossesResult:
    """Stage `token_losses`: per-token log-probs of every run at the steps analyses need,
    and, in the same units (one fetch per checkpoint), the behaviour battery and the
    induction probe at their stages' steps."""
    resolved = resolve_suite(suite)
    cfg = stage_config("token_losses", token_losses)
    windows = _load_eval_windows()
    units = _sweep_units(resolved, cfg, windows, behaviours, induction)
    _save_unit_table(units)
    means = _mean_losses(resolved)
    metrics = _write_token_losses_metrics(resolved, cfg, units, means, windows)
    return TokenLossesResult(units=units, means=means, metrics=metrics)


def _load_eval_windows() -> Any:
    """The eval tokens `[n_windows, window]`, memory-mapped."""
    import numpy as np

    from seedscope.core.paths import corpus_dir

    return np.load(corpus_dir() / "eval_tokens.npy", mmap_mode="r")


def _sweep_units(
    resolved: ResolvedSuite,
    cfg: Any,
    windows: Any,
    behaviours: dict[str, Any] | None,
    induction: dict[str, Any] | None,
) -> pd.DataFrame:
    """Run the sweep over every (run, step) unit, with the probes; the unit table."""
    from seedscope.core.steps import name_to_step
    from seedscope.logprobs.sweep import run_sweep

    index = trajectory_windows_index(
        windows.shape[0], windows.shape[1], cfg.trajectory_tokens, cfg.seed
    )
    steps = [
        name_to_step(resolved, s) for s in cfg.steps
    ]  # SweepConfig allows mid/final/all/integers
    run_cfg = type(cfg)(**{**cfg.__dict__, "steps": tuple(steps)})
    # results/token_losses is a persisted DVC output (dvc.yaml `persist: true`): DVC leaves
    # it in place when it reruns the stage, so a killed sweep resumes inside `dvc repro`.
    # It stays what a fresh sweep would write: other suites' folders go, a folder made with
    # other settings (eval windows, trajectory subset, dtype) is emptied, units outside
    # this sweep are pruned, and a unit whose checkpoint's commit changed is recomputed.
    clear_other_suites(resolved)
    probes = _sweep_probes(resolved, behaviours, induction)
    return run_sweep(
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


def _sweep_probes(
    resolved: ResolvedSuite,
    behaviours: dict[str, Any] | None,
    induction: dict[str, Any] | None,
) -> list[Any]:
    """The behaviour and induction probes whose params sections were passed."""
    # the pipeline passes both sections; a caller may leave one out (None: not measured)
    return [
        make(resolved, stage_config(section, values))
        for make, section, values in (
            (behaviour_probe, "behaviours", behaviours),
            (induction_probe, "induction", induction),
        )
        if values is not None
    ]


def _save_unit_table(units: pd.DataFrame) -> None:
    """Write results/token_losses/units.parquet: run, step and kind of every unit."""
    from seedscope.core.io import write_parquet

    # what was computed now vs resumed stays out of the file: a resumed sweep writes the
    # same bytes as an uninterrupted one
    write_parquet(
        results_dir() / "token_losses" / "units.parquet",
        units[["run", "step", "kind"]],
    )


def _mean_losses(resolved: ResolvedSuite) -> pd.DataFrame:
    """Mean eval loss of every run at the mid and the final step."""
    import numpy as np

    from seedscope.logprobs.engine import load_logprobs

    means = []
    for step in (resolved.mid_step, resolved.final_step):
        lp = load_logprobs(token_losses_root(resolved), resolved.run_names, step)
        means += [
            {"run": r, "step": step, "mean_loss": float(-np.nanmean(v))} for r, v in lp.items()
        ]
    return pd.DataFrame(means)


def _write_token_losses_metrics(
    resolved: ResolvedSuite, cfg: Any, units: pd.DataFrame, means: pd.DataFrame, windows: Any
) -> dict[str, Any]:
    """Headlines (final loss per size, units, eval tokens) and the mean loss per run."""
    from seedscope.core.metrics import headline, write_metrics

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
    return write_metrics(
        "token_losses",
        heads,
        details={"mean_loss": means.to_dict("records")},
        provenance=stage_provenance(
            "token_losses", resolved, [resolved.mid_step, resolved.final_step], cfg
        ),
    )

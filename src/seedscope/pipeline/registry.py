"""The stage registry: one `Stage` record per stage, from which `dvc.yaml` is generated.

A stage is a notebook (`notebooks/<number>_<name>.ipynb`) that calls one glue module
(`seedscope.stages.<name>`, whose `<name>_stage` function does the work), reads some params
sections and upstream outputs, and writes its own. Everything `dvc.yaml` says about a stage
comes from its record here and from its code's import closure (`seedscope.pipeline.codedeps`);
`seedscope dvc-yaml` rewrites the file and a test checks it is current. Adding an analysis =
a notebook, a glue module (with its science module under `analyses/`), a record here, a
params section (and its config class in `SECTION_CONFIGS`).

One numbering everywhere (notebook file, its title, the report's chapters, README): set-up
stages `0a`-`0d`, the six analyses `1`-`6` (the study's six research questions), the report
`7`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from seedscope.core.errors import SeedscopeError, closest

UPSTREAM = ("results/manifest.json", "results/corpus", "results/token_losses")


@dataclass(frozen=True)
class Stage:
    """One pipeline stage, as `dvc.yaml` and the runner see it."""

    name: str
    number: str  # shared by the notebook's file name and title, the report and README
    title: str
    sections: tuple[str, ...]  # params sections it reads (validated before any work)
    reads: tuple[str, ...] = UPSTREAM  # upstream outputs (data, never code)
    writes: tuple[str, ...] = ()  # cached outputs besides figures/ and metrics/
    figures: bool = True  # writes figures/<name>
    metrics: bool = True  # writes metrics/<name>.json and metrics/details/<name>.json
    plots: dict[str, dict[str, Any]] = field(default_factory=dict)  # dvc plots
    persist: tuple[str, ...] = ()  # outputs dvc keeps on a rerun (resumable work)
    uncached: tuple[str, ...] = ()  # outputs committed to git, not to the dvc cache

    @property
    def notebook(self) -> str:
        return f"{self.number}_{self.name}"

    @property
    def module(self) -> str:
        return f"seedscope.stages.{self.name}"


def _plot(y: str, title: str) -> dict[str, Any]:
    return {"cache": False, "x": "step", "y": y, "template": "linear", "title": title}


_WORK: list[Stage] = [
    Stage(
        "suites",
        "0a",
        "Suites: which runs and checkpoints this study reads",
        ("suite",),
        reads=(),
        writes=("results/manifest.json",),
        figures=False,
        metrics=False,
    ),
    Stage(
        "corpus",
        "0b",
        "Corpus: eval tokens with planted structure",
        ("corpus",),
        reads=(),
        writes=("results/corpus",),
        figures=False,
    ),
    Stage(
        "train",
        "0c",
        "Training the mini-suite",
        ("suite", "corpus", "train"),
        reads=("results/manifest.json", "results/corpus"),
        writes=("results/hub", "results/train"),
        plots={"metrics/plots/train_loss": _plot("loss", "Training loss per run")},
    ),
    Stage(
        "token_losses",
        "0d",
        "Per-token log-probs: the central table",
        ("suite", "token_losses", "behaviours", "induction"),
        reads=("results/manifest.json", "results/corpus", "results/hub"),
        writes=("results/token_losses",),
        figures=False,
        persist=("results/token_losses",),
    ),
    Stage(
        "loss_correlation",
        "1",
        "Seed-pair agreement, token by token",
        ("suite", "loss_correlation"),
        writes=("results/loss_correlation",),
    ),
    Stage(
        "convergence",
        "2",
        "Mid-training divergence: closed by the end?",
        ("suite", "convergence"),
        writes=("results/convergence",),
        plots={
            "metrics/plots/agreement_over_training.csv": _plot(
                "pearson", "Pairwise agreement over training"
            )
        },
    ),
    Stage(
        "loss_pca",
        "3",
        "Principal components of per-token loss",
        ("suite", "loss_pca"),
        writes=("results/loss_pca",),
    ),
    Stage(
        "behaviours",
        "4",
        "Behaviours over runs and checkpoints",
        ("suite", "behaviours"),
        writes=("results/behaviours",),
    ),
    Stage(
        "trajectories",
        "5",
        "Per-token loss trajectories: smooth or S-shaped?",
        ("suite", "trajectories"),
        writes=("results/trajectories",),
    ),
    Stage(
        "induction",
        "6",
        "The induction-head phase change in every run",
        ("suite", "induction"),
        reads=(*UPSTREAM, "results/train"),
        writes=("results/induction",),
        plots={
            "metrics/plots/induction_score.csv": _plot(
                "induction_score", "Best-head induction score over training"
            )
        },
    ),
]


def _report(stages: list[Stage]) -> Stage:
    """The report reads every stage's headline details (but the corpus's) and figures: a
    stage added to the registry is in the book with no change here."""
    return Stage(
        "report",
        "7",
        "Report",
        ("suite", "report"),
        reads=(
            "results/manifest.json",
            *(f"metrics/details/{s.name}.json" for s in stages if s.metrics and s.name != "corpus"),
            *(f"figures/{s.name}" for s in stages if s.figures),
            "tests",  # the report names the test files that back each figure
        ),
        writes=("reports/book",),
        uncached=("reports/index.html",),
        figures=False,
        metrics=False,
    )


STAGES: dict[str, Stage] = {s.name: s for s in [*_WORK, _report(_WORK)]}


# params section -> "module:Class" of its validated config.
SECTION_CONFIGS: dict[str, str] = {
    "suite": "seedscope.core.config:SuiteConfig",
    "corpus": "seedscope.data.corpus:CorpusConfig",
    "train": "seedscope.models.train:TrainConfig",
    "token_losses": "seedscope.logprobs.sweep:SweepConfig",
    "loss_correlation": "seedscope.analyses.params:LossCorrelationParams",
    "convergence": "seedscope.analyses.params:ConvergenceParams",
    "loss_pca": "seedscope.analyses.params:LossPcaParams",
    "behaviours": "seedscope.analyses.params:BehavioursParams",
    "trajectories": "seedscope.analyses.params:TrajectoriesParams",
    "induction": "seedscope.analyses.params:InductionParams",
    "report": "seedscope.analyses.params:ReportParams",
}


def get_stage(name: str) -> Stage:
    """The record of stage `name`, or one error naming the stages there are."""
    if name not in STAGES:
        raise SeedscopeError(
            f"Unknown stage {name!r}.{closest(name, list(STAGES))}",
            f"stages: {', '.join(STAGES)}.",
        )
    return STAGES[name]


def stage_function(name: str) -> Callable[..., Any]:
    """Stage `name`'s glue function, `seedscope.stages.<name>.<name>_stage`."""
    return getattr(importlib.import_module(get_stage(name).module), f"{name}_stage")

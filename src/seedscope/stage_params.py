"""Typed parameters of the analysis stages (one frozen dataclass per params.yaml section).

The data-making stages own theirs beside their code (`corpus.CorpusConfig`,
`train.TrainConfig`, `sweep.SweepConfig`); `config.from_section` validates them all alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from seedscope.errors import SeedscopeError, closest

BEHAVIOURS = (
    "punctuation",
    "brackets",
    "capitalisation",
    "email",
    "language",
    "memorised",
    "acronyms",
    "induction",
    "facts",
)


def _positive(section: str, **values: int | float) -> None:
    for key, value in values.items():
        if value <= 0:
            raise SeedscopeError(
                f"{section}.{key} must be positive, got {value}.", f"set {section}.{key} > 0."
            )


@dataclass(frozen=True)
class LossCorrelationParams:
    """Analysis 1: seed-pair agreement on the final checkpoint."""

    n_boot: int = 200
    seed: int = 0
    n_outliers: int = 12
    outlier_fraction: float = 0.01
    context_tokens: int = 30
    top_k: int = 5
    max_scatter_pairs: int = 45

    def __post_init__(self) -> None:
        _positive(
            "loss_correlation",
            n_boot=self.n_boot,
            n_outliers=self.n_outliers,
            context_tokens=self.context_tokens,
            top_k=self.top_k,
        )
        if not 0 < self.outlier_fraction < 0.5:
            raise SeedscopeError(
                f"loss_correlation.outlier_fraction must be in (0, 0.5), got "
                f"{self.outlier_fraction}.",
                "use e.g. 0.01 (the top 1% of |difference|).",
            )


@dataclass(frozen=True)
class ConvergenceParams(LossCorrelationParams):
    """Analysis 2: the agreement analysis at mid-training; gaps closed or persisting."""

    alpha: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.alpha < 1:
            raise SeedscopeError(
                f"convergence.alpha must be in (0, 1), got {self.alpha}.", "use e.g. 0.05."
            )


@dataclass(frozen=True)
class LossPcaParams:
    """Analysis 3: PCA of per-token losses across runs (and checkpoints)."""

    n_components: int = 5
    seed: int = 0
    n_extremes: int = 8
    n_boot: int = 200
    context_tokens: int = 30

    def __post_init__(self) -> None:
        _positive(
            "loss_pca",
            n_components=self.n_components,
            n_extremes=self.n_extremes,
            n_boot=self.n_boot,
            context_tokens=self.context_tokens,
        )


@dataclass(frozen=True)
class BehavioursParams:
    """Analysis 4: the behaviour battery over runs and checkpoints."""

    behaviours: list[str] | str = "all"
    source: str = "planted"
    n_per_behaviour: int = 200
    steps: list[int | str] | str = "all"
    # emergence: the CI lower bound of the chance-normalised score, (acc - chance) /
    # (1 - chance), stays >= this; 0.6 = accuracy 0.8 with 2 options, 0.7 with 4
    score_threshold: float = 0.6
    # headline scoring of multi-token options (both are computed and reported):
    # 'per_token' (mean log-prob per option token) or 'summed' (favours short options)
    scoring: str = "per_token"
    n_boot: int = 200
    seed: int = 0
    batch_size: int = 64
    threads: int = 2

    def __post_init__(self) -> None:
        _positive(
            "behaviours",
            n_per_behaviour=self.n_per_behaviour,
            n_boot=self.n_boot,
            batch_size=self.batch_size,
            threads=self.threads,
        )
        if self.source not in ("planted", "english"):
            raise SeedscopeError(
                f"behaviours.source must be 'planted' or 'english', got {self.source!r}.",
                "planted for the mini-suite, english for GPT-2/Pythia tokenizers.",
            )
        names = list(BEHAVIOURS) if self.behaviours == "all" else self.behaviours
        if isinstance(names, str):
            names = [names]
        for name in names:
            if name not in BEHAVIOURS:
                raise SeedscopeError(
                    f"behaviours.behaviours names an unknown behaviour {name!r}."
                    f"{closest(name, BEHAVIOURS)}",
                    f"choose from: {', '.join(BEHAVIOURS)} (or `all`).",
                )
        if not 0 < self.score_threshold < 1:
            raise SeedscopeError(
                f"behaviours.score_threshold must be in (0, 1), got {self.score_threshold}.",
                "it is chance-normalised, (accuracy - chance) / (1 - chance): 0 = guessing, "
                "1 = all correct; use e.g. 0.6.",
            )
        if self.scoring not in ("per_token", "summed"):
            raise SeedscopeError(
                f"behaviours.scoring must be 'per_token' or 'summed', got {self.scoring!r}.",
                "per_token (fair across option lengths) is the usual headline.",
            )

    @property
    def behaviour_names(self) -> list[str]:
        if self.behaviours == "all":
            return list(BEHAVIOURS)
        return [self.behaviours] if isinstance(self.behaviours, str) else list(self.behaviours)


@dataclass(frozen=True)
class TrajectoriesParams:
    """Analysis 5: per-token loss trajectories over all checkpoints."""

    n_divergent: int = 300
    n_random: int = 300
    n_boot: int = 500
    seed: int = 0
    n_synthetic: int = 100

    def __post_init__(self) -> None:
        _positive(
            "trajectories",
            n_divergent=self.n_divergent,
            n_random=self.n_random,
            n_boot=self.n_boot,
            n_synthetic=self.n_synthetic,
        )


@dataclass(frozen=True)
class InductionParams:
    """Analysis 6: induction heads and the phase change."""

    n_seqs: int = 64
    half_len: int = 30
    steps: list[int | str] | str = "all"
    n_boot: int = 200
    seed: int = 0
    threads: int = 2
    batch_size: int = 32

    def __post_init__(self) -> None:
        _positive(
            "induction",
            n_seqs=self.n_seqs,
            half_len=self.half_len,
            n_boot=self.n_boot,
            threads=self.threads,
            batch_size=self.batch_size,
        )


@dataclass(frozen=True)
class ReportParams:
    """The rendered compendium."""

    title: str = "seedscope: how much do seeds matter?"

"""Typed parameters of the analysis stages (one frozen dataclass per params.yaml section).

The data-making stages own theirs beside their code (`corpus.CorpusConfig`,
`train.TrainConfig`, `sweep.SweepConfig`); `config.from_section` validates them all alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from seedscope.core.errors import SeedscopeError, closest

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
    # FDR level of every family of tests (enrichment rows, capability gaps per step)
    alpha: float = 0.05
    # nats: a token whose seeds (within size) differ by less than this is never "divergent"
    divergence_floor: float = 0.01
    # the enrichment headline only names categories with at least this many tokens
    enrichment_min_tokens: int = 1000
    # difficulty strata (quantiles of mean loss) of the Mantel-Haenszel odds ratio
    n_strata: int = 10
    # nats: a gap counts as material when its CI lies entirely outside +-margin; a mid gap
    # "closes" when its final (1 - 2 alpha) CI lies inside +-margin
    margin: float = 0.02

    def __post_init__(self) -> None:
        section = self._section()
        _positive(
            section,
            n_boot=self.n_boot,
            n_outliers=self.n_outliers,
            context_tokens=self.context_tokens,
            top_k=self.top_k,
            enrichment_min_tokens=self.enrichment_min_tokens,
            n_strata=self.n_strata,
        )
        if not 0 < self.outlier_fraction < 0.5:
            raise SeedscopeError(
                f"{section}.outlier_fraction must be in (0, 0.5), got {self.outlier_fraction}.",
                "use e.g. 0.01 (the top 1% of |difference|).",
            )
        if not 0 < self.alpha < 0.5:
            raise SeedscopeError(
                f"{section}.alpha must be in (0, 0.5), got {self.alpha}.", "use e.g. 0.05."
            )
        if not 0 <= self.divergence_floor < 10:
            raise SeedscopeError(
                f"{section}.divergence_floor must be in [0, 10) nats, got {self.divergence_floor}.",
                "use e.g. 0.01 (differences below it count as none).",
            )
        if not 0 < self.margin < 1:
            raise SeedscopeError(
                f"{section}.margin must be in (0, 1) nats, got {self.margin}.",
                "use e.g. 0.02 (a gap within +-0.02 nats of mean log-prob counts as none).",
            )

    def _section(self) -> str:
        return "loss_correlation"


@dataclass(frozen=True)
class ConvergenceParams(LossCorrelationParams):
    """Analysis 2: the agreement analysis at mid-training; gaps closed or persisting."""

    def _section(self) -> str:
        return "convergence"


@dataclass(frozen=True)
class LossPcaParams:
    """Analysis 3: PCA of per-token losses across runs (and checkpoints)."""

    n_components: int = 5
    seed: int = 0
    n_extremes: int = 8
    n_boot: int = 200
    context_tokens: int = 30
    # parallel analysis: a component is described only if it beats this many permutations
    # at level alpha, and its scores spread by at least min_component_sd nats
    n_permutations: int = 99
    alpha: float = 0.05
    min_component_sd: float = 0.01

    def __post_init__(self) -> None:
        _positive(
            "loss_pca",
            n_components=self.n_components,
            n_extremes=self.n_extremes,
            n_boot=self.n_boot,
            context_tokens=self.context_tokens,
            n_permutations=self.n_permutations,
            min_component_sd=self.min_component_sd,
        )
        if not 0 < self.alpha < 0.5:
            raise SeedscopeError(
                f"loss_pca.alpha must be in (0, 0.5), got {self.alpha}.", "use e.g. 0.05."
            )
        if (self.n_permutations + 1) * self.alpha < 1:
            raise SeedscopeError(
                f"loss_pca.n_permutations={self.n_permutations} cannot reach p <= "
                f"alpha={self.alpha} (the smallest p is 1 / (n_permutations + 1)).",
                f"set loss_pca.n_permutations >= {int(round(1 / self.alpha)) - 1}.",
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
    # 'per_token' (mean log-prob per option token), 'summed' (favours short options) or
    # 'pmi' (summed log-prob given the prompt minus given a document boundary)
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
        if self.scoring not in ("per_token", "summed", "pmi"):
            raise SeedscopeError(
                f"behaviours.scoring must be 'per_token', 'summed' or 'pmi', got {self.scoring!r}.",
                "per_token or pmi (both fair across option lengths) are the usual headlines.",
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
    noise_quantiles: list[float] | tuple[float, ...] = (0.5, 0.75, 0.9)
    block: int = 5
    alpha: float = 0.05
    n_refits: int = 40

    def __post_init__(self) -> None:
        _positive(
            "trajectories",
            n_refits=self.n_refits,
            n_divergent=self.n_divergent,
            n_random=self.n_random,
            n_boot=self.n_boot,
            n_synthetic=self.n_synthetic,
            block=self.block,
        )
        qs = list(self.noise_quantiles)
        if not qs or not all(0 < q < 1 for q in qs) or qs != sorted(qs):
            raise SeedscopeError(
                f"trajectories.noise_quantiles must be increasing values in (0, 1), got {qs}.",
                "use e.g. [0.5, 0.75, 0.9] (quantiles of the real curves' residual sd).",
            )
        if not 0 < self.alpha < 1:
            raise SeedscopeError(
                f"trajectories.alpha must be in (0, 1), got {self.alpha}.", "use e.g. 0.05."
            )


@dataclass(frozen=True)
class InductionParams:
    """Analysis 6: induction heads and the phase change.

    The probe: `n_seqs` sequences of BOS + `half_len` distinct ids + the same again, drawn
    from ids seen >= `probe_min_count` times in training. A run has *formed* an induction
    head when, at its final checkpoint, the best head scores >= `formed_score` and the
    second-copy loss is <= `formed_copy_ratio` x the first-copy loss. A phase change needs
    a logistic fit with amplitude >= `phase_min_amplitude` (score units; ICL:
    `icl_min_amplitude` nats), r2 >= `phase_min_r2`, a 10-90% rise within
    `phase_max_width_fraction` of the log-step range and >= `phase_min_plateau_points`
    checkpoints on each plateau. The ICL score is the mean loss over
    positions `icl_late` minus `icl_early` (of a 1024-token context, scaled to the window)
    on `icl_windows` eval windows.
    """

    n_seqs: int = 64
    half_len: int = 30
    probe_min_count: int = 5
    steps: list[int | str] | str = "all"
    n_boot: int = 200
    seed: int = 0
    threads: int = 2
    batch_size: int = 32
    formed_score: float = 0.4
    formed_copy_ratio: float = 0.5
    phase_min_amplitude: float = 0.1
    icl_min_amplitude: float = 0.1
    phase_min_r2: float = 0.8
    icl_windows: int = 256
    icl_early: tuple[int, int] | list[int] = (40, 60)
    icl_late: tuple[int, int] | list[int] = (450, 550)
    n_perm: int = 2000
    phase_max_width_fraction: float = 0.5
    phase_min_plateau_points: int = 2

    def __post_init__(self) -> None:
        _positive(
            "induction",
            phase_min_plateau_points=self.phase_min_plateau_points,
            n_seqs=self.n_seqs,
            half_len=self.half_len,
            n_boot=self.n_boot,
            threads=self.threads,
            batch_size=self.batch_size,
            phase_min_amplitude=self.phase_min_amplitude,
            icl_min_amplitude=self.icl_min_amplitude,
            icl_windows=self.icl_windows,
            n_perm=self.n_perm,
        )
        if self.probe_min_count < 0:
            raise SeedscopeError(
                f"induction.probe_min_count must be >= 0, got {self.probe_min_count}.",
                "use e.g. 5 (0 = every id of the vocabulary).",
            )
        for key in (
            "formed_score",
            "formed_copy_ratio",
            "phase_min_r2",
            "phase_max_width_fraction",
        ):
            value = getattr(self, key)
            if not 0 < value <= 1:
                raise SeedscopeError(
                    f"induction.{key} must be in (0, 1], got {value}.",
                    "use e.g. formed_score 0.4, formed_copy_ratio 0.5, phase_min_r2 0.8, "
                    "phase_max_width_fraction 0.5.",
                )
        for key in ("icl_early", "icl_late"):
            band = list(getattr(self, key))
            if len(band) != 2 or not 0 <= band[0] <= band[1] <= 1024:
                raise SeedscopeError(
                    f"induction.{key} must be [start, end] with 0 <= start <= end <= 1024, "
                    f"got {band}.",
                    "give token positions of a 1024-token context, e.g. [40, 60] / [450, 550].",
                )
        if list(self.icl_early)[1] >= list(self.icl_late)[0]:
            raise SeedscopeError(
                f"induction.icl_early {list(self.icl_early)} must end before icl_late "
                f"{list(self.icl_late)} starts.",
                "use e.g. icl_early [40, 60] and icl_late [450, 550].",
            )


@dataclass(frozen=True)
class ReportParams:
    """The rendered compendium."""

    title: str = "seedscope: how much do seeds matter?"

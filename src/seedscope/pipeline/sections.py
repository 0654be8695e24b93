"""Params sections -> their validated config classes (imported by name).

Every stage validates its sections through here, so every stage lists this module as a code
dep; the stage registry (`registry.py`), which a stage's own `dvc.yaml` entry already
describes, is kept apart from it so that registering a stage re-runs no other stage.
"""

from __future__ import annotations

import importlib

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


def config_class(section: str) -> type:
    """A params section's config class (`SECTION_CONFIGS`, imported by name)."""
    module, cls = SECTION_CONFIGS[section].split(":")
    return getattr(importlib.import_module(module), cls)

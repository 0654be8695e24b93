"""Where everything lives: one module anchored on the project root, never on the cwd."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parents[3]


def project_root() -> Path:
    """The project root: `$SEEDSCOPE_ROOT` if set (the pipeline sets it), else the checkout
    holding this package."""
    env = os.environ.get("SEEDSCOPE_ROOT")
    return Path(env).resolve() if env else _PACKAGE_ROOT


def results_dir() -> Path:
    return project_root() / "results"


def metrics_dir() -> Path:
    return project_root() / "metrics"


def figures_dir() -> Path:
    return project_root() / "figures"


def reports_dir() -> Path:
    return project_root() / "reports"


def corpus_dir() -> Path:
    """Tokenizer, train/eval token arrays and eval-token metadata (stage `corpus`)."""
    return results_dir() / "corpus"


def mini_hub_cache() -> Path:
    """The mini-suite, written as a Hugging Face hub cache (stage `train`)."""
    return results_dir() / "hub"


def token_losses_dir() -> Path:
    """Per-token log-probs, one file per (run, step) (stage `token_losses`)."""
    return results_dir() / "token_losses"

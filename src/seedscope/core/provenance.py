"""Provenance carried by every result file: suite, runs, steps, params hash, versions, commit."""

from __future__ import annotations

import json
import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from seedscope.core.paths import project_root

# Written by `seedscope.pipeline.runner.scratch_copy`: the commit a scratch copy's sources came from
# (the copy is a fresh git repo with no history of its own).
SOURCE_RECORD = ".seedscope-source.json"

# What the pipeline's outputs depend on: code, notebooks, parameters and pinned packages.
OUTPUT_SOURCES = (
    "src",
    "notebooks",
    "params.yaml",
    "dvc.yaml",
    "profiles",
    "pyproject.toml",
    "environment.yml",
)

PACKAGES = ("seedscope", "torch", "transformers", "tokenizers", "huggingface_hub", "numpy")


@cache
def git_commit() -> str:
    """The last commit that changed what the pipeline's outputs depend on (`OUTPUT_SOURCES`;
    with `+dirty` when those files differ from it), so a commit that only publishes results
    or edits tests keeps the same provenance; in a scratch copy, the commit its sources were
    copied from; 'unknown' only when neither exists."""
    root = str(project_root())
    try:
        sha = subprocess.run(
            ["git", "log", "-1", "--format=%H", "--", *OUTPUT_SOURCES],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not sha:  # no commit yet (a scratch copy): the record of where it came from
            return _recorded_commit()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *OUTPUT_SOURCES],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return _recorded_commit()


def _recorded_commit() -> str:
    record = project_root() / SOURCE_RECORD
    try:
        return str(json.loads(record.read_text())["git_commit"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def provenance(**fields: Any) -> dict[str, Any]:
    """A provenance record: the given fields plus package versions and the git commit.

    Note: the commit is *not* part of result files' bytes that DVC hashes for determinism
    checks only if callers leave it out; metrics carry it so a reader can trace a number.
    """
    return {**fields, "versions": package_versions(), "git_commit": git_commit()}

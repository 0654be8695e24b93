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

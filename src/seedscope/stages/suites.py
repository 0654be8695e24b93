"""Stage 0a · suites: resolve the suite (runs, seeds, sizes, schedule) and write the
manifest every later stage reads. Registry: `seedscope.suites.registry`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from seedscope.core.config import SuiteConfig, from_section, params_hash
from seedscope.core.io import write_json
from seedscope.core.paths import results_dir
from seedscope.core.provenance import provenance


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

"""Stage 7 · the report: the book built from the executed notebooks, metrics and figures
(`seedscope.pipeline.report`).
"""

from __future__ import annotations

from typing import Any

from seedscope.core.io import read_json
from seedscope.core.paths import results_dir
from seedscope.core.provenance import provenance
from seedscope.stages.common import resolve_suite, stage_config


def read_manifest() -> dict[str, Any]:
    return read_json(results_dir() / "manifest.json")


def report_stage(suite: dict[str, Any], report: dict[str, Any]):
    """Stage `report`: reports/index.html from every stage's metrics and figures."""
    from seedscope.pipeline.report import build_report

    resolve_suite(suite)
    cfg = stage_config("report", report)
    manifest = read_manifest()
    return build_report(manifest, cfg.title, provenance(stage="report"))

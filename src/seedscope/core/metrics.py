"""Headline numbers: one `metrics/<stage>.json` per analysis, each number with its CI.

Two files per stage:
- `metrics/<stage>.json` (what `dvc metrics show` prints: numbers only)
      {"<key>": {"value": float, "ci_low": float, "ci_high": float}}   (CIs where they exist)
- `metrics/details/<stage>.json` (what the report page reads)
      {"headline": {"<key>": {"value", "ci_low", "ci_high", "label", "unit"}},
       "details": {...any JSON...},
       "provenance": {"suite", "runs", "steps", "params_hash", "versions", "git_commit"}}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from seedscope.core.io import read_json, write_json
from seedscope.core.paths import metrics_dir


def headline(
    value: float,
    label: str,
    ci: tuple[float, float] | None = None,
    unit: str = "",
) -> dict[str, Any]:
    """One headline number with an optional 95% CI, rounded to 6 significant digits so the
    JSON is stable across platforms' last-bit float noise."""

    def clean(x: float | None) -> float | None:
        if x is None:
            return None
        x = float(x)
        if not math.isfinite(x):
            return None
        if x.is_integer():  # counts stay exact
            return x
        return float(f"{x:.6g}")

    return {
        "value": clean(value),
        "ci_low": clean(ci[0]) if ci else None,
        "ci_high": clean(ci[1]) if ci else None,
        "label": label,
        "unit": unit,
    }


def finite(obj: Any) -> Any:
    """`obj` with every NaN or infinite float (numpy's too) replaced by None, recursively:
    JSON has no NaN, and a missing value must read as missing, not as a number.

    >>> finite({"a": [1.0, float("nan")], "b": {"c": float("inf")}})
    {'a': [1.0, None], 'b': {'c': None}}
    """
    if isinstance(obj, dict):
        return {key: finite(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(value) for value in obj]
    if isinstance(obj, float | np.floating) and not math.isfinite(float(obj)):
        return None
    return obj


def write_metrics(
    stage: str,
    headlines: dict[str, dict[str, Any]],
    details: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write metrics/<stage>.json atomically and return what was written."""
    record = {
        "headline": headlines,
        "details": finite(details or {}),
        "provenance": provenance or {},
    }
    numbers = {
        key: {k: entry[k] for k in ("value", "ci_low", "ci_high") if entry.get(k) is not None}
        for key, entry in headlines.items()
    }
    write_json(metrics_dir() / "details" / f"{stage}.json", record)
    write_json(metrics_dir() / f"{stage}.json", numbers)
    return record


def read_metrics(stage: str) -> dict[str, Any]:
    """The full record of a stage (labels, details, provenance)."""
    return read_json(metrics_dir() / "details" / f"{stage}.json")


def format_value(entry: dict[str, Any]) -> str:
    """'0.912 [0.905, 0.918]' — the form the report page shows (a test reads it back)."""

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4g}"

    text = fmt(entry["value"])
    if entry.get("ci_low") is not None and entry.get("ci_high") is not None:
        text += f" [{fmt(entry['ci_low'])}, {fmt(entry['ci_high'])}]"
    return text

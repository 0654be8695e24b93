"""Reruns: `dvc repro -f` on the smoke profile gives the same bytes as the first run.

The first run is the session fixture `smoke_project`; this test hashes every file under its
results/, metrics/ and figures/ (figures are byte-identical: `seedscope.core.plots.save_figure`
strips matplotlib's PNG metadata), runs `dvc repro -f` once more and compares.

Excluded: the rendered notebooks under reports/notebooks/ (their progress-bar output holds
run times). `metrics/details/*.json` carry the git commit in their provenance, which is the
same on a rerun, so they are compared too.

The trainer keeps wall-clock fields and resume history out of its files, and saves its
resume state through a file handle, so training outputs are byte-identical too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import run_pipeline

pytestmark = pytest.mark.slow

TREES = ("results", "metrics", "figures")


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for tree in TREES
        for p in sorted((root / tree).rglob("*"))
        if p.is_file()
    }


def test_repro_f_twice_gives_identical_result_hashes(smoke_project, tmp_path_factory):
    first = _hashes(smoke_project)
    out = run_pipeline(smoke_project, "repro", "-f")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    second = _hashes(smoke_project)
    assert sorted(first) == sorted(second)
    differ = sorted(rel for rel in first if first[rel] != second[rel])
    identical = len(first) - len(differ)
    summary = f"rerun hashes identical / total: {identical} / {len(first)}"
    print(f"\n{summary}\ndiffering: {differ}")
    report = tmp_path_factory.getbasetemp() / "reliability"
    report.mkdir(exist_ok=True)
    (report / "reruns.md").write_text(summary + "\n\ndiffering:\n" + "\n".join(differ) + "\n")
    assert not differ, f"{summary}; nondeterministic outputs: {differ}"

"""The whole pipeline, end to end, on the smoke profile (one `dvc repro` in a scratch copy)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from seedscope.pipeline import STAGES

pytestmark = pytest.mark.slow


def _metrics(root, stage):
    return json.loads((root / "metrics" / f"{stage}.json").read_text())


def test_every_stage_ran_and_rendered(smoke_project):
    lock = yaml.safe_load((smoke_project / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(STAGES)
    for stage in STAGES.values():
        html = smoke_project / "reports" / "notebooks" / f"{stage.notebook}.html"
        assert html.stat().st_size > 10_000, html
        assert "Traceback" not in html.read_text()


def test_manifest_and_hub_cache(smoke_project):
    manifest = json.loads((smoke_project / "results" / "manifest.json").read_text())
    assert manifest["suite"] == "mini-smoke"
    assert manifest["revisions"][str(manifest["final_step"])] == (
        f"checkpoint-{manifest['final_step']}"
    )
    hub = smoke_project / "results" / "hub"
    for run in manifest["runs"]:
        folder = hub / ("models--" + run["repo_id"].replace("/", "--"))
        refs = sorted(p.name for p in (folder / "refs").iterdir())
        assert refs == sorted(f"checkpoint-{s}" for s in manifest["steps"])


def test_token_losses_are_complete_and_sane(smoke_project):
    manifest = json.loads((smoke_project / "results" / "manifest.json").read_text())
    tokens = np.load(smoke_project / "results" / "corpus" / "eval_tokens.npy")
    root = smoke_project / "results" / "token_losses" / "mini-smoke"
    for run in manifest["runs"]:
        lp = np.load(root / run["name"] / f"step-{manifest['final_step']}.npy")
        assert lp.shape == tokens.shape and lp.dtype == np.float32
        assert np.isnan(lp[:, 0]).all() and np.isfinite(lp[:, 1:]).all()
        assert (lp[:, 1:] <= 0).all()
        # trained models beat uniform guessing over the vocabulary
        assert -lp[:, 1:].mean() < math.log(512)


def test_headline_metrics_are_sane(smoke_project):
    corr = _metrics(smoke_project, "loss_correlation")
    for key, entry in corr.items():
        if key.startswith("pearson_"):
            assert -1 <= entry["ci_low"] <= entry["value"] <= entry["ci_high"] <= 1
    pca = _metrics(smoke_project, "loss_pca")
    assert 0 < pca["pc2_variance"]["value"] <= pca["pc1_variance"]["value"] <= 1
    conv = _metrics(smoke_project, "convergence")
    assert 0 <= conv["fraction_gaps_closed"].get("value", 0) <= 1
    beh = _metrics(smoke_project, "behaviours")
    from seedscope.stage_params import BEHAVIOURS

    for behaviour in BEHAVIOURS:
        for size in ("small", "medium"):  # per size, never pooled
            entry = beh[f"{behaviour}_final_score_{size}"]
            assert {"value", "ci_low", "ci_high"} <= set(entry), (behaviour, size)
            assert entry["ci_low"] <= entry["ci_high"]
            assert beh[f"{behaviour}_emerged_runs_{size}"]["value"] in (0, 1, 2)
    assert beh["final_score_seed_sd"]["value"] >= 0
    traj = _metrics(smoke_project, "trajectories")
    assert -1 <= traj["s_fraction_difference"]["value"] <= 1
    ind = _metrics(smoke_project, "induction")
    assert 0 <= ind["fraction_formed"]["value"] <= 1


def test_outlier_tables_show_context_and_predictions(smoke_project):
    table = pd.read_parquet(
        next((smoke_project / "results" / "loss_correlation").glob("outliers_pairs_*.parquet"))
    )
    assert {"context", "top_run_a", "top_run_b", "logprob_a", "logprob_b"} <= set(table.columns)
    assert table["context"].str.contains("⟦").all()
    assert (table["diff"].abs() > 0).all()


def test_figures_registered_with_provenance(smoke_project):
    for stage in (
        "loss_correlation",
        "convergence",
        "loss_pca",
        "behaviours",
        "trajectories",
        "induction",
    ):
        index = json.loads((smoke_project / "figures" / stage / "index.json").read_text())
        assert any(f["key"] for f in index.values()), stage
        for fig in index.values():
            assert (smoke_project / "figures" / stage / fig["file"]).stat().st_size > 2000
            assert fig["function"].startswith("seedscope.")
        details = json.loads((smoke_project / "metrics" / "details" / f"{stage}.json").read_text())
        prov = details["provenance"]
        assert prov["suite"] == "mini-smoke" and prov["runs"] and prov["params_hash"]


def test_dvc_metrics_show_prints_headlines(smoke_project):
    from conftest import run_pipeline

    out = run_pipeline(smoke_project, "metrics", "show", "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    data = next(iter(shown.values()))["data"]
    assert "metrics/loss_correlation.json" in data

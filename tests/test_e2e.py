"""The whole pipeline, end to end, on the smoke profile (one `dvc repro` in a scratch copy)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import assert_loaded_modules_within_deps

from seedscope.pipeline.registry import STAGES

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


def _details(root, stage):
    return json.loads((root / "metrics" / "details" / f"{stage}.json").read_text())


def test_headline_metrics_are_sane(smoke_project):
    # every headline the details file names is in the numbers file, with a finite value
    for stage in ("loss_correlation", "convergence", "loss_pca", "behaviours", "trajectories",
                  "induction"):  # fmt: skip
        numbers, details = _metrics(smoke_project, stage), _details(smoke_project, stage)
        assert set(numbers) == set(details["headline"]), stage
        for key, entry in details["headline"].items():
            if entry["value"] is not None:
                assert math.isfinite(numbers[key]["value"]), (stage, key)
    corr = _metrics(smoke_project, "loss_correlation")
    for key, entry in corr.items():
        if key.startswith("pearson_"):
            assert -1 <= entry["ci_low"] <= entry["value"] <= entry["ci_high"] <= 1
    pca = _metrics(smoke_project, "loss_pca")
    assert "value" in pca["seed_variance_share"] and "value" in pca["n_seed_components"]
    conv = _metrics(smoke_project, "convergence")
    n_mid = conv["n_gaps_mid"]["value"]
    assert n_mid == sum(
        conv[f"n_gaps_{s}"]["value"] for s in ("closed", "shrank", "persisted", "grew")
    )
    if n_mid > 0:  # a fraction of zero gaps has no value; otherwise it must be there
        assert conv["fraction_gaps_closed"]["value"] == pytest.approx(
            conv["n_gaps_closed"]["value"] / n_mid
        )
    beh = _metrics(smoke_project, "behaviours")
    from seedscope.analyses.params import BEHAVIOURS

    beh_details = _details(smoke_project, "behaviours")["details"]
    items = pd.read_parquet(smoke_project / "results" / "behaviours" / "item_scores.parquet")
    final_items = items[items["step"] == items["step"].max()]
    sizes = {r["name"]: r["size"] for r in json.loads(
        (smoke_project / "results" / "manifest.json").read_text())["runs"]}  # fmt: skip
    seed_sds = []
    for behaviour in BEHAVIOURS:
        for size in ("small", "medium"):  # per size, never pooled
            entry = beh[f"{behaviour}_final_score_{size}"]
            assert {"value", "ci_low", "ci_high"} <= set(entry), (behaviour, size)
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], (behaviour, size)
            # recomputed from the item scores: mean over this size's seeds of each run's mean
            part = final_items[(final_items["behaviour"] == behaviour)
                               & final_items["run"].map(sizes).eq(size)]  # fmt: skip
            run_means = part.groupby("run")["score"].mean()
            assert len(run_means) == 2
            assert entry["value"] == pytest.approx(run_means.mean(), abs=1e-6), (behaviour, size)
            seed_sds.append(run_means.std(ddof=1))
            emerged = [r["emerged"] for r in beh_details["emergence"]
                       if r["behaviour"] == behaviour and r["size"] == size]  # fmt: skip
            assert len(emerged) == 2
            assert beh[f"{behaviour}_emerged_runs_{size}"]["value"] == sum(emerged)
        # planted: the corpus ends every planted sentence with its mark, and both trained
        # sizes learn it (the smoke profile is deterministic: 1.0 in both)
        if behaviour == "punctuation":
            for size in ("small", "medium"):
                assert beh[f"punctuation_final_score_{size}"]["ci_low"] > 0.5
                assert beh[f"punctuation_emerged_runs_{size}"]["value"] == 2
    assert beh["final_score_seed_sd"]["value"] == pytest.approx(np.mean(seed_sds), abs=1e-6)
    traj = _metrics(smoke_project, "trajectories")
    for key in ("s_fraction_difference", "s_fraction_difference_matched"):
        assert traj[key]["ci_low"] <= traj[key]["value"] <= traj[key]["ci_high"], key
    # the estimate is the mean over runs of per-run differences = difference of the means
    assert traj["s_fraction_difference"]["value"] == pytest.approx(
        traj["s_fraction_divergent"]["value"] - traj["s_fraction_random"]["value"], abs=2e-6
    )
    assert traj["s_fraction_difference_matched"]["value"] == pytest.approx(
        traj["s_fraction_divergent"]["value"] - traj["s_fraction_matched"]["value"], abs=2e-6
    )
    # planted flat curves carrying the real (block-resampled) residuals are not called
    # S-shaped at any noise level: the null of the shape classifier
    validation = _details(smoke_project, "trajectories")["details"]["validation"]
    assert [v["quantile"] for v in validation] == [0.5, 0.75, 0.9]
    assert all(v["flat_s_rate"] <= 0.1 for v in validation), validation
    assert traj["classifier_accuracy"]["value"] == pytest.approx(validation[0]["accuracy"])
    assert 0 <= traj["residual_autocorrelation"]["value"] <= 0.95
    # each set is classified with the larger of its own and the random tokens' autocorrelation
    noise = {
        r["set"]: r for r in _details(smoke_project, "trajectories")["details"]["noise_by_set"]
    }
    for name in ("divergent", "matched"):
        assert noise[name]["autocorrelation_used"] == pytest.approx(
            max(noise["random"]["autocorrelation_own"], noise[name]["autocorrelation_own"])
        ), name
    ind = _metrics(smoke_project, "induction")
    details = _details(smoke_project, "induction")["details"]
    n_runs = len(details["phase_changes"])
    formed = sum(r["formed"] for r in details["phase_changes"])
    assert ind["fraction_formed"]["value"] == pytest.approx(formed / n_runs)
    assert ind["fraction_jump_detected"]["value"] <= ind["fraction_formed"]["value"]
    assert ind["best_final_induction"]["value"] == pytest.approx(
        max(r["final_induction"] for r in details["phase_changes"]), rel=1e-5
    )
    # the probe draws each half without replacement: no accidental repeats (planted)
    assert details["probe"]["accidental_repeats"] == 0
    from seedscope.analyses.induction import icl_bands

    window = np.load(smoke_project / "results" / "corpus" / "eval_tokens.npy").shape[1]
    assert [tuple(b) for b in details["icl_bands"]] == list(icl_bands(window - 1))


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
            # titled, every axis labelled (seedscope.core.plots.figure_problems at registration)
            assert fig["problems"] == [], (stage, fig["file"], fig["problems"])
            # readable in the book: no text under 9 pt at the page width
            assert fig["smallest_text_pt"] >= 9, (stage, fig["file"], fig["smallest_text_pt"])
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


def test_each_stage_loaded_only_modules_inside_its_declared_deps(smoke_project):
    assert_loaded_modules_within_deps(smoke_project)

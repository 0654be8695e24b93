"""The null suite, end to end: every seed has an exact twin (a run reading the same hub repo,
so the same weights at every checkpoint). Seed statistics must then report no seed effect,
while the two sizes are still reported as different; twins get identical induction onsets.
(Behaviours on the twins: test_null_suite_behaviours.py.)"""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

TWIN_SUITE = "mini-smoke-twins"


def _twin_suite_yaml(smoke_suite: dict) -> dict:
    """The smoke suite with each size's second seed replaced by a twin of its first."""
    runs = []
    for size in ("small", "medium"):
        first = next(r for r in smoke_suite["runs"] if r["size"] == size)
        runs.append(first)
        runs.append({**first, "name": f"{first['name']}-twin", "seed": 49})
    return {
        **smoke_suite,
        "name": TWIN_SUITE,
        "description": "null suite: seeds are copies",
        "runs": runs,
    }


@pytest.fixture(scope="module")
def twin_results(smoke_project, tmp_path_factory):
    """Run suites, token_losses and analyses 1-3 on the twin suite, in-process, in a
    scratch root that reuses the smoke run's corpus and trained hub cache."""
    from seedscope.pipeline.registry import stage_function
    from seedscope.stages.common import resolve_suite
    from seedscope.stages.trajectories import select_trajectory_tokens
    from seedscope.suites.registry import PACKAGE_SUITES

    root = tmp_path_factory.mktemp("twins")
    suites = tmp_path_factory.mktemp("twin_suites")
    smoke_suite = yaml.safe_load((PACKAGE_SUITES / "mini-smoke.yaml").read_text())
    (suites / f"{TWIN_SUITE}.yaml").write_text(yaml.safe_dump(_twin_suite_yaml(smoke_suite)))
    for part in ("corpus", "hub"):
        shutil.copytree(smoke_project / "results" / part, root / "results" / part)
    params = yaml.safe_load((smoke_project / "params.yaml").read_text())
    params["suite"]["name"] = TWIN_SUITE
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEEDSCOPE_ROOT", str(root))
        mp.setenv("SEEDSCOPE_SUITES", str(suites))
        stage_function("suites")(params["suite"])
        stage_function("token_losses")(params["suite"], params["token_losses"])  # no probes
        for stage in ("loss_correlation", "convergence", "loss_pca"):
            out[stage] = stage_function(stage)(params["suite"], params[stage])
        resolved = resolve_suite(params["suite"])
        out["selection"] = select_trajectory_tokens(resolved, 60, 60, 0)
        out["logprobs"] = {
            run: np.load(root / "results" / "token_losses" / TWIN_SUITE / run / f"step-{step}.npy")
            for run in resolved.run_names
            for step in [resolved.final_step]
        }
    out["root"] = root
    return out


def _numbers(root, stage):
    return json.loads((root / "metrics" / f"{stage}.json").read_text())


def test_the_stages_return_their_typed_results(twin_results):
    from seedscope.stages.agreement import AgreementResult
    from seedscope.stages.convergence import ConvergenceResult
    from seedscope.stages.loss_pca import LossPcaResult

    assert isinstance(twin_results["loss_correlation"], AgreementResult)
    assert isinstance(twin_results["convergence"], ConvergenceResult)
    assert isinstance(twin_results["convergence"].mid, AgreementResult)
    assert twin_results["convergence"].final.outliers is None  # agreement tables only
    assert isinstance(twin_results["loss_pca"], LossPcaResult)
    assert "agreement_over_training" in twin_results["convergence"].figures


def test_twins_really_are_copies(twin_results):
    lp = twin_results["logprobs"]
    np.testing.assert_array_equal(lp["small-x21"], lp["small-x21-twin"])
    assert not np.allclose(lp["small-x21"][:, 1:], lp["medium-x21"][:, 1:])


def test_agreement_within_size_is_one_and_sizes_still_differ(twin_results):
    corr = _numbers(twin_results["root"], "loss_correlation")
    for key in ("pearson_within_small", "pearson_within_medium", "spearman_within_sizes"):
        assert [corr[key][k] for k in ("value", "ci_low", "ci_high")] == pytest.approx([1, 1, 1])
    assert corr["pearson_across_sizes"]["value"] < 0.99
    assert corr["pearson_within_minus_across"]["ci_low"] > 0


def test_no_seed_divergent_tokens_outliers_or_gaps(twin_results):
    res = twin_results["loss_correlation"]
    corr = _numbers(twin_results["root"], "loss_correlation")
    assert corr["n_seed_divergent_tokens"]["value"] == 0
    assert "top_enriched_odds_ratio" not in corr
    assert res.enrichment.empty and len(res.outliers) == 0 and len(res.odd_one_out) == 0
    assert corr["material_gap_fraction"]["value"] == 0
    assert corr["material_size_gap_fraction"]["value"] > 0
    assert res.n_size_divergent > 0 and not res.size_enrichment.empty
    assert twin_results["selection"]["divergent"].sum() == 0


def test_no_seed_gaps_to_close_but_size_gaps_reported(twin_results):
    conv = _numbers(twin_results["root"], "convergence")
    assert conv["n_gaps_mid"]["value"] == 0
    assert "value" not in conv["fraction_gaps_closed"]
    assert conv["n_size_gaps_mid"]["value"] > 0
    assert conv["final_pearson_within_small"]["value"] == pytest.approx(1)
    summary = twin_results["convergence"].gap_summary
    from seedscope.stages.convergence import convergence_sentence

    assert "nothing to close" in convergence_sentence(summary, 30, 60)


def test_no_seed_component_but_a_size_component(twin_results):
    res = twin_results["loss_pca"]
    pca = _numbers(twin_results["root"], "loss_pca")
    assert pca["n_seed_components"]["value"] == 0
    assert pca["seed_variance_share"]["value"] == 0
    assert all("no structure beyond noise" in d for d in res.seed_descriptions)
    assert any("small vs medium" in d or "medium vs small" in d for d in res.descriptions)
    assert res.stability.empty


def test_no_nan_or_inf_anywhere_in_metrics(twin_results):
    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, float):
            assert math.isfinite(x)

    for stage in ("loss_correlation", "convergence", "loss_pca"):
        for path in (
            twin_results["root"] / "metrics" / f"{stage}.json",
            twin_results["root"] / "metrics" / "details" / f"{stage}.json",
        ):
            text = path.read_text()
            assert "NaN" not in text and "Infinity" not in text, path
            walk(json.loads(text))
    table = pd.read_parquet(
        twin_results["root"] / "results" / "loss_pca" / "seed_component_tests.parquet"
    )
    assert np.isfinite(table[["eigenvalue", "ratio", "sd", "p_value"]].to_numpy()).all()


@pytest.fixture(scope="module")
def twin_induction(smoke_project, tmp_path_factory):
    """The induction stage on one size of the twin suite (a run and its twin), with small
    probe sets: about a minute on two CPU cores."""
    from seedscope.pipeline.registry import stage_function
    from seedscope.suites.registry import PACKAGE_SUITES

    root = tmp_path_factory.mktemp("twins_induction")
    suites = tmp_path_factory.mktemp("twin_suites_induction")
    smoke_suite = yaml.safe_load((PACKAGE_SUITES / "mini-smoke.yaml").read_text())
    twins = _twin_suite_yaml(smoke_suite)
    twins["runs"] = [r for r in twins["runs"] if r["size"] == "small"]
    (suites / f"{TWIN_SUITE}.yaml").write_text(yaml.safe_dump(twins))
    for part in ("corpus", "hub"):
        shutil.copytree(smoke_project / "results" / part, root / "results" / part)
    params = yaml.safe_load((smoke_project / "params.yaml").read_text())
    params["suite"]["name"] = TWIN_SUITE
    small = {"n_seqs": 4, "icl_windows": 16, "n_perm": 50, "n_boot": 20}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEEDSCOPE_ROOT", str(root))
        mp.setenv("SEEDSCOPE_SUITES", str(suites))
        stage_function("suites")(params["suite"])
        sweep = {**params["token_losses"], "steps": ["final", "mid"]}
        induction = {**params["induction"], **small}
        stage_function("token_losses")(params["suite"], sweep, induction=induction)
        res = stage_function("induction")(params["suite"], induction)
    return SimpleNamespace(res=res, root=root)


def test_twins_have_identical_induction_onsets(twin_induction):
    from seedscope.stages.induction import InductionResult

    assert isinstance(twin_induction.res, InductionResult)
    changes = twin_induction.res.changes.set_index("run")
    columns = ["fitted_step", "onset", "end", "step", "icl_step", "bump_step"]
    columns = [c for c in columns if c in changes.columns]
    assert len(changes) == 2 and {"fitted_step", "onset"} <= set(columns)
    first, twin = changes.iloc[0], changes.iloc[1]
    np.testing.assert_array_equal(
        first[columns].to_numpy(dtype=float), twin[columns].to_numpy(dtype=float)
    )
    assert first["jump_detected"] == twin["jump_detected"]
    assert first["icl_detected"] == twin["icl_detected"]


def test_twin_induction_headlines_are_finite(twin_induction):
    text = (twin_induction.root / "metrics" / "induction.json").read_text()
    assert "NaN" not in text and "Infinity" not in text


def test_twin_induction_details_are_finite(twin_induction):
    text = (twin_induction.root / "metrics" / "details" / "induction.json").read_text()
    assert "NaN" not in text and "Infinity" not in text

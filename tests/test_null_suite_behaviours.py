"""The null suite for analysis 4: every seed has an exact twin (a run reading the same hub
repo). The behaviours stage must report identical emergence steps, zero seed spread and no
inf/NaN, while the two sizes are still scored apart."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from test_null_suite import TWIN_SUITE, _twin_suite_yaml

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def twin_behaviours(smoke_project, tmp_path_factory):
    """Suites + behaviours on the twin suite, in-process, reusing the smoke run's corpus and
    trained hub cache."""
    from seedscope.pipeline.registry import stage_function
    from seedscope.suites.registry import PACKAGE_SUITES

    root = tmp_path_factory.mktemp("twins_behaviours")
    suites = tmp_path_factory.mktemp("twin_suites_behaviours")
    smoke_suite = yaml.safe_load((PACKAGE_SUITES / "mini-smoke.yaml").read_text())
    (suites / f"{TWIN_SUITE}.yaml").write_text(yaml.safe_dump(_twin_suite_yaml(smoke_suite)))
    for part in ("corpus", "hub"):
        shutil.copytree(smoke_project / "results" / part, root / "results" / part)
    params = yaml.safe_load((smoke_project / "params.yaml").read_text())
    params["suite"]["name"] = TWIN_SUITE
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEEDSCOPE_ROOT", str(root))
        mp.setenv("SEEDSCOPE_SUITES", str(suites))
        stage_function("suites")(params["suite"])
        sweep = {**params["token_losses"], "steps": ["final", "mid"]}
        stage_function("token_losses")(params["suite"], sweep, behaviours=params["behaviours"])
        res = stage_function("behaviours")(params["suite"], params["behaviours"])
    return SimpleNamespace(res=res, root=root)


def test_twins_emerge_at_the_same_step(twin_behaviours):
    from seedscope.stages.behaviours import BehavioursResult

    assert isinstance(twin_behaviours.res, BehavioursResult)
    em = twin_behaviours.res.emergence
    for (behaviour, size), part in em.groupby(["behaviour", "size"]):
        steps = part["emergence_step"].fillna(-1)
        assert steps.nunique() == 1, (behaviour, size)
        assert part["emerged"].nunique() == 1
    summary = twin_behaviours.res.spread
    done = summary[summary["n_emerged"] > 0]
    assert (done["range"] == 0).all() and (done["sd"] == 0).all()
    assert set(summary["emerged"]) <= {"0/2 runs", "2/2 runs"}


def test_twins_have_zero_seed_spread_and_no_nan(twin_behaviours):
    final = twin_behaviours.res.final
    assert (final["seed_sd"] == 0).all() and (final["run_min"] == final["run_max"]).all()
    assert np.isfinite(final.select_dtypes("number").to_numpy()).all()
    mid_final = twin_behaviours.res.mid_vs_final
    assert len(mid_final) == 2 * mid_final["behaviour"].nunique()  # both sizes
    spread_cols = ["sd_mid", "sd_final", "sd_change", "sd_change_low", "sd_change_high"]
    assert (mid_final[spread_cols] == 0).all().all()
    # 2 seeds per size can never detect a drop of the seed sd: NaN here, None in the JSON
    assert mid_final["detectable_ratio"].isna().all()
    numeric = mid_final.select_dtypes("number").drop(
        columns=["detectable_ratio", "detectable_change"]
    )
    assert np.isfinite(numeric.to_numpy()).all()
    assert "cannot exclude 0" in twin_behaviours.res.sentences["mid_vs_final"]
    numbers = json.loads((twin_behaviours.root / "metrics" / "behaviours.json").read_text())
    assert numbers["final_score_seed_sd"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    for path in ("behaviours.json", "details/behaviours.json"):
        text = (twin_behaviours.root / "metrics" / path).read_text()
        assert "NaN" not in text and "Infinity" not in text, path
    for entry in numbers.values():
        assert all(math.isfinite(v) for v in entry.values())


def test_twins_sizes_still_scored_apart(twin_behaviours):
    final = twin_behaviours.res.final.query("metric == 'score'")
    assert set(final["size"]) == {"small", "medium"}
    wide = final.pivot_table(index="behaviour", columns="size", values="value")
    assert (wide["small"] != wide["medium"]).any()  # two different models per size

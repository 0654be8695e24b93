"""dvc.yaml, the stage runner and the notebooks agree; notebooks are thin and clean."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from seedscope.config import from_section
from seedscope.errors import SeedscopeError
from seedscope.pipeline import SECTION_CONFIGS, STAGES, config_class, read_params, validate_stage

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_stage_is_in_dvc_yaml_with_the_same_params_and_its_notebook():
    assert list(DVC) == list(STAGES)
    for name, stage in STAGES.items():
        spec = DVC[name]
        assert spec["cmd"] == f"seedscope stage {name}"
        assert spec["params"] == list(stage.sections), name
        deps = spec["deps"]
        assert f"notebooks/{stage.notebook}.ipynb" in deps and "src/seedscope" in deps
        assert not any(d.endswith(".ipynb") and d.startswith("reports") for d in deps)


def test_every_stage_dep_is_an_upstream_out_or_source():
    produced = {}
    for name, spec in DVC.items():
        for kind in ("outs", "metrics", "plots"):
            for out in spec.get(kind, []):
                produced[out if isinstance(out, str) else next(iter(out))] = name
    order = list(DVC)
    for name, spec in DVC.items():
        for dep in spec["deps"]:
            if dep.startswith(("notebooks/", "src/")):
                continue
            assert dep in produced, f"{name} depends on {dep}, which no stage writes"
            assert order.index(produced[dep]) < order.index(name)


@pytest.mark.parametrize(
    "profile",
    [
        "params.yaml",
        "profiles/smoke.yaml",
        "profiles/induction.yaml",
        "profiles/crfm.yaml",
        "profiles/polypythia-160m.yaml",
    ],
)
def test_shipped_params_validate_for_every_stage(profile):
    params = read_params(ROOT / profile)
    for name in STAGES:
        validate_stage(name, params)


def test_unknown_key_names_section_key_and_closest():
    with pytest.raises(SeedscopeError, match=r"suite\.nmae.*Did you mean 'name'"):
        validate_stage("suites", {"suite": {"nmae": "mini"}})


def test_wrong_type_is_named():
    with pytest.raises(SeedscopeError, match=r"suite\.runs must be"):
        validate_stage("suites", {"suite": {"runs": 3}})


def test_mid_after_final_is_rejected():
    with pytest.raises(SeedscopeError, match="not before"):
        validate_stage("suites", {"suite": {"mid_step": 1000, "final_step": 500}})


def test_unknown_section_is_rejected(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("suite: {}\nloss_corelation: {}\n")
    with pytest.raises(SeedscopeError, match="Did you mean 'loss_correlation'"):
        read_params(path)


def test_every_section_has_a_config_with_defaults():
    for section in SECTION_CONFIGS:
        from_section(config_class(section), {}, section)


def _code(nb_path: Path) -> tuple[dict, str]:
    nb = json.loads(nb_path.read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    return nb, code


@pytest.mark.parametrize("stage", list(STAGES.values()), ids=list(STAGES))
def test_notebooks_are_thin_clean_and_parameterised(stage):
    nb, code = _code(ROOT / "notebooks" / f"{stage.notebook}.ipynb")
    assert not re.search(r"^\s*(def|class) ", code, re.M), "logic belongs in src/seedscope"
    assert "params.yaml" not in code, "notebooks receive params, never read params.yaml"
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and not c.get("execution_count") for c in cells)
    params_cells = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params_cells) == 1
    declared = set(re.findall(r"^(\w+)\s*=", "".join(params_cells[0]["source"]), re.M))
    assert declared == set(stage.sections)

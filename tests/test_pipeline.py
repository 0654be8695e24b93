"""dvc.yaml, the stage runner and the notebooks agree; notebooks are thin and clean."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from seedscope.codedeps import PACKAGE_DATA, stage_code_deps, stage_modules
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
        assert f"notebooks/{stage.notebook}.ipynb" in deps
        assert not any(d.endswith(".ipynb") and d.startswith("reports") for d in deps)


def test_every_stage_depends_on_exactly_its_code_import_closure():
    """dvc.yaml lists, per stage, the package files its code can import (`codedeps`): a
    missed one would leave that stage's results stale after an edit; so the lists must be
    exactly the computed closure (regenerate them from `stage_code_deps` after adding an
    import)."""
    for name in STAGES:
        listed = [d for d in DVC[name]["deps"] if d.startswith("src/")]
        assert listed == stage_code_deps(name), (
            f"dvc.yaml stage {name}: deps under src/ should be {stage_code_deps(name)}"
        )
    for dep in {d for spec in DVC.values() for d in spec["deps"] if d.startswith("src/")}:
        assert (ROOT / dep).exists(), dep


def test_the_import_closure_follows_local_imports_glue_calls_and_config_classes():
    """The closure reaches what a static `import` scan of module tops would miss: imports
    inside functions, the stage glue's calls into other glue functions, config classes
    imported by name, and package data folders; and it leaves other analyses out."""
    pca = stage_modules("loss_pca")
    assert {"pca", "stage_params", "workflow", "pipeline"} <= set(pca)
    assert not {"behaviours", "induction", "trajectories", "report"} & set(pca)
    # token_losses measures the behaviour and induction probes (workflow.behaviour_probe /
    # induction_probe import them inside functions) and is configured by sweep.SweepConfig
    assert {"behaviours", "induction", "sweep", "losses"} <= set(stage_modules("token_losses"))
    assert "pca" not in stage_modules("token_losses")
    assert "src/seedscope/probes" in stage_code_deps("token_losses")
    assert "src/seedscope/templates" in stage_code_deps("report")
    # editing the PCA module re-runs only the PCA stage
    assert [n for n in STAGES if "pca" in stage_modules(n)] == ["loss_pca"]


def test_the_closure_runs_shared_modules_by_function(tmp_path):
    """The runner and the glue count by function: training does not depend on the sweep
    (only `token_losses`' pre-flight uses it); a notebook that hides its glue calls behind
    an alias is refused rather than read wrong."""
    assert "sweep" not in stage_modules("train") and "sweep" in stage_modules("token_losses")
    assert "corpus" in stage_modules("corpus") and "pca" not in stage_modules("report")
    from seedscope import codedeps

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from seedscope import workflow as wf\nwf.x()")]
    path = tmp_path / "aliased.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match="no alias"):
        codedeps._notebook(path)
    nb.cells = [
        nbformat.v4.new_code_cell("from seedscope import workflow\nworkflow.loss_pca_stage()")
    ]
    nbformat.write(nb, path)
    assert ("workflow", "loss_pca_stage") in codedeps._notebook(path)
    # a cell magic's body is read as Python; a cell that is not Python is refused
    nb.cells = [nbformat.v4.new_code_cell("%%time\nfrom seedscope import workflow\nworkflow.f()")]
    nbformat.write(nb, path)
    assert ("workflow", "f") not in codedeps._notebook(path)  # not a glue function
    nb.cells = [
        nbformat.v4.new_code_cell(
            "%%time\nfrom seedscope import workflow\nworkflow.loss_pca_stage()"
        )
    ]
    nbformat.write(nb, path)
    assert ("workflow", "loss_pca_stage") in codedeps._notebook(path)
    nb.cells = [nbformat.v4.new_code_cell("%%bash\necho $HOME")]
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match="not Python"):
        codedeps._notebook(path)
    # a glue function that loads a params section's config by name brings its module
    assert ("stage_params", None) in codedeps._configs(
        ast.parse("def f():\n    stage_config('loss_pca', {})")
    )


def test_every_package_data_folder_is_declared_with_the_module_that_reads_it():
    """A module that reads a folder of package data (`Path(__file__).with_name(...)`, a
    jinja2 `PackageLoader`) must list it in `codedeps.PACKAGE_DATA`."""
    pattern = re.compile(r'with_name\("(\w+)"\)|PackageLoader\("seedscope", "(\w+)"\)')
    for path in sorted((ROOT / "src" / "seedscope").glob("*.py")):
        for match in pattern.finditer(path.read_text()):
            folder = match.group(1) or match.group(2)
            if (ROOT / "src" / "seedscope" / folder).is_dir():
                assert folder in PACKAGE_DATA.get(path.stem, ()), (path.stem, folder)


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

"""dvc.yaml, the stage runner and the notebooks agree; notebooks are thin and clean."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from seedscope.core.config import from_section
from seedscope.core.errors import SeedscopeError
from seedscope.pipeline.codedeps import PACKAGE_DATA, stage_code_deps, stage_modules
from seedscope.pipeline.registry import SECTION_CONFIGS, STAGES, stage_function
from seedscope.pipeline.runner import config_class, read_params, validate_stage

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_dvc_yaml_is_generated_from_the_stage_registry():
    """dvc.yaml is exactly what the registry and the import closures generate (`seedscope
    dvc-yaml` rewrites it): nothing in it is maintained by hand."""
    from seedscope.pipeline.dvcfile import dvc_yaml

    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml(), "run `seedscope dvc-yaml`"


def test_every_stage_has_its_notebook_glue_module_and_one_number():
    """One record per stage names everything: the notebook `<number>_<name>` (titled with
    the same number), the glue module `seedscope.stages.<name>` the notebook imports (and
    its `<name>_stage` function), the report's chapter number for the six analyses."""
    from seedscope.pipeline.answers import ANSWERS

    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == sorted(
        s.notebook for s in STAGES.values()
    )
    for name, stage in STAGES.items():
        nb, code = _code(ROOT / "notebooks" / f"{stage.notebook}.ipynb")
        title = "".join(nb["cells"][0]["source"]).splitlines()[0]
        assert title == f"# {stage.number} · {stage.title}", name
        assert f"from seedscope.stages import {name} as stage" in code, name
        assert callable(stage_function(name))
    assert [(a.stage, a.number) for a in ANSWERS] == [
        (s.name, s.number) for s in STAGES.values() if s.number in "123456"
    ]


def test_every_notebook_opens_with_what_backs_it_and_every_name_resolves():
    """The first cell (the question) ends with a "Backed by" paragraph naming the code the
    notebook runs (its glue module `seedscope.stages.<name>` among them) and the tests behind
    it. Every module named exists, every test file exists and imports one of the named
    modules or runs this stage itself (`stage_function` and the stage's name): a rename
    cannot leave it stale."""
    import importlib.util

    for name, stage in STAGES.items():
        nb, _ = _code(ROOT / "notebooks" / f"{stage.notebook}.ipynb")
        first = "".join(nb["cells"][0]["source"])
        paragraphs = [p for p in first.split("\n\n") if p.startswith("**Backed by**")]
        assert len(paragraphs) == 1, f"{name}: no 'Backed by' paragraph in the first cell"
        named = re.findall(r"`([^`]+)`", paragraphs[0])
        modules = [n for n in named if n.startswith("seedscope.")]
        tests = [n for n in named if n.startswith("tests/")]
        assert f"seedscope.stages.{name}" in modules and tests, name
        for module in modules:
            assert importlib.util.find_spec(module) is not None, (name, module)
        science = [m for m in modules if not m.startswith("seedscope.stages.")]
        assert science, name
        for test in tests:
            text = (ROOT / test).read_text()
            imports = [
                rf"\b{re.escape(m)}\b|\b{re.escape(m.rsplit('.', 1)[0])} import [^\n]*"
                rf"\b{m.rsplit('.', 1)[1]}\b"
                for m in science
            ]
            runs_stage = "stage_function(" in text and f'"{name}"' in text
            assert any(re.search(i, text) for i in imports) or runs_stage, (name, test)


def test_every_computing_stage_returns_a_typed_frozen_result_with_named_figures():
    """Each stage that computes (all but `suites`, whose result is the manifest it writes,
    and `report`, the page) declares a frozen, keyword-only `StageResult` subclass as its
    return type, so a notebook reads `res.figures["name"]` and `res.<table>`, never a key or
    a position (the null-suite tests check that the running stages return one)."""
    import dataclasses
    import typing

    from seedscope.stages.common import StageResult

    for name in STAGES:
        if name in ("suites", "report"):
            continue
        hint = typing.get_type_hints(stage_function(name))["return"]
        assert isinstance(hint, type) and issubclass(hint, StageResult), (name, hint)
        assert hint.__dataclass_params__.frozen, name
        fields = {f.name: f for f in dataclasses.fields(hint)}
        assert {"figures", "metrics"} <= set(fields), name
        assert len(fields) > 2, f"{name}: a result with no tables of its own"
        assert all(f.kw_only for f in fields.values()), f"{name}: construct by keyword only"


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
    inside functions, the common glue a stage calls, config classes imported by name,
    package folders' `__init__` and package data folders; and it leaves other analyses out."""
    pca = stage_modules("loss_pca")
    assert {"analyses.pca", "analyses.params", "stages.loss_pca", "stages.common"} <= set(pca)
    assert {"__init__", "analyses.__init__", "stages.__init__"} <= set(pca)
    assert not {"analyses.behaviours", "analyses.induction", "analyses.trajectories"} & set(pca)
    assert "pipeline.report" not in pca
    # token_losses measures the behaviour and induction probes (stages.common's
    # behaviour_probe / induction_probe import them inside functions) and is configured by
    # logprobs.sweep.SweepConfig
    assert {"analyses.behaviours", "analyses.induction", "logprobs.sweep", "logprobs.engine"} <= (
        set(stage_modules("token_losses"))
    )
    assert "analyses.pca" not in stage_modules("token_losses")
    assert "src/seedscope/analyses/probes" in stage_code_deps("token_losses")
    assert "src/seedscope/pipeline/templates" in stage_code_deps("report")
    # editing the PCA module re-runs only the PCA stage
    assert [n for n in STAGES if "analyses.pca" in stage_modules(n)] == ["loss_pca"]
    assert [n for n in STAGES if "stages.loss_pca" in stage_modules(n)] == ["loss_pca"]


def test_adding_a_stage_reruns_no_other_stage():
    """The stage registry is every stage's definition, but what it says about a stage is in
    that stage's dvc.yaml entry (notebook, params, config module, outs), which DVC compares
    itself; so only the report (its chapter titles) lists registry.py, and registering an
    analysis re-runs that analysis and the report, not training."""
    from seedscope.pipeline.codedeps import DEFINITION, module_file

    for name in STAGES:
        assert DEFINITION in stage_modules(name)  # loaded (the runtime check allows it) ...
        listed = module_file(DEFINITION) in DVC[name]["deps"]
        assert listed == (name == "report"), name  # ... but a dep of the report alone


def test_the_closure_runs_shared_modules_by_function(tmp_path):
    """The runner and the common glue count by function: training does not depend on the
    sweep (only `token_losses`' pre-flight uses it); a notebook that hides a shared module
    behind a name the closure cannot follow is refused rather than read wrong."""
    sweep = "logprobs.sweep"
    assert sweep not in stage_modules("train") and sweep in stage_modules("token_losses")
    assert "data.corpus" in stage_modules("corpus")
    assert "analyses.pca" not in stage_modules("report")
    from seedscope.pipeline import codedeps

    def notebook(code: str) -> Path:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(code)]
        path = tmp_path / "nb.ipynb"
        nbformat.write(nb, path)
        return path

    with pytest.raises(ValueError, match="by name"):
        codedeps._notebook(notebook("from seedscope.stages import common\ncommon.x()"))
    with pytest.raises(ValueError, match="by name"):
        codedeps._notebook(notebook("import seedscope.stages.common\n"))
    got = codedeps._notebook(
        notebook("from seedscope.stages import loss_pca as stage\nstage.loss_pca_stage()")
    )
    assert got == {("stages.loss_pca", None)}
    common = "from seedscope.stages.common import resolve_suite\nresolve_suite({})"
    assert codedeps._notebook(notebook(common)) == {("stages.common", "resolve_suite")}
    # a cell magic's body is read as Python; a cell that is not Python is refused
    got = codedeps._notebook(notebook("%%time\nfrom seedscope.stages import pca as stage"))
    assert got == {("stages.__init__", None)}  # no such module: only its folder is reached
    got = codedeps._notebook(notebook("%%time\nfrom seedscope.stages import loss_pca as s"))
    assert got == {("stages.loss_pca", None)}
    with pytest.raises(ValueError, match="not Python"):
        codedeps._notebook(notebook("%%bash\necho $HOME"))
    # a glue function that loads a params section's config by name brings its module
    assert ("analyses.params", None) in codedeps._configs(
        ast.parse("def f():\n    stage_config('loss_pca', {})")
    )
    # a module reached brings the `__init__` of every folder above it
    assert codedeps._parents("analyses.pca") == {("__init__", None), ("analyses.__init__", None)}


def test_every_package_data_folder_is_declared_with_the_module_that_reads_it():
    """A module that reads a folder of package data (`Path(__file__).with_name(...)`, a
    jinja2 `PackageLoader`) must list it in `codedeps.PACKAGE_DATA`."""
    from seedscope.pipeline.codedeps import PACKAGE_DIR

    pattern = re.compile(
        r'with_name\("(\w+)"\)|PackageLoader\("seedscope[.\w]*", "(\w+)"\)|(__file__\)\.parent$)',
        re.M,
    )
    found = 0
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        key = ".".join(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        for match in pattern.finditer(path.read_text()):
            folder = match.group(1) or match.group(2) or ""
            rel = path.parent.relative_to(PACKAGE_DIR) / folder
            if (PACKAGE_DIR / rel).is_dir():
                assert rel.as_posix() in PACKAGE_DATA.get(key, ()), (key, rel)
                found += 1
    assert found == 4  # suites, probes, and the templates (read by two modules)


def test_every_stage_dep_is_an_upstream_out_or_source():
    produced = {}
    for name, spec in DVC.items():
        for kind in ("outs", "metrics", "plots"):
            for out in spec.get(kind, []):
                produced[out if isinstance(out, str) else next(iter(out))] = name
    order = list(DVC)
    for name, spec in DVC.items():
        for dep in spec["deps"]:
            if dep.startswith(("notebooks/", "src/")) or dep == "tests":
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


def test_bytecode_never_changes_a_code_dep():
    """Folders listed as deps (`src/seedscope/suites`, `tests`) hold Python modules: the
    bytecode an import writes beside them must not change their DVC hash (a fresh clone or
    another Python would otherwise re-run every stage)."""
    ignored = (ROOT / ".dvcignore").read_text().split()
    assert "__pycache__/" in ignored and "*.pyc" in ignored
    folders = [d for spec in DVC.values() for d in spec["deps"] if (ROOT / d).is_dir()]
    assert any(list((ROOT / d).glob("*.py")) for d in folders)  # the case this guards

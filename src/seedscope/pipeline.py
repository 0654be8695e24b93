"""The stage runner: validate a stage's params, run its notebook with papermill, render HTML.

`dvc.yaml` calls `seedscope stage NAME` for every stage. The runner reads only the params
sections the stage declares (the same list `dvc.yaml` tracks; a test checks they agree),
validates them before any heavy work (a bad value exits with status 2 and one line), then
executes `notebooks/NN_NAME.ipynb` with papermill, receiving those sections as parameters,
and writes the executed notebook and its HTML rendering (code hidden, outputs kept) to
`reports/notebooks/`, with volatile metadata (timings, kernel ids) stripped.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from seedscope.errors import SeedscopeError, closest
from seedscope.io import atomic_path
from seedscope.paths import project_root, reports_dir


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: its notebook and the params sections it reads."""

    name: str
    notebook: str
    sections: tuple[str, ...]


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("suites", "01_suites", ("suite",)),
        Stage("corpus", "02_corpus", ("corpus",)),
        Stage("train", "03_train", ("suite", "corpus", "train")),
        Stage("token_losses", "04_token_losses", ("suite", "token_losses")),
        Stage("loss_correlation", "05_loss_correlation", ("suite", "loss_correlation")),
        Stage("convergence", "06_convergence", ("suite", "convergence")),
        Stage("loss_pca", "07_loss_pca", ("suite", "loss_pca")),
        Stage("behaviours", "08_behaviours", ("suite", "behaviours")),
        Stage("trajectories", "09_trajectories", ("suite", "trajectories")),
        Stage("induction", "10_induction", ("suite", "induction")),
        Stage("report", "11_report", ("suite", "report")),
    ]
}

# params section -> "module:Class" of its validated config.
SECTION_CONFIGS: dict[str, str] = {
    "suite": "seedscope.config:SuiteConfig",
    "corpus": "seedscope.corpus:CorpusConfig",
    "train": "seedscope.train:TrainConfig",
    "token_losses": "seedscope.sweep:SweepConfig",
    "loss_correlation": "seedscope.stage_params:LossCorrelationParams",
    "convergence": "seedscope.stage_params:ConvergenceParams",
    "loss_pca": "seedscope.stage_params:LossPcaParams",
    "behaviours": "seedscope.stage_params:BehavioursParams",
    "trajectories": "seedscope.stage_params:TrajectoriesParams",
    "induction": "seedscope.stage_params:InductionParams",
    "report": "seedscope.stage_params:ReportParams",
}


def config_class(section: str) -> type:
    module, cls = SECTION_CONFIGS[section].split(":")
    return getattr(importlib.import_module(module), cls)


def read_params(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read params.yaml (the pipeline's, by default); unknown sections are rejected."""
    path = Path(path) if path else project_root() / "params.yaml"
    if not path.exists():
        raise SeedscopeError(f"{path} does not exist.", "run from a seedscope checkout.")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SeedscopeError(f"{path} is not valid YAML ({exc}).", "fix its syntax.") from None
    if not isinstance(params, dict):
        raise SeedscopeError(f"{path} must be a mapping of sections.", "see README.")
    for key in params:
        if key not in SECTION_CONFIGS:
            raise SeedscopeError(
                f"Unknown params section {key!r} in {path.name}.{closest(str(key), list(SECTION_CONFIGS))}",
                f"valid sections: {', '.join(SECTION_CONFIGS)}.",
            )
    return params


def validate_stage(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Validate the sections stage `name` reads; return them as plain dicts for papermill."""
    from seedscope.config import SuiteConfig, from_section

    stage = get_stage(name)
    resolved = {}
    for section in stage.sections:
        config = from_section(config_class(section), params.get(section), section)
        if isinstance(config, SuiteConfig):
            config.resolve()  # unknown suite/run, step off the schedule, mid after final
        resolved[section] = params.get(section) or {}
    return resolved


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise SeedscopeError(
            f"Unknown stage {name!r}.{closest(name, list(STAGES))}",
            f"stages: {', '.join(STAGES)}.",
        )
    return STAGES[name]


def run_stage(name: str, params_path: str | os.PathLike[str] | None = None) -> Path:
    """Validate, execute and render one stage's notebook; return the rendered HTML path."""
    import papermill

    stage = get_stage(name)
    parameters = validate_stage(name, read_params(params_path))
    root = project_root()
    source = root / "notebooks" / f"{stage.notebook}.ipynb"
    out_dir = reports_dir() / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / f"{stage.notebook}.ipynb"
    os.environ["SEEDSCOPE_ROOT"] = str(root)
    with atomic_path(executed) as tmp:
        papermill.execute_notebook(
            str(source),
            str(tmp),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(root),
            progress_bar=False,
            log_output=False,
            report_mode=False,
        )
        strip_volatile(tmp)
    html = executed.with_suffix(".html")
    render_html(executed, html)
    return html


def strip_volatile(path: Path) -> None:
    """Remove timings, kernel ids and execution counts so reruns differ only in outputs."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.execution_count = None
            for output in cell.get("outputs", []):
                if "execution_count" in output:
                    output["execution_count"] = None
    nbformat.write(nb, path)


def render_html(notebook: Path, html: Path) -> None:
    """HTML with code hidden (the .ipynb beside it holds the code) and outputs kept."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    with atomic_path(html) as tmp:
        tmp.write_text(body)


def scratch_copy(dest: str | os.PathLike[str], profile: str | None = None) -> Path:
    """Copy the project's source files (git-tracked and untracked-but-not-ignored; no
    results) to `dest`, optionally with `profiles/<profile>.yaml` as its params.yaml, and
    make it a git + DVC repo: a place to run the pipeline without touching this one."""
    import shutil
    import subprocess

    root = project_root()
    dest = Path(dest)
    listed = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=root,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        src = root / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    if profile:
        shutil.copyfile(root / "profiles" / f"{profile}.yaml", dest / "params.yaml")
    for stale in ("dvc.lock",):
        (dest / stale).unlink(missing_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest

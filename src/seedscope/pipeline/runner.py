"""The stage runner: validate a stage's params, run its notebook with papermill, render HTML.

`dvc.yaml` calls `seedscope stage NAME` for every stage. The runner reads only the params
sections the stage declares (the same list `dvc.yaml` tracks; a test checks they agree),
validates them before any heavy work (a bad value exits with status 2 and one line), runs
the stage's pre-flight checks on the project (`preflight`: upstream inputs present, outputs
writable, checkpoints reachable, ...), then executes `notebooks/NN_NAME.ipynb` with
papermill, receiving those sections as parameters, and writes the executed notebook and its
HTML rendering (code hidden, outputs kept) to `reports/notebooks/`, with volatile metadata
(timings, kernel ids) stripped.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from seedscope.core.errors import SeedscopeError, closest, yaml_problem
from seedscope.core.io import atomic_path
from seedscope.core.paths import project_root, reports_dir
from seedscope.pipeline.registry import SECTION_CONFIGS, get_stage


def config_class(section: str) -> type:
    """A params section's config class (`registry.SECTION_CONFIGS`, imported by name)."""
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
        raise SeedscopeError(
            f"{path} is not valid YAML ({yaml_problem(exc)}).", "fix its syntax."
        ) from None
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
    from seedscope.core.config import SuiteConfig, from_section

    stage = get_stage(name)
    resolved = {}
    configs = {}
    for section in stage.sections:
        config = from_section(config_class(section), params.get(section), section)
        if isinstance(config, SuiteConfig):
            configs["suite"] = config.resolve()  # unknown suite/run, step off the schedule
        else:
            configs[section] = config
        resolved[section] = params.get(section) or {}
    suite = configs.get("suite")
    for section, config in configs.items():
        steps = getattr(config, "steps", None)
        if suite is not None and section != "suite" and steps is not None:
            _check_steps(section, steps, suite)
    return resolved


def _check_steps(section: str, steps: Any, resolved: Any) -> None:
    """Every step a section names ('mid', 'final', 'all' where allowed, or an integer) is
    on the suite's schedule; the error names `section.steps`."""
    if steps in ("all", "auto"):
        return
    values = list(steps) if isinstance(steps, list | tuple) else [steps]
    allowed = (
        ("mid", "final", "all") if section == "token_losses" else ("first", "mid", "final", "auto")
    )
    for step in values:
        if isinstance(step, str) and section == "token_losses" and step.isdigit():
            step = int(step)
        if isinstance(step, str):
            if step not in allowed:
                raise SeedscopeError(
                    f"{section}.steps names {step!r}, which is not a step.",
                    f"use {', '.join(map(repr, allowed))} or integers on the schedule "
                    f"(see `seedscope checkpoints {resolved.suite.name}`).",
                )
            continue
        try:
            resolved.suite.check_step(step)
        except SeedscopeError as exc:
            raise SeedscopeError(f"{section}.steps: {exc.problem}", exc.fix) from None


def run_stage(name: str, params_path: str | os.PathLike[str] | None = None) -> Path:
    """Validate, execute and render one stage's notebook; return the rendered HTML path."""
    stage = get_stage(name)
    params = read_params(params_path)
    parameters = validate_stage(name, params)
    preflight(name, params)
    clean_partial_writes(*(project_root() / out for out in stage_io(name)[1]))
    import papermill
    from papermill.exceptions import PapermillExecutionError

    root = project_root()
    source = root / "notebooks" / f"{stage.notebook}.ipynb"
    out_dir = reports_dir() / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / f"{stage.notebook}.ipynb"
    os.environ["SEEDSCOPE_ROOT"] = str(root)
    # Hugging Face's per-file "Loading weights" / download bars are noise in a chapter and
    # on the terminal alike: off (the stage's own bars go to the terminal, see quiet_kernel).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with atomic_path(executed) as tmp, tempfile.TemporaryDirectory() as staging:
        staged = Path(staging) / source.name
        with_setup_cell(source, staged, name)
        try:
            papermill.execute_notebook(
                str(staged),
                str(tmp),
                parameters=parameters,
                kernel_name="python3",
                cwd=str(root),
                progress_bar=True,  # cells executed, on the terminal
                log_output=False,
                report_mode=False,
                # the kernel's own stderr stays the terminal's (quiet_kernel writes there)
                extra_arguments=["--IPKernelApp.capture_fd_output=False"],
            )
        except PapermillExecutionError as exc:
            if exc.ename != "SeedscopeError":
                raise
            # A user error the pre-flight could not see: still one line, not a traceback.
            raise SeedscopeError(f"Stage {name!r} stopped: {exc.evalue}") from None
        clean_outputs(tmp, name)
        strip_volatile(tmp)
    record_modules(name)  # the runner's own, beside the kernel's (when asked to record)
    html = executed.with_suffix(".html")
    render_html(executed, html)
    return html


# ----------------------------------------------------------------------------- pre-flight


def stage_io(name: str) -> tuple[list[str], list[str], dict[str, str]]:
    """(upstream data deps, outputs, output -> producing stage) of stage `name`, read from the
    project's dvc.yaml (empty when the project has none)."""
    path = project_root() / "dvc.yaml"
    if not path.is_file():
        return [], [], {}
    try:
        stages = (yaml.safe_load(path.read_text()) or {}).get("stages") or {}
    except yaml.YAMLError:
        return [], [], {}
    producers: dict[str, str] = {}
    outs_of: dict[str, list[str]] = {}
    for stage_name, spec in stages.items():
        outs = []
        for kind in ("outs", "metrics", "plots"):
            for out in (spec or {}).get(kind, []) or []:
                outs.append(out if isinstance(out, str) else next(iter(out)))
        outs_of[stage_name] = outs
        producers.update(dict.fromkeys(outs, stage_name))
    spec = stages.get(name) or {}
    deps = [
        d
        for d in spec.get("deps", []) or []
        if isinstance(d, str) and not d.startswith(("notebooks/", "src/"))
    ]
    return deps, outs_of.get(name, []), producers


def check_inputs(name: str) -> None:
    """Every upstream output stage `name` reads exists; else name the stage that makes it."""
    root = project_root()
    deps, _, producers = stage_io(name)
    for dep in deps:
        if not (root / dep).exists():
            maker = producers.get(dep)
            fix = (
                f"run the stage that makes it first: `dvc repro {maker}` "
                f"(or `seedscope stage {maker}`)."
                if maker
                else "restore it (it is not made by any stage)."
            )
            raise SeedscopeError(f"Stage {name!r} reads {dep}, which does not exist.", fix)


def writable_problem(path: Path, folder: bool) -> str | None:
    """Why `path` (a `folder` or a file, to be written) could not be written, or None.

    Walks up to the nearest existing ancestor, which must be a folder and writable
    (`os.access`: a read-only mount is caught; root passes mode bits, so a folder merely
    chmod'ed read-only is not reported when running as root). An existing `path` must be of
    the right kind (a file where a folder goes cannot be written into)."""
    if path.exists():
        if folder and not path.is_dir():
            return f"{path} is a file, not a folder"
        if not folder and path.is_dir():
            return f"{path} is a folder, not a file"
        mode = os.W_OK | os.X_OK if folder else os.W_OK
        return None if os.access(path, mode) else f"{path} is read-only"
    target = path.parent
    while not target.exists():
        if target.parent == target:
            return None
        target = target.parent
    if not target.is_dir():
        return f"{target} is a file, not a folder"
    if not os.access(target, os.W_OK | os.X_OK):
        return f"the folder {target} is not writable"
    return None


def check_outputs(name: str) -> None:
    """Every output of stage `name` (and its rendered notebook) can be written."""
    root = project_root()
    _, outs, _ = stage_io(name)
    # dvc.yaml outs without a suffix are folders (results/corpus, figures/<stage>, ...)
    targets = [(root / out, not Path(out).suffix) for out in outs]
    targets.append((reports_dir() / "notebooks", True))
    for target, folder in targets:
        problem = writable_problem(target, folder)
        if problem:
            raise SeedscopeError(
                f"Stage {name!r} cannot write {target}: {problem}.",
                "make that path a writable folder (remove the file in its way, or fix "
                "permissions), or run the project from a writable checkout.",
            )


def clean_partial_writes(*roots: Path) -> list[Path]:
    """Remove what a killed run of a stage left in its outputs: `.tmp-*` files (from
    `seedscope.core.io.atomic_path`) and `.ckpt-*` folders (the trainer's staging folders).
    Only the stage about to run writes there, so none of them is in use; returns them."""
    import shutil

    removed = []
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*"), reverse=True):  # children before parents
            if path.name.startswith(".tmp-") and (path.is_file() or path.is_symlink()):
                path.unlink(missing_ok=True)
                removed.append(path)
            elif path.name.startswith(".ckpt-") and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def preflight(name: str, params: dict[str, Any]) -> None:
    """Cheap checks of the project before stage `name` does any heavy work.

    Runs after `validate_stage` (params are valid): upstream inputs exist (the fix names the
    stage to run), outputs are writable, and stage-specific checks: `corpus` with
    `source: text` reads and checks its text files; `token_losses` checks that every
    checkpoint it needs is cached (or the hub reachable), that the cache budget holds one
    checkpoint, that the runs share one tokenizer, that the eval tokens fit the models'
    vocabulary and context, and that a Dask scheduler answers. Raises SeedscopeError.
    """
    check_inputs(name)
    check_outputs(name)
    check = STAGE_PREFLIGHTS.get(name)
    if check is not None:
        check(params)


def preflight_corpus(params: dict[str, Any]) -> None:
    """The `corpus` pre-flight: with `source: text`, read and check the text files."""
    from seedscope.core.config import from_section
    from seedscope.data.corpus import CorpusConfig
    from seedscope.data.corpus import check_inputs as check_corpus_inputs

    check_corpus_inputs(from_section(CorpusConfig, params.get("corpus"), "corpus"))


def preflight_token_losses(params: dict[str, Any]) -> None:
    """The `token_losses` pre-flight (see `preflight`)."""
    from seedscope.core.config import SuiteConfig, from_section
    from seedscope.core.steps import name_to_step
    from seedscope.logprobs.sweep import SweepConfig, check_scheduler, resolve_units
    from seedscope.models import checkpoints as ck

    resolved = from_section(SuiteConfig, params.get("suite"), "suite").resolve()
    cfg = from_section(SweepConfig, params.get("token_losses"), "token_losses")
    suite = resolved.suite
    steps = [
        name_to_step(resolved, s) for s in cfg.steps
    ]  # SweepConfig allows mid/final/all/integers
    units = resolve_units(suite, "all", steps)
    cache = ck.cache_dir_for(suite) or ck.default_hub_cache()
    present = {r.name: set(ck.cached_steps(suite, r, cache)) for r in suite.runs}
    _check_checkpoints_present(suite, units, present, cache)
    folders = {
        r.name: ck.snapshot_folder(cache, r.repo_id, suite.revision(max(present[r.name])))
        for r in suite.runs
        if present[r.name]
    }
    if suite.local_cache is None and folders:
        _check_cache_budget(suite, cfg.cache_budget_gb, folders)
    _check_one_tokenizer(suite, folders)
    _check_eval_tokens_fit(suite, folders)
    if cfg.scheduler:
        check_scheduler(cfg.scheduler, cfg.scheduler_timeout_s)


def _check_checkpoints_present(
    suite: Any, units: list[Any], present: dict[str, set[int]], cache: Path
) -> None:
    """Refuse when a needed checkpoint is neither cached nor downloadable, saying how to
    get it (train the local suite, fetch it, or reach the hub)."""
    from seedscope.models import checkpoints as ck

    missing = [u for u in units if u.step not in present[u.run]]
    if not missing:
        return
    first = missing[0]
    what = (
        f"{len(missing)} of the {len(units)} checkpoints stage 'token_losses' needs "
        f"(e.g. {first.repo_id} revision {first.revision!r}) are not in {cache}"
    )
    if suite.local_cache is not None:
        raise SeedscopeError(f"{what}.", f"train suite {suite.name!r} first: `dvc repro train`.")
    if ck.hub_offline():
        raise SeedscopeError(
            f"{what}, and HF_HUB_OFFLINE is set, so they cannot be downloaded.",
            "unset HF_HUB_OFFLINE where the hub is reachable, or fetch them first "
            f"(`{ck.download_command(first.repo_id, first.revision)}`) "
            "into the cache HF_HUB_CACHE points at.",
        )
    problem = ck.hub_unreachable()
    if problem:
        raise SeedscopeError(
            f"{what}, and the hub is unreachable ({problem}).",
            "connect to the hub, or point HF_HUB_CACHE at a cache that holds them.",
        )


def _check_cache_budget(suite: Any, budget_gb: float, folders: dict[str, Path]) -> None:
    """Refuse a download cache budget smaller than one checkpoint of the suite."""
    from seedscope.models import checkpoints as ck

    biggest = max(ck.checkpoint_bytes(f) for f in folders.values())
    if budget_gb * 1e9 < biggest:
        raise SeedscopeError(
            f"token_losses.cache_budget_gb = {budget_gb:g} GB is smaller than "
            f"one checkpoint of suite {suite.name!r} ({biggest / 1e9:.3g} GB).",
            f"set token_losses.cache_budget_gb to at least {2 * biggest / 1e9:.3g} "
            "(two checkpoints: the current one and the prefetched next).",
        )


def _check_one_tokenizer(suite: Any, folders: dict[str, Path]) -> None:
    """Refuse runs whose cached tokenizers differ: their per-token losses don't compare."""
    from seedscope.models import checkpoints as ck

    vocabs = {run: ck.tokenizer_vocab(folder) for run, folder in folders.items()}
    known = {run: v for run, v in vocabs.items() if v is not None}
    if len({json_key(v) for v in known.values()}) > 1:
        names = sorted(known)
        raise SeedscopeError(
            f"The runs of suite {suite.name!r} do not share one tokenizer "
            f"(runs {', '.join(names)} have {len({json_key(v) for v in known.values()})} "
            "different vocabularies), so their per-token losses are not comparable.",
            "compare only runs trained with the same tokenizer: split the suite, or list "
            "matching runs in suite.runs.",
        )


def _check_eval_tokens_fit(suite: Any, folders: dict[str, Path]) -> None:
    """Refuse eval windows with a token id outside a run's vocabulary or longer than its
    context (read from the cached configs; skipped before the corpus exists)."""
    import numpy as np

    from seedscope.core.paths import corpus_dir
    from seedscope.models import checkpoints as ck

    eval_path = corpus_dir() / "eval_tokens.npy"
    if not (eval_path.is_file() and folders):
        return
    windows = np.load(eval_path, mmap_mode="r")
    top = int(windows.max()) if windows.size else -1
    for run, folder in folders.items():
        vocab, n_ctx = ck.config_limits(folder)
        if vocab is not None and top >= vocab:
            raise SeedscopeError(
                f"The eval tokens ({eval_path}) hold token id {top}, outside the vocabulary "
                f"[0, {vocab}) of run {run!r} of suite {suite.name!r}.",
                "rebuild the corpus with the suite's own tokenizer (corpus.tokenizer_dir) "
                "and run `dvc repro corpus`.",
            )
        if n_ctx is not None and windows.ndim == 2 and windows.shape[1] > n_ctx:
            raise SeedscopeError(
                f"The eval windows are {windows.shape[1]} tokens long, more than the "
                f"context ({n_ctx}) of run {run!r} of suite {suite.name!r}.",
                f"set corpus.window to at most {n_ctx} and run `dvc repro corpus`.",
            )


# stage -> its own pre-flight check (seedscope.pipeline.codedeps counts only this stage's as its dep)
STAGE_PREFLIGHTS = {"corpus": preflight_corpus, "token_losses": preflight_token_losses}


def json_key(value: Any) -> str:
    """A canonical string of a JSON-able value (to compare vocabularies)."""
    import json

    return json.dumps(value, sort_keys=True)


SETUP_TAG = "seedscope-setup"


def with_setup_cell(source: Path, dest: Path, stage: str = "") -> None:
    """Copy notebook `source` to `dest` with a first cell that calls `quiet_kernel` and a
    last one that calls `record_modules` (both removed again before rendering)."""
    import nbformat

    nb = nbformat.read(source, as_version=4)
    first = nbformat.v4.new_code_cell(
        "from seedscope.pipeline.runner import quiet_kernel\n\nquiet_kernel()"
    )
    last = nbformat.v4.new_code_cell(
        f"from seedscope.pipeline.runner import record_modules\n\nrecord_modules({stage!r})"
    )
    for cell in (first, last):
        cell.metadata["tags"] = [SETUP_TAG]
    nb.cells = [first, *nb.cells, last]
    nbformat.write(nb, dest)


RECORD_MODULES = "SEEDSCOPE_RECORD_MODULES"


def record_modules(stage: str) -> None:
    """Run last in a stage's kernel, and by the runner after it: with
    $SEEDSCOPE_RECORD_MODULES naming a folder, add the package modules this process loaded
    to `<folder>/<stage>.json`. The end-to-end tests check them against the stage's declared
    code deps (`seedscope.pipeline.codedeps`)."""
    import json

    folder = os.environ.get(RECORD_MODULES)
    if not folder:
        return
    path = Path(folder) / f"{stage}.json"
    loaded = set(json.loads(path.read_text())) if path.is_file() else set()
    loaded |= {
        ".".join([*m.split(".")[1:], "__init__"] if hasattr(mod, "__path__") else m.split(".")[1:])
        for m, mod in list(sys.modules.items())
        if m == "seedscope" or m.startswith("seedscope.")
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(sorted(loaded)) + "\n")


def quiet_kernel() -> None:
    """Run first in a stage's kernel: progress bars and warnings go to the terminal (the
    kernel process's own stderr, which papermill's runner inherits), not into the chapter.

    Library code makes its bars with `tqdm.auto`; here that is the console bar writing to the
    terminal (the notebook widget would need ipywidgets and show in the page). Python warnings
    are written to the terminal with the file's name only (no absolute path)."""
    import warnings

    import tqdm.auto
    import tqdm.std

    terminal = sys.__stderr__

    class TerminalTqdm(tqdm.std.tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("file", terminal)
            super().__init__(*args, **kwargs)

    tqdm.auto.tqdm = TerminalTqdm  # type: ignore[misc]

    def to_terminal(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if terminal is not None:
            terminal.write(
                warnings.formatwarning(message, category, Path(filename).name, lineno, line)
            )

    warnings.showwarning = to_terminal


def clean_outputs(path: Path, stage: str | None = None) -> list[str]:
    """Make an executed notebook fit to read: drop the setup cell, move every stderr output
    (progress, logging, warnings) to the terminal, and replace this machine's absolute paths
    (the project root, the Python environment, the home folder) in outputs. Returns the
    stderr texts moved."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if SETUP_TAG not in c.metadata.get("tags", [])]
    moved = []
    replacements = path_replacements()
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                moved.append(scrub_paths(output.get("text", ""), replacements))
                if stage is not None:
                    sys.stderr.write(f"[{stage} cell {index}] {moved[-1]}")
                continue
            kept.append(_scrub_output(output, replacements))
        cell.outputs = kept
    nbformat.write(nb, path)
    return moved


def path_replacements() -> list[tuple[str, str]]:
    """(absolute path, what a rendered page shows instead), longest first."""
    pairs = {
        str(project_root()): ".",
        sys.prefix: "<python-env>",
        sys.base_prefix: "<python>",
        str(Path.home()): "~",
    }
    return sorted(((k, v) for k, v in pairs.items() if k and k != "/"), key=lambda kv: -len(kv[0]))


def scrub_paths(text: str, replacements: list[tuple[str, str]] | None = None) -> str:
    """`text` with this machine's absolute paths replaced (see `path_replacements`)."""
    for path, shown in replacements if replacements is not None else path_replacements():
        text = text.replace(path, shown)
    return text


def _scrub_output(output: Any, replacements: list[tuple[str, str]]) -> Any:
    if "text" in output:
        output["text"] = scrub_paths(output["text"], replacements)
    if "traceback" in output:
        output["traceback"] = [scrub_paths(t, replacements) for t in output["traceback"]]
    for mime, value in (output.get("data") or {}).items():
        if isinstance(value, str) and (mime.startswith("text/") or mime.endswith("json")):
            output["data"][mime] = scrub_paths(value, replacements)
    return output


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


# Untracked files are copied only from these source folders: a checkout where the pipeline
# has run holds untracked outputs elsewhere (and tracked ones: see `pipeline_outputs`).
SOURCE_DIRS = ("src", "notebooks", "profiles", "tests", "benchmarks", "docs")


def pipeline_outputs(root: Path) -> list[str]:
    """Every path the pipeline writes (each stage's outs, metrics and plots in `dvc.yaml`,
    plus `dvc.lock`), relative to `root`: what a copy of the sources must never carry."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    paths = ["dvc.lock"]
    for stage in (spec.get("stages") or {}).values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                paths.append(next(iter(entry)) if isinstance(entry, dict) else str(entry))
    return sorted({p.rstrip("/") for p in paths})


def _is_output(rel: str, outputs: list[str]) -> bool:
    return any(rel == out or rel.startswith(out + "/") for out in outputs)


def source_files(root: Path) -> list[str]:
    """The project's source files: git-tracked files plus untracked, not-ignored files under
    `SOURCE_DIRS`, never a pipeline output (whatever state the checkout is in)."""
    import subprocess

    def git_files(*args: str) -> list[str]:
        out = subprocess.run(
            ["git", "ls-files", "-z", *args], cwd=root, capture_output=True, check=True
        ).stdout.decode()
        return [rel for rel in out.split("\0") if rel]

    tracked = git_files("-c")
    untracked = [
        rel for rel in git_files("-o", "--exclude-standard") if rel.split("/", 1)[0] in SOURCE_DIRS
    ]
    outputs = pipeline_outputs(root)
    return sorted(
        rel
        for rel in set(tracked) | set(untracked)
        if not _is_output(rel, outputs) and (root / rel).is_file()
    )


def scratch_copy(dest: str | os.PathLike[str], profile: str | None = None) -> Path:
    """Copy the project's sources (`source_files`: no pipeline outputs) to `dest`, optionally
    with `profiles/<profile>.yaml` as its params.yaml, record the commit they came from
    (`SOURCE_RECORD`, read by `seedscope.core.provenance`), and make it a git + DVC repo: a place
    to run the pipeline without touching this one."""
    import json
    import shutil
    import subprocess

    from seedscope.core.provenance import SOURCE_RECORD, git_commit

    root = project_root()
    dest = Path(dest)
    for rel in source_files(root):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
    if profile:
        shutil.copyfile(root / "profiles" / f"{profile}.yaml", dest / "params.yaml")
    record = {"git_commit": git_commit(), "copied_from": "scratch copy"}
    (dest / SOURCE_RECORD).write_text(json.dumps(record, sort_keys=True) + "\n")
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest

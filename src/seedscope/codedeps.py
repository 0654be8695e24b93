"""Which source files a stage's results depend on: its import closure, read from the source.

`dvc.yaml` gives each stage the package files its code can reach (and the data folders those
modules read), so editing one analysis re-runs that analysis, not the whole pipeline. The
closure is static and conservative:

- the notebook's `seedscope` imports, and the `workflow` functions it calls together with
  every `workflow` function those call (the stage glue shares one module, so only the
  functions reached count);
- every `seedscope` import of each module reached, at module level or inside a function;
- the config classes of the params sections the stage reads (`pipeline.SECTION_CONFIGS`
  imports them by name, which no `import` statement shows);
- the stage runner (`cli`, `pipeline`, the package `__init__`), and the data folders of the
  modules reached (`PACKAGE_DATA`).

A test checks that `dvc.yaml` lists exactly this closure for every stage: a dep left out
would give stale results silently, one too many re-runs a stage for nothing.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = "src/seedscope"  # the package as dvc.yaml names it (relative to the project)
GLUE = "workflow"
RUNNER = ("__init__", "cli", "pipeline")
# module -> the package data folders it reads
PACKAGE_DATA: dict[str, tuple[str, ...]] = {
    "suites": ("suites",),
    "behaviours": ("probes",),
    "answers": ("templates",),
    "report": ("templates",),
}


def _modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PACKAGE_DIR.glob("*.py"))}


def _imports(node: ast.AST) -> set[str]:
    """The seedscope modules `node` imports anywhere inside it (`from seedscope import x`,
    `from seedscope.x import y`, `import seedscope.x`)."""
    known = set(_modules())
    found: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "seedscope":
            parts = n.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found |= {a.name for a in n.names if a.name in known}
        elif isinstance(n, ast.Import):
            found |= {a.name.split(".")[1] for a in n.names if a.name.startswith("seedscope.")}
    return found & known


def _notebook_code(path: Path) -> ast.Module:
    """The notebook's code cells as one module (IPython magics and shell lines dropped)."""
    cells = json.loads(path.read_text())["cells"]
    lines = [
        line
        for cell in cells
        if cell["cell_type"] == "code"
        for line in "".join(cell["source"]).splitlines()
        if not line.lstrip().startswith(("%", "!"))
    ]
    return ast.parse("\n".join(lines))


def _glue_modules(called: set[str]) -> set[str]:
    """Modules imported by the `workflow` functions in `called` and every `workflow`
    function they reach (plus `workflow`'s module-level imports)."""
    tree = ast.parse(_modules()[GLUE].read_text())
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    top = ast.Module(
        body=[n for n in tree.body if not isinstance(n, ast.FunctionDef)], type_ignores=[]
    )
    found = _imports(top)
    seen: set[str] = set()
    todo = [name for name in called if name in funcs]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        found |= _imports(funcs[name])
        todo += [n.id for n in ast.walk(funcs[name]) if isinstance(n, ast.Name) and n.id in funcs]
    return found


def stage_modules(name: str) -> list[str]:
    """The package modules stage `name`'s code can reach (sorted)."""
    from seedscope.pipeline import SECTION_CONFIGS, STAGES

    stage = STAGES[name]
    notebook = _notebook_code(PACKAGE_DIR.parents[1] / "notebooks" / f"{stage.notebook}.ipynb")
    calls = {
        n.attr
        for n in ast.walk(notebook)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == GLUE
    }
    start = set(_imports(notebook)) | set(RUNNER)
    start |= {SECTION_CONFIGS[s].split(":")[0].split(".")[1] for s in stage.sections}
    if GLUE in start:
        start |= _glue_modules(calls)
    modules = _modules()
    seen: set[str] = set()
    todo = sorted(start)
    while todo:
        mod = todo.pop()
        if mod in seen or mod not in modules:
            continue
        seen.add(mod)
        if mod != GLUE:  # the glue counts by function (above), every other module whole
            todo += sorted(_imports(ast.parse(modules[mod].read_text())))
    return sorted(seen)


def stage_code_deps(name: str) -> list[str]:
    """What `dvc.yaml` lists as stage `name`'s code deps: its modules' files and the package
    data folders they read, as paths relative to the project."""
    mods = stage_modules(name)
    folders = sorted({f for m in mods for f in PACKAGE_DATA.get(m, ())})
    return [f"{PACKAGE}/{m}.py" for m in mods] + [f"{PACKAGE}/{f}" for f in folders]

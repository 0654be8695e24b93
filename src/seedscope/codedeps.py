"""Which source files a stage's results depend on: its import closure, read from the source.

`dvc.yaml` gives each stage the package files its code can reach (and the data folders those
modules read), so editing one analysis re-runs that analysis, not the whole pipeline. The
closure is static and conservative, over (module, function) nodes:

- most modules count whole: every `seedscope` import in them, at module level or inside a
  function, is followed;
- the modules every stage shares (`SHARED`: the stage glue `workflow`, the runner `pipeline`
  and `cli`) count by function: a function brings its own imports, the functions of the
  same module it names, and the module's top-level imports; `from seedscope.workflow
  import f` reaches `f` alone;
- a stage starts from the `workflow` functions its notebook calls, the runner's path
  (`cli._stage` -> `pipeline.run_stage`, the kernel's setup cells, and this stage's own
  pre-flight, `pipeline.STAGE_PREFLIGHTS`), and the config classes of the params sections it
  reads (`pipeline.SECTION_CONFIGS` imports them by name, which no `import` shows; a
  function that names a section, `stage_config("x", ...)`, brings that section's too);
- the package data folders of the modules reached (`PACKAGE_DATA`) count too.

`tests/test_pipeline.py` checks that `dvc.yaml` lists exactly this closure for every stage,
and the end-to-end runs check that every `seedscope` module a stage really loaded (in the
runner and in the notebook's kernel) is inside it: a dep left out would give stale results
silently.
"""

from __future__ import annotations

import ast
import json
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = "src/seedscope"  # the package as dvc.yaml names it (relative to the project)
SHARED = ("workflow", "pipeline", "cli")
# the runner's path into every stage: `seedscope stage NAME` and the kernel's setup cell
RUNNER = (
    ("__init__", None),
    ("cli", "_stage"),
    ("pipeline", "run_stage"),
    ("pipeline", "quiet_kernel"),
    ("pipeline", "record_modules"),
)
# module -> the package data folders it reads
PACKAGE_DATA: dict[str, tuple[str, ...]] = {
    "suites": ("suites",),
    "behaviours": ("probes",),
    "answers": ("templates",),
    "report": ("templates",),
}

Node = tuple[str, str | None]  # (module, function); None = the whole module


@cache
def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in sorted(PACKAGE_DIR.glob("*.py"))}


def _targets(node: ast.AST, module: str = "") -> set[Node]:
    """The nodes the `seedscope` imports anywhere inside `node` reach (relative imports are
    resolved against the package; `from <shared> import f` reaches `f` alone)."""
    known = _modules()
    found: set[Node] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom):
            name = n.module or ""
            if n.level:  # from . import x / from .x import y
                name = "seedscope" + ("." + name if name else "")
            parts = name.split(".")
            if parts[0] != "seedscope":
                continue
            if len(parts) == 1:
                found |= {(a.name, None) for a in n.names if a.name in known}
            elif parts[1] in SHARED:
                found |= {(parts[1], a.name) for a in n.names}
            else:
                found.add((parts[1], None))
        elif isinstance(n, ast.Import):
            found |= {
                (a.name.split(".")[1], None) for a in n.names if a.name.startswith("seedscope.")
            }
    return {(m, f) for m, f in found if m in known and not (m == module and f is None)}


def _functions(module: str) -> dict[str, ast.AST]:
    tree = _modules()[module]
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}


def _top(module: str) -> ast.Module:
    """A module's statements outside its functions and classes."""
    tree = _modules()[module]
    body = [n for n in tree.body if not isinstance(n, ast.FunctionDef | ast.ClassDef)]
    return ast.Module(body=body, type_ignores=[])


def _step(node: Node) -> set[Node]:
    """What one node reaches directly."""
    module, func = node
    if func is None or module not in SHARED:
        return {(m, f) for m, f in _targets(_modules()[module], module)} | (
            {(module, f) for f in _functions(module)} if module in SHARED else set()
        )
    funcs = _functions(module)
    if func not in funcs:  # a constant (STAGES, SECTION_CONFIGS): the module's top level
        return _targets(_top(module), module)
    same = {n.id for n in ast.walk(funcs[func]) if isinstance(n, ast.Name) and n.id in funcs}
    return (
        _targets(_top(module), module)
        | _targets(funcs[func], module)
        | {(module, f) for f in same}
        | _configs(funcs[func])
    )


def _configs(node: ast.AST) -> set[Node]:
    """The config modules a function loads by section name: `stage_config("x", ...)` /
    `config_class("x")` with a literal section (imported by name, so no `import` shows)."""
    from seedscope.pipeline import SECTION_CONFIGS

    found = set()
    for n in ast.walk(node):
        if (
            isinstance(n, ast.Call)
            and getattr(n.func, "id", getattr(n.func, "attr", None))
            in ("stage_config", "config_class")
            and n.args
            and isinstance(n.args[0], ast.Constant)
            and n.args[0].value in SECTION_CONFIGS
        ):
            found.add((SECTION_CONFIGS[n.args[0].value].split(":")[0].split(".")[1], None))
    return found


def _notebook(path: Path) -> set[Node]:
    """The nodes a notebook's code reaches: its imports and the `workflow` functions it
    calls (`from seedscope import workflow`, then `workflow.f(...)`, is the one way in)."""
    cells = json.loads(path.read_text())["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        code = "".join(cell["source"]).splitlines()
        if code and code[0].startswith("%%"):  # a cell magic: its body is read as Python
            code = code[1:]
        lines += [line for line in code if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError as exc:
        raise ValueError(
            f"{path.name}: a code cell is not Python ({exc.msg}, line {exc.lineno}); "
            "seedscope.codedeps reads the notebook's imports and calls from it."
        ) from None
    for n in ast.walk(tree):
        aliased = isinstance(n, ast.Import | ast.ImportFrom) and any(
            a.asname and a.name.split(".")[-1] in SHARED for a in n.names
        )
        if aliased or (
            isinstance(n, ast.Import) and any(a.name.startswith("seedscope.") for a in n.names)
        ):
            raise ValueError(
                f"{path.name}: import the glue as `from seedscope import workflow` (no alias, "
                "no `import seedscope.x`): seedscope.codedeps follows the calls on that name."
            )
    nodes = _targets(tree)
    if ("workflow", None) in nodes:
        nodes.discard(("workflow", None))
        glue = _functions("workflow")
        nodes |= {
            ("workflow", n.attr)
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name)
            and n.value.id == "workflow"
            and n.attr in glue
        }
    return nodes


def stage_modules(name: str) -> list[str]:
    """The package modules stage `name`'s code can reach (sorted)."""
    from seedscope.pipeline import SECTION_CONFIGS, STAGE_PREFLIGHTS, STAGES

    stage = STAGES[name]
    todo = set(RUNNER) | _notebook(PACKAGE_DIR.parents[1] / "notebooks" / f"{stage.notebook}.ipynb")
    todo |= {(SECTION_CONFIGS[s].split(":")[0].split(".")[1], None) for s in stage.sections}
    if name in STAGE_PREFLIGHTS:
        todo.add(("pipeline", STAGE_PREFLIGHTS[name].__name__))
    seen: set[Node] = set()
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo |= _step(node) - seen
    return sorted({module for module, _ in seen})


def stage_code_deps(name: str) -> list[str]:
    """What `dvc.yaml` lists as stage `name`'s code deps: its modules' files and the package
    data folders they read, as paths relative to the project."""
    mods = stage_modules(name)
    folders = sorted({f for m in mods for f in PACKAGE_DATA.get(m, ())})
    return [f"{PACKAGE}/{m}.py" for m in mods] + [f"{PACKAGE}/{f}" for f in folders]

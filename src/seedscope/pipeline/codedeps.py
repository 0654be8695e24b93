"""Which source files a stage's results depend on: its import closure, read from the source.

`dvc.yaml` gives each stage the package files its code can reach (and the data folders those
modules read), so editing one analysis re-runs that analysis, not the whole pipeline. The
closure is static and conservative, over (module, function) nodes; a module is named by its
dotted path inside the package (`analyses.pca`, `core.__init__` for a folder's init):

- most modules count whole: every `seedscope` import in them, at module level or inside a
  function, is followed;
- the modules every stage shares (`SHARED`: the common stage helpers `stages.common`, the
  runner `pipeline.runner` and `cli`) count by function: a function brings its own imports,
  the functions of the same module it names, and the module's top-level imports; `from
  seedscope.stages.common import f` reaches `f` alone;
- a stage starts from its notebook's imports (its own `seedscope.stages.<name>` module, and
  any common helper by name), the runner's path (`cli._stage` -> `pipeline.runner.run_stage`,
  the kernel's setup cells, and this stage's own pre-flight, `STAGE_PREFLIGHTS`), and the
  config classes of the params sections it reads (`SECTION_CONFIGS` imports them by name,
  which no `import` shows; a function that names a section, `stage_config("x", ...)`, brings
  that section's too);
- importing a module runs its folders' `__init__.py`, so those count too, and so do the
  package data folders of the modules reached (`PACKAGE_DATA`).

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

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PACKAGE = "src/seedscope"  # the package as dvc.yaml names it (relative to the project)
SHARED = ("stages.common", "pipeline.runner", "cli")
# the runner's path into every stage: `seedscope stage NAME` and the kernel's setup cell
RUNNER = (
    ("__init__", None),
    ("cli", "_stage"),
    ("pipeline.runner", "run_stage"),
    ("pipeline.runner", "quiet_kernel"),
    ("pipeline.runner", "record_modules"),
)
# The pipeline's definition: what it says about a stage is in that stage's own dvc.yaml
# entry (its notebook path, params sections, config modules, outs), which DVC already
# compares, so stages list it only where more of it reaches the outputs (the report's
# chapter titles). Listing it everywhere would rerun every stage, training included, when
# an analysis is added. (One thing a stage's entry does not show: which class of an
# already-listed module validates a section, `SECTION_CONFIGS`; pointing a section at
# another class there needs `dvc repro -f` of the stages that read it.)
DEFINITION = "pipeline.registry"
DEFINITION_READERS = ("report",)
# module -> the package data folders it reads
PACKAGE_DATA: dict[str, tuple[str, ...]] = {
    "suites.registry": ("suites",),
    "analyses.behaviours": ("analyses/probes",),
    "pipeline.answers": ("pipeline/templates",),
    "pipeline.report": ("pipeline/templates",),
}

Node = tuple[str, str | None]  # (module, function); None = the whole module


@cache
def _modules() -> dict[str, ast.Module]:
    return {
        ".".join(p.relative_to(PACKAGE_DIR).with_suffix("").parts): ast.parse(p.read_text())
        for p in sorted(PACKAGE_DIR.rglob("*.py"))
    }


def module_key(dotted: str) -> str | None:
    """`seedscope.core.stats` -> `core.stats`; a folder -> its `__init__` (None: not ours)."""
    parts = dotted.split(".")
    if parts[0] != "seedscope":
        return None
    sub = ".".join(parts[1:])
    known = _modules()
    for key in (sub, f"{sub}.__init__" if sub else "__init__"):
        if key in known:
            return key
    return None


def _parents(module: str) -> set[Node]:
    """The `__init__` modules Python runs before `module` (its folders, outermost first)."""
    parts = module.split(".")[:-1]
    return {(".".join([*parts[:i], "__init__"]), None) for i in range(len(parts) + 1)} - {
        (module, None)
    }


def _targets(node: ast.AST, module: str = "") -> set[Node]:
    """The nodes the `seedscope` imports anywhere inside `node` reach (`from <shared> import
    f` reaches `f` alone)."""
    found: set[Node] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom):
            if n.level:
                raise ValueError(
                    f"{module}: use absolute `seedscope.` imports (codedeps reads them)"
                )
            name = n.module or ""
            base = module_key(name)
            if base is None:
                continue
            for a in n.names:
                sub = module_key(f"{name}.{a.name}")
                if sub is not None and sub != base:
                    found.add((sub, None))
                elif base in SHARED:
                    found.add((base, a.name))
                else:
                    found.add((base, None))
        elif isinstance(n, ast.Import):
            found |= {(k, None) for a in n.names if (k := module_key(a.name)) is not None}
    return {(m, f) for m, f in found if not (m == module and f is None)}


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


def _config_module(spec: str) -> Node:
    """`"seedscope.analyses.params:LossPcaParams"` -> its module's node."""
    key = module_key(spec.split(":")[0])
    assert key is not None, spec
    return (key, None)


def _configs(node: ast.AST) -> set[Node]:
    """The config modules a function loads by section name: `stage_config("x", ...)` /
    `config_class("x")` with a literal section (imported by name, so no `import` shows)."""
    from seedscope.pipeline.registry import SECTION_CONFIGS

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
            found.add(_config_module(SECTION_CONFIGS[n.args[0].value]))
    return found


def _notebook(path: Path) -> set[Node]:
    """The nodes a notebook's code reaches: its `seedscope` imports (its stage module whole,
    `from seedscope.stages import NAME as stage`; a shared module's functions by name)."""
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
            "seedscope.pipeline.codedeps reads the notebook's imports from it."
        ) from None
    for n in ast.walk(tree):
        shared = isinstance(n, ast.ImportFrom) and any(
            module_key(f"{n.module}.{a.name}") in SHARED for a in n.names
        )
        if shared or (
            isinstance(n, ast.Import) and any(a.name.startswith("seedscope.") for a in n.names)
        ):
            raise ValueError(
                f"{path.name}: import a shared module's functions by name (`from "
                "seedscope.stages.common import f`, no `import seedscope.x`): "
                "seedscope.pipeline.codedeps follows those names."
            )
    return _targets(tree)


def stage_modules(name: str) -> list[str]:
    """The package modules stage `name`'s code can reach (sorted dotted keys)."""
    from seedscope.pipeline.registry import SECTION_CONFIGS, STAGES
    from seedscope.pipeline.runner import STAGE_PREFLIGHTS

    stage = STAGES[name]
    todo = set(RUNNER) | _notebook(PACKAGE_DIR.parents[1] / "notebooks" / f"{stage.notebook}.ipynb")
    todo |= {_config_module(SECTION_CONFIGS[s]) for s in stage.sections}
    if name in STAGE_PREFLIGHTS:
        todo.add(("pipeline.runner", STAGE_PREFLIGHTS[name].__name__))
    seen: set[Node] = set()
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo |= (_step(node) | _parents(node[0])) - seen
    return sorted({module for module, _ in seen})


def module_file(module: str) -> str:
    """A module key -> its file as dvc.yaml names it (`analyses.pca` ->
    `src/seedscope/analyses/pca.py`)."""
    return f"{PACKAGE}/{module.replace('.', '/')}.py"


def stage_code_deps(name: str) -> list[str]:
    """What `dvc.yaml` lists as stage `name`'s code deps: its modules' files and the package
    data folders they read, as paths relative to the project (the registry only for the
    stages that read more of it than their own dvc.yaml entry, `DEFINITION_READERS`)."""
    mods = [m for m in stage_modules(name) if m != DEFINITION or name in DEFINITION_READERS]
    folders = [f"{PACKAGE}/{f}" for f in sorted({f for m in mods for f in PACKAGE_DATA.get(m, ())})]
    files = [module_file(m) for m in mods]
    # a module inside a data folder is covered by the folder (the deps do not overlap)
    return [f for f in files if not any(f.startswith(d + "/") for d in folders)] + folders

"""The compendium as a book (Jupyter Book 1.x: Sphinx + MyST-NB), built from the executed
notebooks the stages rendered (never re-executed), their metrics and figures.

`build_report` writes `reports/book/` (the site; its front page answers the six questions
from `metrics/`, see `seedscope.pipeline.answers`) and `reports/index.html`, which opens it.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from seedscope.core.errors import SeedscopeError
from seedscope.core.io import atomic_path, read_json
from seedscope.core.paths import figures_dir, metrics_dir, project_root, reports_dir
from seedscope.pipeline.answers import ANSWERS, Answer, answer_html, format_headline, metric_html
from seedscope.pipeline.registry import STAGES

QUESTION = (
    "How much do training runs that differ only in their random seed differ: token by "
    "token, behaviour by behaviour, and in when their circuits (induction heads) form?"
)

# Chapters of the book, from the stage registry: the analyses (numbered stages), then the
# set-up stages (0a-0d); a new analysis registered in STAGES gets its chapter and its
# headline table with no change here (a front-page answer needs an `answers.ANSWERS` entry).
SETUP_STAGES = tuple(s.name for s in STAGES.values() if not s.number.isdigit())
ANALYSIS_STAGES = tuple(
    s.name for s in STAGES.values() if s.number.isdigit() and s.name != "report"
)

# Stages whose metrics the headline page lists, with their section titles.
ANALYSES = {
    s: f"{STAGES[s].number} · {STAGES[s].title}"
    for s in ("train", "token_losses", *ANALYSIS_STAGES)
}

_PACKAGES_SHOWN = ("seedscope", "torch", "transformers", "numpy")


def collect(metrics: Path | None = None, figures: Path | None = None) -> dict[str, Any]:
    """Metrics and figure indexes of every analysis stage that has produced them."""
    metrics = metrics or metrics_dir()
    figures = figures or figures_dir()
    out: dict[str, Any] = {}
    for stage in ANALYSES:
        entry: dict[str, Any] = {}
        if (metrics / "details" / f"{stage}.json").exists():
            entry["metrics"] = read_json(metrics / "details" / f"{stage}.json")
        if (figures / stage / "index.json").exists():
            entry["figures"] = read_json(figures / stage / "index.json")
        if entry:
            out[stage] = entry
    return out


def _templates():  # type: ignore[no-untyped-def]
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("seedscope.pipeline", "templates"),
        autoescape=jinja2.select_autoescape(["html.j2"]),
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def _md(text: Any) -> str:
    """Plain text safe inside a MyST paragraph or table cell."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def run_label(run: dict[str, Any]) -> str:
    """'small-x21 (seed 21)': runs are named with their seeds on every page."""
    return f"{run['name']} (seed {run['seed']})"


def suite_line(manifest: dict[str, Any]) -> str:
    """One sentence on the suite: its description, runs with seeds, checkpoints."""
    runs = manifest["runs"]
    steps = manifest.get("steps") or []
    sizes = manifest.get("sizes") or sorted({r["size"] for r in runs})
    return (
        f"`{manifest['suite']}`: {_md(manifest.get('description', ''))}. "
        f"{len(runs)} runs, {len(sizes)} size{'s' if len(sizes) != 1 else ''} "
        f"({', '.join(sizes)}): {', '.join(run_label(r) for r in runs)}. "
        f"{len(steps)} checkpoints from step {min(steps, default=0):,} to "
        f"{max(steps, default=0):,}; mid-training is step {manifest['mid_step']:,}, the end "
        f"step {manifest['final_step']:,}."
    )


def tests_of(function: str, tests_dir: Path | None = None) -> list[str]:
    """Test files that call `function` (by its name), else the test file of its module."""
    tests_dir = tests_dir or project_root() / "tests"
    name = function.rsplit(".", 1)[-1]
    pattern = re.compile(rf"\b{re.escape(name)}\b")
    found = [
        f"tests/{path.name}"
        for path in sorted(tests_dir.glob("test_*.py"))
        if pattern.search(path.read_text(errors="replace"))
    ]
    if not found:
        module = function.split(".")[-2] if function.count(".") >= 2 else ""
        if module and (tests_dir / f"test_{module}.py").exists():
            found = [f"tests/test_{module}.py"]
    return found


def _chapter(stage: str) -> str:
    return f"chapters/{STAGES[stage].notebook}"


def _provenance_text(prov: dict[str, Any]) -> dict[str, str]:
    steps = prov.get("steps") or []
    return {
        "runs": ", ".join(prov.get("runs") or []) or "n/a",
        "steps": ", ".join(f"{s:,}" if isinstance(s, int) else str(s) for s in steps) or "n/a",
        "params_hash": str(prov.get("params_hash", "n/a")),
        "git_commit": str(prov.get("git_commit", "n/a")),
    }


def write_chapter(stage: str, source: Path, dest: Path, record: dict[str, Any] | None) -> None:
    """Copy an executed notebook into the book: code folded away (the parameters cells
    removed), stderr left out, the stage's provenance appended. Nothing is re-executed."""
    import nbformat

    nb = nbformat.read(source, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = set(cell.metadata.get("tags", []))
        if tags & {"parameters", "injected-parameters"}:
            tags.add("remove-cell")
        else:
            tags.add("hide-input")
        cell.metadata["tags"] = sorted(tags)
        cell.outputs = [
            o for o in cell.get("outputs", []) if o.get("name") != "stderr"
        ]  # the runner keeps stderr out already; older executed notebooks may hold some
    prov = (record or {}).get("provenance") or {}
    text = (
        _templates()
        .get_template("chapter_provenance.md.j2")
        .render(stage=stage, suite=prov.get("suite", "n/a"), **_provenance_text(prov))
    )
    nb.cells.append(nbformat.v4.new_markdown_cell(text))
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)


def book_config(title: str, footer: str) -> dict[str, Any]:
    """`_config.yml` of the book: no execution, no launch/repository buttons, nothing fetched
    from the network at build or view time."""
    return {
        "title": title,
        "author": "",
        "copyright": "",
        "only_build_toc_files": True,
        "exclude_patterns": ["_build", "**.ipynb_checkpoints"],
        "execute": {"execute_notebooks": "off", "stderr_output": "remove"},
        "parse": {"myst_enable_extensions": ["colon_fence", "substitution"]},
        "html": {
            "use_repository_button": False,
            "use_issues_button": False,
            "use_edit_page_button": False,
            "use_multitoc_numbering": False,
            "home_page_in_navbar": True,
            "extra_footer": footer,
        },
        "launch_buttons": {"thebe": False, "binderhub_url": "", "colab_url": ""},
        "repository": {"url": "", "path_to_book": "", "branch": ""},
        "latex": {"use_jupyterbook_latex": False},
        "sphinx": {
            "config": {
                "html_show_copyright": False,
                "html_show_sphinx": False,
                "html_last_updated_fmt": None,
                "nb_output_stderr": "remove",
                "nb_execution_mode": "off",
                "suppress_warnings": ["mystnb.unknown_mime_type"],
                "html_css_files": ["seedscope.css"],
            }
        },
    }


def book_toc(chapters_present: list[str]) -> dict[str, Any]:
    """`_toc.yml`: the answers, the analyses (titled by their number, as on the front page),
    then the set-up chapters."""
    analyses = [
        {"file": _chapter(s), "title": ANALYSES[s]}
        for s in ANALYSIS_STAGES
        if _chapter(s) in chapters_present
    ]
    setup = [{"file": _chapter(s)} for s in SETUP_STAGES if _chapter(s) in chapters_present]
    parts = [{"caption": "The answers", "chapters": [{"file": "headlines"}, {"file": "reproduce"}]}]
    if analyses:
        parts.append({"caption": "Analyses", "chapters": analyses})
    if setup:
        parts.append({"caption": "Set-up", "chapters": setup})
    return {"format": "jb-book", "root": "index", "parts": parts}


def write_book_source(
    src: Path, manifest: dict[str, Any], title: str, provenance: dict[str, Any]
) -> None:
    """The book's source: _config.yml, _toc.yml, the front page, the headline table, the
    reproduce table, the key figures and the chapters (copies of executed notebooks)."""
    env = _templates()
    data = collect()
    chapters = _write_chapters(src, data)
    answers = [_answer_entry(src, answer, data, chapters) for answer in ANSWERS]
    (src / "index.md").write_text(
        env.get_template("book_index.md.j2").render(
            title=_md(title),
            question=QUESTION,
            suite_line=suite_line(manifest),
            answers=answers,
            chapters=[c for part in book_toc(chapters)["parts"][1:] for c in part["chapters"]],
        )
    )
    headlines, figures = _headline_entries(data), _figure_entries(data)
    (src / "headlines.md").write_text(
        env.get_template("book_headlines.md.j2").render(stages=headlines)
    )
    (src / "reproduce.md").write_text(env.get_template("book_reproduce.md.j2").render(rows=figures))
    footer = _footer(env, manifest, provenance)
    (src / "_static").mkdir(parents=True, exist_ok=True)
    (src / "_static" / "seedscope.css").write_text(env.get_template("book.css").render())
    (src / "_config.yml").write_text(yaml.safe_dump(book_config(title, footer), sort_keys=False))
    (src / "_toc.yml").write_text(yaml.safe_dump(book_toc(chapters), sort_keys=False))


def _write_chapters(src: Path, data: dict[str, Any]) -> list[str]:
    """Copy each executed notebook in as a chapter (setup stages after the analyses); return
    the chapters written."""
    notebooks = reports_dir() / "notebooks"
    chapters = []
    for stage in (*ANALYSIS_STAGES, *SETUP_STAGES):
        source = notebooks / f"{STAGES[stage].notebook}.ipynb"
        if source.exists():
            record = data.get(stage, {}).get("metrics")
            write_chapter(stage, source, src / f"{_chapter(stage)}.ipynb", record)
            chapters.append(_chapter(stage))
    return chapters


def _answer_entry(
    src: Path, answer: Answer, data: dict[str, Any], chapters: list[str]
) -> dict[str, Any]:
    """One research question's front-page entry: its answer paragraph (long and short), its
    chapter and its key figure (copied into the book)."""
    entry = data.get(answer.stage, {})
    figure = None
    key_fig = next((f for f in entry.get("figures", {}).values() if f.get("key")), None)
    if key_fig:
        rel = Path("figures") / answer.stage / key_fig["file"]
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figures_dir() / answer.stage / key_fig["file"], src / rel)
        figure = {
            "path": rel.as_posix(),
            "title": _md(key_fig["title"]),
            "target": f"{_chapter(answer.stage)}.html"
            if _chapter(answer.stage) in chapters
            else "",
        }
    return {
        "number": answer.number,
        "title": answer.title,
        "question": answer.question,
        "paragraph": answer_html(answer, entry.get("metrics")),
        "short": answer_html(answer, entry.get("metrics"), short=True),
        "chapter": _chapter(answer.stage) if _chapter(answer.stage) in chapters else None,
        "figure": figure,
    }


def _headline_entries(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Per stage with headline metrics: its title, chapter and one row per headline."""
    stages = []
    for stage, entry in data.items():
        heads = entry.get("metrics", {}).get("headline", {})
        if heads:
            stages.append(
                {
                    "title": ANALYSES[stage],
                    "chapter": _chapter(stage),
                    "rows": [
                        {"label": _md(e["label"]), "number": metric_html(stage, k, e)}
                        for k, e in heads.items()
                    ],
                }
            )
    return stages


def _figure_entries(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Per figure: where it is shown, the function that computed it and the tests of that."""
    rows = []
    for stage, entry in data.items():
        for fig in entry.get("figures", {}).values():
            tests = tests_of(fig["function"])
            rows.append(
                {
                    "title": _md(fig["title"]),
                    "chapter": _chapter(stage),
                    "notebook": STAGES[stage].notebook,
                    "function": fig["function"],
                    "stage": stage,
                    "tests": "<br>".join(f"`{t}`" for t in tests) or "none found",
                }
            )
    return rows


def _footer(env: Any, manifest: dict[str, Any], provenance: dict[str, Any]) -> str:
    """Every page's footer: suite, runs, steps, params hash, commit and key package versions."""
    versions = provenance.get("versions") or {}
    return env.get_template("book_footer.html.j2").render(
        suite=manifest["suite"],
        runs=[run_label(r) for r in manifest["runs"]],
        steps=f"mid {manifest['mid_step']:,}, final {manifest['final_step']:,} "
        f"({len(manifest.get('steps') or [])} checkpoints)",
        params_hash=manifest.get("params_hash", "n/a"),
        git_commit=provenance.get("git_commit", "unknown"),
        versions=[f"{p} {versions[p]}" for p in _PACKAGES_SHOWN if p in versions],
    )


def jupyter_book_command() -> list[str]:
    """The `jupyter-book` of this Python environment."""
    exe = Path(sys.executable).with_name("jupyter-book")
    found = str(exe) if exe.exists() else shutil.which("jupyter-book")
    if not found:
        raise SeedscopeError(
            "jupyter-book is not installed in this environment.",
            "install the project: `pip install -e .` (or `make setup`).",
        )
    return [found]


def build_report(
    manifest: dict[str, Any],
    title: str,
    provenance: dict[str, Any],
    out_dir: Path | None = None,
) -> Path:
    """Build the book into `out_dir`/book (default reports/book) and write `out_dir`/index.html
    opening it; return the book's front page. The old site is replaced only once the new one
    is built."""
    out_dir = out_dir or reports_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    site = out_dir / "book"
    work = Path(tempfile.mkdtemp(prefix=".book-", dir=out_dir))
    try:
        write_book_source(work / "src", manifest, title, provenance)
        out = subprocess.run(
            [
                *jupyter_book_command(),
                "build",
                str(work / "src"),
                "--path-output",
                str(work / "out"),
                "--builder",
                "html",
                "--all",
            ],
            capture_output=True,
            text=True,
            cwd=work,
        )
        built = work / "out" / "_build" / "html"
        if out.returncode != 0 or not (built / "index.html").exists():
            log = out_dir / "book-build.log"
            log.write_text(out.stdout + out.stderr)
            last = (out.stderr or out.stdout).strip().splitlines()[-1:] or [""]
            raise SeedscopeError(
                f"The book did not build (jupyter-book exit {out.returncode}): {last[0][:300]}",
                f"read jupyter-book's full output in {log.relative_to(out_dir.parent)}.",
            )
        for junk in (".buildinfo", ".doctrees"):
            path = built / junk
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        old = out_dir / ".book-old"
        if old.exists():
            shutil.rmtree(old)
        if site.exists():
            site.rename(old)
        built.rename(site)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stale = out_dir / "assets"  # the hand-written page's thumbnails (before the book)
    if stale.is_dir():
        shutil.rmtree(stale)
    page = out_dir / "index.html"
    with atomic_path(page) as tmp:
        tmp.write_text(
            _templates()
            .get_template("report_redirect.html.j2")
            .render(target="book/index.html", title=title)
        )
    return site / "index.html"


__all__ = ["build_report", "collect", "format_headline", "suite_line", "tests_of"]

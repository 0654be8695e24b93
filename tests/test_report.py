"""The book's text: numbers formatted for people, answers read from metrics (and degrading
plainly when a key is absent), the runner's clean-up of executed notebooks."""

from __future__ import annotations

import re

import nbformat
import pytest

from seedscope.core.metrics import headline
from seedscope.pipeline import answers
from seedscope.pipeline.answers import ANSWERS, Answer, Sentence, answer_html, format_headline
from seedscope.pipeline.answers import format_number as fmt


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.94763, "0.948"),
        (0.9, "0.900"),
        (0.95, "0.950"),
        (12.3456, "12.3"),
        (1234.5, "1,230"),
        (1048576.0, "1,048,576"),  # counts stay exact, with thousands separators
        (7.0, "7"),
        (0.0012345, "0.00123"),
        (-0.000123, "-1.23×10⁻⁴"),
        (2.5e-7, "2.50×10⁻⁷"),
        (-3.14159, "-3.14"),
        (0.0, "0"),
        (None, "n/a"),
        (float("nan"), "n/a"),
    ],
)
def test_format_number(value, shown):
    assert fmt(value) == shown


def test_format_headline_forms():
    entry = headline(0.94763, "r", (0.94721, 0.94799))
    assert format_headline(entry) == "0.948 (95% CI 0.947-0.948)"
    assert format_headline(headline(-0.12, "d", (-0.151, -0.09))) == (
        "-0.120 (95% CI -0.151 to -0.0900)"
    )
    assert format_headline(headline(500.0, "step", (420.0, 610.5), unit="training steps")) == (
        "500 training steps (95% CI 420-611)"
    )
    assert format_headline(headline(3.0, "n")) == "3"


def _record(**values):
    return {
        "headline": {
            k: headline(v, k, (v - 0.01, v + 0.01)) if v is not None else headline(v, k)
            for k, v in values.items()
        }
    }


def test_answer_fills_numbers_tagged_for_the_browser_test():
    answer = next(a for a in ANSWERS if a.stage == "loss_pca")
    record = _record(pc1_variance=0.61234, seed_variance_share=0.1, n_seed_components=2.0)
    text = answer_html(answer, record)
    spans = re.findall(r'data-metric="([^"]+)" data-part="(\w+)">([^<]+)<', text)
    assert spans == [
        ("loss_pca.pc1_variance", "full", "0.612 (95% CI 0.602-0.622)"),
        ("loss_pca.seed_variance_share", "full", "0.100 (95% CI 0.0900-0.110)"),
        ("loss_pca.n_seed_components", "value", "2"),
    ]
    assert "no seed structure beyond noise" not in text
    none = answer_html(
        answer, _record(pc1_variance=0.6, seed_variance_share=0.01, n_seed_components=0.0)
    )
    assert "no seed structure beyond noise" in none and "n_seed_components" not in none


def test_answer_names_a_missing_key_and_a_missing_stage():
    answer = next(a for a in ANSWERS if a.stage == "loss_pca")
    text = answer_html(answer, _record(pc1_variance=0.6))
    assert "Not available" in text and "<code>seed_variance_share</code>" in text
    assert 'data-metric="loss_pca.pc1_variance"' in text  # its own sentence is whole
    assert 'data-metric="loss_pca.seed_variance_share"' not in text  # no half-filled sentence
    missing = answer_html(answer, None)
    assert "metrics/details/loss_pca.json" in missing and "dvc repro loss_pca" in missing


def test_optional_and_conditional_sentences():
    answer = Answer(
        "toy",
        "toy?",
        (
            Sentence("none formed", when=lambda v: v.get("formed") == 0),
            Sentence("{formed.value} formed", when=lambda v: v.get("formed") != 0),
            Sentence("at {step}", optional=True),
        ),
    )
    assert answer_html(answer, _record(formed=0.0)) == "none formed"
    shown = answer_html(answer, _record(formed=0.5, step=120.0))
    assert shown.startswith('<span class="metric" data-metric="toy.formed" data-part="value">')
    assert "0.500</span> formed at" in shown and "120 (95% CI 120-120)" in shown


def test_every_answer_names_keys_and_covers_the_six_analyses():
    assert [a.number for a in ANSWERS] == ["1", "2", "3", "4", "5", "6"]
    for answer in ANSWERS:
        required = [k for s in answer.sentences if not s.optional for k in s.keys]
        assert required, answer.stage
        assert answer.question.endswith("?")


def test_module_doctest():
    import doctest

    assert doctest.testmod(answers).failed == 0


def test_clean_outputs_moves_stderr_and_scrubs_paths(tmp_path, monkeypatch):
    from seedscope.pipeline import runner as pipeline

    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.setenv("SEEDSCOPE_ROOT", str(root))
    nb = nbformat.v4.new_notebook()
    setup = nbformat.v4.new_code_cell("quiet_kernel()")
    setup.metadata["tags"] = [pipeline.SETUP_TAG]
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="Loading weights: 100%\n"),
        nbformat.v4.new_output("stream", name="stdout", text=f"wrote {root}/results/a.json\n"),
        nbformat.v4.new_output("display_data", data={"text/plain": f"PosixPath('{root}/figures')"}),
    ]
    nb.cells = [setup, cell]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    moved = pipeline.clean_outputs(path)
    assert moved == ["Loading weights: 100%\n"]
    out = nbformat.read(path, as_version=4)
    assert len(out.cells) == 1
    texts = [o.get("text") or o["data"]["text/plain"] for o in out.cells[0].outputs]
    assert texts == ["wrote ./results/a.json\n", "PosixPath('./figures')"]


def test_write_chapter_folds_code_and_appends_provenance(tmp_path):
    from seedscope.pipeline.report import write_chapter

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("suite = {}")
    params.metadata["tags"] = ["parameters"]
    injected = nbformat.v4.new_code_cell("suite = {'name': 'mini'}")
    injected.metadata["tags"] = ["injected-parameters"]
    code = nbformat.v4.new_code_cell("plot()")
    code.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="warning\n"),
        nbformat.v4.new_output("stream", name="stdout", text="result\n"),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("# 05 · Title"), params, injected, code]
    source, dest = tmp_path / "in.ipynb", tmp_path / "book" / "chapters" / "out.ipynb"
    nbformat.write(nb, source)
    prov = {
        "suite": "mini",
        "runs": ["small-s0"],
        "steps": [1000],
        "params_hash": "abc123",
        "git_commit": "deadbeef",
    }
    write_chapter("loss_correlation", source, dest, {"provenance": prov})
    out = nbformat.read(dest, as_version=4)
    tags = [c.metadata.get("tags", []) for c in out.cells]
    assert "remove-cell" in tags[1] and "remove-cell" in tags[2]
    assert tags[3] == ["hide-input"]
    assert [o["text"] for o in out.cells[3].outputs] == ["result\n"]
    last = out.cells[-1].source
    assert "dvc repro loss_correlation" in last and "abc123" in last and "deadbeef" in last
    assert "small-s0" in last and "1,000" in last


def test_tests_of_finds_the_tests_that_call_a_function(tmp_path):
    from seedscope.pipeline.report import tests_of

    (tmp_path / "test_pca.py").write_text("from seedscope.analyses.pca import loadings_plot\n")
    (tmp_path / "test_other.py").write_text("x = 1\n")
    (tmp_path / "test_compare.py").write_text("y = 2\n")
    assert tests_of("seedscope.analyses.pca.loadings_plot", tmp_path) == ["tests/test_pca.py"]
    # nothing calls it by name: the test file of its module
    assert tests_of("seedscope.analyses.compare.scatter_grid", tmp_path) == [
        "tests/test_compare.py"
    ]
    assert tests_of("seedscope.analyses.induction.plot_x", tmp_path) == []


def test_suite_line_names_runs_with_seeds():
    from seedscope.pipeline.report import suite_line

    manifest = {
        "suite": "mini",
        "description": "2 sizes x 2 seeds",
        "runs": [
            {"name": f"{s}-x{k}", "seed": k, "size": s}
            for s in ("small", "medium")
            for k in (21, 49)
        ],
        "sizes": ["small", "medium"],
        "steps": [0, 500, 1000],
        "mid_step": 500,
        "final_step": 1000,
    }
    line = suite_line(manifest)
    assert "small-x21 (seed 21)" in line and "medium-x49 (seed 49)" in line
    assert "4 runs, 2 sizes" in line and "3 checkpoints from step 0 to 1,000" in line

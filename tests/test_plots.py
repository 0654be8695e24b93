"""The shared figure style: one fixed colour per run, curves per run in that colour, figures
saved without volatile metadata and registered with their provenance."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

from seedscope.core.plots import (
    SAVE_DPI,
    figure_problems,
    plot_curves,
    run_colors,
    save_figure,
    set_log_step_axis,
    smallest_text_pt,
)
from seedscope.pipeline.registry import STAGES
from seedscope.stages.common import register_figure

RUNS = [f"{size}-s{seed}" for size in ("small", "medium") for seed in range(5)]


def test_run_colors_are_distinct_and_fixed_by_suite_order():
    colors = run_colors(RUNS)
    assert len(set(colors.values())) == len(RUNS)
    assert run_colors(RUNS) == colors  # the same in every notebook
    assert run_colors(RUNS[:3]) == {r: colors[r] for r in RUNS[:3]}


def test_plot_curves_one_line_per_run_in_its_colour():
    frame = pd.DataFrame(
        [
            {"run": r, "step": s, "loss": 5.0 - i * 0.1 - s / 1000}
            for i, r in enumerate(RUNS)
            for s in (10, 100, 1000)
        ]
    )
    labels = {r: f"{r} (seed {r[-1]})" for r in RUNS}
    fig = plot_curves(
        frame,
        "step",
        "loss",
        labels,
        RUNS[::-1],
        title="Loss",
        ylabel="loss (nats)",
        hline=(4.0, "baseline"),
    )
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    colors = run_colors(RUNS[::-1])
    for run in RUNS:
        assert to_rgb(lines[labels[run]].get_color()) == pytest.approx(colors[run])
    assert "baseline" in lines
    assert ax.get_xscale() == "log" and ax.get_title() == "Loss"
    assert ax.get_ylabel() == "loss (nats)" and "log scale" in ax.get_xlabel()
    plt.close(fig)


def test_figures_are_byte_identical_and_registered(tmp_path, monkeypatch):
    monkeypatch.setenv("SEEDSCOPE_ROOT", str(tmp_path))

    def draw():
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3], [3, 1, 2])
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats)")
        return fig

    save_figure(draw(), tmp_path / "a.png")
    save_figure(draw(), tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()

    path = register_figure(draw(), "loss_pca", "demo", "A demo figure", plot_curves)
    index = json.loads((tmp_path / "figures" / "loss_pca" / "index.json").read_text())
    # default 10 pt text on a 6.4 in figure (under the page width): 10 * 110 / 72 * 0.75 pt
    assert index["demo"].pop("smallest_text_pt") == pytest.approx(11.5, abs=0.05)
    assert index["demo"] == {
        "file": "demo.png",
        "title": "A demo figure",
        "function": "seedscope.core.plots.plot_curves",  # from the function object
        "stage": "loss_pca",
        "notebook": f"notebooks/{STAGES['loss_pca'].notebook}.ipynb",
        "key": False,
        "problems": [],
    }
    assert path.endswith("demo.png")

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [3, 1, 2])
    register_figure(fig, "loss_pca", "bare", "Unlabelled", plot_curves)
    index = json.loads((tmp_path / "figures" / "loss_pca" / "index.json").read_text())
    assert index["bare"]["problems"] == ["axes 0: no x label", "axes 0: no y label"]


def test_figure_problems_finds_missing_titles_and_labels():
    fig, ax = plt.subplots()
    ax.plot([1, 2], [1, 2])
    assert figure_problems(fig) == ["no title", "axes 0: no x label", "axes 0: no y label"]
    ax.set_title("t")
    ax.set_xlabel("step")
    fig.supylabel("loss (nats)")  # a figure-level label serves every panel
    assert figure_problems(fig) == []
    plt.close(fig)

    # a grid: inner panels take the label of their column (x) / row (y)
    fig, axes = plt.subplots(2, 2)
    for ax in axes.flat:
        ax.plot([1, 2], [1, 2])
    fig.suptitle("grid")
    axes[1, 0].set_xlabel("a")
    axes[0, 0].set_ylabel("b")
    axes[1, 0].set_ylabel("c")
    assert figure_problems(fig) == ["axes 1: no x label", "axes 3: no x label"]  # column 2
    axes[1, 1].set_xlabel("d")
    assert figure_problems(fig) == []
    image = axes[0, 0].imshow([[0, 1]])
    bar = fig.colorbar(image, ax=axes[0, 0])
    assert figure_problems(fig) == ["<colorbar>: colour bar without a label"]
    bar.set_label("value")
    assert figure_problems(fig) == []
    plt.close(fig)


def test_smallest_text_scales_with_the_page_width():
    fig, ax = plt.subplots(figsize=(800 / SAVE_DPI, 4))  # as wide as the page: no scaling
    ax.set_title("t", fontsize=12)
    ax.set_xlabel("x", fontsize=10)
    ax.set_ylabel("y", fontsize=10)
    ax.tick_params(labelsize=8)
    ax.plot([1, 2], [1, 2])
    # 8 pt on the PNG at SAVE_DPI is 8 * SAVE_DPI / 72 px = 0.75 * that in CSS pt
    assert smallest_text_pt(fig) == pytest.approx(8 * SAVE_DPI / 72 * 0.75)
    fig.set_figwidth(1600 / SAVE_DPI)  # wider than the page: shown scaled to the page width
    saved_px = fig.get_tightbbox().width * SAVE_DPI  # what save_figure writes (tight crop)
    assert saved_px > 1000  # (the crop removes the margins)
    wide = smallest_text_pt(fig)
    assert wide == pytest.approx(8 * SAVE_DPI / 72 * 0.75 * 800 / saved_px)
    # a legend outside the axes widens the saved image, so the text shrinks further
    ax.legend(["a line with a long legend label"], bbox_to_anchor=(1.01, 1), loc="upper left")
    assert smallest_text_pt(fig) < wide
    plt.close(fig)


def test_analysis_figures_are_titled_labelled_and_readable():
    """Every figure compare.py and pca.py draw for a stage: a title, every axis labelled, and
    (the large grids) text >= 9 pt at the book's page width."""
    import numpy as np

    from seedscope.analyses import compare

    rng = np.random.default_rng(0)
    shared = rng.normal(-3, 1, (40, 50))
    runs = [f"{size}-s{seed}" for size in ("small", "medium") for seed in range(5)]
    lp = {r: shared + rng.normal(0, 0.3, shared.shape) for r in runs}
    labels = {r: f"{r} (seed {r[-1]})" for r in runs}
    sizes = {r: r.split("-")[0] for r in runs}
    agreement = compare.pairwise_agreement(lp, n_boot=0, sizes=sizes)
    figures = {
        "scatter grid (one size)": compare.scatter_grid(lp, runs[:5], labels),
        "heatmap": compare.correlation_heatmap(agreement, "pearson", labels, sizes),
    }
    for name, fig in figures.items():
        assert figure_problems(fig) == [], name
        assert smallest_text_pt(fig) >= 9, name
    over_time = pd.concat([agreement.assign(step=100), agreement.assign(step=10)])
    fig = compare.agreement_over_training_plot(over_time, "pearson", labels, sizes)
    assert figure_problems(fig) == []
    # 45 pairs: one colour and one legend entry per group (seed pairs of a size, cross-size)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["seed pairs, small", "pairs across sizes", "seed pairs, medium"]
    few = over_time[over_time["run_a"].isin(runs[:3]) & over_time["run_b"].isin(runs[:3])]
    fig = compare.agreement_over_training_plot(few, "pearson", labels, sizes)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[0] == "small-s0 (seed 0) vs small-s1 (seed 1)" and len(legend) == 3


def test_log_step_axis_shows_step_zero_and_plain_ticks():
    fig, ax = plt.subplots()
    steps = [0, 10, 20, 50, 100, 200, 500, 1000]
    ax.plot(steps, range(len(steps)))
    set_log_step_axis(ax, steps)
    fig.draw_without_rendering()
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert ax.get_xscale() == "symlog" and ax.get_xlabel() == "training step (log scale)"
    # two decades above the first nonzero step: 1 and 3 x 10^k, plain numbers, step 0 kept
    assert shown == ["0", "10", "30", "100", "300", "1,000"]
    set_log_step_axis(ax, [0, 10, 50_000])
    fig.draw_without_rendering()
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert shown == ["0", "10", "100", "1,000", "10,000"]
    ax.set_xlim(0, 60)
    set_log_step_axis(ax, [0, 5, 10, 20, 60], "emergence step")
    fig.draw_without_rendering()
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert shown == ["0", "5", "10", "20", "50"] and ax.get_xlabel() == "emergence step"
    plt.close(fig)

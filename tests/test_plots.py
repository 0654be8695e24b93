"""The shared figure style: one fixed colour per run, curves per run in that colour, figures
saved without volatile metadata and registered with their provenance."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

from seedscope.plots import plot_curves, register_figure, run_colors, save_figure

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
        return fig

    save_figure(draw(), tmp_path / "a.png")
    save_figure(draw(), tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()

    path = register_figure(draw(), "loss_pca", "demo", "A demo figure", "seedscope.pca.demo")
    index = json.loads((tmp_path / "figures" / "loss_pca" / "index.json").read_text())
    assert index["demo"] == {
        "file": "demo.png",
        "title": "A demo figure",
        "function": "seedscope.pca.demo",
        "stage": "loss_pca",
        "notebook": "notebooks/07_loss_pca.ipynb",
        "key": False,
    }
    assert path.endswith("demo.png")

"""Shared figure conventions: one colour per run everywhere, titled and labelled axes."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import seaborn as sns

mpl.use("Agg")
# No timestamps or random ids in saved SVG/PNG metadata: reruns give identical files.
mpl.rcParams["svg.hashsalt"] = "seedscope"
mpl.rcParams["path.simplify"] = True

_PALETTES = ("tab10", "Set2", "Dark2")


def run_colors(run_names: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """A fixed colour per run, the same in every notebook: runs are coloured in the order the
    suite lists them (pass `[r.name for r in suite.runs]`), so a run keeps its colour when
    an analysis shows only some runs."""
    colors = sns.color_palette(_PALETTES[0], 10) + sns.color_palette(_PALETTES[1], 8)
    colors += sns.color_palette(_PALETTES[2], 8)
    return {name: colors[i % len(colors)] for i, name in enumerate(run_names)}


def size_colors(sizes: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """A fixed colour per model size."""
    palette = sns.color_palette("colorblind", max(3, len(sizes)))
    return {size: palette[i] for i, size in enumerate(sizes)}


def save_figure(fig, path) -> None:  # type: ignore[no-untyped-def]
    """Save a figure as PNG with no volatile metadata (identical bytes on rerun), atomically."""
    from seedscope.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})


def register_figure(
    fig,  # type: ignore[no-untyped-def]
    stage: str,
    name: str,
    title: str,
    function: str,
    key: bool = False,
) -> str:
    """Save `fig` as figures/<stage>/<name>.png and record where it came from.

    `figures/<stage>/index.json` maps each figure to its title, the package function that
    computed it, the notebook and the stage — the report's "reproduce this figure" table.
    `key=True` marks the stage's headline figure (its thumbnail on the report page).
    """
    import matplotlib.pyplot as plt

    from seedscope.io import read_json, write_json
    from seedscope.paths import figures_dir
    from seedscope.pipeline import STAGES

    folder = figures_dir() / stage
    path = folder / f"{name}.png"
    if not fig.axes or not any(ax.get_title() or fig._suptitle for ax in fig.axes):
        fig.suptitle(title)
    save_figure(fig, path)
    plt.close(fig)
    index_path = folder / "index.json"
    index = read_json(index_path) if index_path.exists() else {}
    index[name] = {
        "file": f"{name}.png",
        "title": title,
        "function": function,
        "stage": stage,
        "notebook": f"notebooks/{STAGES[stage].notebook}.ipynb",
        "key": key,
    }
    write_json(index_path, index)
    return str(path)


def plot_curves(
    frame,  # type: ignore[no-untyped-def]
    x: str,
    y: str,
    labels: dict[str, str],
    run_order: Sequence[str],
    smooth: int = 1,
    title: str = "",
    ylabel: str = "",
    hline: tuple[float, str] | None = None,
):
    """One line per run (column `run`), in the run's fixed colour; log-scale x."""
    import matplotlib.pyplot as plt

    colors = run_colors(list(run_order))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in run_order:
        part = frame[frame["run"] == run].sort_values(x)
        if part.empty:
            continue
        values = part[y].rolling(smooth, min_periods=1).mean() if smooth > 1 else part[y]
        ax.plot(part[x], values, color=colors[run], label=labels.get(run, run), lw=1.2)
    if hline is not None:
        ax.axhline(hline[0], color="0.4", ls="--", lw=1, label=hline[1])
    ax.set_xscale("log")
    ax.set_xlabel(f"{x.replace('_', ' ')} (log scale)")
    ax.set_ylabel(ylabel or y)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig

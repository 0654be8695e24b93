"""Shared figure conventions: one colour per run everywhere, titled and labelled axes."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
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


def set_log_step_axis(  # type: ignore[no-untyped-def]
    ax, steps, label: str = "training step (log scale)"
) -> None:
    """A log-scale training-step axis that also shows step 0 (symlog, linear below the first
    nonzero step), with plain-number ticks at 0 and 1, 2, 5 x 10^k (1, 3 x 10^k past 1.5
    decades, 1 x 10^k past 2.5) up to the last step."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    values = np.asarray(steps, dtype=float)
    values = values[np.isfinite(values)]
    positive = values[values > 0]
    linthresh = float(positive.min()) if positive.size else 1.0
    top = float(positive.max()) if positive.size else 1.0
    decades = np.log10(top / linthresh)
    subs = (1.0, 2.0, 5.0) if decades <= 1.5 else (1.0, 3.0) if decades <= 2.5 else (1.0,)
    exponents = range(int(np.floor(np.log10(linthresh))), int(np.ceil(np.log10(top))) + 1)
    ticks = sorted({m * 10.0**e for e in exponents for m in subs})
    ticks = [0.0] + [t for t in ticks if linthresh <= t <= top * 1.001]
    ax.set_xscale("symlog", linthresh=linthresh)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel(label)


# Saved PNG resolution, and the width (CSS px) at which the book shows a figure: a wider image
# is scaled down to it, a narrower one is shown at its own size.
SAVE_DPI = 110
PAGE_WIDTH_PX = 800


def figure_problems(fig) -> list[str]:  # type: ignore[no-untyped-def]
    """What a reader would miss on `fig`: no title (figure or axes), or an axis with ticks but
    no label. An axis may take its label from the figure (`supxlabel`/`supylabel`) or from
    another panel in the same grid column (x) or row (y); a colour bar needs a label on its
    long axis. Empty list = titled and labelled."""
    titled = bool(fig._suptitle and fig._suptitle.get_text()) or any(
        ax.get_title(loc) for ax in fig.axes for loc in ("left", "center")
    )
    problems = [] if titled else ["no title"]
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison]

    def axis_of(ax, which: str):  # type: ignore[no-untyped-def]
        return ax.xaxis if which == "x" else ax.yaxis

    def span(ax, which: str) -> tuple[int, ...] | None:  # type: ignore[no-untyped-def]
        spec = ax.get_subplotspec()
        if spec is None:
            return None
        spec = spec.get_topmost_subplotspec()  # a colour bar nests its panel's cell
        return tuple(spec.colspan if which == "x" else spec.rowspan)

    def labelled(ax, which: str) -> bool:  # type: ignore[no-untyped-def]
        sup = fig._supxlabel if which == "x" else fig._supylabel
        if axis_of(ax, which).get_label_text() or (sup is not None and sup.get_text()):
            return True
        mine = span(ax, which)
        return mine is not None and any(
            span(o, which) == mine and axis_of(o, which).get_label_text() for o in panels
        )

    for i, ax in enumerate(panels):
        name = ax.get_label() or f"axes {i}"
        if hasattr(ax, "_colorbar"):
            if not (ax.get_ylabel() or ax.get_xlabel()):
                problems.append(f"{name}: colour bar without a label")
            continue
        for which in ("x", "y"):
            if len(axis_of(ax, which).get_ticklocs()) and not labelled(ax, which):
                problems.append(f"{name}: no {which} label")
    return problems


def smallest_text_pt(fig, page_width_px: int = PAGE_WIDTH_PX) -> float:  # type: ignore[no-untyped-def]
    """The smallest visible text on `fig` in points as a reader sees it when the book shows the
    saved PNG (`SAVE_DPI`) at most `page_width_px` CSS pixels wide (96 px = 72 pt)."""
    from matplotlib.text import Text

    fig.draw_without_rendering()
    # save_figure crops to the tight box (which includes a legend outside the axes)
    width_in = fig.get_tightbbox().width
    width_px = max(width_in, 1e-9) * SAVE_DPI
    scale = min(1.0, page_width_px / width_px)
    sizes = [
        t.get_fontsize()
        for t in fig.findobj(Text)
        if t.get_visible() and t.get_text().strip() and t.figure is not None
    ]
    # a point on the PNG is SAVE_DPI / 72 px; a CSS pixel is 0.75 pt
    return min(sizes) * SAVE_DPI / 72 * scale * 0.75 if sizes else float("inf")


def save_figure(fig, path) -> None:  # type: ignore[no-untyped-def]
    """Save a figure as PNG with no volatile metadata (identical bytes on rerun), atomically."""
    from seedscope.core.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(
            tmp, format="png", dpi=SAVE_DPI, bbox_inches="tight", metadata={"Software": None}
        )


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
    ax.legend(fontsize=9, ncol=2)
    fig.tight_layout()
    return fig

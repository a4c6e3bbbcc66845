"""Figures of the report, drawn with matplotlib's Agg canvas (no display, no global pyplot state).

Each reduction has a fixed colour, line style and marker, the same in every figure, so that
curves stay distinguishable in black and white.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter

from bench.schema import REDUCTIONS

# The reductions in the order of the design's table; unknown names follow, sorted.
REDUCTION_ORDER: tuple[str, ...] = REDUCTIONS
LINE_STYLES: tuple[str | tuple[int, tuple[int, ...]], ...] = (
    "-",
    "--",
    ":",
    "-.",
    (0, (5, 1, 1, 1, 1, 1)),
    (0, (8, 2)),
    (0, (1, 1)),
)
# Entries of seaborn's 10-colour colour-blind palette, in the order reductions take them (its
# light pink, 6, comes late: it is hard to see on white).
PALETTE_ORDER: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 7, 9, 8, 6)
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
MARKERS_PER_CURVE = 8
FACET_SIZE_INCHES = (4.2, 3.0)
PNG_DPI = 150


@dataclass(frozen=True)
class CurveStyle:
    """How one reduction's curves are drawn."""

    color: tuple[float, float, float]
    linestyle: str | tuple[int, tuple[int, ...]]
    marker: str
    marker_phase: float  # where in the marker spacing this reduction's markers sit, in [0, 1)


def ordered_reductions(reductions: Sequence[str]) -> list[str]:
    """The distinct reductions in the design's order, unknown names last and sorted."""
    present = set(reductions)
    known = [r for r in REDUCTION_ORDER if r in present]
    return known + sorted(present - set(REDUCTION_ORDER))


def reduction_styles(reductions: Sequence[str]) -> dict[str, CurveStyle]:
    """A colour (seaborn's colour-blind palette), line style and marker per reduction.

    Known reductions keep the same style whatever else a figure shows; unknown ones take the
    styles after the known ones.
    """
    names = list(REDUCTION_ORDER) + [
        r for r in ordered_reductions(reductions) if r not in REDUCTION_ORDER
    ]
    palette = sns.color_palette("colorblind", n_colors=len(PALETTE_ORDER))
    return {
        name: CurveStyle(
            color=tuple(palette[PALETTE_ORDER[i % len(PALETTE_ORDER)]]),
            linestyle=LINE_STYLES[i % len(LINE_STYLES)],
            marker=MARKERS[i % len(MARKERS)],
            marker_phase=i / len(names),
        )
        for i, name in enumerate(names)
        if name in set(reductions)
    }


def seeds_label(seed_counts: Sequence[int]) -> str:
    """The legend's seed count: "10 seeds", or "8–10 seeds" when facets differ."""
    low, high = min(seed_counts), max(seed_counts)
    count = f"{low}" if low == high else f"{low}\u2013{high}"
    return f"{count} seed" if high == 1 else f"{count} seeds"


def plot_convergence(
    bands: pd.DataFrame, title: str, path_stem: Path, confidence: float = 0.95
) -> list[Path]:
    """Return against env steps, one facet per env (rows) and algorithm (columns).

    ``bands`` has one row per (env, algo, reduction, grid point) with columns ``env``, ``algo``,
    ``reduction``, ``env_step``, ``value`` (the mean over seeds), ``low`` and ``high`` (the
    bootstrap band over seeds) and ``n_seeds``: the output of `analysis.metrics.curve_band` per
    cell. Each reduction is one line with its shaded band; the legend gives the number of seeds.
    Writes ``<path_stem>.png`` and ``<path_stem>.pdf`` and returns their paths.
    """
    envs = sorted(bands["env"].unique())
    algos = sorted(bands["algo"].unique())
    reductions = ordered_reductions(bands["reduction"].unique())
    styles = reduction_styles(reductions)
    width, height = FACET_SIZE_INCHES
    figure = Figure(figsize=(width * len(algos), height * len(envs) + 1.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(envs), len(algos), squeeze=False, sharex="row", sharey="row")
    for row, env in enumerate(envs):
        for column, algo in enumerate(algos):
            facet = bands[(bands["env"] == env) & (bands["algo"] == algo)]
            _draw_facet(axes[row, column], facet, styles)
            axes[row, column].set_title(f"{env} \u00b7 {algo}")
            if row == len(envs) - 1:
                axes[row, column].set_xlabel("environment steps")
            if column == 0:
                axes[row, column].set_ylabel("episode return (undiscounted)")
    handles = [
        Line2D(
            [],
            [],
            color=styles[reduction].color,
            linestyle=styles[reduction].linestyle,
            marker=styles[reduction].marker,
            label=f"{reduction} ({seeds_label(_seed_counts(bands, reduction))})",
        )
        for reduction in reductions
    ]
    figure.legend(
        handles=handles,
        loc="outside lower center",
        # Two legend columns per facet column keep the legend within the figure's width.
        ncols=min(len(handles), 2 * len(algos)),
        title="reduction",
        frameon=False,
    )
    figure.suptitle(
        f"{title}\nline: mean over seeds; band: {confidence:.0%} bootstrap CI over seeds",
        fontsize="medium",
    )
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    # Not with_suffix: a stem such as "lr=0.0003" already has a dot.
    paths = [path_stem.parent / f"{path_stem.name}.{extension}" for extension in ("png", "pdf")]
    figure.savefig(paths[0], dpi=PNG_DPI, bbox_inches="tight")
    figure.savefig(paths[1], bbox_inches="tight")
    return paths


def _seed_counts(bands: pd.DataFrame, reduction: str) -> list[int]:
    """The seed count of each facet that shows ``reduction``."""
    rows = bands[bands["reduction"] == reduction]
    return rows.groupby(["env", "algo"])["n_seeds"].max().astype(int).tolist()


def _draw_facet(axes: Axes, facet: pd.DataFrame, styles: dict[str, CurveStyle]) -> None:
    """One facet: a line and band per reduction, or a note when the facet has no runs."""
    if facet.empty:
        axes.text(0.5, 0.5, "no runs", ha="center", va="center", transform=axes.transAxes)
        return
    for reduction, curve in facet.groupby("reduction", sort=False):
        style = styles[str(reduction)]
        curve = curve.sort_values("env_step")
        steps = curve["env_step"].to_numpy(dtype=float)
        marker_spacing = max(1, len(steps) // MARKERS_PER_CURVE)
        axes.plot(
            steps,
            curve["value"].to_numpy(dtype=float),
            color=style.color,
            linestyle=style.linestyle,
            marker=style.marker,
            markevery=(int(style.marker_phase * marker_spacing), marker_spacing),
            markersize=4,
            linewidth=1.5,
        )
        axes.fill_between(
            steps,
            curve["low"].to_numpy(dtype=float),
            curve["high"].to_numpy(dtype=float),
            color=style.color,
            alpha=0.2,
            linewidth=0,
        )
    axes.xaxis.set_major_formatter(EngFormatter(sep=""))
    axes.grid(True, alpha=0.3)
    axes.set_xlim(left=0)
    if np.isfinite(facet["value"].to_numpy(dtype=float)).sum() == 0:
        axes.text(
            0.5, 0.5, "no finished episodes", ha="center", va="center", transform=axes.transAxes
        )

"""Figures of the report, drawn with matplotlib's Agg canvas (no display, no global pyplot state).

Each reduction has a fixed colour, line style and marker, the same in every figure, so that
curves stay distinguishable in black and white.
"""

from __future__ import annotations

import itertools
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
from matplotlib.ticker import EngFormatter, FuncFormatter, NullFormatter

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
    labels = {r: f"{r} ({seeds_label(_seed_counts(bands, r))})" for r in reductions}
    _reduction_legend(figure, styles, labels, columns=2 * len(algos))
    figure.suptitle(
        f"{title}\nline: mean over seeds; band: {confidence:.0%} bootstrap CI over seeds",
        fontsize="medium",
    )
    return save_figure(figure, path_stem)


def save_figure(figure: Figure, path_stem: Path) -> list[Path]:
    """Write ``<path_stem>.png`` and ``<path_stem>.pdf``; returns their paths."""
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


def _reduction_legend(
    figure: Figure, styles: dict[str, CurveStyle], labels: dict[str, str], columns: int
) -> None:
    """One legend entry (colour, line style and marker) per reduction, below the facets."""
    handles = [
        Line2D(
            [],
            [],
            color=styles[reduction].color,
            linestyle=styles[reduction].linestyle,
            marker=styles[reduction].marker,
            label=label,
        )
        for reduction, label in labels.items()
    ]
    figure.legend(
        handles=handles,
        loc="outside lower center",
        # About two legend columns per facet column keep the legend within the figure's width.
        ncols=max(1, min(len(handles), columns)),
        title="reduction",
        frameon=False,
    )


def _facet_grid(rows: int, columns: int, legend_inches: float = 1.4) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure of ``rows`` x ``columns`` facets with room for a legend."""
    width, height = FACET_SIZE_INCHES
    figure = Figure(figsize=(width * columns, height * rows + legend_inches), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, columns, squeeze=False)


def plot_lr_sensitivity(
    points: pd.DataFrame, metric_label: str, title: str, path_stem: Path
) -> list[Path]:
    """A metric against the learning rate (log x axis), one line per reduction.

    ``points`` has one row per cell with columns ``row`` and ``column`` (facet labels, e.g. the
    env and "algo · optim"), ``reduction``, ``lr``, ``value`` (the statistic over seeds),
    ``low``, ``high`` (its CI) and ``n_seeds``. Error bars are the CIs; the reductions' points
    are shifted slightly along x (at most 4% of the lr) so that the bars do not hide each other.
    Writes PNG and PDF; returns their paths.
    """
    rows, columns = sorted(points["row"].unique()), sorted(points["column"].unique())
    reductions = ordered_reductions(points["reduction"].unique())
    styles = reduction_styles(reductions)
    figure, axes = _facet_grid(len(rows), len(columns))
    offsets = np.linspace(-0.008, 0.008, len(reductions)) if len(reductions) > 1 else [0.0]
    for (i, row), (j, column) in itertools.product(enumerate(rows), enumerate(columns)):
        ax = axes[i, j]
        facet = points[(points["row"] == row) & (points["column"] == column)]
        for reduction, offset in zip(reductions, offsets, strict=True):
            line = facet[facet["reduction"] == reduction].sort_values("lr")
            if line.empty:
                continue
            style = styles[reduction]
            value = line["value"].to_numpy(dtype=float)
            ax.errorbar(
                line["lr"].to_numpy(dtype=float) * 10**offset,
                value,
                yerr=[value - line["low"].to_numpy(float), line["high"].to_numpy(float) - value],
                color=style.color,
                linestyle=style.linestyle,
                marker=style.marker,
                markersize=5,
                capsize=3,
                linewidth=1.5,
            )
        ax.set_xscale("log")
        ax.set_xticks(sorted(facet["lr"].unique()))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.3)
        ax.set_title(f"{row} \u00b7 {column}", fontsize="medium")
        ax.set_xlabel("learning rate (log scale)")
        if j == 0:
            ax.set_ylabel(metric_label)
    labels = {
        r: f"{r} ({seeds_label(points.loc[points['reduction'] == r, 'n_seeds'].astype(int))})"
        for r in reductions
    }
    _reduction_legend(figure, styles, labels, columns=2 * len(columns))
    figure.suptitle(title, fontsize="medium")
    return save_figure(figure, path_stem)


def plot_aggregate_intervals(intervals: pd.DataFrame, title: str, path_stem: Path) -> list[Path]:
    """Aggregate scores with their CIs, rliable's interval plot.

    ``intervals`` has one row per (group, statistic, reduction) with columns ``group`` (a facet
    row label), ``statistic`` (a facet column, e.g. "IQM"), ``reduction``, ``value``, ``low`` and
    ``high``. Each reduction is one marker with a horizontal CI bar on its own line of the y
    axis. Writes PNG and PDF; returns their paths.
    """
    groups = sorted(intervals["group"].unique())
    statistics = list(dict.fromkeys(intervals["statistic"]))
    reductions = ordered_reductions(intervals["reduction"].unique())
    styles = reduction_styles(reductions)
    figure, axes = _facet_grid(len(groups), len(statistics), legend_inches=0.4)
    for (i, group), (j, statistic) in itertools.product(enumerate(groups), enumerate(statistics)):
        ax = axes[i, j]
        facet = intervals[(intervals["group"] == group) & (intervals["statistic"] == statistic)]
        for position, reduction in enumerate(reductions):
            point = facet[facet["reduction"] == reduction]
            if point.empty:
                continue
            style = styles[reduction]
            value = float(point["value"].iloc[0])
            ax.errorbar(
                [value],
                [position],
                xerr=[
                    [value - float(point["low"].iloc[0])],
                    [float(point["high"].iloc[0]) - value],
                ],
                color=style.color,
                marker=style.marker,
                markersize=6,
                capsize=4,
                linewidth=2,
            )
        ax.set_yticks(range(len(reductions)), reductions)
        ax.set_ylim(len(reductions) - 0.5, -0.5)
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_title(f"{statistic}\n{group}", fontsize="medium")
        ax.set_xlabel("normalised score")
    figure.suptitle(title, fontsize="medium")
    return save_figure(figure, path_stem)


def plot_performance_profile(profiles: pd.DataFrame, title: str, path_stem: Path) -> list[Path]:
    """Performance profiles: fraction of runs with normalised score above tau, against tau.

    ``profiles`` has one row per (group, reduction, tau) with columns ``group`` (one facet
    each), ``reduction``, ``tau``, ``value``, ``low``, ``high`` (the CI band) and ``n_runs``.
    Writes PNG and PDF; returns their paths.
    """
    groups = sorted(profiles["group"].unique())
    reductions = ordered_reductions(profiles["reduction"].unique())
    styles = reduction_styles(reductions)
    figure, axes = _facet_grid(1, len(groups))
    for j, group in enumerate(groups):
        ax = axes[0, j]
        facet = profiles[profiles["group"] == group]
        for reduction in reductions:
            curve = facet[facet["reduction"] == reduction].sort_values("tau")
            if curve.empty:
                continue
            style = styles[reduction]
            tau = curve["tau"].to_numpy(dtype=float)
            spacing = max(1, len(tau) // MARKERS_PER_CURVE)
            ax.plot(
                tau,
                curve["value"].to_numpy(dtype=float),
                color=style.color,
                linestyle=style.linestyle,
                marker=style.marker,
                markevery=(int(style.marker_phase * spacing), spacing),
                markersize=4,
                linewidth=1.5,
            )
            ax.fill_between(
                tau,
                curve["low"].to_numpy(float),
                curve["high"].to_numpy(float),
                color=style.color,
                alpha=0.15,
                linewidth=0,
            )
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        ax.set_title(group, fontsize="medium")
        ax.set_xlabel("normalised score \u03c4")
        if j == 0:
            ax.set_ylabel("fraction of runs with score > \u03c4")
    labels = {
        r: f"{r} ({int(profiles.loc[profiles['reduction'] == r, 'n_runs'].max())} runs)"
        for r in reductions
    }
    _reduction_legend(figure, styles, labels, columns=2 * len(groups))
    figure.suptitle(title, fontsize="medium")
    return save_figure(figure, path_stem)

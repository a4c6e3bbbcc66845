"""Figures of the report, drawn with matplotlib's Agg canvas (no display, no global pyplot state).

Each reduction has a fixed colour, line style and marker, the same in every figure, so that
curves stay distinguishable in black and white: the seven colours have distinct lightness
(CIE L* at least 8.7 apart, Rec. 709 and Rec. 601 luma at least 0.078 apart) and distinct hues
(CIE76 delta-E at least 32 apart, at least 13 under simulated protan, deutan and tritan
colour vision), besides their line styles and markers.

Curves that are exactly equal within a facet (e.g. reductions that differ by a constant factor
under Adam, whose runs are then bit-identical) are drawn once: the first reduction's line and
band, with the others' markers on that line; the legend and the figure's header name them.
"""

from __future__ import annotations

import functools
import itertools
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, FuncFormatter, NullFormatter
from matplotlib.transforms import offset_copy

from bench.schema import REDUCTIONS

# The reductions in the order of the design's table; unknown names follow, sorted.
REDUCTION_ORDER: tuple[str, ...] = REDUCTIONS
# A colour per known reduction. Lightness runs through seven distinct levels (L* 20 to 80) and
# neighbouring levels differ in hue, so that the colours stay apart in greyscale print and for
# colour-blind readers (tests/test_analysis_plots.py checks the distances).
REDUCTION_COLOURS: dict[str, str] = {
    "sum": "#320F8E",  # indigo, L* 20
    "mean": "#894E00",  # ochre, L* 39
    "traj_mean": "#469C92",  # teal, L* 59
    "traj_step_mean": "#8FCDFE",  # light sky blue, L* 80
    "constant": "#851B37",  # wine, L* 30
    "length_power": "#4B8546",  # green, L* 50
    "per_step": "#E09384",  # salmon, L* 68
}
# Unknown reductions (and known ones without a colour above) take seaborn's colour-blind
# palette, in this order (its light pink, 6, comes late: it is hard to see on white).
PALETTE_ORDER: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 7, 9, 8, 6)
LINE_STYLES: tuple[str | tuple[int, tuple[int, ...]], ...] = (
    "-",
    "--",
    ":",
    "-.",
    (0, (5, 1, 1, 1, 1, 1)),
    (0, (8, 2)),
    (0, (1, 1)),
)
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
MARKERS_PER_CURVE = 8
FACET_SIZE_INCHES = (4.2, 3.0)
MAX_FACET_WIDTH_INCHES = 5.5  # facets widen up to this for long titles, which wrap beyond it
PNG_DPI = 150
TITLE_FONTSIZE = "medium"
HEADER_LINE_INCHES = 0.2  # the height one line of the figure's header adds to the figure
# Room left of and beside a facet's axes (tick labels, axis label, padding) that its title
# cannot use, in inches.
AXES_RESERVE_INCHES = 0.9
IDENTICAL_OVERLAY_POINTS = 7.0  # x offset between the markers of identical lr points
IDENTICAL_NOTE = (
    "identical curves, drawn once (the first's line and band, the others' markers on it)"
)
IDENTICAL_POINTS_NOTE = (
    "identical points, drawn once (the first's line and bars, the others' markers beside them)"
)


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
    """A colour (`REDUCTION_COLOURS`), line style and marker per reduction.

    Known reductions keep the same style whatever else a figure shows; unknown ones take
    seaborn's colour-blind palette and the line styles and markers after the known ones.
    """
    names = list(REDUCTION_ORDER) + [
        r for r in ordered_reductions(reductions) if r not in REDUCTION_ORDER
    ]
    palette = sns.color_palette("colorblind", n_colors=len(PALETTE_ORDER))
    present = set(reductions)
    styles = {}
    extra = 0
    for i, name in enumerate(names):
        if name in REDUCTION_COLOURS:
            color = to_rgb(REDUCTION_COLOURS[name])
        else:
            color = tuple(palette[PALETTE_ORDER[extra % len(PALETTE_ORDER)]])
            extra += 1
        if name in present:
            styles[name] = CurveStyle(
                color=color,
                linestyle=LINE_STYLES[i % len(LINE_STYLES)],
                marker=MARKERS[i % len(MARKERS)],
                marker_phase=_marker_phase(i),
            )
    return styles


def _marker_phase(index: int) -> float:
    """The marker phase of the ``index``-th style: known reductions spread over [0, 1), the
    same whatever else a figure shows; unknown ones between them."""
    known = max(1, len(REDUCTION_ORDER))
    return ((index % known) + 0.5 * ((index // known) % 2)) / known


def seeds_label(seed_counts: Sequence[int]) -> str:
    """The legend's seed count: "10 seeds", or "8–10 seeds" when facets differ."""
    low, high = min(seed_counts), max(seed_counts)
    count = f"{low}" if low == high else f"{low}\u2013{high}"
    return f"{count} seed" if high == 1 else f"{count} seeds"


def identical_curve_groups(
    facet: pd.DataFrame, x: str, reductions: Sequence[str] | None = None
) -> list[list[str]]:
    """The reductions of one facet, grouped by exactly equal curves.

    Two curves are equal when they have the same ``x`` values and the same ``value``, ``low``
    and ``high`` at each (NaN equal to NaN). A curve without any finite value is equal to no
    other. Groups and their members follow ``reductions`` (default: `ordered_reductions`); the
    first member of a group is the one drawn.
    """
    order = ordered_reductions(facet["reduction"].unique()) if reductions is None else reductions
    curves: dict[str, list[np.ndarray]] = {}
    for reduction in order:
        curve = facet[facet["reduction"] == reduction]
        if not curve.empty:
            curve = curve.sort_values(x, kind="stable")
            curves[reduction] = [
                curve[c].to_numpy(dtype=float) for c in (x, "value", "low", "high")
            ]
    groups: list[list[str]] = []
    for reduction, arrays in curves.items():
        comparable = bool(np.isfinite(arrays[1]).any())
        for group in groups:
            if comparable and _arrays_equal(curves[group[0]], arrays):
                group.append(reduction)
                break
        else:
            groups.append([reduction])
    return groups


def _arrays_equal(first: list[np.ndarray], second: list[np.ndarray]) -> bool:
    return all(
        a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
        for a, b in zip(first, second, strict=True)
    )


@dataclass
class IdenticalCurves:
    """Which reductions' curves were identical in which facets of one figure."""

    shown: dict[str, list[str]] = field(default_factory=dict)  # reduction -> its facets
    facets: list[str] = field(default_factory=list)  # the facets with curves
    groups: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # (facet, group)

    def record(self, facet: str, groups: Sequence[Sequence[str]]) -> None:
        """Note one facet's groups (`identical_curve_groups`)."""
        if groups:
            self.facets.append(facet)
        for group in groups:
            for reduction in group:
                self.shown.setdefault(reduction, []).append(facet)
            if len(group) > 1:
                self.groups.append((facet, tuple(group)))

    def legend_note(self, reduction: str) -> str:
        """E.g. "= sum in 4 of 4 facets" for a reduction drawn as another's identical curve;
        "" for one never identical to an earlier reduction."""
        firsts: dict[str, int] = {}
        for _, group in self.groups:
            if reduction in group[1:]:
                firsts[group[0]] = firsts.get(group[0], 0) + 1
        if not firsts:
            return ""
        parts = [f"= {first} in {count}" for first, count in firsts.items()]
        return f"{', '.join(parts)} of {len(self.shown.get(reduction, []))} facets"

    def note(self, lead: str = IDENTICAL_NOTE) -> str:
        """The header line naming each group of identical curves and its facets ("" if none),
        after ``lead`` (how they are drawn)."""
        facets_of: dict[tuple[str, ...], list[str]] = {}
        for facet, group in self.groups:
            facets_of.setdefault(group, []).append(facet)
        if not facets_of:
            return ""
        parts = []
        for group, facets in facets_of.items():
            if len(facets) == len(self.facets):
                where = "all facets" if len(facets) > 1 else "the facet"
            elif len(facets) <= 3:
                where = "; ".join(facets)
            else:
                where = f"{len(facets)} of {len(self.facets)} facets"
            parts.append(f"{' = '.join(group)} ({where})")
        return f"{lead}: {'; '.join(parts)}"


def legend_label(base: str, note: str) -> str:
    """``base`` with an identity note appended inside its parentheses, e.g.
    "traj_mean (10 seeds; = sum in 4 of 4 facets)"."""
    if not note:
        return base
    if base.endswith(")"):
        return f"{base[:-1]}; {note})"
    return f"{base} ({note})"


# Text widths are measured at this resolution and scaled up by this factor: Agg's glyph hinting
# makes rendered widths vary by about 2% between resolutions (and 72 dpi reads 3.5% short).
MEASURE_DPI = 100
MEASURE_SAFETY = 1.03


@functools.lru_cache(maxsize=1)
def _measuring_renderer() -> RendererBase:
    return FigureCanvasAgg(Figure(dpi=MEASURE_DPI)).get_renderer()


def text_width_inches(text: str, fontsize: str | float = TITLE_FONTSIZE) -> float:
    """The rendered width of the widest line of ``text`` in inches (at most
    `MEASURE_SAFETY` too wide)."""
    prop = FontProperties(size=fontsize)
    renderer = _measuring_renderer()
    return MEASURE_SAFETY * max(
        renderer.get_text_width_height_descent(line, prop, ismath=False)[0] / MEASURE_DPI
        for line in text.split("\n")
    )


def wrap_text(text: str, width_inches: float, fontsize: str | float = TITLE_FONTSIZE) -> str:
    """``text`` with its lines broken at spaces so that each renders within ``width_inches``.

    Explicit line breaks stay; a " · " separator stays with the word before it; a word wider than
    the width alone is cut (`textwrap`).
    """
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.replace(" \u00b7 ", "\u00a0\u00b7 ").split(" "):
            word = word.replace("\u00a0", " ")
            if text_width_inches(word, fontsize) > width_inches:
                if line:
                    lines.append(line)
                chars = max(1, int(len(word) * width_inches / text_width_inches(word, fontsize)))
                pieces = textwrap.wrap(word, chars, break_on_hyphens=False) or [word]
                lines.extend(pieces[:-1])
                line = pieces[-1]
                continue
            candidate = f"{line} {word}" if line else word
            if line and text_width_inches(candidate, fontsize) > width_inches:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return "\n".join(lines)


def fitting_facet_width(
    titles: Sequence[str], reserve_inches: float = AXES_RESERVE_INCHES
) -> float:
    """A facet width that fits the widest title line unwrapped, between the default width and
    `MAX_FACET_WIDTH_INCHES`."""
    widest = max((text_width_inches(t) for t in titles), default=0.0)
    return float(np.clip(widest + reserve_inches, FACET_SIZE_INCHES[0], MAX_FACET_WIDTH_INCHES))


def header(figure: Figure, lines: Sequence[str]) -> None:
    """The figure's suptitle: ``lines`` (empty ones dropped) wrapped to the figure's width,
    with the figure grown by the height of the lines."""
    text = "\n".join(line for line in lines if line)
    width, height = figure.get_size_inches()
    wrapped = wrap_text(text, width - 0.3)
    figure.set_size_inches(width, height + HEADER_LINE_INCHES * (wrapped.count("\n") + 1))
    figure.suptitle(wrapped, fontsize=TITLE_FONTSIZE)


def set_title(axes: Axes, title: str, facet_width: float, reserve: float) -> None:
    """A facet's title, wrapped to the facet's width less ``reserve`` inches."""
    axes.set_title(wrap_text(title, facet_width - reserve), fontsize=TITLE_FONTSIZE)


def facet_grid(
    rows: int,
    columns: int,
    legend_inches: float = 1.4,
    facet_width: float = FACET_SIZE_INCHES[0],
    **subplots: object,
) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure of ``rows`` x ``columns`` facets with room for a legend."""
    figure = Figure(
        figsize=(facet_width * columns, FACET_SIZE_INCHES[1] * rows + legend_inches),
        layout="constrained",
    )
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, columns, squeeze=False, **subplots)


def draw_curves(
    axes: Axes,
    facet: pd.DataFrame,
    x: str,
    styles: dict[str, CurveStyle],
    reductions: Sequence[str],
    band_alpha: float,
) -> list[list[str]]:
    """A line and band per group of identical curves (`identical_curve_groups`): the first
    reduction's line, markers and band, and the other members' markers on that line, spread
    over the marker spacing. Returns the groups."""
    groups = identical_curve_groups(facet, x, reductions)
    for group in groups:
        style = styles[group[0]]
        curve = facet[facet["reduction"] == group[0]].sort_values(x, kind="stable")
        xs = curve[x].to_numpy(dtype=float)
        value = curve["value"].to_numpy(dtype=float)
        spacing = max(1, len(xs) // MARKERS_PER_CURVE, min(len(group), len(xs)))
        if len(group) == 1:
            starts = [int(style.marker_phase * spacing)]
        else:
            starts = [(k * spacing) // len(group) for k in range(len(group))]
        axes.plot(
            xs,
            value,
            color=style.color,
            linestyle=style.linestyle,
            marker=style.marker,
            markevery=(starts[0], spacing),
            markersize=4,
            linewidth=1.5,
        )
        axes.fill_between(
            xs,
            curve["low"].to_numpy(dtype=float),
            curve["high"].to_numpy(dtype=float),
            color=style.color,
            alpha=band_alpha,
            linewidth=0,
        )
        for member, start in zip(group[1:], starts[1:], strict=True):
            overlay = styles[member]
            axes.plot(
                xs,
                value,
                linestyle="none",
                color=overlay.color,
                marker=overlay.marker,
                markevery=(start, spacing),
                markersize=5,
                markeredgecolor="white",
                markeredgewidth=0.5,
                zorder=2.5,
            )
    return groups


def plot_convergence(
    bands: pd.DataFrame, title: str, path_stem: Path, confidence: float = 0.95,
    ylabel: str = "episode return (undiscounted)", xlabel: str = "environment steps",
) -> list[Path]:
    """Return (or another per-episode value: `ylabel`) against env steps, one facet per env
    (rows) and algorithm (columns).

    ``bands`` has one row per (env, algo, reduction, grid point) with columns ``env``, ``algo``,
    ``reduction``, ``env_step``, ``value`` (the mean over seeds), ``low`` and ``high`` (the
    Student t band over seeds) and ``n_seeds``: the output of `analysis.metrics.curve_band` per
    cell. Each reduction is one line with its shaded band; reductions with identical curves in
    a facet share one line and band (see `draw_curves`), which the legend and the header say.
    The legend gives the number of seeds. Writes ``<path_stem>.png`` and ``<path_stem>.pdf``
    and returns their paths.
    """
    envs = sorted(bands["env"].unique())
    algos = sorted(bands["algo"].unique())
    reductions = ordered_reductions(bands["reduction"].unique())
    styles = reduction_styles(reductions)
    titles = {(e, a): f"{e} \u00b7 {a}" for e, a in itertools.product(envs, algos)}
    facet_width = fitting_facet_width(list(titles.values()))
    figure, axes = facet_grid(
        len(envs), len(algos), facet_width=facet_width, sharex="row", sharey="row"
    )
    identical = IdenticalCurves()
    for row, env in enumerate(envs):
        for column, algo in enumerate(algos):
            ax = axes[row, column]
            facet = bands[(bands["env"] == env) & (bands["algo"] == algo)]
            identical.record(titles[env, algo], _draw_facet(ax, facet, styles, reductions))
            set_title(ax, titles[env, algo], facet_width, AXES_RESERVE_INCHES)
            if row == len(envs) - 1:
                ax.set_xlabel(xlabel)
            if column == 0:
                ax.set_ylabel(ylabel)
    labels = {
        r: legend_label(f"{r} ({seeds_label(_seed_counts(bands, r))})", identical.legend_note(r))
        for r in reductions
    }
    reduction_legend(figure, styles, labels, columns=2 * len(algos))
    header(
        figure,
        [
            title,
            f"line: mean over seeds; band: {confidence:.0%} Student t CI over seeds",
            identical.note(),
        ],
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


def _draw_facet(
    axes: Axes, facet: pd.DataFrame, styles: dict[str, CurveStyle], reductions: Sequence[str]
) -> list[list[str]]:
    """One convergence facet: a line and band per group of identical curves, or a note when
    the facet has no runs. Returns the groups."""
    if facet.empty:
        axes.text(0.5, 0.5, "no runs", ha="center", va="center", transform=axes.transAxes)
        return []
    groups = draw_curves(axes, facet, "env_step", styles, reductions, band_alpha=0.2)
    axes.xaxis.set_major_formatter(EngFormatter(sep=""))
    axes.grid(True, alpha=0.3)
    axes.set_xlim(left=0)
    if np.isfinite(facet["value"].to_numpy(dtype=float)).sum() == 0:
        axes.text(
            0.5, 0.5, "no finished episodes", ha="center", va="center", transform=axes.transAxes
        )
    return groups


def reduction_legend(
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
    width = figure.get_size_inches()[0]
    # About two legend columns per facet column, fewer where long labels would not fit.
    widest = max((text_width_inches(label) for label in labels.values()), default=0.0)
    fitting = max(1, int(width // (widest + 0.9)))
    figure.legend(
        handles=handles,
        loc="outside lower center",
        ncols=max(1, min(len(handles), columns, fitting)),
        title="reduction",
        frameon=False,
    )


def plot_lr_sensitivity(
    points: pd.DataFrame, metric_label: str, title: str, path_stem: Path
) -> list[Path]:
    """A metric against the learning rate (log x axis), one line per reduction.

    ``points`` has one row per cell with columns ``row`` and ``column`` (facet labels, e.g. the
    env and "algo · optim"), ``reduction``, ``lr``, ``value`` (the statistic over seeds),
    ``low``, ``high`` (its CI) and ``n_seeds``. Error bars are the CIs; the reductions' points
    are shifted slightly along x (at most 4% of the lr) so that the bars do not hide each other.
    Reductions with identical points in a facet are drawn once (the first's line and bars),
    with the others' markers beside each point; the legend and the header name them.
    Writes PNG and PDF; returns their paths.
    """
    rows, columns = sorted(points["row"].unique()), sorted(points["column"].unique())
    reductions = ordered_reductions(points["reduction"].unique())
    styles = reduction_styles(reductions)
    titles = {(r, c): f"{r} \u00b7 {c}" for r, c in itertools.product(rows, columns)}
    facet_width = fitting_facet_width(list(titles.values()))
    figure, axes = facet_grid(len(rows), len(columns), facet_width=facet_width)
    offsets = np.linspace(-0.008, 0.008, len(reductions)) if len(reductions) > 1 else [0.0]
    offset_of = dict(zip(reductions, offsets, strict=True))
    identical = IdenticalCurves()
    for (i, row), (j, column) in itertools.product(enumerate(rows), enumerate(columns)):
        ax = axes[i, j]
        facet = points[(points["row"] == row) & (points["column"] == column)]
        groups = identical_curve_groups(facet, "lr", reductions)
        identical.record(titles[row, column], groups)
        for group in groups:
            line = facet[facet["reduction"] == group[0]].sort_values("lr", kind="stable")
            style = styles[group[0]]
            lr = line["lr"].to_numpy(dtype=float) * 10 ** offset_of[group[0]]
            value = line["value"].to_numpy(dtype=float)
            ax.errorbar(
                lr,
                value,
                yerr=[value - line["low"].to_numpy(float), line["high"].to_numpy(float) - value],
                color=style.color,
                linestyle=style.linestyle,
                marker=style.marker,
                markersize=5,
                capsize=3,
                linewidth=1.5,
            )
            for k, member in enumerate(group[1:], start=1):
                overlay = styles[member]
                ax.plot(
                    lr,
                    value,
                    linestyle="none",
                    color=overlay.color,
                    marker=overlay.marker,
                    markersize=6,
                    markeredgecolor="white",
                    markeredgewidth=0.5,
                    zorder=2.5,
                    clip_on=False,
                    # Right, left, further right, ... of the point (not over its bar's caps).
                    transform=offset_copy(
                        ax.transData,
                        figure,
                        x=IDENTICAL_OVERLAY_POINTS * (k + 1) // 2 * (-1) ** (k + 1),
                        units="points",
                    ),
                )
        ax.set_xscale("log")
        ax.set_xticks(sorted(facet["lr"].unique()))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.3)
        set_title(ax, titles[row, column], facet_width, AXES_RESERVE_INCHES)
        ax.set_xlabel("learning rate (log scale)")
        if j == 0:
            ax.set_ylabel(metric_label)
    labels = {
        r: legend_label(
            f"{r} ({seeds_label(points.loc[points['reduction'] == r, 'n_seeds'].astype(int))})",
            identical.legend_note(r),
        )
        for r in reductions
    }
    reduction_legend(figure, styles, labels, columns=2 * len(columns))
    header(figure, [title, identical.note(IDENTICAL_POINTS_NOTE)])
    return save_figure(figure, path_stem)


def plot_aggregate_intervals(intervals: pd.DataFrame, title: str, path_stem: Path) -> list[Path]:
    """Aggregate scores with their CIs, rliable's interval plot.

    ``intervals`` has one row per (group, statistic, reduction) with columns ``group`` (a facet
    row label), ``statistic`` (a facet column, e.g. "IQM"), ``reduction``, ``value``, ``low`` and
    ``high``. Each reduction is one marker with a horizontal CI bar on its own line of the y
    axis. Facets widen (up to `MAX_FACET_WIDTH_INCHES`) for long group labels, and titles wrap
    to their facet. Writes PNG and PDF; returns their paths.
    """
    groups = sorted(intervals["group"].unique())
    statistics = list(dict.fromkeys(intervals["statistic"]))
    reductions = ordered_reductions(intervals["reduction"].unique())
    styles = reduction_styles(reductions)
    # The reductions' names label the y axis of every facet: their width is not the title's.
    reserve = AXES_RESERVE_INCHES + max(
        (text_width_inches(r, "medium") for r in reductions), default=0.0
    )
    titles = {(g, s): f"{s}\n{g}" for g, s in itertools.product(groups, statistics)}
    facet_width = fitting_facet_width(list(titles.values()), reserve)
    figure, axes = facet_grid(
        len(groups), len(statistics), legend_inches=0.4, facet_width=facet_width
    )
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
        set_title(ax, titles[group, statistic], facet_width, reserve)
        ax.set_xlabel("normalised score")
    header(figure, [title])
    return save_figure(figure, path_stem)


def plot_performance_profile(profiles: pd.DataFrame, title: str, path_stem: Path) -> list[Path]:
    """Performance profiles: fraction of runs with normalised score above tau, against tau.

    ``profiles`` has one row per (group, reduction, tau) with columns ``group`` (one facet
    each), ``reduction``, ``tau``, ``value``, ``low``, ``high`` (the CI band) and ``n_runs``.
    Identical profiles in a facet share one line and band, as in `plot_convergence`.
    Writes PNG and PDF; returns their paths.
    """
    groups = sorted(profiles["group"].unique())
    reductions = ordered_reductions(profiles["reduction"].unique())
    styles = reduction_styles(reductions)
    facet_width = fitting_facet_width(groups)
    figure, axes = facet_grid(1, len(groups), facet_width=facet_width)
    identical = IdenticalCurves()
    for j, group in enumerate(groups):
        ax = axes[0, j]
        facet = profiles[profiles["group"] == group]
        identical.record(group, draw_curves(ax, facet, "tau", styles, reductions, 0.15))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        set_title(ax, group, facet_width, AXES_RESERVE_INCHES)
        ax.set_xlabel("normalised score \u03c4")
        if j == 0:
            ax.set_ylabel("fraction of runs with score > \u03c4")
    labels = {
        r: legend_label(
            f"{r} ({int(profiles.loc[profiles['reduction'] == r, 'n_runs'].max())} runs)",
            identical.legend_note(r),
        )
        for r in reductions
    }
    reduction_legend(figure, styles, labels, columns=2 * len(groups))
    header(figure, [title, identical.note()])
    return save_figure(figure, path_stem)


# Verdict colours of the claim figures (colour-blind safe; the verdict is also written).
VERDICT_COLORS = {
    "supported": "#1b7837",
    "contradicted": "#b2182b",
    "no difference shown": "#636363",
    "identical by construction": "#2166ac",
    "not testable": "#bdbdbd",
}


def plot_claim(points: pd.DataFrame, title: str, axis_label: str, path_stem: Path) -> list[Path]:
    """A claim's evidence at a glance: one line per comparison (``label``) with the effect
    ``value`` (P(treatment better than control)) and its interval ``low``-``high``, coloured
    and annotated by ``verdict``, against the no-effect line at 1/2; one facet per ``facet``
    (a view, e.g. matched or best lr). Writes PNG and PDF; returns their paths."""
    facets = list(dict.fromkeys(points["facet"]))
    longest = max((text_width_inches(str(label), "small") for label in points["label"]),
                  default=1.0)
    rows = max(len(points[points["facet"] == f]) for f in facets)
    figure = Figure(figsize=(min(4.5 + longest, 14.0) * len(facets) ** 0.5 + 2.0,
                             0.32 * rows + 1.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(facets), squeeze=False)[0]
    for ax, facet in zip(axes, facets, strict=True):
        part = points[points["facet"] == facet].reset_index(drop=True)
        for position, row in part.iterrows():
            color = VERDICT_COLORS.get(row["verdict"], "#000000")
            value = float(row["value"])
            if np.isfinite(value):
                ax.errorbar([value], [position],
                            xerr=[[value - row["low"]], [row["high"] - value]],
                            color=color, marker="o", markersize=5, capsize=3, linewidth=1.6)
            ax.annotate(row["verdict"], (1.02, position), xycoords=("axes fraction", "data"),
                        va="center", fontsize="x-small", color=color)
        ax.axvline(0.5, color="black", linewidth=0.8, linestyle="--")
        ax.set_xlim(0, 1)
        ax.set_yticks(range(len(part)), part["label"], fontsize="small")
        ax.set_ylim(len(part) - 0.5, -0.5)
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_xlabel(axis_label)
        ax.set_title(facet, fontsize=TITLE_FONTSIZE)
    header(figure, [title])
    return save_figure(figure, path_stem)

"""Figures of the gradient diagnostics, drawn as `analysis.plots` draws the convergence figures:
matplotlib's Agg canvas, one facet per env (rows) and algorithm (columns), one colour, line
style and marker per probe reduction (`analysis.plots.reduction_styles`, in the design's order),
PNG and PDF. What is drawn from which numbers is `analysis.figures`; the numbers are
`analysis.gradients`.

Every frame drawn here names the probe reduction ``reduction`` (the reduction whose gradient a
curve measures), as the convergence figures name the training one.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import EngFormatter, FuncFormatter, LogLocator, NullFormatter

from analysis.plots import (
    AXES_RESERVE_INCHES,
    IdenticalCurves,
    draw_curves,
    facet_grid,
    fitting_facet_width,
    header,
    legend_label,
    ordered_reductions,
    reduction_legend,
    reduction_styles,
    save_figure,
    seeds_label,
    set_title,
)


def _facets(frame: pd.DataFrame) -> tuple[list[str], list[str], dict[tuple[str, str], str]]:
    """The envs (rows), algorithms (columns) and facet titles of a figure."""
    envs = sorted(frame["env"].astype(str).unique())
    algos = sorted(frame["algo"].astype(str).unique())
    titles = {(e, a): f"{e} \u00b7 {a}" for e, a in itertools.product(envs, algos)}
    return envs, algos, titles


def _seed_counts(curves: pd.DataFrame, reduction: str) -> list[int]:
    """The most seeds of any bin, per facet that shows ``reduction``."""
    rows = curves[curves["reduction"] == reduction]
    return rows.groupby(["env", "algo"])["n_seeds"].max().astype(int).tolist()


def plot_probe_curves(
    curves: pd.DataFrame,
    title: str,
    y_label: str,
    band_label: str,
    path_stem: Path,
    log_y: bool = False,
) -> list[Path]:
    """A gradient measure against env steps, one line and band per probe reduction.

    ``curves`` has one row per (env, algo, reduction, env-step bin) with columns ``env``,
    ``algo``, ``reduction`` (the probe), ``env_step``, ``value``, ``low``, ``high`` and
    ``n_seeds`` (`analysis.gradients.gradient_curves`). ``band_label`` says in the header what
    line and band are. With ``log_y`` the y axis is logarithmic. Identical curves in a facet
    share one line and band (`analysis.plots.draw_curves`), which the legend and header say.
    Writes PNG and PDF; returns their paths.
    """
    envs, algos, titles = _facets(curves)
    reductions = ordered_reductions(curves["reduction"].unique())
    styles = reduction_styles(reductions)
    facet_width = fitting_facet_width(list(titles.values()))
    figure, axes = facet_grid(len(envs), len(algos), facet_width=facet_width, sharex="row")
    identical = IdenticalCurves()
    for (row, env), (column, algo) in itertools.product(enumerate(envs), enumerate(algos)):
        ax = axes[row, column]
        facet = curves[(curves["env"].astype(str) == env) & (curves["algo"].astype(str) == algo)]
        if facet.empty:
            ax.text(0.5, 0.5, "no probes", ha="center", va="center", transform=ax.transAxes)
        else:
            groups = draw_curves(ax, facet, "env_step", styles, reductions, band_alpha=0.2)
            identical.record(titles[env, algo], groups)
        _style_axes(ax, log_y)
        set_title(ax, titles[env, algo], facet_width, AXES_RESERVE_INCHES)
        if row == len(envs) - 1:
            ax.set_xlabel("environment steps")
        if column == 0:
            ax.set_ylabel(y_label)
    labels = {
        r: legend_label(f"{r} ({seeds_label(_seed_counts(curves, r))})", identical.legend_note(r))
        for r in reductions
    }
    reduction_legend(figure, styles, labels, columns=2 * len(algos))
    figure.legends[-1].set_title("probe reduction")
    header(figure, [title, band_label, identical.note()])
    return save_figure(figure, path_stem)


def _style_axes(axes: Axes, log_y: bool) -> None:
    """Env-step axis from 0 with engineering ticks, a light grid, optionally a log y axis."""
    axes.xaxis.set_major_formatter(EngFormatter(sep=""))
    axes.set_xlim(left=0)
    axes.grid(True, which="major", alpha=0.3)
    if log_y:
        axes.set_yscale("log")


def _log_axes(axes: Axes) -> None:
    """Log x and y axes; x ticks at 1, 2 and 5 times powers of ten, labelled plainly (a mean
    length range is often under a decade)."""
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(NullFormatter())


def plot_norm_ratio_vs_length(
    points: pd.DataFrame, trend: pd.DataFrame, title: str, path_stem: Path,
    reductions: Sequence[str] | None = None,
) -> list[Path]:
    """The norm ratio ||probe|| / ||reference|| against the probed batch's mean trajectory
    length, log-log, one facet per env (rows) and algorithm (columns).

    ``points`` has one row per probe of a probed batch with ``env``, ``algo``, ``reduction``
    (the probe), ``mean_length`` and ``grad_norm_ratio``
    (`analysis.gradients.norm_ratio_vs_length`), drawn as small translucent markers;
    ``trend`` one row per (env, algo, reduction, length bin) with ``mean_length`` and
    ``value`` (`analysis.gradients.norm_ratio_trend`), drawn as the reduction's line.
    Writes PNG and PDF; returns their paths.
    """
    envs, algos, titles = _facets(points)
    reductions = list(reductions or ordered_reductions(points["reduction"].unique()))
    styles = reduction_styles(reductions)
    facet_width = fitting_facet_width(list(titles.values()))
    figure, axes = facet_grid(len(envs), len(algos), facet_width=facet_width)
    for (row, env), (column, algo) in itertools.product(enumerate(envs), enumerate(algos)):
        ax = axes[row, column]
        in_facet = (points["env"].astype(str) == env) & (points["algo"].astype(str) == algo)
        facet = points[in_facet]
        lines = trend[(trend["env"].astype(str) == env) & (trend["algo"].astype(str) == algo)]
        positive = facet[(facet["grad_norm_ratio"] > 0) & (facet["mean_length"] > 0)]
        if positive.empty:
            ax.text(0.5, 0.5, "no probes", ha="center", va="center", transform=ax.transAxes)
        for reduction in reductions:  # every reduction's points under every line
            style = styles[reduction]
            dots = positive[positive["reduction"] == reduction]
            if not dots.empty:
                ax.scatter(dots["mean_length"], dots["grad_norm_ratio"], s=9, alpha=0.35,
                           color=style.color, marker=style.marker, linewidths=0)
        for reduction in reductions:
            style = styles[reduction]
            line = lines[lines["reduction"] == reduction].sort_values("mean_length")
            if not line.empty:
                ax.plot(line["mean_length"].to_numpy(float), line["value"].to_numpy(float),
                        color=style.color, linestyle=style.linestyle, marker=style.marker,
                        markersize=4, linewidth=1.5)
        if not positive.empty:
            _log_axes(ax)
        ax.grid(True, which="major", alpha=0.3)
        set_title(ax, titles[env, algo], facet_width, AXES_RESERVE_INCHES)
        if row == len(envs) - 1:
            ax.set_xlabel("mean trajectory length sum T_i / N (log scale)")
        if column == 0:
            ax.set_ylabel("||probe|| / ||reference|| (log scale)")
    counts = points.groupby("reduction").size()
    labels = {r: f"{r} ({int(counts.get(r, 0))} probes)" for r in reductions}
    reduction_legend(figure, styles, labels, columns=2 * len(algos))
    figure.legends[-1].set_title("probe reduction")
    header(figure, [title])
    return save_figure(figure, path_stem)


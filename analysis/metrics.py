"""Per-seed performance metrics and their aggregation over seeds.

Per-seed metrics take the ``episodes`` frame of `analysis.load.Dataset` and return one value (or
one curve) per seed, a seed being identified by the ``by`` columns (default: run key and seed),
in the style of rliable's ``metrics.py``; statistics over seeds are in `analysis.intervals`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis import intervals
from analysis.settings import FINAL_FRACTION

# Columns identifying one seed's learning curve across the dataset.
SEED_KEY: tuple[str, ...] = ("run_key", "seed")


def returns_on_grid(
    episodes: pd.DataFrame, grid: Sequence[float] | np.ndarray, by: Sequence[str] = SEED_KEY
) -> pd.DataFrame:
    """Per seed, the return curve on a common grid of env steps.

    Rule: with grid points ``g_0 < g_1 < ... < g_K``, the value at ``g_k`` is the mean
    ``episode_return`` of the seed's episodes whose ``env_step`` (the step at which they ended)
    lies in ``(g_{k-1}, g_k]`` (``(-inf, g_0]`` for ``k = 0``). A grid point whose bin holds no
    episode carries the last earlier value forward; grid points before the seed's first finished
    episode are NaN. Episodes ending after the last grid point are not used. A seed that stops
    finishing episodes (e.g. it diverged) keeps its last value to the end of the grid.

    Returns a frame with one row per seed (index: the ``by`` columns; a seed with no episode up to
    the last grid point is an all-NaN row) and one column per grid point (axis 1: env steps).
    """
    grid_points = np.asarray(grid, dtype=float)
    if grid_points.ndim != 1 or grid_points.size == 0 or np.any(np.diff(grid_points) <= 0):
        raise ValueError("grid must be a non-empty, strictly increasing sequence of env steps")
    keys = list(by)
    seeds = episodes[keys].drop_duplicates().set_index(keys).index
    in_grid = episodes[episodes["env_step"] <= grid_points[-1]]
    bin_index = np.searchsorted(grid_points, in_grid["env_step"].to_numpy(), side="left")
    bin_means = (
        in_grid.assign(grid_bin=bin_index)
        .groupby([*keys, "grid_bin"], dropna=False)["episode_return"]
        .mean()
        .unstack("grid_bin")
    )
    curves = bin_means.reindex(index=seeds, columns=range(grid_points.size)).ffill(axis=1)
    curves.columns = pd.Index(grid_points, name="env_step")
    return curves


def final_return(
    episodes: pd.DataFrame,
    total_steps: float,
    fraction: float = FINAL_FRACTION,
    by: Sequence[str] = SEED_KEY,
) -> pd.Series:
    """Per seed, the mean return of the episodes that ended in the last ``fraction`` of the run.

    The window is ``(1 - fraction) * total_steps < env_step <= total_steps``: episodes that
    end after ``total_steps`` (a last batch of whole episodes overshoots it) are left out, as
    they are from every other metric. A seed without an episode in the window gets NaN.
    Returns a Series indexed by the ``by`` columns (axis: seeds).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    keys = list(by)
    seeds = episodes[keys].drop_duplicates().set_index(keys).index
    ends = episodes["env_step"]
    in_window = episodes[(ends > (1 - fraction) * total_steps) & (ends <= total_steps)]
    means = in_window.groupby(keys, dropna=False)["episode_return"].mean()
    return means.reindex(seeds).rename("final_return")


def area_under_curve(curves: pd.DataFrame) -> pd.Series:
    """Per seed, the mean of its grid curve (from `returns_on_grid`) over the whole run.

    Averages each row over the grid points (axis 1: env steps). With an evenly spaced grid that
    is the area under the curve divided by the run length, in return units. Grid points before
    the seed's first finished episode (NaN) are left out. Returns a Series indexed like
    ``curves`` (axis: seeds).
    """
    return curves.mean(axis=1, skipna=True).rename("auc")


def curve_band(curves: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """At each grid point, the mean over the seeds and its Student t interval (a visual
    guide drawn at every grid point, where the tables use the calibrated interval of
    `analysis.intervals.MEAN`; the two agree on normal data).

    ``curves`` is one cell's output of `returns_on_grid` (rows: seeds, columns: grid points).
    Both are taken over the seed axis, separately at each grid point, and only where every
    seed has a value (NaN elsewhere, e.g. before some seed's first episode); the interval is
    NaN with fewer than 2 seeds. Returns a frame indexed by the grid (env steps) with columns
    ``value``, ``low``, ``high`` and ``n_seeds``.
    """
    data = curves.to_numpy(dtype=float)
    complete = ~np.isnan(data).any(axis=0) if data.shape[0] else np.zeros(data.shape[1], bool)
    value = np.full(data.shape[1], np.nan)
    low = np.full(data.shape[1], np.nan)
    high = np.full(data.shape[1], np.nan)
    if complete.any():
        point, bounds = intervals.estimate(
            intervals.MEAN, [data[:, complete].T], confidence=confidence, method="analytic"
        )
        value[complete], low[complete], high[complete] = point, bounds.low, bounds.high
    return pd.DataFrame(
        {"value": value, "low": low, "high": high, "n_seeds": data.shape[0]},
        index=curves.columns,
    )


def steps_to_threshold(curves: pd.DataFrame, threshold: float) -> pd.Series:
    """Per seed, the first grid env step at which its grid curve is at or above ``threshold``.

    ``curves`` is the output of `returns_on_grid` (rows: seeds, columns: grid points); the scan
    runs along axis 1 (env steps). A seed whose curve never reaches the threshold (including a
    seed without any finished episode) is censored: its value is ``+inf``, meaning "not reached
    within the run", never a made-up step count. Rank-based statistics treat ``+inf`` as worse
    than every reached value and tied with the other censored seeds. Returns a Series indexed
    like ``curves`` (axis: seeds).
    """
    reached = curves.to_numpy(dtype=float) >= threshold  # NaN compares False
    first = np.argmax(reached, axis=1)
    steps = curves.columns.to_numpy(dtype=float)[first]
    return pd.Series(
        np.where(reached.any(axis=1), steps, np.inf), index=curves.index, name="steps_to_threshold"
    )

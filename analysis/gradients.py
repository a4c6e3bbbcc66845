"""Gradient diagnostics: how each reduction's policy gradient on a training batch compares with a
reference gradient, summarised per cell (computing only; the drawing is
`analysis.gradient_plots`, the files `analysis.exports`, the text `analysis.prose`).

The input is `analysis.load.Dataset.diagnostics`: at a probed update of one seed, one row per
*probe reduction* (``probe_reduction``), measured on the batch that update trains on (for PPO:
the first epoch's gradient, before any step), against the reference gradient
(1/M) sum_i sum_t of M independent episodes under the same policy (`bench.schema`,
``DIAGNOSTICS_COLUMNS``). A seed is (run key, seed) (`analysis.metrics.SEED_KEY`); the cell
columns (`analysis.load.cell_columns`) include ``reduction``, the reduction the seed trains
with, which need not be the probe's.

Statistics over seeds follow the report's rule: each seed's probes are first averaged (its
probes are not independent replicates), then the per-seed values are the sample whose mean and
interval the interval engine (`analysis.intervals`) computes.

The identity `norm_ratio_identity` checks holds by construction: on one batch the weights of
``mean`` (1 / sum_i T_i) and ``traj_mean`` (1 / N) differ by the factor N / sum_i T_i at every
step, so their gradients, and their norm ratios to the same reference, differ by exactly that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import intervals
from analysis.metrics import SEED_KEY
from analysis.settings import ReportSettings
from bench.schema import REDUCTIONS

PROBE = "probe_reduction"
# The measures summarised over seeds, in the order tables show them.
SUMMARY_MEASURES: tuple[str, ...] = ("grad_cosine", "grad_norm_ratio", "step_cosine",
                                     "noise_cosine")
MEASURE_LABELS: dict[str, str] = {
    "grad_cosine": "cosine with the reference gradient",
    "grad_norm_ratio": "norm ratio ||probe|| / ||reference||",
    "step_cosine": "cosine of the optimiser steps",
    "noise_cosine": "mean pairwise cosine over independent batches",
}
# Measures whose curves are geometric: averaged as logarithms (per seed and over seeds, the
# interval computed on the log scale and exponentiated), so that a band stays positive on a
# log axis and a factor of 2 above weighs as much as a factor of 2 below.
LOG_MEASURES: tuple[str, ...] = ("grad_norm_ratio",)
CURVE_BINS = 20  # env-step bins per gradient curve (fewer when a cell has fewer probed updates)
LENGTH_BINS = 10  # mean-length bins of the norm-ratio trend
# Relative deviation below which the mean / traj_mean identity counts as holding: the
# gradients are float32, so rounding leaves about 1e-7 relative error per norm.
IDENTITY_TOLERANCE = 1e-4


def probe_order(probes: Sequence[str]) -> list[str]:
    """The distinct probe reductions in the design's order (`bench.schema.REDUCTIONS`),
    unknown names last and sorted."""
    present = set(probes)
    return [r for r in REDUCTIONS if r in present] + sorted(present - set(REDUCTIONS))


def mean_length(diagnostics: pd.DataFrame) -> pd.Series:
    """Per row, the probed batch's mean trajectory length sum_i T_i / N
    (``batch_steps / batch_trajectories``; NaN where either is missing or N is 0)."""
    steps = diagnostics["batch_steps"].to_numpy(dtype=float)
    trajectories = diagnostics["batch_trajectories"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        length = np.where(trajectories > 0, steps / trajectories, np.nan)
    return pd.Series(length, index=diagnostics.index, name="mean_length")


def per_seed_means(diagnostics: pd.DataFrame, cell_columns: Sequence[str]) -> pd.DataFrame:
    """One row per cell x probe reduction x seed: the seed's number of probes (``n_probes``)
    and, for each of `SUMMARY_MEASURES` and the batch's mean length, the mean over the seed's
    probes (axis: its probed updates; missing values left out, NaN when it has none)."""
    keys = [*cell_columns, PROBE, *SEED_KEY]
    frame = diagnostics.assign(mean_length=mean_length(diagnostics))
    grouped = frame.groupby(keys, dropna=False, sort=False)
    means = grouped[[*SUMMARY_MEASURES, "mean_length"]].mean()
    means.insert(0, "n_probes", grouped.size())
    return means.reset_index()


def gradient_summary(
    diagnostics: pd.DataFrame, cell_columns: Sequence[str], settings: ReportSettings
) -> pd.DataFrame:
    """One row per cell x probe reduction (probes in the design's order within a cell).

    Columns: the cell columns, ``probe_reduction``, ``n_seeds``, ``n_probes`` (all seeds'),
    ``mean_length`` (mean over seeds of each seed's mean batch length sum_i T_i / N), and per
    measure of `SUMMARY_MEASURES`: ``<measure>`` (the mean over seeds of each seed's mean over
    its probes, `per_seed_means`), ``<measure>_ci_low`` / ``_ci_high`` (the interval of that
    mean over seeds by `analysis.intervals.MEAN`'s calibrated method, seeded per cell, probe and
    measure) and ``<measure>_n`` (seeds with a value; NaN bounds under 2).
    """
    seeds = per_seed_means(diagnostics, cell_columns)
    rows = []
    for key, group in seeds.groupby([*cell_columns, PROBE], dropna=False, sort=True):
        row = dict(zip([*cell_columns, PROBE], key, strict=True))
        row.update(n_seeds=len(group), n_probes=int(group["n_probes"].sum()),
                   mean_length=float(group["mean_length"].mean()))
        for measure in SUMMARY_MEASURES:
            values = group[measure].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            value, bounds = intervals.estimate(
                intervals.MEAN, [values], confidence=settings.confidence,
                n_resamples=settings.n_resamples,
                rng=intervals.cell_rng(settings.bootstrap_seed, *key, measure),
            )
            row.update({measure: value, f"{measure}_ci_low": bounds.low,
                        f"{measure}_ci_high": bounds.high, f"{measure}_n": values.size})
        rows.append(row)
    summary = pd.DataFrame(rows)
    if summary.empty:
        return summary
    return _sort_probes(summary, cell_columns)


def _sort_probes(frame: pd.DataFrame, cell_columns: Sequence[str]) -> pd.DataFrame:
    """``frame`` sorted by its cell columns, then by probe reduction in the design's order."""
    rank = {name: i for i, name in enumerate(probe_order(frame[PROBE].astype(str)))}
    order = frame.assign(_probe_rank=frame[PROBE].astype(str).map(rank))
    order = order.sort_values([*cell_columns, "_probe_rank"], kind="stable")
    return order.drop(columns="_probe_rank").reset_index(drop=True)


def env_step_bins(env_steps: np.ndarray, bins: int) -> np.ndarray:
    """The bin index of each env step among ``bins`` equal, right-closed bins of
    ``(0, max env step]`` (step 0 falls in the first bin)."""
    steps = np.asarray(env_steps, dtype=float)
    top = float(np.nanmax(steps)) if steps.size else 0.0
    edges = np.linspace(0.0, max(top, 1.0), bins + 1)
    return np.clip(np.searchsorted(edges, steps, side="left") - 1, 0, bins - 1)


def gradient_curves(
    diagnostics: pd.DataFrame,
    cell_columns: Sequence[str],
    measure: str,
    settings: ReportSettings,
    bins: int = CURVE_BINS,
) -> pd.DataFrame:
    """One measure against env steps: one row per cell x probe reduction x env-step bin.

    Per cell, its probes' env steps are split into ``min(bins, probed updates)`` equal bins
    (`env_step_bins`). Per seed and bin, the mean of the measure over the seed's probes in it;
    then over the seeds with a value in the bin: ``value`` (their mean), ``low``/``high``
    (its Student t interval, the same visual guide as the convergence bands; NaN under 2
    seeds) and ``n_seeds``. ``env_step`` is the mean over those seeds of their probes' mean
    env step in the bin, so points sit where the probes were. Measures in `LOG_MEASURES` are
    averaged as logarithms and exponentiated (geometric means; nonpositive values left out).
    """
    geometric = measure in LOG_MEASURES
    rows = []
    for key, cell in diagnostics.groupby(list(cell_columns), dropna=False, sort=True):
        count = max(1, min(bins, int(cell["update"].nunique())))
        values = cell[measure].to_numpy(dtype=float)
        if geometric:
            with np.errstate(divide="ignore", invalid="ignore"):
                values = np.where(values > 0, np.log(values), np.nan)
        cell = cell.assign(_value=values,
                           _bin=env_step_bins(cell["env_step"].to_numpy(dtype=float), count))
        per_seed = (
            cell.groupby([PROBE, *SEED_KEY, "_bin"], dropna=False)[["_value", "env_step"]]
            .mean()
            .reset_index()
        )
        for (probe, bin_index), group in per_seed.groupby([PROBE, "_bin"], sort=True):
            finite = group["_value"].to_numpy(dtype=float)
            finite = finite[np.isfinite(finite)]
            value, bounds = intervals.estimate(
                intervals.MEAN, [finite], confidence=settings.confidence, method="analytic"
            )
            value, low, high = (np.exp(v) if geometric else v
                                for v in (value, bounds.low, bounds.high))
            rows.append({
                **_key_dict(cell_columns, key),
                PROBE: probe, "bin": int(bin_index),
                "env_step": float(group["env_step"].mean()),
                "value": value, "low": low, "high": high, "n_seeds": finite.size,
            })
    return pd.DataFrame(rows)


def _key_dict(columns: Sequence[str], key: object) -> dict[str, object]:
    """A group's key (a tuple, or a scalar for one column) as {column: value}."""
    values = key if isinstance(key, tuple) else (key,)
    return dict(zip(columns, values, strict=True))


def norm_ratio_vs_length(diagnostics: pd.DataFrame, cell_columns: Sequence[str]) -> pd.DataFrame:
    """One row per diagnostics row (one probe of one probed batch): the cell columns,
    ``probe_reduction``, the seed, ``update``, ``env_step``, the batch's ``mean_length``
    (sum_i T_i / N), ``batch_length_std`` and ``grad_norm_ratio``: the points of the norm
    ratio against mean trajectory length (rows without a finite ratio or length left out)."""
    columns = list(dict.fromkeys([*cell_columns, PROBE, *SEED_KEY, "update", "env_step",
                                  "batch_length_std", "grad_norm_ratio"]))
    points = diagnostics[columns].assign(mean_length=mean_length(diagnostics))
    finite = np.isfinite(points["grad_norm_ratio"].to_numpy(dtype=float)) & np.isfinite(
        points["mean_length"].to_numpy(dtype=float))
    return points[finite].reset_index(drop=True)


def norm_ratio_trend(
    points: pd.DataFrame, group_columns: Sequence[str], bins: int = LENGTH_BINS
) -> pd.DataFrame:
    """The norm ratio's trend against mean length: per group (``group_columns``, e.g. env, algo
    and the probe reduction) its points (`norm_ratio_vs_length`) are split into ``bins``
    log-spaced bins of mean length; per bin with points, ``mean_length`` (the geometric mean of
    its lengths), ``value`` (the geometric mean of its ratios; positive ratios only) and
    ``n_points``."""
    rows = []
    for key, group in points.groupby(list(group_columns), dropna=False, sort=True):
        group = group[(group["grad_norm_ratio"] > 0) & (group["mean_length"] > 0)]
        if group.empty:
            continue
        log_length = np.log(group["mean_length"].to_numpy(dtype=float))
        edges = np.linspace(log_length.min(), log_length.max(), bins + 1)
        index = np.clip(np.searchsorted(edges, log_length, side="right") - 1, 0, bins - 1)
        log_ratio = np.log(group["grad_norm_ratio"].to_numpy(dtype=float))
        for b in np.unique(index):
            inside = index == b
            rows.append({
                **_key_dict(group_columns, key),
                "mean_length": float(np.exp(log_length[inside].mean())),
                "value": float(np.exp(log_ratio[inside].mean())),
                "n_points": int(inside.sum()),
            })
    return pd.DataFrame(rows)


def norm_ratio_identity(diagnostics: pd.DataFrame) -> pd.DataFrame:
    """The check of ``mean``'s norm ratio / ``traj_mean``'s = N / sum_i T_i, per probed batch.

    One row per probed batch (run key, seed, update) that has both probes, with ``env_step``,
    ``batch_trajectories`` (N), ``batch_steps`` (sum_i T_i), ``observed`` (the ratio of the
    two probes' ``grad_norm_ratio``), ``expected`` (N / sum_i T_i) and ``deviation``
    (|observed / expected - 1|; NaN where either side is not finite or N is 0).
    """
    batch = [*SEED_KEY, "update"]
    shape = ["env_step", "batch_trajectories", "batch_steps"]
    keyed = diagnostics.set_index(batch)
    probes = [
        keyed.loc[keyed[PROBE] == probe, "grad_norm_ratio"].rename(probe)
        for probe in ("mean", "traj_mean")
    ]
    checked = keyed.loc[~keyed.index.duplicated(), shape]
    for ratio in probes:
        checked = checked.join(ratio[~ratio.index.duplicated()], how="inner")
    with np.errstate(divide="ignore", invalid="ignore"):
        observed = checked["mean"].to_numpy(float) / checked["traj_mean"].to_numpy(float)
        expected = (checked["batch_trajectories"].to_numpy(float)
                    / checked["batch_steps"].to_numpy(float))
        deviation = np.abs(observed / expected - 1.0)
    return checked[shape].assign(
        observed=observed, expected=expected,
        deviation=np.where(np.isfinite(deviation), deviation, np.nan),
    ).reset_index()


def max_identity_deviation(diagnostics: pd.DataFrame) -> float:
    """The largest relative deviation of `norm_ratio_identity` over the probed batches
    (NaN when no batch has both a ``mean`` and a ``traj_mean`` probe with finite values)."""
    return _largest(norm_ratio_identity(diagnostics)["deviation"])


def _largest(values: pd.Series) -> float:
    """The largest finite value, NaN when there is none."""
    finite = values.to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    return float(finite.max()) if finite.size else float("nan")


@dataclass(frozen=True)
class GradientResults:
    """What the report shows of the gradient diagnostics: the summary table
    (`gradient_summary`) and the identity check per probed batch (`norm_ratio_identity`)."""

    summary: pd.DataFrame
    identity: pd.DataFrame

    @property
    def max_deviation(self) -> float:
        """The identity's largest relative deviation (NaN when no batch was checked)."""
        return _largest(self.identity["deviation"])


def gradient_results(
    diagnostics: pd.DataFrame, cell_columns: Sequence[str], settings: ReportSettings
) -> GradientResults | None:
    """The summary and identity check of the dataset's diagnostics rows; None when it has
    none (the report then has no gradient section)."""
    if diagnostics.empty:
        return None
    return GradientResults(
        summary=gradient_summary(diagnostics, cell_columns, settings),
        identity=norm_ratio_identity(diagnostics),
    )

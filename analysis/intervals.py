"""Confidence intervals: one engine for every interval the report prints.

An *estimator* is a statistic of one or more samples of per-seed values (the last axis is the
seed axis; leading axes hold independent replicates, which the calibration check uses to
compute thousands of intervals at once) together with the interval method the report uses for
it. `interval` takes the statistic as a callable, as rliable's ``get_interval_estimates``
does, and computes:

- a bootstrap interval (``percentile``, ``basic`` or ``BCa``: ``scipy.stats.bootstrap``,
  each sample resampled independently, so several samples are a stratified bootstrap),
- the studentized bootstrap (``studentized``, bootstrap-t: the quantiles of
  ``(statistic* - statistic) / se*`` over resamples, for estimators with a standard-error
  formula; second-order accurate for skewed means), or
- the estimator's analytic interval (``analytic``): Student's t for a mean, Welch-Satterthwaite
  for a difference of means, the noncentral-t inversion for Hedges' g (exact for normal data),
  Newcombe's (2006) method 5 for P(X > Y) (a score interval that stays inside [0, 1] and does
  not collapse to a point under complete separation).

Which method each estimator uses is chosen by measured coverage (`analysis.calibration`,
``python -m analysis.calibration``): `ESTIMATORS` records the choice, `analysis/calibration.csv`
the coverage that justifies it.
"""

from __future__ import annotations

import functools
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.stats

N_RESAMPLES = 10_000
CONFIDENCE = 0.95
BOOTSTRAP_METHODS = ("percentile", "basic", "BCa")
# "studentized": the bootstrap-t, for estimators with a standard error formula.
METHODS = (*BOOTSTRAP_METHODS, "studentized", "analytic")
# Resampled values held in memory at once (scipy's ``batch``).
BATCH_VALUES = 4_000_000

Statistic = Callable[..., np.ndarray]


class Interval(NamedTuple):
    """Lower and upper bounds (floats, or arrays over leading replicate axes); NaN where the
    interval cannot be computed."""

    low: float | np.ndarray
    high: float | np.ndarray


def cell_rng(base_seed: int, *labels: object) -> np.random.Generator:
    """A generator for one interval: seeded by ``base_seed`` and a stable hash of the labels
    (cell, statistic), so intervals are reproducible and no two cells reuse one stream."""
    key = zlib.crc32("\x1f".join(map(str, labels)).encode())
    return np.random.default_rng([base_seed, key])


# --- statistics (last axis: seeds) ---------------------------------------------------------


def mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over the seed axis."""
    return np.mean(x, axis=axis)


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% of the values along ``axis``, with the
    values that straddle the 25th and 75th percentiles weighted fractionally (at n = 10: the
    2 lowest and 2 highest dropped, the 3rd and 8th at weight 1/2), so it trims exactly a
    quarter from each end at every n. (``scipy.stats.trim_mean(x, 0.25)``, which rliable uses,
    trims ``floor(n / 4)`` values: 20% each side at n = 10.)"""
    values = np.sort(np.moveaxis(np.asarray(x, dtype=float), axis, -1), axis=-1)
    n = values.shape[-1]
    position = np.arange(n)
    cut = n / 4
    # Weight of each order statistic: the length of [k, k+1) inside [cut, n - cut).
    weights = np.clip(np.minimum(position + 1, n - cut) - np.maximum(position, cut), 0, 1)
    return (values * weights).sum(axis=-1) / weights.sum()


def mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """``mean(x) - mean(y)`` along the seed axis."""
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def hedges_g(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Hedges' g: the mean difference over the pooled standard deviation times the
    small-sample correction ``1 - 3 / (4 (n_x + n_y) - 9)``; NaN where the pooled standard
    deviation is zero or a group has fewer than 2 seeds."""
    x, y = np.moveaxis(np.asarray(x, float), axis, -1), np.moveaxis(np.asarray(y, float), axis, -1)
    n_x, n_y = x.shape[-1], y.shape[-1]
    if min(n_x, n_y) < 2:
        return np.full(np.broadcast_shapes(x.shape[:-1], y.shape[:-1]), np.nan)
    pooled_variance = (
        (n_x - 1) * np.var(x, axis=-1, ddof=1) + (n_y - 1) * np.var(y, axis=-1, ddof=1)
    ) / (n_x + n_y - 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = _hedges_correction(n_x, n_y) * mean_difference(x, y) / np.sqrt(pooled_variance)
    return np.where(pooled_variance > 0, g, np.nan)


def probability_of_improvement(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) + P(X = Y) / 2 for a random seed X of ``x`` and Y of ``y`` (rliable's
    probability of improvement; the Mann-Whitney U of ``x`` over ``n_x n_y``). ``+inf`` and
    ``-inf`` (censored values) compare as larger / smaller than every finite value and equal to
    each other."""
    x, y = np.moveaxis(np.asarray(x, float), axis, -1), np.moveaxis(np.asarray(y, float), axis, -1)
    greater = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    equal = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return greater + 0.5 * equal


def _hedges_correction(n_x: int, n_y: int) -> float:
    return 1 - 3 / (4 * (n_x + n_y) - 9)


# --- analytic intervals --------------------------------------------------------------------


def t_interval(samples: Sequence[np.ndarray], confidence: float) -> Interval:
    """Student's t interval of a mean: ``mean +- t_{n-1} s / sqrt(n)``."""
    (x,) = samples
    n = x.shape[-1]
    centre = np.mean(x, axis=-1)
    half = scipy.stats.t.ppf((1 + confidence) / 2, n - 1) * np.std(x, axis=-1, ddof=1) / np.sqrt(n)
    return Interval(centre - half, centre + half)


def welch_interval(samples: Sequence[np.ndarray], confidence: float) -> Interval:
    """Welch-Satterthwaite interval of ``mean(x) - mean(y)``; where both variances are zero the
    interval is the point difference."""
    x, y = samples
    n_x, n_y = x.shape[-1], y.shape[-1]
    var_x, var_y = np.var(x, axis=-1, ddof=1) / n_x, np.var(y, axis=-1, ddof=1) / n_y
    se2 = var_x + var_y
    with np.errstate(divide="ignore", invalid="ignore"):
        df = se2**2 / (var_x**2 / (n_x - 1) + var_y**2 / (n_y - 1))
    half = np.where(se2 > 0, scipy.stats.t.ppf((1 + confidence) / 2, df) * np.sqrt(se2), 0.0)
    centre = mean_difference(x, y)
    return Interval(centre - half, centre + half)


def hedges_g_interval(samples: Sequence[np.ndarray], confidence: float) -> Interval:
    """Interval of the standardised difference delta = (mu_x - mu_y) / sigma that Hedges' g
    estimates, by inverting the noncentral t distribution of the two-sample t statistic (exact
    under normality with equal variances; Hedges and Olkin, 1985): the noncentrality parameters
    whose t distribution puts the observed t at the upper and lower tail quantile, divided by
    ``sqrt(n_x n_y / (n_x + n_y))``. (Not also multiplied by g's small-sample correction: that
    corrects the point estimate's bias; on the bounds it would shrink an exact interval for
    delta towards 0.) NaN where g is."""
    x, y = samples
    n_x, n_y = x.shape[-1], y.shape[-1]
    g = hedges_g(x, y)
    scale = np.sqrt(n_x * n_y / (n_x + n_y))
    t_observed = g / _hedges_correction(n_x, n_y) * scale
    df = n_x + n_y - 2
    tail = (1 - confidence) / 2
    defined = np.isfinite(t_observed)
    t_safe = np.where(defined, t_observed, 0.0)
    low = _solve_noncentrality(t_safe, df, 1 - tail)
    high = _solve_noncentrality(t_safe, df, tail)
    factor = 1 / scale
    return Interval(np.where(defined, low * factor, np.nan),
                    np.where(defined, high * factor, np.nan))


def _solve_noncentrality(t_observed: np.ndarray, df: int, probability: float) -> np.ndarray:
    """The noncentrality ``ncp`` with ``P(T <= t_observed; df, ncp) = probability``, by
    bisection (the cdf falls as ncp grows), vectorised over ``t_observed``."""
    low = t_observed - 12.0 - 0.6 * np.abs(t_observed)
    high = t_observed + 12.0 + 0.6 * np.abs(t_observed)
    for _ in range(60):
        middle = (low + high) / 2
        above = scipy.stats.nct.cdf(t_observed, df, middle) > probability
        low, high = np.where(above, middle, low), np.where(above, high, middle)
    return (low + high) / 2


def newcombe_interval(samples: Sequence[np.ndarray], confidence: float) -> Interval:
    """Newcombe's (2006, part 2) method 5 for theta = P(X > Y) + P(X = Y) / 2: the thetas whose
    Hanley-McNeil variance ``V(theta)`` (with ``N* = (n_x + n_y) / 2 - 1``) puts the estimate
    within ``z sqrt(V(theta))``, a Wilson-type score interval. Inside [0, 1] and not degenerate
    at theta = 0 or 1 (complete separation)."""
    x, y = samples
    n_x, n_y = x.shape[-1], y.shape[-1]
    estimate = probability_of_improvement(x, y)
    z = scipy.stats.norm.ppf((1 + confidence) / 2)
    n_star = (n_x + n_y) / 2 - 1

    def outside(theta: np.ndarray) -> np.ndarray:
        variance = theta * (1 - theta) * (
            1 + n_star * (1 - theta) / (2 - theta) + n_star * theta / (1 + theta)
        ) / (n_x * n_y)
        return (estimate - theta) ** 2 > z**2 * variance

    def bound(start: np.ndarray, end: np.ndarray) -> np.ndarray:
        # Bisection between a theta outside the interval (start) and the estimate (end).
        for _ in range(50):
            middle = (start + end) / 2
            out = outside(middle)
            start, end = np.where(out, middle, start), np.where(out, end, middle)
        return (start + end) / 2

    estimate = np.asarray(estimate, dtype=float)
    low = np.where(estimate > 0, bound(np.zeros_like(estimate), estimate), 0.0)
    high = np.where(estimate < 1, bound(np.ones_like(estimate), estimate), 1.0)
    return Interval(low, high)


# --- the engine ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimator:
    """A statistic of ``samples`` (1: one group; 2: a group against a reference), its
    analytic interval (None: bootstrap only) and the method the report uses for it."""

    name: str
    statistic: Statistic
    samples: int
    method: str
    analytic: Callable[[Sequence[np.ndarray], float], Interval] | None = None
    standard_error: Statistic | None = None  # for the studentized bootstrap


def mean_standard_error(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``s / sqrt(n)`` of a mean along the seed axis."""
    return np.std(x, axis=axis, ddof=1) / np.sqrt(x.shape[axis])


def difference_standard_error(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Welch's standard error of ``mean(x) - mean(y)`` along the seed axis."""
    return np.sqrt(mean_standard_error(x, axis) ** 2 + mean_standard_error(y, axis) ** 2)


def studentized_interval(
    samples: Sequence[np.ndarray], statistic: Statistic, standard_error: Statistic,
    confidence: float, n_resamples: int, rng: np.random.Generator,
) -> Interval:
    """The bootstrap-t interval: ``[T - q_hi se, T - q_lo se]`` with q the quantiles of
    ``(T* - T) / se*`` over resamples (each sample resampled on its own). Resamples whose
    ``se*`` is zero (every value drawn equal, in every sample) are left out of the quantiles:
    found by comparing the drawn values, since rounding can leave such an ``se*`` a tiny
    nonzero number (the standard deviation of three copies of 0.1 is 1.7e-17) whose pivot,
    around 1e15, would otherwise decide the quantiles at 2 or 3 seeds."""
    estimate = statistic(*samples, axis=-1)
    scale = standard_error(*samples, axis=-1)
    shape = np.shape(estimate)
    per_resample = int(np.prod(shape)) * sum(s.shape[-1] for s in samples)
    chunk = max(1, BATCH_VALUES // max(per_resample, 1))
    pivots = []
    for start in range(0, n_resamples, chunk):
        count = min(chunk, n_resamples - start)
        drawn = [
            np.take_along_axis(
                np.broadcast_to(s, (count, *s.shape)),
                rng.integers(0, s.shape[-1], size=(count, *s.shape)), axis=-1,
            )
            for s in samples
        ]
        pivot = (statistic(*drawn, axis=-1) - estimate) / standard_error(*drawn, axis=-1)
        constant = functools.reduce(
            np.logical_and, [np.all(d == d[..., :1], axis=-1) for d in drawn]
        )
        pivots.append(np.where(np.isfinite(pivot) & ~constant, pivot, np.nan))
    pivots = np.concatenate(pivots, axis=0)
    tail = (1 - confidence) / 2
    low_q, high_q = np.nanquantile(pivots, [tail, 1 - tail], axis=0)
    return Interval(estimate - high_q * scale, estimate - low_q * scale)


def interval(
    samples: Sequence[np.ndarray],
    statistic: Statistic,
    method: str,
    *,
    analytic: Callable[[Sequence[np.ndarray], float], Interval] | None = None,
    standard_error: Statistic | None = None,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    rng: np.random.Generator | None = None,
) -> Interval:
    """The ``confidence`` interval of ``statistic(*samples)`` by ``method``.

    ``samples``: arrays whose last axis is the seeds (leading axes: replicates, identical
    across samples). ``method`` is a bootstrap method (each sample resampled with replacement
    on its own: a stratified bootstrap when there are several), ``studentized`` (needs
    ``standard_error``) or ``analytic`` (then ``analytic`` computes it). NaN bounds with fewer
    than 2 seeds in a sample, and where the bootstrap distribution is degenerate for BCa
    (every resample equal).
    """
    if method not in METHODS:
        raise ValueError(f"unknown interval method {method!r}; valid: {', '.join(METHODS)}")
    arrays = [np.asarray(s, dtype=float) for s in samples]
    shape = np.broadcast_shapes(*(a.shape[:-1] for a in arrays))
    if min(a.shape[-1] for a in arrays) < 2:
        nan = np.full(shape, np.nan)
        return Interval(*(_scalar(nan),) * 2)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        if method == "analytic":
            if analytic is None:
                raise ValueError("method 'analytic' needs the estimator's analytic interval")
            low, high = analytic(arrays, confidence)
        elif method == "studentized":
            if standard_error is None:
                raise ValueError("method 'studentized' needs the estimator's standard error")
            low, high = studentized_interval(
                arrays, statistic, standard_error, confidence, n_resamples,
                rng if rng is not None else np.random.default_rng(0),
            )
        else:
            values = int(np.prod(shape)) * sum(a.shape[-1] for a in arrays)
            result = scipy.stats.bootstrap(
                arrays,
                statistic,
                n_resamples=n_resamples,
                batch=max(1, BATCH_VALUES // max(values, 1)),
                vectorized=True,
                axis=-1,
                confidence_level=confidence,
                method=method,
                rng=rng if rng is not None else np.random.default_rng(0),
            )
            low, high = result.confidence_interval
    return Interval(_scalar(np.asarray(low, float)), _scalar(np.asarray(high, float)))


def estimate(
    estimator: Estimator,
    samples: Sequence[np.ndarray],
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    rng: np.random.Generator | None = None,
    method: str | None = None,
) -> tuple[float | np.ndarray, Interval]:
    """The estimator's value on ``samples`` and its interval by its chosen method (or
    ``method``)."""
    arrays = [np.asarray(s, dtype=float) for s in samples]
    if len(arrays) != estimator.samples:
        raise ValueError(f"{estimator.name} takes {estimator.samples} sample(s), got {len(arrays)}")
    if min(a.shape[-1] for a in arrays) < 1:
        shape = np.broadcast_shapes(*(a.shape[:-1] for a in arrays))
        nan = _scalar(np.full(shape, np.nan))
        return nan, Interval(nan, nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = _scalar(np.asarray(estimator.statistic(*arrays, axis=-1), dtype=float))
    bounds = interval(
        arrays, estimator.statistic, method or estimator.method, analytic=estimator.analytic,
        standard_error=estimator.standard_error, confidence=confidence,
        n_resamples=n_resamples, rng=rng,
    )
    return value, bounds


def method_label(estimator: Estimator, method: str | None = None) -> str:
    """How the report names ``estimator``'s interval by ``method`` (default: its chosen
    one), e.g. "studentized (bootstrap-t) interval"."""
    method = method or estimator.method
    if method == "analytic":
        return ANALYTIC_LABELS[estimator.name]
    return BOOTSTRAP_LABELS[method]


BOOTSTRAP_LABELS = {
    "percentile": "percentile bootstrap interval",
    "basic": "basic bootstrap interval",
    "BCa": "BCa bootstrap interval",
    "studentized": "studentized (bootstrap-t) interval",
}
ANALYTIC_LABELS = {
    "mean": "Student t interval",
    "mean_difference": "Welch interval",
    "hedges_g": "noncentral-t interval",
    "probability_of_improvement": "Newcombe (method 5) score interval",
}


def _scalar(values: np.ndarray) -> float | np.ndarray:
    return float(values) if values.ndim == 0 else values


# The estimators of the report, with the interval method chosen by `analysis.calibration`
# (its rule: `recommended_methods`; the measured table: analysis/calibration.csv, which a test
# checks these choices against).
MEAN = Estimator("mean", mean, 1, "studentized", t_interval, mean_standard_error)
IQM = Estimator("iqm", iqm, 1, "percentile")
MEAN_DIFFERENCE = Estimator(
    "mean_difference", mean_difference, 2, "analytic", welch_interval, difference_standard_error
)
HEDGES_G = Estimator("hedges_g", hedges_g, 2, "analytic", hedges_g_interval)
PROBABILITY_OF_IMPROVEMENT = Estimator(
    "probability_of_improvement", probability_of_improvement, 2, "analytic", newcombe_interval
)
ESTIMATORS = {e.name: e for e in (MEAN, IQM, MEAN_DIFFERENCE, HEDGES_G, PROBABILITY_OF_IMPROVEMENT)}

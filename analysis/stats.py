"""Two-sample statistics across seeds: a reduction's seeds (``x``) against the reference's (``y``).

Each function reduces along the last axis (the seed axis), so leading axes can hold independent
replicates (the tests run hundreds at once). Inputs are finite per-seed values, missing ones
dropped by the caller, except where a docstring says that ``+inf`` marks a censored value.

Conventions, so that every number in a table means one thing:

- tests are two-sided and need at least `MIN_SEEDS_FOR_TEST` seeds in each group; otherwise
  their p-value is NaN;
- Welch's t is undefined when both groups have zero variance: p is 1 when the two groups are
  the same constant (no evidence of a difference), NaN when they are different constants
  (the t-test cannot say; the Mann-Whitney U p-value still can);
- "improvement" means ``x`` larger than ``y``; `probability_of_improvement` counts ties as 1/2.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.stats
from statsmodels.stats.multitest import multipletests

MIN_SEEDS_FOR_TEST = 2
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_METHOD = "percentile"
# Largest share of bootstrap resamples whose statistic may be undefined and left out.
MAX_UNDEFINED_RESAMPLES = 0.01

TwoSampleStatistic = Callable[..., np.ndarray]


class Interval(NamedTuple):
    """Lower and upper bound of a confidence interval (NaN when it cannot be computed)."""

    low: float
    high: float


def welch_p_value(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sided p-value of Welch's t-test of equal means, along the last (seed) axis.

    ``scipy.stats.ttest_ind(x, y, equal_var=False)``. NaN with fewer than `MIN_SEEDS_FOR_TEST`
    seeds in a group; with zero variance in both groups, 1 for identical constants and NaN for
    different ones (see the module docstring).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    shape = np.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    if min(x.shape[-1], y.shape[-1]) < MIN_SEEDS_FOR_TEST:
        return np.full(shape, np.nan)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value = np.asarray(scipy.stats.ttest_ind(x, y, axis=-1, equal_var=False).pvalue)
    both_constant = _is_constant(x) & _is_constant(y)
    same_constant = both_constant & (x[..., 0] == y[..., 0])
    return np.where(both_constant, np.where(same_constant, 1.0, np.nan), p_value)


def mann_whitney_p_value(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sided p-value of the Mann-Whitney U test, along the last (seed) axis.

    ``scipy.stats.mannwhitneyu(x, y, alternative="two-sided")`` with scipy's default method
    (exact for small samples without ties, normal approximation with tie correction otherwise).
    Rank-based, so ``+inf`` values (censored: never reached) are valid and tie with each other
    above every finite value. NaN with fewer than `MIN_SEEDS_FOR_TEST` seeds in a group; 1 when
    all values of both groups are equal (every rank tied).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    shape = np.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    if min(x.shape[-1], y.shape[-1]) < MIN_SEEDS_FOR_TEST:
        return np.full(shape, np.nan)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value = np.asarray(
            scipy.stats.mannwhitneyu(x, y, alternative="two-sided", axis=-1).pvalue
        )
    return p_value


def _is_constant(values: np.ndarray) -> np.ndarray:
    """Whether all values along the last axis are equal (``+inf`` equals ``+inf``)."""
    return np.all(values == values[..., :1], axis=-1)


def holm_adjusted(p_values: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values of one family of tests (1-D).

    ``statsmodels.stats.multitest.multipletests(method="holm")`` over the finite p-values; NaN
    entries (tests that could not be done) are not counted in the family and stay NaN. Rejecting
    where the adjusted p is below alpha controls the family-wise error rate at alpha.
    """
    p_values = np.asarray(p_values, dtype=float)
    adjusted = np.full(p_values.shape, np.nan)
    done = ~np.isnan(p_values)
    if done.any():
        adjusted[done] = multipletests(p_values[done], method="holm")[1]
    return adjusted


def mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """``mean(x) - mean(y)`` along ``axis`` (the seed axis)."""
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def hedges_g(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Hedges' g along ``axis`` (the seed axis): the mean difference over the pooled standard
    deviation, times the small-sample correction ``1 - 3 / (4 (n_x + n_y) - 9)``.

    NaN where the pooled standard deviation is zero or either group has fewer than 2 seeds.
    """
    x, y = np.moveaxis(np.asarray(x, float), axis, -1), np.moveaxis(np.asarray(y, float), axis, -1)
    n_x, n_y = x.shape[-1], y.shape[-1]
    if min(n_x, n_y) < 2:
        return np.full(np.broadcast_shapes(x.shape[:-1], y.shape[:-1]), np.nan)
    pooled_variance = (
        (n_x - 1) * np.var(x, axis=-1, ddof=1) + (n_y - 1) * np.var(y, axis=-1, ddof=1)
    ) / (n_x + n_y - 2)
    correction = 1 - 3 / (4 * (n_x + n_y) - 9)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = correction * mean_difference(x, y) / np.sqrt(pooled_variance)
    return np.where(pooled_variance > 0, g, np.nan)


def probability_of_improvement(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) + P(X = Y) / 2 for a random seed X of ``x`` and Y of ``y``, along ``axis``.

    The Mann-Whitney U statistic of ``x`` over ``n_x * n_y`` (rliable's probability of
    improvement). Censored values given as ``+inf`` compare as larger than every finite value and
    equal to each other.
    """
    x, y = np.moveaxis(np.asarray(x, float), axis, -1), np.moveaxis(np.asarray(y, float), axis, -1)
    greater = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    equal = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return greater + 0.5 * equal


def two_sample_interval(
    x: np.ndarray,
    y: np.ndarray,
    statistic: TwoSampleStatistic,
    confidence: float = 0.95,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap CI of ``statistic(x, y)``, resampling the seeds of each group
    independently (``scipy.stats.bootstrap`` over 1-D ``x`` and ``y``).

    Resamples where the statistic is undefined (NaN, e.g. Hedges' g when both resampled groups
    are constant) are left out of the percentiles when they are at most
    `MAX_UNDEFINED_RESAMPLES` of all; beyond that, and with fewer than 2 seeds in a group, both
    bounds are NaN.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if min(x.size, y.size) < 2:
        return Interval(np.nan, np.nan)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        distribution = scipy.stats.bootstrap(
            (x, y),
            statistic,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method=BOOTSTRAP_METHOD,
            rng=np.random.default_rng(seed),
        ).bootstrap_distribution
    defined = distribution[~np.isnan(distribution)]
    if defined.size < (1 - MAX_UNDEFINED_RESAMPLES) * distribution.size:
        return Interval(np.nan, np.nan)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(defined, [tail, 100 - tail])
    return Interval(float(low), float(high))

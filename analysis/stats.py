"""Two-sample tests across seeds: a reduction's seeds (``x``) against the reference's (``y``).

Each test reduces along the last axis (the seed axis); leading axes hold independent
replicates (the tests run hundreds at once). Inputs are per-seed values with missing ones
dropped by the caller; ``+inf``/``-inf`` are valid for the rank test (censored or failed
seeds: tied with each other beyond every finite value).

Which test decides significance, and why:

- **primary: the exact Wilcoxon-Mann-Whitney rank-sum test** (`rank_sum_p_value`), exact
  conditional on the observed ties (the permutation distribution of the rank sum, computed
  by counting, not approximated). At the 10-20 seeds per cell the suite runs, returns are
  bounded, skewed and often bimodal (solved or not), and steps-to-threshold is censored, so
  normal-theory p-values are not trustworthy, while the rank test is valid at any n under
  the null of exchangeable seeds. Its effect size is P(X > Y), reported with it.
- secondary: Welch's t-test of equal means (`welch_p_value`), reported for the mean
  difference of continuous metrics only, never for the mark.

Conventions: tests are two-sided and need at least `MIN_SEEDS_FOR_TEST` seeds per group
(otherwise p is NaN); Welch's p is 1 for two groups of the same constant and NaN for two
different constants (the rank test still decides those).
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import scipy.stats
from statsmodels.stats.multitest import multipletests

MIN_SEEDS_FOR_TEST = 2


def rank_sum_p_value(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sided exact p-value of the Wilcoxon-Mann-Whitney test, along the last (seed) axis.

    The statistic is the sum of ``x``'s midranks in the pooled sample; its null distribution is
    that of the rank sum of a uniformly random subset of ``len(x)`` of the pooled midranks
    (every assignment of the pooled values to the two groups equally likely), counted exactly
    for the observed tie pattern. p = min(1, 2 min(P(W <= w), P(W >= w))), the definition of
    ``scipy.stats.permutation_test``'s two-sided p and of ``mannwhitneyu(method="exact")``
    without ties. NaN with fewer than `MIN_SEEDS_FOR_TEST` seeds in a group; 1 when every value
    is tied.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    shape = np.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    m, n = x.shape[-1], y.shape[-1]
    if min(m, n) < MIN_SEEDS_FOR_TEST:
        return np.full(shape, np.nan)
    x, y = np.broadcast_to(x, (*shape, m)), np.broadcast_to(y, (*shape, n))
    pooled = np.concatenate([x, y], axis=-1).reshape(-1, m + n)
    # Twice the midranks: integers, so sums are exact.
    doubled = np.rint(2 * scipy.stats.rankdata(pooled, axis=-1)).astype(np.int64)
    p_values = np.empty(len(pooled))
    for index, ranks in enumerate(doubled):
        observed = int(ranks[:m].sum())
        p_values[index] = _two_sided(tuple(np.sort(ranks)), m, observed)
    return p_values.reshape(shape)


def _two_sided(ranks: tuple[int, ...], m: int, observed: int) -> float:
    probabilities = _rank_sum_distribution(ranks, m)
    lower = probabilities[: observed + 1].sum()
    upper = probabilities[observed:].sum()
    return float(min(1.0, 2 * min(lower, upper)))


@lru_cache(maxsize=4096)
def _rank_sum_distribution(ranks: tuple[int, ...], m: int) -> np.ndarray:
    """P(sum of a uniformly random m-subset of ``ranks`` = s) for every integer s (index s).

    Counting by dynamic programming over the pooled values: ``ways[k, s]`` is the number of
    k-subsets of the values seen so far with sum s (float64: exact up to 2^53, ample for the
    C(40, 20) ~ 1.4e11 subsets of 20 + 20 seeds; relative precision beyond). The tie pattern
    is the cache key, so replicates without ties share one distribution."""
    total = sum(sorted(ranks)[-m:]) + 1
    ways = np.zeros((m + 1, total))
    ways[0, 0] = 1.0
    for rank in ranks:
        # Every subset so far, with or without this value (the right side reads the old table).
        ways[1:, rank:] += ways[:-1, : total - rank].copy()
    return ways[m] / ways[m].sum()


def welch_p_value(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sided p-value of Welch's t-test of equal means, along the last (seed) axis
    (``scipy.stats.ttest_ind(x, y, equal_var=False)``); see the module docstring for groups
    with zero variance."""
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


def _is_constant(values: np.ndarray) -> np.ndarray:
    """Whether all values along the last axis are equal (``+inf`` equals ``+inf``)."""
    return np.all(values == values[..., :1], axis=-1)


def holm_adjusted(p_values: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values of one family of tests (1-D).

    ``statsmodels.stats.multitest.multipletests(method="holm")`` over the finite p-values; NaN
    entries (comparisons that are not tests: too few seeds, or identical by construction) are
    not counted in the family and stay NaN. Rejecting where the adjusted p is below alpha
    controls the family-wise error rate at alpha.
    """
    p_values = np.asarray(p_values, dtype=float)
    adjusted = np.full(p_values.shape, np.nan)
    done = ~np.isnan(p_values)
    if done.any():
        adjusted[done] = multipletests(p_values[done], method="holm")[1]
    return adjusted

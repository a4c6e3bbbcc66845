"""Aggregate scores across environments (tasks), in the style of rliable (Agarwal et al., 2021).

Inputs are normalised per-seed scores of one configuration, one 1-D array per env: 0 is the
random policy and 1 the env's solved score (`analysis.references`). Uncertainty comes from a
stratified bootstrap: the seeds of each env are resampled with replacement independently of the
other envs, so every resample keeps each env's number of seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from analysis.metrics import iqm
from analysis.stats import Interval

BOOTSTRAP_RESAMPLES = 10_000
OPTIMALITY_TARGET = 1.0  # normalised score beyond which a run counts as having no gap

TaskScores = Sequence[np.ndarray]  # one array of per-seed normalised scores per env
AggregateStatistic = Callable[[TaskScores], np.ndarray]


def pooled_iqm(scores: TaskScores) -> np.ndarray:
    """Interquartile mean over all runs of all envs pooled (rliable's aggregate IQM).

    Each array may carry leading replicate axes; the runs are the last axis. Envs with more seeds
    weigh more.
    """
    return iqm(np.concatenate(list(scores), axis=-1), axis=-1)


def pooled_mean(scores: TaskScores) -> np.ndarray:
    """Mean over all runs of all envs pooled (last axis)."""
    return np.mean(np.concatenate(list(scores), axis=-1), axis=-1)


def optimality_gap(scores: TaskScores, target: float = OPTIMALITY_TARGET) -> np.ndarray:
    """Mean over all pooled runs (last axis) of ``max(target - score, 0)``: how far below solved
    the runs are on average, scores above ``target`` counting as 0. Lower is better."""
    pooled = np.concatenate(list(scores), axis=-1)
    return np.mean(np.maximum(target - pooled, 0.0), axis=-1)


def performance_profile(scores: TaskScores, thresholds: np.ndarray) -> np.ndarray:
    """Score distribution: for each threshold tau, the fraction of runs with score > tau,
    computed per env (over its seeds, the last axis) and averaged over envs (each env weighs
    the same). Returns an array with a last axis over ``thresholds``."""
    thresholds = np.asarray(thresholds, dtype=float)
    per_env = [(np.asarray(s)[..., :, None] > thresholds).mean(axis=-2) for s in scores]
    return np.mean(per_env, axis=0)


def stratified_resamples(
    scores: TaskScores, n_resamples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per env, ``n_resamples`` bootstrap resamples of its seeds (shape: resamples x seeds),
    drawn with replacement within the env only."""
    resamples = []
    for env_scores in scores:
        values = np.asarray(env_scores, dtype=float)
        indices = rng.integers(0, values.size, size=(n_resamples, values.size))
        resamples.append(values[indices])
    return resamples


def stratified_bootstrap_interval(
    scores: TaskScores,
    statistic: AggregateStatistic,
    confidence: float = 0.95,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of ``statistic`` under the stratified bootstrap (`stratified_resamples`).

    ``statistic`` maps per-env arrays whose last axis is the seeds to a value (or a vector, e.g.
    `performance_profile`) per leading index. Returns the lower and upper bounds (arrays shaped
    like the statistic of the data). Envs with a single seed are kept, but contribute no
    resampling variance.
    """
    resampled = statistic(stratified_resamples(scores, n_resamples, np.random.default_rng(seed)))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail], axis=0)
    return low, high


def aggregate_with_interval(
    scores: TaskScores,
    statistic: AggregateStatistic,
    confidence: float = 0.95,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, Interval]:
    """A scalar aggregate ``statistic`` of the data and its stratified bootstrap CI."""
    low, high = stratified_bootstrap_interval(scores, statistic, confidence, n_resamples, seed)
    return float(statistic(scores)), Interval(float(low), float(high))

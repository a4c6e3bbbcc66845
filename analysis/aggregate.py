"""Aggregate scores across environments (tasks), in the style of rliable (Agarwal et al., 2021).

Inputs are normalised per-seed scores of one configuration, one 1-D array per env: 0 is the
random policy and 1 the env's solved score (`analysis.references`). Statistics take the envs'
arrays as separate samples (``statistic(*per_env, axis=-1)``), so that the interval engine
(`analysis.intervals.interval` with several samples) is a stratified bootstrap: each env's
seeds resampled with replacement on their own, every resample keeping each env's seed count.
As in rliable, the IQM and optimality gap pool the runs of all envs, the mean averages the
per-env means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis import intervals
from analysis.references import ReferenceScores
from analysis.settings import ReportSettings

OPTIMALITY_TARGET = 1.0  # normalised score beyond which a run counts as having no gap
PROFILE_POINTS = 101  # thresholds of a performance profile
# The interval method of every aggregate: the one calibrated for the IQM.
AGGREGATE_METHOD = intervals.IQM.method


def pooled_iqm(*scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean over all runs of all envs pooled (rliable's aggregate IQM); runs
    are the last axis of each env's array (leading axes: replicates)."""
    return intervals.iqm(np.concatenate(scores, axis=axis), axis=axis)


def mean_of_env_means(*scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """The mean over envs of each env's mean score (rliable's aggregate mean): every env
    weighs the same, whatever its seed count."""
    return np.mean([np.mean(s, axis=axis) for s in scores], axis=0)


def optimality_gap(*scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over all pooled runs of ``max(target - score, 0)``: how far below solved the runs
    are on average, scores above the target counting as 0. Lower is better."""
    pooled = np.concatenate(scores, axis=axis)
    return np.mean(np.maximum(OPTIMALITY_TARGET - pooled, 0.0), axis=axis)


def performance_profile(scores: Sequence[np.ndarray], thresholds: np.ndarray) -> np.ndarray:
    """Score distribution: for each threshold tau, the fraction of runs with score > tau,
    computed per env (over its seeds, the last axis) and averaged over envs (each env weighs
    the same). Returns an array whose first axis is over ``thresholds``."""
    thresholds = np.asarray(thresholds, dtype=float)
    per_env = [
        np.moveaxis((np.asarray(s)[..., None] > thresholds).mean(axis=-2), -1, 0) for s in scores
    ]
    return np.mean(per_env, axis=0)


STATISTICS = (
    ("iqm", "IQM", pooled_iqm),
    ("mean", "mean", mean_of_env_means),
    ("optimality_gap", "optimality gap", optimality_gap),
)


@dataclass(frozen=True)
class Aggregates:
    """Aggregate normalised scores: one row per (group, reduction) with IQM, mean and
    optimality gap and their CIs; the performance profiles; envs used and left out."""

    table: pd.DataFrame
    profiles: pd.DataFrame
    envs_used: list[str]
    envs_without_references: list[str]


def compute_aggregates(
    per_seed: pd.DataFrame,
    cells: Sequence[str],
    references: dict[str, ReferenceScores],
    settings: ReportSettings,
) -> Aggregates:
    """Normalised final returns aggregated across envs, per group of cells that differ only in
    the env (one row per group and reduction).

    Per seed the score is ``references[env].normalize(final_return)``; seeds without a final
    return and failed (diverged) seeds are left out; envs without references are left out.
    Per group: `STATISTICS` with stratified bootstrap intervals, and the performance profile
    over `PROFILE_POINTS` thresholds with its pointwise stratified bootstrap band.
    """
    envs = sorted(per_seed["env"].astype(str).unique())
    used = [e for e in envs if e in references]
    scored = per_seed[per_seed["env"].astype(str).isin(used)]
    scored = scored[np.isfinite(scored["final_return"].to_numpy(dtype=float))]
    scored = scored.assign(
        score=[
            references[str(env)].normalize(value)
            for env, value in zip(scored["env"], scored["final_return"], strict=True)
        ]
    )
    group_columns = [c for c in cells if c != "env"]
    left_out = [e for e in envs if e not in used]
    if scored.empty:
        return Aggregates(pd.DataFrame(), pd.DataFrame(), used, left_out)
    low = min(0.0, float(scored["score"].min()))
    high = max(1.0, float(scored["score"].max()))
    taus = np.linspace(low, high, PROFILE_POINTS)
    rows, profiles = [], []
    for group_values, group in scored.groupby(group_columns, dropna=False, sort=True):
        key = dict(zip(group_columns, group_values, strict=True))
        tasks = [g["score"].to_numpy(dtype=float) for _, g in group.groupby("env", sort=True)]
        row: dict[str, Any] = {
            **key,
            "envs": ", ".join(sorted(group["env"].astype(str).unique())),
            "n_envs": len(tasks),
            "n_runs": len(group),
        }
        for name, _, statistic in STATISTICS:
            bounds = intervals.interval(
                tasks, statistic, AGGREGATE_METHOD, confidence=settings.confidence,
                n_resamples=settings.n_resamples,
                rng=intervals.cell_rng(settings.bootstrap_seed, key, name),
            )
            row.update({name: float(statistic(*tasks)), f"{name}_ci_low": bounds.low,
                        f"{name}_ci_high": bounds.high})
        rows.append(row)
        band = intervals.interval(
            tasks, lambda *t, axis=-1: performance_profile(t, taus), "percentile",
            confidence=settings.confidence, n_resamples=settings.n_resamples,
            rng=intervals.cell_rng(settings.bootstrap_seed, key, "profile"),
        )
        profiles.append(
            pd.DataFrame({"tau": taus, "value": performance_profile(tasks, taus),
                          "low": band.low, "high": band.high}).assign(**key, n_runs=len(group))
        )
    return Aggregates(
        table=pd.DataFrame(rows),
        profiles=pd.concat(profiles, ignore_index=True),
        envs_used=used,
        envs_without_references=left_out,
    )

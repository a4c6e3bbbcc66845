"""Response lengths of token-task runs (algo=grpo): per-seed final lengths and length curves,
overall and split into correct and incorrect responses.

On a token task an episode row is one sampled response (`bench.schema.TOKEN_EPISODE_COLUMNS`):
its ``episode_length`` is the response's tokens (END included), ``correct`` the task's verdict,
and ``env_step`` the responses the seed had sampled by the end of that batch. The metrics here
are the return metrics of `analysis.metrics` applied to lengths instead of returns, on the same
per-cell grid and final window as `analysis.cells.compute_cell_metrics`, so "final length" is
to a response's length what "final return" is to its reward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import metrics
from analysis.settings import ReportSettings

# Per-seed metric -> which responses it averages over (None: all of them).
LENGTH_METRICS: dict[str, bool | None] = {
    "final_length": None,
    "final_length_correct": True,
    "final_length_incorrect": False,
}
# Curves drawn per family: which responses, by name.
LENGTH_CURVES: dict[str, bool] = {"correct": True, "incorrect": False}


@dataclass(frozen=True)
class ResponseResults:
    """``per_seed``: the report's per-seed frame (token-task cells only) with the
    `LENGTH_METRICS` columns; ``bands``: per cell, responses (`LENGTH_CURVES` name) and grid
    point, the mean length over seeds and its band (`analysis.metrics.curve_band`'s columns)."""

    per_seed: pd.DataFrame
    bands: pd.DataFrame


def response_rows(episodes: pd.DataFrame) -> pd.DataFrame:
    """The episode rows that are responses of a token task (``correct`` not null)."""
    if "correct" not in episodes:
        return episodes.iloc[:0]
    return episodes[episodes["correct"].notna()]


def lengths_as_returns(responses: pd.DataFrame, correct: bool | None) -> pd.DataFrame:
    """The responses (all, or only the correct or incorrect ones) with their length in the
    ``episode_return`` column, for the return metrics of `analysis.metrics`."""
    if correct is not None:
        responses = responses[responses["correct"].astype(bool) == correct]
    return responses.assign(episode_return=responses["episode_length"].astype(float))


def response_results(episodes: pd.DataFrame, per_seed: pd.DataFrame, cells: Sequence[str],
                     settings: ReportSettings) -> ResponseResults | None:
    """Final lengths per seed and length curves per cell of the token-task cells of
    ``per_seed`` (`analysis.cells.compute_cell_metrics`: its ``run_steps`` is each cell's
    length); None when the dataset has no responses. A diverged seed's final lengths are NaN
    (it stopped sampling), and the bands leave it out, as the return bands do."""
    responses = response_rows(episodes)
    if responses.empty:
        return None
    token_keys = responses[list(metrics.SEED_KEY)].drop_duplicates()
    rows = per_seed.merge(token_keys, on=list(metrics.SEED_KEY))
    per_seed_parts, band_parts = [], []
    for cell_values, cell_seeds in rows.groupby(list(cells), dropna=False, sort=True):
        cell = dict(zip(cells, cell_values, strict=True))
        length = float(cell_seeds["run_steps"].max())
        in_cell = responses[responses["run_key"].isin(cell_seeds["run_key"].unique())]
        finals = pd.concat(
            [metrics.final_return(lengths_as_returns(in_cell, correct), length,
                                  settings.final_fraction).rename(metric)
             for metric, correct in LENGTH_METRICS.items()], axis=1)
        seeds = cell_seeds.join(finals, on=list(metrics.SEED_KEY))
        for metric in LENGTH_METRICS:
            seeds[metric] = seeds[metric].where(~seeds["diverged"].astype(bool), np.nan)
        per_seed_parts.append(seeds)
        grid = np.linspace(length / settings.grid_points, length, settings.grid_points)
        healthy = pd.MultiIndex.from_frame(
            seeds.loc[~seeds["diverged"].astype(bool), list(metrics.SEED_KEY)])
        for name, correct in LENGTH_CURVES.items():
            curves = metrics.returns_on_grid(lengths_as_returns(in_cell, correct), grid)
            curves = curves.loc[curves.index.isin(healthy)]
            band = metrics.curve_band(curves, settings.confidence)
            band_parts.append(band.reset_index().assign(**cell, responses=name))
    return ResponseResults(pd.concat(per_seed_parts, ignore_index=True),
                           pd.concat(band_parts, ignore_index=True))

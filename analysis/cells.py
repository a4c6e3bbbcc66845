"""Per-seed metrics of every cell, and per-cell summaries.

A cell is one value of every swept column (`analysis.load.cell_columns`); its seeds are its
replicates. `compute_cell_metrics` gives one row per seed (the metrics of `analysis.metrics`,
bounded by the run's ``total_steps``) and the convergence band of each cell;
`summarize_cells` one row per cell.

Diverged seeds (loss, gradient or parameters became NaN/inf) have failed: their
``final_return`` and ``auc`` are ``-inf``, which rank statistics (the primary rank test,
P(X > Y)) treat as tied with other failed seeds and below every finite value, while means,
IQMs, mean differences and Hedges' g are over the seeds that did not diverge (their number
shown). Carrying a diverged seed's last return forward would flatter unstable
configurations; dropping it would hide them. Their ``steps_to_threshold`` stays what the
curve gives (a threshold reached before diverging was reached).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import intervals, metrics
from analysis.load import SUMMARY_UPDATE_COLUMNS, Dataset, cell_columns, load_dataset
from analysis.references import ReferenceScores, reference_scores
from analysis.settings import ReportSettings

PER_SEED_COLUMNS = (
    "run_key", "seed", "diverged", "diverged_at", "n_episodes", "run_steps", "stream",
    "final_return", "auc", "threshold", "steps_to_threshold",
)
# Metrics where a diverged seed counts as failed (-inf); higher is better.
FAILED_AS_WORST = ("final_return", "auc")


@dataclass(frozen=True)
class CellMetrics:
    """Metrics of every cell: one row per seed, and the convergence band per grid point."""

    per_seed: pd.DataFrame
    bands: pd.DataFrame


def run_total_steps(dataset: Dataset) -> pd.Series:
    """Per run key, the run's length in env steps: ``total_steps`` of its config, or, where the
    config has none, the largest env step in its rows."""
    from_config = pd.to_numeric(dataset.runs.set_index("run_key")["total_steps"], errors="coerce")
    rows = pd.concat(
        [dataset.episodes[["run_key", "env_step"]], dataset.updates[["run_key", "env_step"]]]
    )
    from_rows = rows.groupby("run_key")["env_step"].max()
    steps = from_config.groupby(level=0).max().fillna(from_rows)
    return steps.rename("total_steps")


def seed_table(dataset: Dataset) -> pd.DataFrame:
    """One row per seed that a file says it trained: cell columns, run key, seed, whether it
    diverged (file metadata or an update row flagged ``diverged``), the env step of its first
    diverged update row (NaN when none is recorded) and its episode count."""
    cells = cell_columns(dataset)
    seeds = (
        dataset.runs[[*cells, "run_key", "seeds"]]
        .explode("seeds")
        .rename(columns={"seeds": "seed"})
    )
    seeds = seeds.dropna(subset=["seed"]).astype({"seed": "int64"})
    diverged_in_metadata = {
        (run_key, int(seed))
        for run_key, diverged in zip(
            dataset.runs["run_key"], dataset.runs["diverged_seeds"], strict=True
        )
        for seed in diverged
    }
    flagged = dataset.updates.loc[
        dataset.updates["diverged"].fillna(False).astype(bool), ["run_key", "seed", "env_step"]
    ]
    diverged_at = flagged.groupby(["run_key", "seed"])["env_step"].min()
    diverged = diverged_in_metadata | set(diverged_at.index)
    keys = list(zip(seeds["run_key"], seeds["seed"], strict=True))
    episode_counts = dataset.episodes.groupby(["run_key", "seed"]).size()
    return seeds.assign(
        diverged=[key in diverged for key in keys],
        diverged_at=[float(diverged_at.get(key, np.nan)) for key in keys],
        n_episodes=[int(episode_counts.get(key, 0)) for key in keys],
    ).reset_index(drop=True)


def episode_streams(episodes: pd.DataFrame) -> pd.Series:
    """Per seed (run key, seed), a digest of its whole episode stream (env step, return and
    length of every episode, in order): equal digests mean bit-identical training outcomes,
    which is how runs that are identical by construction are found."""
    ordered = episodes.sort_values(["run_key", "seed", "env_step"], kind="stable")
    digests = {}
    for key, rows in ordered.groupby(list(metrics.SEED_KEY), sort=False):
        digest = hashlib.sha256()
        for column in ("env_step", "episode_return", "episode_length"):
            digest.update(np.ascontiguousarray(rows[column].to_numpy(dtype=float)).tobytes())
        digests[key] = digest.hexdigest()[:16]
    index = pd.MultiIndex.from_tuples(list(digests), names=list(metrics.SEED_KEY))
    return pd.Series(list(digests.values()), index=index, name="stream", dtype=object)


def compute_cell_metrics(
    dataset: Dataset,
    settings: ReportSettings,
    references: dict[str, ReferenceScores] | None = None,
) -> CellMetrics:
    """Per-seed metrics and the convergence band of every cell.

    Each cell gets its own grid of ``settings.grid_points`` evenly spaced env steps up to its
    length (the largest `run_total_steps` of its runs); every metric uses only episodes that
    ended by then. Per seed: ``final_return``, ``auc`` (``-inf`` for a diverged seed, see the
    module docstring), ``diverged``, the episode-stream digest ``stream`` and, for envs with
    reference scores, ``steps_to_threshold`` (``+inf``: censored) for the return ``threshold``
    at normalised score ``settings.threshold_fraction``. The band (mean and its interval per
    grid point) is over the seeds that did not diverge.
    """
    references = references or {}
    cells = cell_columns(dataset)
    seeds = seed_table(dataset)
    total_steps = run_total_steps(dataset)
    streams = episode_streams(dataset.episodes)
    per_seed_parts = []
    band_parts = []
    for cell_values, cell_seeds in seeds.groupby(cells, dropna=False, sort=True):
        cell = dict(zip(cells, cell_values, strict=True))
        run_keys = cell_seeds["run_key"].unique()
        length = float(total_steps.reindex(run_keys).max())
        episodes = dataset.episodes[dataset.episodes["run_key"].isin(run_keys)]
        grid = np.linspace(length / settings.grid_points, length, settings.grid_points)
        curves = metrics.returns_on_grid(episodes, grid)
        reference = references.get(str(cell["env"]))
        threshold = reference.threshold(settings.threshold_fraction) if reference else np.nan
        values = pd.concat(
            [
                metrics.final_return(episodes, length, settings.final_fraction),
                metrics.area_under_curve(curves),
                metrics.steps_to_threshold(curves, threshold)
                if reference
                else pd.Series(np.nan, index=curves.index, name="steps_to_threshold"),
            ],
            axis=1,
        )
        rows = cell_seeds.assign(run_steps=length, threshold=threshold).join(
            values, on=list(metrics.SEED_KEY)
        )
        rows = rows.join(streams, on=list(metrics.SEED_KEY))
        for metric in FAILED_AS_WORST:
            rows[metric] = rows[metric].where(~rows["diverged"], -np.inf)
        per_seed_parts.append(rows)
        healthy = rows.loc[~rows["diverged"], list(metrics.SEED_KEY)]
        kept = curves.loc[curves.index.isin(pd.MultiIndex.from_frame(healthy))]
        band = metrics.curve_band(kept, settings.confidence)
        band_parts.append(band.reset_index().assign(**cell))
    per_seed = pd.concat(per_seed_parts, ignore_index=True)
    per_seed = per_seed.reindex(columns=[*cells, *PER_SEED_COLUMNS])
    return CellMetrics(per_seed=per_seed, bands=pd.concat(band_parts, ignore_index=True))


def per_seed_metrics(
    experiment_dir: Path | str, settings: ReportSettings | None = None
) -> pd.DataFrame:
    """The per-seed metrics of an experiment directory (``results/<name>``), as the report
    computes them (its ``per_seed_metrics.csv``)."""
    settings = settings or ReportSettings()
    dataset = load_dataset(experiment_dir, update_columns=SUMMARY_UPDATE_COLUMNS)
    return compute_cell_metrics(dataset, settings, reference_scores(dataset.runs)).per_seed


def finite_values(values: pd.Series) -> np.ndarray:
    """The values a mean-type statistic uses: finite ones (diverged seeds' ``-inf`` and
    missing values left out)."""
    array = values.to_numpy(dtype=float)
    return array[np.isfinite(array)]


def summarize_cells(
    per_seed: pd.DataFrame, cells: list[str], settings: ReportSettings
) -> pd.DataFrame:
    """One row per cell: seed counts (all, diverged, without a final return), the mean final
    return and mean AUC over the seeds that did not diverge with their intervals
    (`analysis.intervals.MEAN`), the IQM of the final return with its interval
    (`analysis.intervals.IQM`), and seeds reaching the threshold."""
    rows = []
    for cell_values, cell_seeds in per_seed.groupby(list(cells), dropna=False, sort=True):
        cell = dict(zip(cells, cell_values, strict=True))
        row: dict = {
            **cell,
            "n_seeds": len(cell_seeds),
            "n_diverged": int(cell_seeds["diverged"].sum()),
            "n_missing_final": int(cell_seeds["final_return"].isna().sum()),
        }
        for metric in ("final_return", "auc"):
            values = finite_values(cell_seeds[metric])
            value, bounds = intervals.estimate(
                intervals.MEAN, [values], confidence=settings.confidence
            )
            row.update({f"{metric}_n": values.size, f"{metric}_mean": value,
                        f"{metric}_ci_low": bounds.low, f"{metric}_ci_high": bounds.high})
        final = finite_values(cell_seeds["final_return"])
        value, bounds = intervals.estimate(
            intervals.IQM, [final], confidence=settings.confidence,
            n_resamples=settings.n_resamples,
            rng=intervals.cell_rng(settings.bootstrap_seed, cell, "iqm"),
        )
        row.update(final_return_iqm=value, final_return_iqm_ci_low=bounds.low,
                   final_return_iqm_ci_high=bounds.high)
        steps = cell_seeds["steps_to_threshold"]
        row["n_reached_threshold"] = (
            int(np.isfinite(steps).sum()) if steps.notna().any() else np.nan
        )
        rows.append(row)
    return pd.DataFrame(rows)

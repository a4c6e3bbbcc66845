"""Write an experiment's report: ``python -m analysis.report results/<name>``.

Reads ``results/<name>/data/`` and writes ``results/<name>/report/``:

- ``index.md`` and a self-contained ``index.html`` (figures embedded): what the report covers
  (files, cells, seeds per cell, missing cells and seeds, diverged seeds, versions, commits),
  then the figures and tables;
- figures as PNG and PDF: convergence, lr sensitivity, aggregate intervals, performance profile;
- significance tables (``significance-<metric>.{csv,md,tex}``, ``best_lr-<metric>.*``) with the
  per-seed values each used (``*-values.csv``), ``aggregate.{csv,md,tex}``, ``summary.csv`` (one
  row per cell) and ``per_seed_metrics.csv`` (one row per seed).
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import aggregate, metrics, plots, tables
from analysis.document import (
    Block,
    Bullets,
    Figure,
    Heading,
    Paragraph,
    Table,
    to_html,
    to_markdown,
)
from analysis.load import Dataset, DatasetError, SkippedFileWarning, cell_columns, load_dataset
from analysis.references import ReferenceScores, reference_scores
from analysis.sweep import missing_cells

REPORT_DIRNAME = "report"
FIGURE_PREFIXES = ("convergence", "lr_sensitivity", "aggregate", "performance_profile")
GRID_POINTS = 100
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
THRESHOLD_FRACTION = 0.5
PROFILE_POINTS = 101
EXIT_USAGE = 2
CONTINUOUS_METRICS = ("final_return", "auc")
METRIC_LABELS = {
    "final_return": "final return",
    "auc": "area under the curve (mean return over the run)",
}
AXIS_LABELS = {"final_return": "final return", "auc": "AUC (mean return)"}

SUMMARY_METRIC_COLUMNS = (
    "final_return_mean",
    "final_return_ci_low",
    "final_return_ci_high",
    "final_return_iqm",
    "auc_mean",
    "auc_ci_low",
    "auc_ci_high",
)


@dataclass(frozen=True)
class ReportSettings:
    """How the metrics, tests and intervals are computed."""

    grid_points: int = GRID_POINTS
    final_fraction: float = metrics.FINAL_FRACTION
    confidence: float = CONFIDENCE
    bootstrap_seed: int = BOOTSTRAP_SEED
    n_resamples: int = metrics.BOOTSTRAP_RESAMPLES
    reference: str = tables.REFERENCE_REDUCTION
    alpha: float = tables.ALPHA
    threshold_fraction: float = THRESHOLD_FRACTION
    selection_metric: str = tables.SELECTION_METRIC

    def table_settings(self) -> tables.TableSettings:
        """The settings of the significance tables."""
        return tables.TableSettings(
            reference=self.reference,
            confidence=self.confidence,
            alpha=self.alpha,
            n_resamples=self.n_resamples,
            bootstrap_seed=self.bootstrap_seed,
        )


@dataclass(frozen=True)
class CellMetrics:
    """Metrics of every cell: one row per seed, and the convergence band per grid point."""

    per_seed: pd.DataFrame
    bands: pd.DataFrame


@dataclass(frozen=True)
class Aggregates:
    """Aggregate normalised scores: one row per (group, reduction) with IQM, mean and
    optimality gap and their CIs; the performance profiles; envs used and left out."""

    table: pd.DataFrame
    profiles: pd.DataFrame
    envs_used: list[str]
    envs_without_references: list[str]


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
    diverged (file metadata or an update row flagged ``diverged``) and its episode count."""
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
        dataset.updates["diverged"].fillna(False).astype(bool), ["run_key", "seed"]
    ]
    diverged_in_rows = set(zip(flagged["run_key"], flagged["seed"].astype(int), strict=True))
    diverged = diverged_in_metadata | diverged_in_rows
    keys = list(zip(seeds["run_key"], seeds["seed"], strict=True))
    episode_counts = dataset.episodes.groupby(["run_key", "seed"]).size()
    return seeds.assign(
        diverged=[key in diverged for key in keys],
        n_episodes=[int(episode_counts.get(key, 0)) for key in keys],
    ).reset_index(drop=True)


def compute_cell_metrics(
    dataset: Dataset,
    settings: ReportSettings,
    references: dict[str, ReferenceScores] | None = None,
) -> CellMetrics:
    """Per-seed metrics and the convergence band of every cell.

    Each cell gets its own grid of ``settings.grid_points`` evenly spaced env steps up to its
    length (the largest `run_total_steps` of its runs). Per seed: ``final_return``, ``auc``,
    ``diverged`` and, for envs with reference scores, ``steps_to_threshold`` (``+inf``:
    censored) for the return ``threshold`` at normalised score ``settings.threshold_fraction``.
    """
    references = references or {}
    cells = cell_columns(dataset)
    seeds = seed_table(dataset)
    total_steps = run_total_steps(dataset)
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
        per_seed_parts.append(
            cell_seeds.assign(run_steps=length, threshold=threshold).join(
                values, on=list(metrics.SEED_KEY)
            )
        )
        band = metrics.curve_band(
            curves,
            confidence=settings.confidence,
            seed=settings.bootstrap_seed,
            n_resamples=settings.n_resamples,
        )
        band_parts.append(band.reset_index().assign(**cell))
    per_seed = pd.concat(per_seed_parts, ignore_index=True)
    per_seed = per_seed.reindex(
        columns=[
            *cells,
            "run_key",
            "seed",
            "diverged",
            "n_episodes",
            "run_steps",
            "final_return",
            "auc",
            "threshold",
            "steps_to_threshold",
        ]
    )
    return CellMetrics(per_seed=per_seed, bands=pd.concat(band_parts, ignore_index=True))


def summarize_cells(
    per_seed: pd.DataFrame, cells: Sequence[str], settings: ReportSettings
) -> pd.DataFrame:
    """One row per cell: seed counts, mean final return and mean AUC with bootstrap CIs over
    seeds, IQM of the final return, and seeds reaching the threshold. Seeds without a final
    return (no episode in the final window) are left out of the final-return statistics and
    counted in ``n_final``."""
    rows = []
    for cell_values, cell_seeds in per_seed.groupby(list(cells), dropna=False, sort=True):
        final = cell_seeds["final_return"].dropna().to_numpy(dtype=float)
        auc = cell_seeds["auc"].dropna().to_numpy(dtype=float)
        final_ci, auc_ci = (
            metrics.bootstrap_ci(
                values,
                np.mean,
                confidence=settings.confidence,
                seed=settings.bootstrap_seed,
                n_resamples=settings.n_resamples,
            )
            for values in (final, auc)
        )
        steps = cell_seeds["steps_to_threshold"]
        rows.append(
            {
                **dict(zip(cells, cell_values, strict=True)),
                "n_seeds": len(cell_seeds),
                "n_diverged": int(cell_seeds["diverged"].sum()),
                "n_final": final.size,
                "final_return_mean": final.mean() if final.size else np.nan,
                "final_return_ci_low": final_ci.low,
                "final_return_ci_high": final_ci.high,
                "final_return_iqm": metrics.iqm(final) if final.size else np.nan,
                "auc_mean": auc.mean() if auc.size else np.nan,
                "auc_ci_low": auc_ci.low,
                "auc_ci_high": auc_ci.high,
                "n_reached_threshold": int(np.isfinite(steps).sum())
                if steps.notna().any()
                else np.nan,
            }
        )
    return pd.DataFrame(rows)


def compute_aggregates(
    per_seed: pd.DataFrame,
    cells: Sequence[str],
    references: dict[str, ReferenceScores],
    settings: ReportSettings,
) -> Aggregates:
    """Normalised final returns aggregated across envs, per group of cells that differ only in
    the env (one row per group and reduction).

    Per seed the score is ``references[env].normalize(final_return)`` (seeds without a final
    return are left out); envs without references are left out. Per group: the pooled IQM,
    mean and optimality gap (`analysis.aggregate`) with stratified bootstrap CIs (seeds
    resampled within each env), and the performance profile over ``PROFILE_POINTS``
    thresholds with its pointwise stratified bootstrap band.
    """
    envs = sorted(per_seed["env"].astype(str).unique())
    used = [e for e in envs if e in references]
    scored = per_seed[per_seed["env"].astype(str).isin(used)].dropna(subset=["final_return"])
    scored = scored.assign(
        score=[
            references[str(env)].normalize(value)
            for env, value in zip(scored["env"], scored["final_return"], strict=True)
        ]
    )
    group_columns = [c for c in cells if c != "env"]
    if scored.empty:
        return Aggregates(pd.DataFrame(), pd.DataFrame(), used, [e for e in envs if e not in used])
    low = min(0.0, float(scored["score"].min()))
    high = max(1.0, float(scored["score"].max()))
    taus = np.linspace(low, high, PROFILE_POINTS)
    interval = {
        "confidence": settings.confidence,
        "n_resamples": settings.n_resamples,
        "seed": settings.bootstrap_seed,
    }
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
        for name, statistic in (
            ("iqm", aggregate.pooled_iqm),
            ("mean", aggregate.pooled_mean),
            ("optimality_gap", aggregate.optimality_gap),
        ):
            value, ci = aggregate.aggregate_with_interval(tasks, statistic, **interval)
            row.update({name: value, f"{name}_ci_low": ci.low, f"{name}_ci_high": ci.high})
        rows.append(row)
        profile = aggregate.performance_profile(tasks, taus)
        band_low, band_high = aggregate.stratified_bootstrap_interval(
            tasks, lambda t: aggregate.performance_profile(t, taus), **interval
        )
        profiles.append(
            pd.DataFrame(
                {"tau": taus, "value": profile, "low": band_low, "high": band_high}
            ).assign(**key, n_runs=len(group))
        )
    return Aggregates(
        table=pd.DataFrame(rows),
        profiles=pd.concat(profiles, ignore_index=True),
        envs_used=used,
        envs_without_references=[e for e in envs if e not in used],
    )


def family_label(row: pd.Series | dict[str, Any], columns: Sequence[str]) -> str:
    """A facet or group label: "c1=v1 · c2=v2" for the given columns ("all" when none)."""
    return " \u00b7 ".join(f"{c}={format_value(row[c])}" for c in columns) or "all"


def write_convergence_figures(
    bands: pd.DataFrame, cells: Sequence[str], report_dir: Path, confidence: float
) -> list[tuple[str, list[Path]]]:
    """One convergence figure per family of cells (same values of every cell column other than
    env, algo and reduction). Returns (family title, [PNG, PDF]) pairs."""
    family_columns = [c for c in cells if c not in ("env", "algo", "reduction")]
    figures = []
    for family_values, family in bands.groupby(family_columns, dropna=False, sort=True):
        title = ", ".join(
            f"{c}={format_value(v)}" for c, v in zip(family_columns, family_values, strict=True)
        )
        stem = report_dir / f"convergence-{slug(title)}"
        figures.append((title, plots.plot_convergence(family, title, stem, confidence)))
    return figures


def write_lr_sensitivity_figures(
    summary: pd.DataFrame, cells: Sequence[str], report_dir: Path, settings: ReportSettings
) -> list[tuple[str, list[Path]]]:
    """Per continuous metric, the metric's mean over all seeds of each cell against lr, for the
    families with more than one lr. Returns (metric, [PNG, PDF]) pairs (none without lr
    sweeps)."""
    family_columns = [c for c in cells if c not in ("reduction", "lr")]
    lr_counts = summary.groupby(family_columns, dropna=False)["lr"].transform("nunique")
    swept = summary[lr_counts > 1]
    if swept.empty:
        return []
    facet_columns = [c for c in family_columns if c != "env"]
    figures = []
    for metric in CONTINUOUS_METRICS:
        points = pd.DataFrame(
            {
                "row": "env=" + swept["env"].astype(str),
                "column": [family_label(r, facet_columns) for _, r in swept.iterrows()],
                "reduction": swept["reduction"],
                "lr": swept["lr"],
                "value": swept[f"{metric}_mean"],
                "low": swept[f"{metric}_ci_low"],
                "high": swept[f"{metric}_ci_high"],
                "n_seeds": swept["n_final"] if metric == "final_return" else swept["n_seeds"],
            }
        )
        title = (
            f"{METRIC_LABELS[metric]} against learning rate\npoint: mean over all seeds of the "
            f"cell; bar: {settings.confidence:.0%} percentile bootstrap CI over seeds"
        )
        stem = report_dir / f"lr_sensitivity-{metric}"
        figures.append(
            (metric, plots.plot_lr_sensitivity(points, AXIS_LABELS[metric], title, stem))
        )
    return figures


def write_aggregate_figures(
    aggregates: Aggregates, cells: Sequence[str], report_dir: Path, settings: ReportSettings
) -> list[tuple[str, list[Path]]]:
    """The aggregate interval plot and the performance profiles. Returns (kind, [PNG, PDF])
    pairs (none when no env has reference scores)."""
    if aggregates.table.empty:
        return []
    label_columns = [c for c in cells if c not in ("env", "reduction")]
    confidence = f"{settings.confidence:.0%}"
    envs = ", ".join(aggregates.envs_used)
    statistics = (("iqm", "IQM"), ("mean", "mean"), ("optimality_gap", "optimality gap"))
    intervals = pd.concat(
        [
            pd.DataFrame(
                {
                    "group": [
                        family_label(r, label_columns) for _, r in aggregates.table.iterrows()
                    ],
                    "statistic": label,
                    "reduction": aggregates.table["reduction"],
                    "value": aggregates.table[name],
                    "low": aggregates.table[f"{name}_ci_low"],
                    "high": aggregates.table[f"{name}_ci_high"],
                }
            )
            for name, label in statistics
        ],
        ignore_index=True,
    )
    interval_title = (
        f"Normalised final return across envs ({envs}); 0 = random policy, 1 = solved\n"
        f"point: statistic over all runs pooled; bar: {confidence} stratified bootstrap CI "
        "(seeds resampled within each env); optimality gap: lower is better"
    )
    profiles = aggregates.profiles.assign(
        group=[family_label(r, label_columns) for _, r in aggregates.profiles.iterrows()]
    )
    profile_title = (
        f"Performance profile, normalised final return across envs ({envs})\nline: fraction of "
        f"runs with score > \u03c4 (mean over envs of each env's fraction); band: {confidence} "
        "stratified bootstrap CI"
    )
    return [
        (
            "intervals",
            plots.plot_aggregate_intervals(intervals, interval_title, report_dir / "aggregate"),
        ),
        (
            "profile",
            plots.plot_performance_profile(
                profiles, profile_title, report_dir / "performance_profile"
            ),
        ),
    ]


def remove_stale_outputs(report_dir: Path) -> None:
    """Delete figures and tables of an earlier report, so none of them outlives its data."""
    for path in report_dir.glob("*"):
        stale_figure = path.suffix in (".png", ".pdf") and path.name.startswith(FIGURE_PREFIXES)
        stale_table = path.name.startswith(("significance-", "best_lr-"))
        if path.is_file() and (stale_figure or stale_table):
            path.unlink()


def write_report(experiment_dir: Path, settings: ReportSettings | None = None) -> Path:
    """Write ``<experiment_dir>/report/`` from ``<experiment_dir>/data/``; returns the index
    path. Raises `analysis.load.DatasetError` when there is no usable data."""
    settings = settings or ReportSettings()
    dataset = load_dataset(experiment_dir)
    cells = cell_columns(dataset)
    references = reference_scores(dataset.runs)
    cell_metrics = compute_cell_metrics(dataset, settings, references)
    per_seed = cell_metrics.per_seed
    summary = summarize_cells(per_seed, cells, settings)
    report_dir = Path(experiment_dir) / REPORT_DIRNAME
    report_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_outputs(report_dir)

    comparison_tables = build_tables(per_seed, cells, settings)
    for table in comparison_tables:
        tables.write_table(table, report_dir)
    aggregates = compute_aggregates(per_seed, cells, references, settings)
    write_aggregate_table(aggregates, report_dir)
    figures = {
        "convergence": write_convergence_figures(
            cell_metrics.bands, cells, report_dir, settings.confidence
        ),
        "lr": write_lr_sensitivity_figures(summary, cells, report_dir, settings),
        "aggregate": write_aggregate_figures(aggregates, cells, report_dir, settings),
    }
    per_seed.to_csv(report_dir / "per_seed_metrics.csv", index=False)
    summary.to_csv(report_dir / "summary.csv", index=False)

    blocks = report_blocks(
        dataset, per_seed, summary, comparison_tables, aggregates, references, figures, settings
    )
    title = f"Report: {Path(dataset.experiment_dir).resolve().name}"
    index = report_dir / "index.md"
    index.write_text(to_markdown(blocks, report_dir))
    (report_dir / "index.html").write_text(to_html(blocks, title))
    return index


def build_tables(
    per_seed: pd.DataFrame, cells: Sequence[str], settings: ReportSettings
) -> list[tables.ComparisonTable]:
    """The significance tables: per cell family for final return, AUC and (where envs have
    references) steps to threshold; and the best-lr view for final return and AUC when some
    family sweeps lr."""
    table_settings = settings.table_settings()
    reductions = plots.ordered_reductions(per_seed["reduction"].unique())
    family_columns = [c for c in cells if c != "reduction"]
    common = {"reductions": reductions, "settings": table_settings}
    built = [
        tables.significance_table(
            per_seed, family_columns, metric, final_fraction=settings.final_fraction, **common
        )
        for metric in CONTINUOUS_METRICS
    ]
    with_threshold = per_seed[per_seed["threshold"].notna()]
    if len(with_threshold):
        built.append(
            tables.significance_table(
                with_threshold, family_columns, "steps_to_threshold", **common
            )
        )
    no_lr = [c for c in family_columns if c != "lr"]
    if (per_seed.groupby(no_lr, dropna=False)["lr"].nunique() > 1).any():
        built += [
            tables.best_lr_table(
                per_seed,
                no_lr,
                metric,
                selection_metric=settings.selection_metric,
                final_fraction=settings.final_fraction,
                **common,
            )
            for metric in CONTINUOUS_METRICS
        ]
    return built


def aggregate_display(aggregates: Aggregates) -> pd.DataFrame:
    """The aggregate table as text: estimates with their CIs in brackets."""
    table = aggregates.table
    shown = table.drop(
        columns=[c for c in table.columns if c.endswith(("_ci_low", "_ci_high"))]
        + ["iqm", "mean", "optimality_gap"]
    ).map(format_value)
    for name, header in (("iqm", "IQM"), ("mean", "mean"), ("optimality_gap", "optimality gap")):
        shown[f"{header} [CI]"] = [
            f"{value:.3f} [{low:.3f}, {high:.3f}]"
            for value, low, high in zip(
                table[name], table[f"{name}_ci_low"], table[f"{name}_ci_high"], strict=True
            )
        ]
    return shown


def write_aggregate_table(aggregates: Aggregates, report_dir: Path) -> None:
    """``aggregate.csv`` (numeric), ``aggregate.md`` and ``aggregate.tex`` (booktabs)."""
    for stale in report_dir.glob("aggregate.*"):
        if stale.suffix in (".csv", ".md", ".tex"):
            stale.unlink()
    if aggregates.table.empty:
        return
    aggregates.table.to_csv(report_dir / "aggregate.csv", index=False)
    shown = aggregate_display(aggregates)
    caption = aggregate_caption(aggregates)
    (report_dir / "aggregate.md").write_text(f"{caption}\n\n{tables.markdown_table(shown)}\n")
    (report_dir / "aggregate.tex").write_text(tables.latex_table(shown, caption, "tab:aggregate"))


def aggregate_caption(aggregates: Aggregates) -> str:
    """What the aggregate table shows."""
    return (
        f"Normalised final return aggregated across envs ({', '.join(aggregates.envs_used)}): "
        "per seed (final return - random) / (solved - random) with the env's reference scores. "
        "IQM, mean and optimality gap (mean of max(1 - score, 0); lower is better) over all "
        "runs of the group's envs pooled; CIs: percentile stratified bootstrap (seeds "
        "resampled within each env independently)."
    )


# --- the index page -------------------------------------------------------------------------


def report_blocks(
    dataset: Dataset,
    per_seed: pd.DataFrame,
    summary: pd.DataFrame,
    comparison_tables: Sequence[tables.ComparisonTable],
    aggregates: Aggregates,
    references: dict[str, ReferenceScores],
    figures: dict[str, list[tuple[str, list[Path]]]],
    settings: ReportSettings,
) -> list[Block]:
    """The index page as document blocks, in reading order."""
    cells = cell_columns(dataset)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    by_name = {t.name: t for t in comparison_tables}
    return [
        Heading(f"Report: {Path(dataset.experiment_dir).resolve().name}", 1),
        Paragraph(
            f"Generated {generated} by `python -m analysis.report {dataset.experiment_dir}` "
            f"from `{Path(dataset.experiment_dir) / 'data'}`. Reference reduction: "
            f"`{settings.reference}`; significance level {settings.alpha}; CIs "
            f"{settings.confidence:.0%} ({settings.n_resamples} bootstrap resamples, seed "
            f"{settings.bootstrap_seed})."
        ),
        *completeness_blocks(dataset, per_seed, cells),
        *data_blocks(dataset, per_seed),
        *provenance_blocks(dataset),
        *cells_blocks(per_seed, cells),
        *metrics_blocks(references, per_seed, settings),
        *convergence_blocks(figures["convergence"], settings),
        *significance_blocks(
            [by_name[n] for n in by_name if n.startswith("significance-")], settings
        ),
        *best_lr_blocks(
            [by_name[n] for n in by_name if n.startswith("best_lr-")], figures["lr"], settings
        ),
        *aggregate_blocks(aggregates, figures["aggregate"]),
        *summary_blocks(summary, settings),
    ]


def completeness_blocks(
    dataset: Dataset, per_seed: pd.DataFrame, cells: Sequence[str]
) -> list[Block]:
    """What is missing: cells of the sweep grid without data, cells with fewer seeds than the
    most seeded cell, diverged seeds, seeds without a final return, skipped files."""
    blocks: list[Block] = [Heading("Completeness")]
    observed = per_seed.drop_duplicates(list(cells))
    missing, multiruns = missing_cells(dataset.experiment_dir, observed, cells)
    if not multiruns:
        blocks.append(
            Paragraph(
                "No `hydra/*/multirun.yaml` found: the sweep grid is unknown, so cells that "
                "were never run cannot be listed."
            )
        )
    elif missing.empty:
        blocks.append(
            Paragraph(
                f"Every cell of the sweep grid ({len(multiruns)} multirun.yaml file(s)) has data."
            )
        )
    else:
        blocks += [
            Paragraph(
                f"**{len(missing)} cell(s) of the sweep grid have no data** (grid from "
                f"{len(multiruns)} multirun.yaml file(s); each row names the file expecting it):"
            ),
            Table(missing.map(format_value)),
        ]
    counts = per_seed.groupby(list(cells), dropna=False).size().rename("n_seeds").reset_index()
    most = int(counts["n_seeds"].max())
    fewer = counts[counts["n_seeds"] < most]
    if len(fewer):
        blocks += [
            Paragraph(f"{len(fewer)} cell(s) have fewer seeds than the most seeded ({most}):"),
            Table(fewer.map(format_value)),
        ]
    else:
        blocks.append(Paragraph(f"Every cell has {most} seed(s)."))
    diverged = per_seed[per_seed["diverged"]]
    no_final = per_seed[per_seed["final_return"].isna()]
    blocks.append(
        Bullets(
            (
                f"diverged seeds: {len(diverged)}"
                + (f" ({seed_list_text(diverged, cells)})" if len(diverged) else ""),
                f"seeds without a final return (no episode in the final window): {len(no_final)}"
                + (f" ({seed_list_text(no_final, cells)})" if len(no_final) else ""),
                f"skipped files: {len(dataset.skipped)} (see Data)",
            )
        )
    )
    return blocks


def seed_list_text(seeds: pd.DataFrame, cells: Sequence[str]) -> str:
    """Seeds grouped by cell, naming only the cell columns that vary among them:
    "reduction=sum · lr=0.1: seeds 0–2; ..."."""
    varying = [c for c in cells if seeds[c].nunique(dropna=False) > 1] or ["reduction"]
    parts = []
    for _, group in seeds.groupby(varying, dropna=False, sort=True):
        label = family_label(group.iloc[0], varying)
        parts.append(f"{label}: seeds {compact_ranges(group['seed'])}")
    return "; ".join(parts)


def data_blocks(dataset: Dataset, per_seed: pd.DataFrame) -> list[Block]:
    """Files, runs, cells and seeds found; files skipped and why."""
    runs = dataset.runs
    n_cells = len(per_seed.drop_duplicates(cell_columns(dataset)))
    no_length = sorted(
        runs.loc[pd.to_numeric(runs["total_steps"], errors="coerce").isna(), "run_key"].unique()
    )
    blocks: list[Block] = [
        Heading("Data"),
        Bullets(
            (
                f"files read: {len(runs)}; runs (distinct run keys): {runs['run_key'].nunique()}; "
                f"cells: {n_cells}; seeds: {len(per_seed)}, of which diverged: "
                f"{int(per_seed['diverged'].sum())}",
                f"rows: {len(dataset.episodes)} episodes, {len(dataset.updates)} updates",
                f"runs started {min_text(runs['started_at'])}, last finished "
                f"{max_text(runs['finished_at'])}",
                "runs whose config has no `total_steps` (length taken from their last row): "
                + (", ".join(no_length) if no_length else "none"),
            )
        ),
        Heading("Skipped files", 3),
    ]
    if dataset.skipped:
        skipped = pd.DataFrame(
            {
                "file": [str(s.path) for s in dataset.skipped],
                "reason": [s.reason for s in dataset.skipped],
            }
        )
        blocks.append(Table(skipped))
    else:
        blocks.append(Paragraph("None."))
    files = runs.assign(
        file=runs["path"].map(lambda p: Path(p).name),
        seeds=runs["seeds"].map(compact_ranges),
        diverged_seeds=runs["diverged_seeds"].map(compact_ranges),
    )
    columns = [
        "file",
        "run_key",
        "seeds",
        "diverged_seeds",
        "git_commit",
        "device",
        "started_at",
        "finished_at",
    ]
    return [*blocks, Heading("Files", 3), Table(files[columns].map(format_value))]


def provenance_blocks(dataset: Dataset) -> list[Block]:
    """Git commits, devices, hosts and package versions found in the files' metadata."""
    runs = dataset.runs
    versions: dict[str, set[str]] = {}
    for file_versions in runs["versions"]:
        for package, version in file_versions.items():
            versions.setdefault(package, set()).add(str(version))
    version_table = pd.DataFrame(
        {
            "package": sorted(versions),
            "versions": [", ".join(sorted(versions[p])) for p in sorted(versions)],
        }
    )
    return [
        Heading("Provenance"),
        Bullets(
            (
                f"git commits: {value_counts_text(runs['git_commit'])}",
                f"devices: {value_counts_text(runs['device'])}",
                f"hosts: {value_counts_text(runs['host'])}",
            )
        ),
        Paragraph("Package versions (more than one version listed: the files differ):"),
        Table(version_table) if len(version_table) else Paragraph("None recorded."),
    ]


def cells_blocks(per_seed: pd.DataFrame, cells: Sequence[str]) -> list[Block]:
    """Per cell: its run keys, seeds and diverged seeds."""
    rows = []
    for cell_values, cell_seeds in per_seed.groupby(list(cells), dropna=False, sort=True):
        rows.append(
            {
                **{c: format_value(v) for c, v in zip(cells, cell_values, strict=True)},
                "run_keys": ", ".join(sorted(cell_seeds["run_key"].unique())),
                "n_seeds": str(len(cell_seeds)),
                "seeds": compact_ranges(cell_seeds["seed"]),
                "diverged_seeds": compact_ranges(cell_seeds.loc[cell_seeds["diverged"], "seed"]),
            }
        )
    table = pd.DataFrame(rows)
    blocks: list[Block] = [
        Heading("Cells"),
        Paragraph(
            "A cell is one value of each of "
            + ", ".join(f"`{c}`" for c in cells)
            + "; its seeds are its replicates."
        ),
        Table(table),
    ]
    pooled = table[table["run_keys"].str.contains(",")]
    if len(pooled):
        blocks.append(
            Paragraph(
                f"{len(pooled)} cell(s) pool several run keys: their configs differ in "
                "values that are not swept columns; check the files' configs."
            )
        )
    return blocks


def metrics_blocks(
    references: dict[str, ReferenceScores], per_seed: pd.DataFrame, settings: ReportSettings
) -> list[Block]:
    """How the per-seed metrics are defined, and the reference scores used."""
    percent = f"{settings.final_fraction:.0%}"
    envs = sorted(per_seed["env"].astype(str).unique())
    reference_rows = pd.DataFrame(
        [
            {
                "env": env,
                "random": format_value(references[env].random) if env in references else "none",
                "solved": format_value(references[env].solved) if env in references else "none",
                "threshold": format_value(references[env].threshold(settings.threshold_fraction))
                if env in references
                else "none",
                "source": references[env].source if env in references else "no reference_scores",
            }
            for env in envs
        ]
    )
    return [
        Heading("Metrics"),
        Bullets(
            (
                "return curve (per seed): on a grid of "
                f"{settings.grid_points} evenly spaced env steps up to the run length, the mean "
                "return of the episodes ending in each grid bin, carried forward over bins "
                "without one (NaN before the first episode).",
                f"`final_return`: mean return of the episodes that ended in the last {percent} "
                "of the run's env steps; NaN (left out of tests, counted in the tables' N) for a "
                "seed without one, e.g. one that diverged earlier.",
                "`auc`: mean of the return curve over its grid points (area under the curve / "
                "run length), in return units.",
                "`steps_to_threshold`: first grid step at which the return curve reaches the "
                f"env's threshold, random + {settings.threshold_fraction:g} x (solved - random); "
                "`inf` when never reached (censored: kept as 'not reached', never replaced by "
                "a number; compared by rank with censored seeds tied at the worst rank, and by "
                "the fraction of seeds reaching it).",
                "`diverged`: the seed's loss, gradient or parameters became NaN/inf (file "
                "metadata or an update row flagged `diverged`).",
            )
        ),
        Paragraph(
            "Reference scores (from the results' resolved configs, else `conf/env/<env>.yaml`; "
            "an env without them is left out of steps-to-threshold and the aggregates):"
        ),
        Table(reference_rows),
    ]


def convergence_blocks(
    figures: Sequence[tuple[str, list[Path]]], settings: ReportSettings
) -> list[Block]:
    """The convergence figures, one per family of cells."""
    blocks: list[Block] = [
        Heading("Convergence"),
        Paragraph(
            "Episode return against environment steps. Line: mean over seeds of the per-seed "
            f"return curves; band: {settings.confidence:.0%} percentile bootstrap CI over "
            "seeds at each grid point, drawn only where every seed has finished an episode. "
            "The legend counts the seeds per reduction (a range when facets differ)."
        ),
    ]
    for title, (png, pdf) in figures:
        blocks += [
            Heading(title, 3),
            Figure(
                png,
                f"Convergence, {title}: mean episode return over seeds (line) with its "
                f"{settings.confidence:.0%} bootstrap CI (band), per env (rows) and algorithm "
                "(columns).",
                pdf,
            ),
        ]
    return blocks


def table_blocks(table: tables.ComparisonTable) -> list[Block]:
    """One comparison table: caption, the table, links to its exports."""
    return [
        Heading(f"{table.name}", 3),
        Paragraph(table.caption),
        Table(tables.display_frame(table)),
        Paragraph(
            f"Files: [{table.name}.csv]({table.name}.csv) (numeric), "
            f"[{table.name}.tex]({table.name}.tex) (LaTeX, booktabs), "
            f"[{table.name}.md]({table.name}.md); per-seed values used by every row: "
            f"[{table.name}-values.csv]({table.name}-values.csv)."
        ),
    ]


def significance_blocks(
    comparison_tables: Sequence[tables.ComparisonTable], settings: ReportSettings
) -> list[Block]:
    """The per-family significance tables."""
    blocks: list[Block] = [
        Heading("Significance per cell family"),
        Paragraph(
            f"Each reduction against `{settings.reference}` within each family of cells that "
            "differ only in the reduction. Holm's correction is applied within each family and "
            "metric: to the Welch p-values for final return and AUC, to the Mann-Whitney U "
            "p-values for steps to threshold; the mark uses the corrected p-value. Sum and mean "
            "differ by a gradient scale, so at a fixed lr these tables compare step sizes as "
            "much as reductions; see the best-lr view for the fair comparison."
        ),
    ]
    for table in comparison_tables:
        blocks += table_blocks(table)
    return blocks


def best_lr_blocks(
    comparison_tables: Sequence[tables.ComparisonTable],
    figures: Sequence[tuple[str, list[Path]]],
    settings: ReportSettings,
) -> list[Block]:
    """The best-lr tables and the lr-sensitivity figures, or a note without lr sweeps."""
    blocks: list[Block] = [Heading("Best learning rate per reduction")]
    if not comparison_tables:
        return [
            *blocks,
            Paragraph("No family sweeps more than one lr: no best-lr view or lr sensitivity."),
        ]
    blocks.append(
        Paragraph(
            f"Selection: per family and reduction, the lr with the highest mean "
            f"`{settings.selection_metric}` over the even-numbered seeds; tests use the "
            "odd-numbered seeds of the selected cells only (held-out seeds, so the selection "
            "does not bias the test)."
        )
    )
    for metric, (png, pdf) in figures:
        blocks.append(
            Figure(
                png,
                f"LR sensitivity: {METRIC_LABELS[metric]} against lr (log scale); point: mean "
                f"over all seeds of the cell, bar: {settings.confidence:.0%} percentile "
                "bootstrap CI over seeds (points shifted slightly along x per reduction).",
                pdf,
            )
        )
    for table in comparison_tables:
        blocks += table_blocks(table)
    return blocks


def aggregate_blocks(
    aggregates: Aggregates, figures: Sequence[tuple[str, list[Path]]]
) -> list[Block]:
    """The aggregate table and figures, with the envs left out."""
    blocks: list[Block] = [Heading("Aggregate across environments")]
    if aggregates.envs_without_references:
        blocks.append(
            Paragraph(
                "Left out (no reference scores, or files disagreeing on them): "
                + ", ".join(aggregates.envs_without_references)
                + "."
            )
        )
    if aggregates.table.empty:
        return [*blocks, Paragraph("No env with reference scores: no aggregates.")]
    blocks += [
        Paragraph(aggregate_caption(aggregates)),
        Table(aggregate_display(aggregates)),
        Paragraph(
            "Files: [aggregate.csv](aggregate.csv), [aggregate.tex](aggregate.tex), "
            "[aggregate.md](aggregate.md)."
        ),
    ]
    captions = {
        "intervals": "Aggregate IQM, mean and optimality gap of normalised final returns with "
        "stratified bootstrap CIs.",
        "profile": "Performance profiles: fraction of runs with normalised final return above "
        "each threshold, with stratified bootstrap bands.",
    }
    for kind, (png, pdf) in figures:
        blocks.append(Figure(png, captions[kind], pdf))
    return blocks


def summary_blocks(summary: pd.DataFrame, settings: ReportSettings) -> list[Block]:
    """The per-cell summary table and how its columns are computed."""
    formats = {column: "{:.2f}" for column in SUMMARY_METRIC_COLUMNS}
    shown = summary.copy()
    for column in summary.columns:
        shown[column] = [format_value(v, formats.get(column)) for v in summary[column]]
    return [
        Heading("Summary per cell"),
        Bullets(
            (
                "`n_final`: seeds with a final return.",
                f"`*_mean` with `ci_low`/`ci_high`: mean over seeds and its "
                f"{settings.confidence:.0%} {metrics.BOOTSTRAP_METHOD} bootstrap CI "
                f"({settings.n_resamples} resamples of the seeds; none with fewer than 2 "
                "seeds). With few seeds this interval is too narrow; read it as a rough guide.",
                "`final_return_iqm`: interquartile mean over seeds (25% trimmed from each end).",
                "`n_reached_threshold`: seeds whose return curve reached the env's threshold.",
            )
        ),
        Table(shown),
        Paragraph(
            "As CSV: [summary.csv](summary.csv); per-seed values: "
            "[per_seed_metrics.csv](per_seed_metrics.csv)."
        ),
    ]


# --- text helpers ---


def format_value(value: Any, spec: str | None = None) -> str:
    """A table cell: missing values as "n/a", floats compactly (or with ``spec``)."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if spec is not None:
        return spec.format(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    return str(value)


def compact_ranges(seeds: Iterable[int]) -> str:
    """Seeds as ranges: [0, 1, 2, 3, 7] -> "0-3, 7" (with an en dash); "none" when empty."""
    values = sorted({int(s) for s in seeds})
    if not values:
        return "none"
    parts = []
    start = previous = values[0]
    for value in [*values[1:], None]:
        if value is not None and value == previous + 1:
            previous = value
            continue
        parts.append(str(start) if start == previous else f"{start}\u2013{previous}")
        if value is not None:
            start = previous = value
    return ", ".join(parts)


def value_counts_text(values: pd.Series) -> str:
    """Distinct values with the number of files having each: "abc123 (3 files), ..."."""
    counts = values.fillna("not recorded").value_counts()
    return ", ".join(f"`{v}` ({n} file{'s' if n > 1 else ''})" for v, n in counts.items())


def min_text(values: pd.Series) -> str:
    """The smallest recorded value, "not recorded" when there is none."""
    return _extreme_text(values, min)


def max_text(values: pd.Series) -> str:
    """The largest recorded value, "not recorded" when there is none."""
    return _extreme_text(values, max)


def _extreme_text(values: pd.Series, pick: Callable[[Iterable[str]], str]) -> str:
    recorded = values.dropna().astype(str)
    return pick(recorded) if len(recorded) else "not recorded"


def slug(text: str) -> str:
    """``text`` as a safe file name part."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "all"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line: the experiment directory and the report settings."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Write <experiment_dir>/report/ from the results in <experiment_dir>/data/.",
    )
    parser.add_argument("experiment_dir", type=Path, help="e.g. results/quick")
    parser.add_argument(
        "--reference",
        default=tables.REFERENCE_REDUCTION,
        help="reduction every other one is compared with (default: %(default)s)",
    )
    parser.add_argument(
        "--grid-points",
        type=int,
        default=GRID_POINTS,
        help="env-step grid points per learning curve (default: %(default)s)",
    )
    parser.add_argument(
        "--final-fraction",
        type=float,
        default=metrics.FINAL_FRACTION,
        help="share of the run averaged by the final return (default: %(default)s)",
    )
    parser.add_argument(
        "--threshold-fraction",
        type=float,
        default=THRESHOLD_FRACTION,
        help="normalised score whose return is the steps-to-threshold target "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--selection-metric",
        choices=CONTINUOUS_METRICS,
        default=tables.SELECTION_METRIC,
        help="metric that picks each reduction's best lr on the even seeds (default: %(default)s)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=tables.ALPHA,
        help="significance level (default: %(default)s)",
    )
    parser.add_argument(
        "--resamples",
        type=int,
        default=metrics.BOOTSTRAP_RESAMPLES,
        help="bootstrap resamples per interval (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.grid_points < 1:
        parser.error(f"--grid-points must be at least 1, got {args.grid_points}")
    if not 0 < args.final_fraction <= 1:
        parser.error(f"--final-fraction must be in (0, 1], got {args.final_fraction}")
    if not 0 < args.alpha < 1:
        parser.error(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.resamples < 100:
        parser.error(f"--resamples must be at least 100, got {args.resamples}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 when the experiment has no usable data)."""
    args = parse_args(argv)
    settings = ReportSettings(
        grid_points=args.grid_points,
        final_fraction=args.final_fraction,
        reference=args.reference,
        threshold_fraction=args.threshold_fraction,
        selection_metric=args.selection_metric,
        alpha=args.alpha,
        n_resamples=args.resamples,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedFileWarning)
        try:
            index = write_report(args.experiment_dir, settings)
        except DatasetError as error:
            print(f"analysis.report: error: {error}", file=sys.stderr)
            return EXIT_USAGE
    for warning in caught:
        print(f"analysis.report: warning: {warning.message}", file=sys.stderr)
    print(f"wrote {index} and {index.with_suffix('.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

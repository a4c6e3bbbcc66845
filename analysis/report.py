"""Write an experiment's report: ``python -m analysis.report results/<name>``.

Reads ``results/<name>/data/`` and writes ``results/<name>/report/``: ``index.md`` (what the
report covers, the convergence figures and a summary table per cell), the figures as PNG and PDF,
``summary.csv`` (one row per cell) and ``per_seed_metrics.csv`` (one row per seed).
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

from analysis import metrics, plots
from analysis.load import Dataset, DatasetError, SkippedFileWarning, cell_columns, load_dataset

REPORT_DIRNAME = "report"
FIGURE_PREFIX = "convergence"
GRID_POINTS = 100
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
EXIT_USAGE = 2

NOT_YET_INCLUDED = (
    "significance tests per cell (each reduction against the reference: Welch t-test, "
    "Mann-Whitney U, Holm correction, effect sizes, probability of improvement)",
    "learning-rate sensitivity plots",
    "aggregate scores across environments (IQM of normalised scores with stratified bootstrap CIs)",
    "LaTeX tables and an HTML version of this page",
)

SUMMARY_METRIC_COLUMNS = (
    "final_return_mean",
    "final_return_ci_low",
    "final_return_ci_high",
    "final_return_iqm",
    "auc_mean",
)


@dataclass(frozen=True)
class ReportSettings:
    """How the metrics are computed."""

    grid_points: int = GRID_POINTS
    final_fraction: float = metrics.FINAL_FRACTION
    confidence: float = CONFIDENCE
    bootstrap_seed: int = BOOTSTRAP_SEED


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


def compute_cell_metrics(dataset: Dataset, settings: ReportSettings) -> CellMetrics:
    """Per-seed final return and AUC, and the convergence band, of every cell.

    Each cell gets its own grid of ``settings.grid_points`` evenly spaced env steps up to its
    length (the largest `run_total_steps` of its runs).
    """
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
        values = pd.concat(
            [
                metrics.final_return(episodes, length, settings.final_fraction),
                metrics.area_under_curve(curves),
            ],
            axis=1,
        )
        per_seed_parts.append(
            cell_seeds.assign(run_steps=length).join(values, on=list(metrics.SEED_KEY))
        )
        band = metrics.curve_band(
            curves, confidence=settings.confidence, seed=settings.bootstrap_seed
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
        ]
    )
    return CellMetrics(per_seed=per_seed, bands=pd.concat(band_parts, ignore_index=True))


def summarize_cells(
    per_seed: pd.DataFrame, cells: Sequence[str], settings: ReportSettings
) -> pd.DataFrame:
    """One row per cell: seed counts, mean final return with its bootstrap CI over seeds, IQM of
    the final return, and mean AUC. Seeds without a final return (no episode in the final
    window) are left out of the final-return statistics and counted in ``n_final``."""
    rows = []
    for cell_values, cell_seeds in per_seed.groupby(list(cells), dropna=False, sort=True):
        final = cell_seeds["final_return"].dropna().to_numpy(dtype=float)
        auc = cell_seeds["auc"].dropna().to_numpy(dtype=float)
        interval = metrics.bootstrap_ci(
            final, np.mean, confidence=settings.confidence, seed=settings.bootstrap_seed
        )
        rows.append(
            {
                **dict(zip(cells, cell_values, strict=True)),
                "n_seeds": len(cell_seeds),
                "n_diverged": int(cell_seeds["diverged"].sum()),
                "n_final": final.size,
                "final_return_mean": final.mean() if final.size else np.nan,
                "final_return_ci_low": interval.low,
                "final_return_ci_high": interval.high,
                "final_return_iqm": metrics.iqm(final) if final.size else np.nan,
                "auc_mean": auc.mean() if auc.size else np.nan,
            }
        )
    return pd.DataFrame(rows)


def write_figures(
    bands: pd.DataFrame, cells: Sequence[str], report_dir: Path, confidence: float
) -> list[tuple[str, Path]]:
    """One convergence figure per family of cells (same values of every cell column other than
    env, algo and reduction). Returns (family title, PNG path) pairs."""
    for stale in report_dir.glob(f"{FIGURE_PREFIX}*"):
        if stale.suffix in (".png", ".pdf"):
            stale.unlink()
    family_columns = [c for c in cells if c not in ("env", "algo", "reduction")]
    figures = []
    for family_values, family in bands.groupby(family_columns, dropna=False, sort=True):
        title = ", ".join(
            f"{c}={format_value(v)}" for c, v in zip(family_columns, family_values, strict=True)
        )
        stem = report_dir / f"{FIGURE_PREFIX}-{slug(title)}"
        png, _ = plots.plot_convergence(family, title, stem, confidence=confidence)
        figures.append((title, png))
    return figures


def write_report(experiment_dir: Path, settings: ReportSettings | None = None) -> Path:
    """Write ``<experiment_dir>/report/`` from ``<experiment_dir>/data/``; returns the index
    path. Raises `analysis.load.DatasetError` when there is no usable data."""
    settings = settings or ReportSettings()
    dataset = load_dataset(experiment_dir)
    cells = cell_columns(dataset)
    cell_metrics = compute_cell_metrics(dataset, settings)
    summary = summarize_cells(cell_metrics.per_seed, cells, settings)
    report_dir = Path(experiment_dir) / REPORT_DIRNAME
    report_dir.mkdir(parents=True, exist_ok=True)
    figures = write_figures(cell_metrics.bands, cells, report_dir, settings.confidence)
    cell_metrics.per_seed.to_csv(report_dir / "per_seed_metrics.csv", index=False)
    summary.to_csv(report_dir / "summary.csv", index=False)
    index = report_dir / "index.md"
    index.write_text(
        index_markdown(dataset, cell_metrics.per_seed, summary, figures, report_dir, settings)
    )
    return index


def index_markdown(
    dataset: Dataset,
    per_seed: pd.DataFrame,
    summary: pd.DataFrame,
    figures: Sequence[tuple[str, Path]],
    report_dir: Path,
    settings: ReportSettings,
) -> str:
    """The report's index page."""
    cells = cell_columns(dataset)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    sections = [
        f"# Report: {Path(dataset.experiment_dir).resolve().name}",
        f"Generated {generated} by `python -m analysis.report {dataset.experiment_dir}` from "
        f"`{Path(dataset.experiment_dir) / 'data'}`.",
        "## Not in this report yet\n\nThis first report has only convergence curves and a "
        "per-cell summary. A later issue adds:\n\n"
        + "\n".join(f"- {item}" for item in NOT_YET_INCLUDED),
        data_section(dataset, per_seed),
        provenance_section(dataset),
        cells_section(per_seed, cells),
        figures_section(figures, report_dir),
        summary_section(summary, settings),
    ]
    return "\n\n".join(sections) + "\n"


def data_section(dataset: Dataset, per_seed: pd.DataFrame) -> str:
    """Files, runs, cells and seeds found; files skipped and why."""
    runs = dataset.runs
    n_cells = len(per_seed.drop_duplicates(cell_columns(dataset)))
    no_length = sorted(
        runs.loc[pd.to_numeric(runs["total_steps"], errors="coerce").isna(), "run_key"].unique()
    )
    lines = [
        "## Data",
        "",
        f"- files read: {len(runs)}; runs (distinct run keys): {runs['run_key'].nunique()}; "
        f"cells: {n_cells}; seeds: {len(per_seed)}, of which diverged: "
        f"{int(per_seed['diverged'].sum())}",
        f"- rows: {len(dataset.episodes)} episodes, {len(dataset.updates)} updates",
        f"- runs started {min_text(runs['started_at'])}, last finished "
        f"{max_text(runs['finished_at'])}",
        f"- runs whose config has no `total_steps` (length taken from their last row): "
        f"{', '.join(no_length) if no_length else 'none'}",
        "",
        "### Skipped files",
        "",
    ]
    if dataset.skipped:
        skipped = pd.DataFrame(
            {
                "file": [str(s.path) for s in dataset.skipped],
                "reason": [s.reason for s in dataset.skipped],
            }
        )
        lines.append(markdown_table(skipped))
    else:
        lines.append("None.")
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
    lines += ["", "### Files", "", markdown_table(files[columns])]
    return "\n".join(lines)


def provenance_section(dataset: Dataset) -> str:
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
    lines = [
        "## Provenance",
        "",
        f"- git commits: {value_counts_text(runs['git_commit'])}",
        f"- devices: {value_counts_text(runs['device'])}",
        f"- hosts: {value_counts_text(runs['host'])}",
        "",
        "Package versions (more than one version listed: the files differ):",
        "",
        markdown_table(version_table) if len(version_table) else "None recorded.",
    ]
    return "\n".join(lines)


def cells_section(per_seed: pd.DataFrame, cells: Sequence[str]) -> str:
    """Per cell: its run keys, seeds and diverged seeds."""
    rows = []
    for cell_values, cell_seeds in per_seed.groupby(list(cells), dropna=False, sort=True):
        rows.append(
            {
                **dict(zip(cells, cell_values, strict=True)),
                "run_keys": ", ".join(sorted(cell_seeds["run_key"].unique())),
                "n_seeds": len(cell_seeds),
                "seeds": compact_ranges(cell_seeds["seed"]),
                "diverged_seeds": compact_ranges(cell_seeds.loc[cell_seeds["diverged"], "seed"]),
            }
        )
    table = pd.DataFrame(rows)
    lines = [
        "## Cells",
        "",
        "A cell is one value of each of "
        + ", ".join(f"`{c}`" for c in cells)
        + "; its seeds are its replicates.",
        "",
        markdown_table(table),
    ]
    pooled = table[table["run_keys"].str.contains(",")]
    if len(pooled):
        lines += [
            "",
            f"{len(pooled)} cell(s) pool several run keys: their configs differ in "
            "values that are not swept columns; check the files' configs.",
        ]
    return "\n".join(lines)


def figures_section(figures: Sequence[tuple[str, Path]], report_dir: Path) -> str:
    """The convergence figures, one per family of cells."""
    lines = [
        "## Convergence",
        "",
        "Episode return against environment steps: per seed, the mean return of the episodes "
        "ending in each of the grid's bins, carried forward over bins without one; the line is "
        "the mean over seeds, the band a percentile bootstrap CI over seeds at each grid point, "
        "drawn only where every seed has finished an episode. The legend counts the seeds with at "
        "least one finished episode.",
    ]
    for title, png in figures:
        relative = png.relative_to(report_dir)
        lines += [
            "",
            f"### {title}",
            "",
            f"![convergence, {title}]({relative})",
            "",
            f"[PDF]({relative.parent / (relative.stem + '.pdf')})",
        ]
    return "\n".join(lines)


def summary_section(summary: pd.DataFrame, settings: ReportSettings) -> str:
    """The per-cell summary table and how its columns are computed."""
    percent = f"{settings.final_fraction:.0%}"
    formats = {column: "{:.2f}" for column in SUMMARY_METRIC_COLUMNS}
    lines = [
        "## Summary per cell",
        "",
        f"- `final_return`: per seed, the mean return of the episodes that ended in the last "
        f"{percent} of the run's env steps; `n_final` seeds have one (a seed that diverged "
        "before that window has none and is left out of the final-return columns).",
        f"- `final_return_mean` with `ci_low`/`ci_high`: mean over seeds and its "
        f"{settings.confidence:.0%} {metrics.BOOTSTRAP_METHOD} bootstrap CI "
        f"({metrics.BOOTSTRAP_RESAMPLES} resamples of the seeds; none with fewer than 2 "
        "seeds). With few seeds this interval is too narrow; read it as a rough guide.",
        "- `final_return_iqm`: interquartile mean over seeds (25% trimmed from each end).",
        f"- `auc_mean`: mean over seeds of the return curve's mean over its "
        f"{settings.grid_points} grid points (area under the curve / run length).",
        "",
        markdown_table(summary, formats),
        "",
        "As CSV: [summary.csv](summary.csv); per-seed values: "
        "[per_seed_metrics.csv](per_seed_metrics.csv).",
    ]
    return "\n".join(lines)


def markdown_table(frame: pd.DataFrame, formats: dict[str, str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``formats`` maps a column to a format string."""
    formats = formats or {}
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    separator = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = [
        "| "
        + " | ".join(
            format_value(value, formats.get(column)).replace("|", "\\|")
            for column, value in row.items()
        )
        + " |"
        for _, row in frame.iterrows()
    ]
    return "\n".join([header, separator, *body])


def format_value(value: Any, spec: str | None = None) -> str:
    """A table cell: missing values as "n/a", floats compactly (or with ``spec``)."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
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
    """The command line: the experiment directory and the metric settings."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Write <experiment_dir>/report/ from the results in <experiment_dir>/data/.",
    )
    parser.add_argument("experiment_dir", type=Path, help="e.g. results/quick")
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
    args = parser.parse_args(argv)
    if args.grid_points < 1:
        parser.error(f"--grid-points must be at least 1, got {args.grid_points}")
    if not 0 < args.final_fraction <= 1:
        parser.error(f"--final-fraction must be in (0, 1], got {args.final_fraction}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 when the experiment has no usable data)."""
    args = parse_args(argv)
    settings = ReportSettings(grid_points=args.grid_points, final_fraction=args.final_fraction)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedFileWarning)
        try:
            index = write_report(args.experiment_dir, settings)
        except DatasetError as error:
            print(f"analysis.report: error: {error}", file=sys.stderr)
            return EXIT_USAGE
    for warning in caught:
        print(f"analysis.report: warning: {warning.message}", file=sys.stderr)
    print(f"wrote {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write an experiment's report: ``python -m analysis.report results/<name>``.

Reads ``results/<name>/data/`` and writes ``results/<name>/report/``:

- ``index.md`` and a self-contained ``index.html`` (figures embedded): what the report covers
  (files, cells, seeds per cell, missing cells and seeds, diverged seeds, versions, commits),
  the metrics and methods, then the figures and tables;
- figures as PNG and PDF: convergence, lr sensitivity, aggregate intervals, performance profile;
- significance tables (``significance-<metric>.{csv,md,tex}``, ``best_lr-<metric>.*``) with the
  per-seed values each used (``*-values.csv``), ``aggregate.{csv,md,tex}``, ``summary.csv`` (one
  row per cell) and ``per_seed_metrics.csv`` (one row per seed);
- when the dataset has token-task responses (algo=grpo): ``significance-final_length*``
  tables, ``per_seed_lengths.csv`` and the ``response_length_{correct,incorrect}-*`` figures;
- when the dataset has gradient diagnostics rows: ``gradient_diagnostics.{csv,md,tex}`` (per
  cell and probe reduction), ``gradient_identity.csv`` (the mean / traj_mean norm-ratio check
  per probed batch) and the figures ``gradient_cosine-*``, ``gradient_norm_ratio-*`` and
  ``gradient_norm_vs_length-*``.

The report is written to a temporary folder beside ``report/`` and swapped into place whole, so
a failure never leaves a mix of old and new files. Which module does what: `analysis.cells`
(per-seed metrics, summaries), `analysis.tables` (tests), `analysis.aggregate`,
`analysis.gradients` (gradient diagnostics), `analysis.figures` (what is drawn) and
`analysis.plots`, `analysis.gradient_plots` (drawing), `analysis.exports` (files),
`analysis.prose` (the text).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis import figures, plots, tables
from analysis.aggregate import compute_aggregates
from analysis.cells import compute_cell_metrics, summarize_cells
from analysis.claims import ClaimError, ClaimResult, evaluate, load_claims
from analysis.cli import ArgumentParser
from analysis.document import to_html, to_markdown
from analysis.exports import write_aggregate_table, write_gradient_tables, write_table
from analysis.gradients import gradient_results
from analysis.load import (
    SUMMARY_UPDATE_COLUMNS,
    Dataset,
    DatasetError,
    SkippedFileWarning,
    cell_columns,
    load_dataset,
)
from analysis.prose import aggregate_caption, gradient_caption, report_blocks, verdict_table
from analysis.references import reference_scores
from analysis.responses import LENGTH_METRICS, ResponseResults, response_results
from analysis.settings import ReportSettings
from analysis.staging import FolderNotWritable, write_whole
from bench.schema import REDUCTIONS

REPORT_DIRNAME = "report"
EXIT_USAGE = 2


class ReportError(Exception):
    """The report cannot be written (the message says why); nothing was changed."""


def build_tables(
    per_seed: pd.DataFrame, cells: Sequence[str], settings: ReportSettings
) -> list[tables.ComparisonTable]:
    """The significance tables: per cell family for final return, AUC and (where envs have
    references) steps to threshold; and the best-lr view for final return and AUC when some
    family sweeps lr."""
    reductions = plots.ordered_reductions(per_seed["reduction"].unique())
    family_columns = [c for c in cells if c != "reduction"]
    built = [
        tables.significance_table(per_seed, family_columns, metric, reductions, settings)
        for metric in figures.CONTINUOUS_METRICS
    ]
    with_threshold = per_seed[per_seed["threshold"].notna()]
    if len(with_threshold):
        built.append(tables.significance_table(
            with_threshold, family_columns, "steps_to_threshold", reductions, settings
        ))
    no_lr = [c for c in family_columns if c != "lr"]
    if (per_seed.groupby(no_lr, dropna=False)["lr"].nunique() > 1).any():
        built += [
            tables.best_lr_table(per_seed, no_lr, metric, reductions, settings)
            for metric in figures.CONTINUOUS_METRICS
        ]
    return built


def build_length_tables(
    responses: ResponseResults, cells: Sequence[str], settings: ReportSettings
) -> list[tables.ComparisonTable]:
    """Token tasks: the significance tables of the final response lengths (all, correct,
    incorrect), per cell family as `build_tables`."""
    per_seed = responses.per_seed
    reductions = plots.ordered_reductions(per_seed["reduction"].unique())
    family_columns = [c for c in cells if c != "reduction"]
    return [tables.significance_table(per_seed, family_columns, metric, reductions, settings)
            for metric in LENGTH_METRICS]


def judge_claims(
    experiment: str, per_seed: pd.DataFrame, cells: list[str], settings: ReportSettings
) -> tuple[list[ClaimResult], list[str]]:
    """The verdicts of the claims judged on ``experiment`` (``conf/claims/*.yaml`` whose
    ``experiment`` is that name), and one message per claim that cannot be judged on these
    data."""
    results, errors = [], []
    for claim in load_claims(experiment=experiment):
        try:
            results.append(evaluate(claim, per_seed, cells, settings))
        except ClaimError as error:
            errors.append(str(error))
    return results, errors


def with_lengths(per_seed: pd.DataFrame, lengths: pd.DataFrame | None) -> pd.DataFrame:
    """The per-seed metrics with the token tasks' final response lengths (`LENGTH_METRICS`,
    per run key and seed), which claims may judge too; unchanged without lengths."""
    if lengths is None:
        return per_seed
    return per_seed.merge(lengths[["run_key", "seed", *LENGTH_METRICS]],
                          on=["run_key", "seed"], how="left")


def write_claim_files(
    results: Sequence[ClaimResult], report_dir: Path, settings: ReportSettings
) -> figures.FigureFiles:
    """Each claim's comparisons (``claim-<id>.csv``), the verdict table (``claims.csv``) and
    the claim figures; returns the figures."""
    for result in results:
        if len(result.comparisons):
            result.comparisons.to_csv(report_dir / f"claim-{result.claim.id}.csv", index=False)
    if results:
        verdict_table(results).to_csv(report_dir / "claims.csv", index=False)
    return figures.write_claim_figures(results, report_dir, settings)


def write_report_files(dataset: Dataset, settings: ReportSettings, report_dir: Path) -> Path:
    """Every file of the report into the (empty) ``report_dir``; returns the index path."""
    cells = cell_columns(dataset)
    references = reference_scores(dataset.runs)
    cell_metrics = compute_cell_metrics(dataset, settings, references)
    per_seed = cell_metrics.per_seed
    summary = summarize_cells(per_seed, cells, settings)

    comparison_tables = build_tables(per_seed, cells, settings)
    for table in comparison_tables:
        write_table(table, report_dir)
    aggregates = compute_aggregates(per_seed, cells, references, settings)
    write_aggregate_table(aggregates.table, aggregate_caption(aggregates, settings), report_dir)
    figure_files = {
        "convergence": figures.write_convergence_figures(
            cell_metrics.bands, cells, report_dir, settings
        ),
        "lr": figures.write_lr_sensitivity_figures(summary, cells, report_dir, settings),
        "aggregate": figures.write_aggregate_figures(aggregates, cells, report_dir, settings),
    }
    per_seed.to_csv(report_dir / "per_seed_metrics.csv", index=False)
    summary.to_csv(report_dir / "summary.csv", index=False)

    responses = response_results(dataset.episodes, per_seed, cells, settings)
    claim_results, claim_errors = judge_claims(
        Path(dataset.experiment_dir).resolve().name,
        with_lengths(per_seed, None if responses is None else responses.per_seed),
        cells, settings)
    figure_files["claims"] = write_claim_files(claim_results, report_dir, settings)

    length_tables = [] if responses is None else build_length_tables(responses, cells, settings)
    for table in length_tables:
        write_table(table, report_dir)
    if responses is not None:
        responses.per_seed.to_csv(report_dir / "per_seed_lengths.csv", index=False)
    figure_files.update(
        figures.write_response_length_figures(responses, cells, report_dir, settings))

    gradients = gradient_results(dataset.diagnostics, cells, settings)
    if gradients is not None:
        write_gradient_tables(gradients.summary, gradients.identity, cells,
                              gradient_caption(settings), report_dir)
        figure_files.update(
            figures.write_gradient_figures(dataset.diagnostics, cells, report_dir, settings)
        )

    blocks = report_blocks(
        dataset, per_seed, summary, comparison_tables, aggregates,
        (claim_results, claim_errors), references, figure_files, settings, gradients,
        length_tables,
    )
    title = f"Report: {Path(dataset.experiment_dir).resolve().name}"
    index = report_dir / "index.md"
    index.write_text(to_markdown(blocks, report_dir))
    (report_dir / "index.html").write_text(to_html(blocks, title))
    return index


def write_report(experiment_dir: Path, settings: ReportSettings | None = None) -> Path:
    """Write ``<experiment_dir>/report/`` from ``<experiment_dir>/data/``; returns the index
    path. The files are written to a temporary sibling folder first and swapped in whole.
    Raises `analysis.load.DatasetError` when there is no usable data and `ReportError` when
    the report folder cannot be written."""
    settings = settings or ReportSettings()
    experiment_dir = Path(experiment_dir)
    dataset = load_dataset(experiment_dir, update_columns=SUMMARY_UPDATE_COLUMNS)
    final = experiment_dir / REPORT_DIRNAME
    try:
        write_whole(final, lambda staging: write_report_files(dataset, settings, staging))
    except FolderNotWritable as error:
        raise ReportError(f"cannot write the report next to {final}: {error.strerror}") from None
    return final / "index.md"


def add_settings_arguments(parser: argparse.ArgumentParser, curves: bool = True) -> None:
    """The report settings as options; ``curves=False`` leaves out those that the per-seed
    metrics are computed with (grid points, final and threshold fractions), for commands
    that start from per-seed metrics already computed."""
    defaults = ReportSettings()
    parser.add_argument("--reference", default=defaults.reference, choices=REDUCTIONS,
                        help="reduction every other one is compared with (default: %(default)s)")
    if curves:
        parser.add_argument("--grid-points", type=int, default=defaults.grid_points,
                            help="env-step grid points per learning curve (default: %(default)s)")
        parser.add_argument("--final-fraction", type=float, default=defaults.final_fraction,
                            help="share of the run averaged by the final return "
                            "(default: %(default)s)")
        parser.add_argument("--threshold-fraction", type=float,
                            default=defaults.threshold_fraction,
                            help="normalised score whose return is the steps-to-threshold "
                            "target (default: %(default)s)")
    parser.add_argument("--selection-metric", choices=figures.CONTINUOUS_METRICS,
                        default=defaults.selection_metric,
                        help="metric that picks each reduction's best lr on the even seeds "
                        "(default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=defaults.alpha,
                        help="family-wise significance level (default: %(default)s)")
    parser.add_argument("--power", type=float, default=defaults.power,
                        help="power at which minimum detectable effects are given "
                        "(default: %(default)s)")
    parser.add_argument("--resamples", type=int, default=defaults.n_resamples,
                        help="bootstrap resamples per interval (default: %(default)s)")


def settings_from_arguments(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> ReportSettings:
    """The settings of parsed `add_settings_arguments` options, each checked (a bad value is
    the parser's one-line error)."""
    defaults = ReportSettings()
    grid_points = getattr(args, "grid_points", defaults.grid_points)
    final_fraction = getattr(args, "final_fraction", defaults.final_fraction)
    threshold_fraction = getattr(args, "threshold_fraction", defaults.threshold_fraction)
    if grid_points < 1:
        parser.error(f"--grid-points must be at least 1, got {grid_points}")
    if not 0 < final_fraction <= 1:
        parser.error(f"--final-fraction must be in (0, 1], got {final_fraction}")
    if not 0 < threshold_fraction <= 1:
        parser.error(f"--threshold-fraction must be in (0, 1], got {threshold_fraction}")
    if not 0 < args.alpha < 1:
        parser.error(f"--alpha must be in (0, 1), got {args.alpha}")
    if not 0 < args.power < 1:
        parser.error(f"--power must be in (0, 1), got {args.power}")
    if args.resamples < 100:
        parser.error(f"--resamples must be at least 100, got {args.resamples}")
    return ReportSettings(
        grid_points=grid_points,
        final_fraction=final_fraction,
        reference=args.reference,
        threshold_fraction=threshold_fraction,
        selection_metric=args.selection_metric,
        alpha=args.alpha,
        power=args.power,
        n_resamples=args.resamples,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 when the experiment has no usable data or the
    report cannot be written)."""
    parser = ArgumentParser(
        prog="python -m analysis.report",
        description="Write <experiment_dir>/report/ from the results in <experiment_dir>/data/.",
    )
    parser.add_argument("experiment_dir", type=Path, help="e.g. results/quick")
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    settings = settings_from_arguments(args, parser)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedFileWarning)
        try:
            index = write_report(args.experiment_dir, settings)
        except (DatasetError, ReportError) as error:
            print(f"analysis.report: error: {error}", file=sys.stderr)
            return EXIT_USAGE
    for warning in caught:
        print(f"analysis.report: warning: {warning.message}", file=sys.stderr)
    print(f"wrote {index} and {index.with_suffix('.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The report's prose: the index page as document blocks (`analysis.document`), in reading
order, with every method stated where its numbers are shown."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from analysis import calibration, intervals, tables
from analysis.aggregate import Aggregates
from analysis.claims import Claim, ClaimResult
from analysis.document import Block, Bullets, Figure, Heading, Paragraph, Table
from analysis.exports import (
    GRADIENT_IDENTITY,
    GRADIENT_TABLE,
    aggregate_display,
    display_frame,
    gradient_display,
)
from analysis.figures import METRIC_LABELS, PPO_NOTE, FigureFiles
from analysis.formatting import (
    compact_ranges,
    extreme_text,
    family_label,
    text,
    value_counts_text,
)
from analysis.gradients import IDENTITY_TOLERANCE, GradientResults
from analysis.load import Dataset, cell_columns
from analysis.references import ReferenceScores
from analysis.responses import LENGTH_METRICS
from analysis.settings import ReportSettings
from analysis.sweep import missing_cells


def report_blocks(
    dataset: Dataset,
    per_seed: pd.DataFrame,
    summary: pd.DataFrame,
    comparison_tables: Sequence[tables.ComparisonTable],
    aggregates: Aggregates,
    claims: tuple[Sequence[ClaimResult], Sequence[str]],
    references: dict[str, ReferenceScores],
    figures: dict[str, FigureFiles],
    settings: ReportSettings,
    gradient_results: GradientResults | None = None,
    length_tables: Sequence[tables.ComparisonTable] = (),
) -> list[Block]:
    """The index page as document blocks, in reading order: the claims' verdicts first, then
    figures and tables (the gradient diagnostics last, when the dataset has them), then how
    every number was computed, then completeness and provenance."""
    cells = cell_columns(dataset)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    by_name = {t.name: t for t in comparison_tables}
    claim_results, claim_errors = claims
    return [
        Heading(f"Report: {Path(dataset.experiment_dir).resolve().name}", 1),
        Paragraph(
            f"Generated {generated} by `python -m analysis.report {dataset.experiment_dir}` "
            f"from `{Path(dataset.experiment_dir) / 'data'}`. {settings_text(settings)} How every "
            "number is computed: Metrics and Methods; what the data cover: Completeness."
        ),
        *claims_blocks(claim_results, claim_errors, figures.get("claims", []), settings),
        *convergence_blocks(figures["convergence"], settings),
        *significance_blocks(
            [by_name[n] for n in by_name if n.startswith("significance-")], settings
        ),
        *response_blocks(length_tables, figures, settings),
        *best_lr_blocks(
            [by_name[n] for n in by_name if n.startswith("best_lr-")], figures["lr"], settings
        ),
        *aggregate_blocks(aggregates, figures["aggregate"], settings),
        *summary_blocks(summary, settings),
        *gradient_blocks(gradient_results, cells, figures, settings),
        *metrics_blocks(references, per_seed, settings),
        *methods_blocks(settings),
        *completeness_blocks(dataset, per_seed, cells),
        *data_blocks(dataset, per_seed),
        *provenance_blocks(dataset),
        *cells_blocks(per_seed, cells),
    ]


def settings_text(settings: ReportSettings) -> str:
    """The statistics' settings as the report's opening states them."""
    return (f"Reference reduction: `{settings.reference}`; significance level {settings.alpha}; "
            f"intervals {settings.confidence:.0%}; bootstrap intervals {settings.n_resamples} "
            f"resamples, seeded per cell and statistic from base seed {settings.bootstrap_seed}.")


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
            Table(missing.map(text)),
        ]
    counts = per_seed.groupby(list(cells), dropna=False).size().rename("n_seeds").reset_index()
    most = int(counts["n_seeds"].max())
    fewer = counts[counts["n_seeds"] < most]
    if len(fewer):
        blocks += [
            Paragraph(f"{len(fewer)} cell(s) have fewer seeds than the most seeded ({most}):"),
            Table(fewer.map(text)),
        ]
    else:
        blocks.append(Paragraph(f"Every cell has {most} seed(s)."))
    diverged = per_seed[per_seed["diverged"]]
    no_final = per_seed[per_seed["final_return"].isna()]  # not diverged: those are -inf
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
                f"rows: {len(dataset.episodes)} episodes, {len(dataset.updates)} updates, "
                f"{len(dataset.diagnostics)} gradient diagnostics",
                f"runs started {extreme_text(runs['started_at'], largest=False)}, last finished "
                f"{extreme_text(runs['finished_at'], largest=True)}",
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
    return [*blocks, Heading("Files", 3), Table(files[columns].map(text))]


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
                **{c: text(v) for c, v in zip(cells, cell_values, strict=True)},
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
                "random": text(references[env].random) if env in references else "none",
                "solved": text(references[env].solved) if env in references else "none",
                "threshold": text(references[env].threshold(settings.threshold_fraction))
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
                "of the run's env steps, up to `total_steps` (the episodes a last batch runs "
                "past it are left out, as from every metric). A seed that did not diverge but "
                "finished no episode in that window has none: it is left out of every "
                "statistic of the metric and listed under Completeness.",
                "`auc`: mean of the return curve over its grid points (area under the curve / "
                "run length), in return units.",
                "diverged seeds have failed: their `final_return` and `auc` are `-inf`. The "
                "rank test and P(X>Y) rank them below every other seed (tied with each other); "
                "means, IQMs, differences, Hedges' g, the curves and the aggregates use the "
                "seeds that did not diverge, and every table shows how many failed. (Carrying "
                "a diverged seed's last return forward would flatter unstable settings; "
                "dropping it would hide them.)",
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
    figures: FigureFiles, settings: ReportSettings
) -> list[Block]:
    """The convergence figures, one per family of cells."""
    blocks: list[Block] = [
        Heading("Convergence"),
        Paragraph(
            "Episode return against environment steps. Line: mean over seeds of the per-seed "
            f"return curves of the seeds that did not diverge; band: {settings.confidence:.0%} "
            "Student t CI at each grid point, drawn only where every seed has finished an "
            "episode. Curves that are identical (bit-identical runs) are drawn once and named "
            "in the legend. "
            "The legend counts the seeds per reduction (a range when facets differ)."
        ),
    ]
    for title, (png, pdf) in figures:
        blocks += [
            Heading(title, 3),
            Figure(
                png,
                f"Convergence, {title}: mean episode return over seeds (line) with its "
                f"{settings.confidence:.0%} Student t CI (band), per env (rows) and algorithm "
                "(columns).",
                pdf,
            ),
        ]
    return blocks


def response_blocks(
    length_tables: Sequence[tables.ComparisonTable], figures: dict[str, FigureFiles],
    settings: ReportSettings,
) -> list[Block]:
    """Token tasks (algo=grpo): the response-length figures and the significance tables of
    the final lengths; nothing for datasets without responses."""
    if not length_tables:
        return []
    confidence = f"{settings.confidence:.0%}"
    blocks: list[Block] = [
        Heading("Response lengths (token tasks)"),
        Paragraph(
            "On a token task an episode is one sampled response, its return the reward (1 if "
            "correct, plus any format reward) and its length the response's tokens up to and "
            "including END; environment steps count responses sampled. So the return figures "
            "and tables above show accuracy (with no format reward), and this section shows "
            "length, the quantity of Dr. GRPO's claim (Liu et al., 2025): that GRPO's per-"
            "response normalisation 1/|o_i| (`traj_step_mean`) lets incorrect responses grow "
            "long where a fixed normaliser (`constant`) or the token mean (`mean`) does not. "
            f"Line: mean over seeds of the per-seed length curves (on the return curves' grid; "
            f"a bin with no such response carries the seed's last value on); band: "
            f"{confidence} Student t CI, drawn where every seed has a value."
        ),
    ]
    for kind in ("response_length_incorrect", "response_length_correct"):
        for title, (png, pdf) in figures.get(kind, []):
            which = kind.rpartition("_")[2]
            blocks += [
                Heading(f"Length of {which} responses, {title}", 3),
                Figure(png, f"Mean length of {which} responses over seeds (line) with its "
                       f"{confidence} Student t CI (band) against responses sampled, per task "
                       f"(rows); {title}.", pdf),
            ]
    blocks.append(Paragraph(
        "Final lengths: each reduction against the reference within each family, as the "
        "significance tables above (same tests, corrections and intervals); a positive "
        "difference means longer responses than the reference's, which is not better."))
    for table in length_tables:
        blocks += table_blocks(table)
    return blocks


def table_blocks(table: tables.ComparisonTable) -> list[Block]:
    """One comparison table: caption, the table, links to its exports."""
    return [
        Heading(f"{table.name}", 3),
        Paragraph(table.caption),
        Table(display_frame(table)),
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
            "differ only in the reduction. The mark is the exact rank-sum test, Holm-corrected "
            "within each family and metric over its genuine tests (the table gives their "
            "number m); identical runs are reported as identical, not tested; the MDE column "
            "says how large an effect a comparison without a mark could miss (Methods). "
            "Sum and mean "
            "differ by a gradient scale, so at a fixed lr these tables compare step sizes as "
            "much as reductions; see the best-lr view for the fair comparison."
        ),
    ]
    for table in comparison_tables:
        blocks += table_blocks(table)
    return blocks


def best_lr_blocks(
    comparison_tables: Sequence[tables.ComparisonTable],
    figures: FigureFiles,
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
                f"over the cell's seeds that did not diverge, bar: {settings.confidence:.0%} "
                f"{intervals.method_label(intervals.MEAN)} (points shifted slightly along x "
                "per reduction).",
                pdf,
            )
        )
    for table in comparison_tables:
        blocks += table_blocks(table)
    return blocks


def aggregate_blocks(
    aggregates: Aggregates, figures: FigureFiles, settings: ReportSettings
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
        Paragraph(aggregate_caption(aggregates, settings)),
        Table(aggregate_display(aggregates.table)),
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
    shown = summary.copy()
    for column in summary.columns:
        spec = "{:.2f}" if column.startswith(("final_return_", "auc_")) and not column.endswith(
            "_n") else None
        shown[column] = [text(v, spec) for v in summary[column]]
    return [
        Heading("Summary per cell"),
        Bullets(
            (
                "`n_diverged`: failed seeds; `n_missing_final`: seeds that did not diverge but "
                "have no episode in the final window; `*_n`: seeds each statistic uses.",
                f"`*_mean` with `ci_low`/`ci_high`: mean over the seeds that did not diverge "
                f"and its {settings.confidence:.0%} {intervals.method_label(intervals.MEAN)} "
                "(none with fewer than 2 seeds).",
                "`final_return_iqm`: interquartile mean (exactly 25% trimmed from each end, "
                f"fractional weights at the cut) with its {settings.confidence:.0%} "
                f"{intervals.method_label(intervals.IQM)} ({settings.n_resamples} resamples).",
                "`n_reached_threshold`: seeds whose return curve reached the env's threshold.",
            )
        ),
        Table(shown),
        Paragraph(
            "As CSV: [summary.csv](summary.csv); per-seed values: "
            "[per_seed_metrics.csv](per_seed_metrics.csv)."
        ),
    ]




GRADIENT_MEASURES_TEXT = (
    "`grad_cosine`: cosine between the probe reduction's policy gradient on the training "
    "batch and the reference gradient (1/M) sum_i sum_t, from M independent episodes under "
    "the same policy (the textbook estimator's expectation, up to its noise): 1 means the "
    "batch points the policy where the expected gradient does.",
    "`grad_norm_ratio`: ||probe gradient|| / ||reference gradient||, the step size the "
    "reduction implies at a given learning rate, relative to the textbook estimator's.",
    "`step_cosine`: cosine between the parameter steps the seed's optimiser would take on the "
    "probe and on the reference gradient (each from a copy of its state): what the optimiser "
    "makes of the direction. Under SGD without momentum it equals `grad_cosine`; under Adam "
    "the moments carry the scale of the reduction the seed trains with, so one step on a "
    "gradient of another scale (e.g. `sum` where `mean` trains) points elsewhere than a "
    "rescaled run of that reduction would.",
    "`noise_cosine`: mean pairwise cosine of the probe's gradients over B independent "
    "training-sized batches (1: no direction noise); the rows also hold `noise_trace`, the "
    "trace of their covariance, and `batch_length_std`, the spread of T_i in the batch.",
    "`sum`, `mean`, `traj_mean`, `constant` and `per_step` weigh every step of one batch "
    "equally, so on one batch their gradients differ only by a scalar: their cosines agree "
    "and their norm ratios differ by known factors (e.g. `mean` / `traj_mean` = "
    "N / sum_i T_i); only `traj_step_mean` and `length_power` re-weigh steps and change the "
    "direction.",
)


def identity_text(results: GradientResults) -> str:
    """One sentence on the check that ``mean``'s norm ratio / ``traj_mean``'s equals
    N / sum_i T_i on every probed batch (`analysis.gradients.norm_ratio_identity`)."""
    identity = results.identity
    checked = identity[identity["deviation"].notna()]
    link = f"per batch: [{GRADIENT_IDENTITY}.csv]({GRADIENT_IDENTITY}.csv)"
    if checked.empty:
        return ("Identity check: no probed batch has both a `mean` and a `traj_mean` probe "
                "with finite norm ratios, so `mean`'s norm ratio / `traj_mean`'s = "
                "N / sum_i T_i cannot be checked here.")
    largest = results.max_deviation
    if largest <= IDENTITY_TOLERANCE:
        return (f"Identity check: on all {len(checked)} probed batches with both probes, "
                "`mean`'s norm ratio / `traj_mean`'s equals N / sum_i T_i (`batch_trajectories` "
                f"/ `batch_steps`), as it must by construction: largest relative deviation "
                f"{largest:.2g} (tolerance {IDENTITY_TOLERANCE:g}; {link}).")
    worst = checked.loc[checked["deviation"].idxmax()]
    failing = int((checked["deviation"] > IDENTITY_TOLERANCE).sum())
    return (f"**Identity check failed**: on {failing} of {len(checked)} probed batches with "
            "both probes, `mean`'s norm ratio / `traj_mean`'s differs from N / sum_i T_i "
            f"(`batch_trajectories` / `batch_steps`) by more than {IDENTITY_TOLERANCE:g}, "
            f"which cannot happen by construction; largest relative deviation {largest:.3g} "
            f"(run `{worst['run_key']}`, seed {text(worst['seed'])}, update "
            f"{text(worst['update'])}; {link}). The diagnostics of those batches are suspect.")


def gradient_caption(settings: ReportSettings) -> str:
    """What the gradient summary table shows."""
    return (
        "Gradient diagnostics per cell (`trains with`: the reduction the seeds train with) "
        "and probe reduction: seeds, probes (all seeds' probed updates), mean length (mean over "
        "seeds of each seed's mean sum_i T_i / N over its probed batches), and per measure the "
        "mean over seeds of each seed's mean over its probed updates, with its "
        f"{settings.confidence:.0%} {intervals.method_label(intervals.MEAN)} over seeds "
        f"({settings.n_resamples} resamples; n/a with fewer than 2 seeds). {PPO_NOTE}."
    )


def gradient_blocks(
    results: GradientResults | None, cells: Sequence[str], figures: dict[str, FigureFiles],
    settings: ReportSettings,
) -> list[Block]:
    """The Gradient diagnostics section (none without diagnostics rows): what each measure
    is, the identity check, the summary table and, per family of cells, its three figures."""
    if results is None:
        return []
    confidence = f"{settings.confidence:.0%}"
    blocks: list[Block] = [
        Heading("Gradient diagnostics"),
        Paragraph(
            "At probed updates of each seed, every reduction's policy gradient (the term "
            "-log pi(a|s) A alone) is computed on the batch that update trains on and compared "
            "with a reference gradient from independent episodes; the seed trains with its own "
            f"reduction whatever is probed. {PPO_NOTE}. The measures:"
        ),
        Bullets(GRADIENT_MEASURES_TEXT),
        Paragraph(identity_text(results)),
        Paragraph(gradient_caption(settings)),
        Table(gradient_display(results.summary, list(cells))),
        Paragraph(
            f"Files: [{GRADIENT_TABLE}.csv]({GRADIENT_TABLE}.csv) (numeric), "
            f"[{GRADIENT_TABLE}.tex]({GRADIENT_TABLE}.tex) (LaTeX, booktabs), "
            f"[{GRADIENT_TABLE}.md]({GRADIENT_TABLE}.md)."
        ),
    ]
    captions = {
        "gradient_cosine": (
            f"cosine with the reference gradient against env steps per probe reduction; line: "
            f"mean over seeds, band: {confidence} Student t CI over seeds, per env (rows) and "
            f"algorithm (columns). {PPO_NOTE}."
        ),
        "gradient_norm_ratio": (
            f"norm ratio ||probe|| / ||reference|| against env steps (log scale); line: "
            f"geometric mean over seeds, band: {confidence} Student t CI over seeds on the log "
            f"scale. {PPO_NOTE}."
        ),
        "gradient_length": (
            "norm ratio against the probed batch's mean trajectory length sum_i T_i / N "
            "(log-log); points: single probes, line: geometric mean per length bin. "
            f"{PPO_NOTE}."
        ),
    }
    by_family: dict[str, list[Block]] = {}
    for kind, caption in captions.items():
        for title, (png, pdf) in figures.get(kind, []):
            by_family.setdefault(title, []).append(
                Figure(png, f"Gradient diagnostics, {title}: {caption}", pdf)
            )
    for title, family_figures in by_family.items():
        blocks += [Heading(f"Seeds trained with {title}", 3), *family_figures]
    return blocks


def aggregate_caption(aggregates: Aggregates, settings: ReportSettings) -> str:
    """What the aggregate table shows."""
    return (
        f"Normalised final return aggregated across envs ({', '.join(aggregates.envs_used)}): "
        "per seed (final return - random) / (solved - random) with the env's reference scores, "
        "diverged seeds left out. IQM and optimality gap (mean of max(1 - score, 0); lower is "
        "better) over all runs of the group's envs pooled, mean: the mean of the per-env means "
        f"(as rliable). CIs: {settings.confidence:.0%} stratified bootstrap "
        f"({intervals.method_label(intervals.IQM)}, "
        f"{settings.n_resamples} resamples of the seeds within each env)."
    )


def methods_blocks(settings: ReportSettings) -> list[Block]:
    """How tests, intervals, multiple comparisons and power are computed, with the measured
    coverage of each interval (`analysis.calibration`)."""
    confidence = f"{settings.confidence:.0%}"
    coverage = [
        f"{label}: {calibration.coverage_text(estimator.name)}"
        for label, estimator in (
            ("mean", intervals.MEAN), ("IQM", intervals.IQM),
            ("mean difference", intervals.MEAN_DIFFERENCE), ("Hedges' g", intervals.HEDGES_G),
            ("P(X>Y)", intervals.PROBABILITY_OF_IMPROVEMENT),
        )
    ]
    return [
        Heading("Methods"),
        Bullets(
            (
                "primary test: two-sided exact Wilcoxon-Mann-Whitney rank-sum test, exact "
                "conditional on ties (the permutation distribution of the rank sum, counted, "
                "not approximated). Valid at any number of seeds without assuming normality; "
                "returns at 10-20 seeds are bounded, skewed and often bimodal, and steps to "
                "threshold is censored. Welch's t-test is shown for the mean difference as a "
                "secondary check and never decides the mark.",
                f"multiple comparisons: Holm within each family and metric, over the genuine "
                f"tests only (not identical runs, not groups under 2 seeds, not comparisons "
                f"whose pooled values are all tied: those cannot reject); family-wise error "
                f"rate {settings.alpha} per family.",
                "identical by construction: two cells whose every seed has a bit-identical "
                "episode stream (e.g. reductions that differ by a constant factor under Adam) "
                "are reported as identical runs and not tested.",
                f"power: for every test, the minimum detectable effect (MDE): the smallest "
                f"P(X>Y) (with the equivalent normal shift in SD units) that the two groups' N "
                f"detect with {settings.power:.0%} power at the first Holm step's level "
                f"alpha / m. `python -m analysis.power <experiment dir> --effect E` says how "
                f"many seeds a given effect needs.",
                f"intervals ({confidence}), each by the method its measured coverage chose "
                "(`python -m analysis.calibration`, normal, skewed and bimodal data at n = 5, 10, "
                "20; table in analysis/calibration.csv):",
            )
        ),
        Bullets(tuple(coverage)),
    ]


def claim_condition(row: pd.Series, claim: Claim) -> str:
    """The condition of a summary row as text: "env=cartpole · optim=sgd"."""
    return family_label(row, claim.conditions)


def verdict_table(results: Sequence[ClaimResult]) -> pd.DataFrame:
    """One row per claim x condition x view x treatment: the verdict summary of every claim."""
    rows = []
    for result in results:
        claim = result.claim
        for _, row in result.summary.iterrows():
            rows.append({
                "claim": claim.id,
                "condition": claim_condition(row, claim),
                "view": row["view"],
                "comparison": f"{row['treatment']} vs {claim.control}",
                "prediction": claim.prediction,
                "metric": row["metric"],
                "seeds": row["seeds"],
                "verdict": row["verdict"],
            })
    return pd.DataFrame(rows)


def claims_blocks(
    results: Sequence[ClaimResult], errors: Sequence[str], figures: FigureFiles,
    settings: ReportSettings,
) -> list[Block]:
    """The Claims section: how verdicts are computed, the verdict table, then per claim its
    statement, source, figure and files."""
    if not results and not errors:
        return []
    blocks: list[Block] = [
        Heading("Claims"),
        Paragraph(
            "Each claim is a file in `conf/claims/` (statement, source: seed text or paper, the "
            "grid slice, the comparison, metrics, prediction). Verdicts are computed from the "
            "tables below, never typed: per comparison, `identical by construction` when "
            "every seed's episodes are bit-identical; else the exact rank-sum test, "
            f"Holm-corrected within its family (level {settings.alpha}), decides: `supported` "
            "when significant in the predicted direction (for `not_less`: when the lower "
            "bound of P(treatment better) is at least 1/2 - margin), `contradicted` when "
            "significant against it, otherwise `no difference shown` (with the minimum "
            "detectable effect in the claim's CSV). `same lr` compares at each lr of the grid; "
            "`best lr` each side at its own best lr (chosen on even seeds, tested on odd "
            "seeds). The verdict shown is the first metric's; a condition whose grid points "
            "disagree lists each verdict with its count."
        ),
    ]
    blocks += [Paragraph(f"Cannot be judged: {error}") for error in errors]
    table = verdict_table(results)
    if len(table):
        blocks.append(Table(table))
    by_id = dict(figures)
    for result in results:
        claim = result.claim
        blocks += [
            Heading(claim.id, 3),
            Paragraph(f"\u201c{claim.statement}\u201d ({claim.source}; judged on "
                      f"`{claim.compare}`, prediction `{claim.prediction}`, claim file "
                      f"`{Path(claim.path).name}`)."),
        ]
        if result.comparisons.empty:
            blocks.append(Paragraph(f"No comparison of this claim has data here: "
                                    f"{result.missing}."))
            continue
        if claim.id in by_id:
            png, pdf = by_id[claim.id]
            better = "longer" if claim.metrics[0] in LENGTH_METRICS else "better"
            blocks.append(Figure(png, f"Claim {claim.id}: P(treatment {better} than control) "
                                 "with its interval and verdict, per comparison.", pdf))
        blocks.append(Paragraph(
            f"Every comparison with its statistics: [claim-{claim.id}.csv](claim-{claim.id}.csv)."
        ))
    return blocks

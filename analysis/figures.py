"""Which figures a report draws, from which numbers: the data preparation and file names of
the convergence, lr-sensitivity, aggregate, response-length and gradient-diagnostics figures
(the drawing is `analysis.plots` and `analysis.gradient_plots`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import gradient_plots, gradients, intervals, plots
from analysis.aggregate import STATISTICS, Aggregates
from analysis.claims import LOWER_IS_BETTER, ClaimResult
from analysis.formatting import family_label, slug, text
from analysis.responses import LENGTH_CURVES, LENGTH_METRICS, ResponseResults
from analysis.settings import ReportSettings

CONTINUOUS_METRICS = ("final_return", "auc")
METRIC_LABELS = {
    "final_return": "final return",
    "auc": "area under the curve (mean return over the run)",
}
AXIS_LABELS = {"final_return": "final return", "auc": "AUC (mean return)"}

FigureFiles = list[tuple[str, list[Path]]]  # (title or kind, [PNG, PDF]) per figure


def write_convergence_figures(
    bands: pd.DataFrame, cells: Sequence[str], report_dir: Path, settings: ReportSettings,
    kind: str = "convergence", title_prefix: str = "", **labels: str,
) -> FigureFiles:
    """One convergence figure per family of cells (same values of every cell column other than
    env, algo and reduction); `kind` names the files, `labels` the axes (`plot_convergence`)."""
    family_columns = [c for c in cells if c not in ("env", "algo", "reduction")]
    figures = []
    for family_values, family in bands.groupby(family_columns, dropna=False, sort=True):
        title = ", ".join(
            f"{c}={text(v)}" for c, v in zip(family_columns, family_values, strict=True)
        )
        stem = report_dir / f"{kind}-{slug(title)}"
        figures.append((title, plots.plot_convergence(
            family, title_prefix + title, stem, settings.confidence, **labels)))
    return figures


def write_response_length_figures(
    results: ResponseResults | None, cells: Sequence[str], report_dir: Path,
    settings: ReportSettings,
) -> dict[str, FigureFiles]:
    """Token tasks: per family of cells, the length of correct and of incorrect responses
    against responses sampled (`analysis.responses`); by kind, empty without responses."""
    written: dict[str, FigureFiles] = {f"response_length_{name}": [] for name in LENGTH_CURVES}
    if results is None:
        return written
    for name in LENGTH_CURVES:
        bands = results.bands[results.bands["responses"] == name]
        written[f"response_length_{name}"] = write_convergence_figures(
            bands, cells, report_dir, settings, kind=f"response_length_{name}",
            title_prefix=f"{name} responses: ", ylabel=f"length of {name} responses (tokens)",
            xlabel="responses sampled")
    return written


def write_lr_sensitivity_figures(
    summary: pd.DataFrame, cells: Sequence[str], report_dir: Path, settings: ReportSettings
) -> FigureFiles:
    """Per continuous metric, the metric's mean over the cell's seeds that did not diverge
    against lr, for the families with more than one lr (none without lr sweeps)."""
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
                "n_seeds": swept[f"{metric}_n"],
            }
        )
        title = (
            f"{METRIC_LABELS[metric]} against learning rate\npoint: mean over the cell's seeds "
            f"that did not diverge; bar: {settings.confidence:.0%} "
            f"{intervals.method_label(intervals.MEAN)}"
        )
        stem = report_dir / f"lr_sensitivity-{metric}"
        figures.append(
            (metric, plots.plot_lr_sensitivity(points, AXIS_LABELS[metric], title, stem))
        )
    return figures


def write_aggregate_figures(
    aggregates: Aggregates, cells: Sequence[str], report_dir: Path, settings: ReportSettings
) -> FigureFiles:
    """The aggregate interval plot and the performance profiles (none when no env has
    reference scores)."""
    if aggregates.table.empty:
        return []
    label_columns = [c for c in cells if c not in ("env", "reduction")]
    confidence = f"{settings.confidence:.0%}"
    envs = ", ".join(aggregates.envs_used)
    table = aggregates.table
    intervals = pd.concat(
        [
            pd.DataFrame(
                {
                    "group": [family_label(r, label_columns) for _, r in table.iterrows()],
                    "statistic": label,
                    "reduction": table["reduction"],
                    "value": table[name],
                    "low": table[f"{name}_ci_low"],
                    "high": table[f"{name}_ci_high"],
                }
            )
            for name, label, _ in STATISTICS
        ],
        ignore_index=True,
    )
    interval_title = (
        f"Normalised final return across envs ({envs}); 0 = random policy, 1 = solved\n"
        f"point: IQM and optimality gap over all runs pooled, mean of the per-env means; bar: "
        f"{confidence} stratified bootstrap CI; optimality gap: lower is better"
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
        ("intervals",
         plots.plot_aggregate_intervals(intervals, interval_title, report_dir / "aggregate")),
        ("profile",
         plots.plot_performance_profile(profiles, profile_title,
                                        report_dir / "performance_profile")),
    ]


# The gradient figures: kind -> file stem prefix.
GRADIENT_FIGURES = {
    "gradient_cosine": "gradient_cosine",
    "gradient_norm_ratio": "gradient_norm_ratio",
    "gradient_length": "gradient_norm_vs_length",
}
PPO_NOTE = "PPO: the first epoch's gradient on the rollout, before any step"


def gradient_family_columns(cells: Sequence[str]) -> list[str]:
    """The columns that make one gradient figure: every cell column but env and algo (the
    facets), including the reduction the seeds train with."""
    return [c for c in cells if c not in ("env", "algo")]


def _family_rows(frame: pd.DataFrame, key: dict) -> pd.DataFrame:
    """The rows of ``frame`` whose columns have the family's values (NaN matching NaN)."""
    selected = np.ones(len(frame), dtype=bool)
    for column, value in key.items():
        values = frame[column]
        selected &= (values.isna() if pd.isna(value) else values == value).to_numpy()
    return frame[selected]


def _as_probe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A family's rows with the probe reduction as ``reduction`` (what the figures colour by)."""
    return frame.drop(columns="reduction").rename(columns={gradients.PROBE: "reduction"})


def write_gradient_figures(
    diagnostics: pd.DataFrame, cells: Sequence[str], report_dir: Path, settings: ReportSettings
) -> dict[str, FigureFiles]:
    """Per family of cells (`gradient_family_columns`), three figures of the diagnostics rows:
    the cosine with the reference gradient and the norm ratio against env steps
    (`analysis.gradients.gradient_curves`), and the norm ratio against mean trajectory length
    (`analysis.gradients.norm_ratio_vs_length`). Returns them by kind (`GRADIENT_FIGURES`),
    each a list of (family title, [PNG, PDF]); empty lists without diagnostics rows."""
    written: dict[str, FigureFiles] = {kind: [] for kind in GRADIENT_FIGURES}
    if diagnostics.empty:
        return written
    confidence = f"{settings.confidence:.0%}"
    family_columns = gradient_family_columns(cells)
    cosine = gradients.gradient_curves(diagnostics, cells, "grad_cosine", settings)
    ratio = gradients.gradient_curves(diagnostics, cells, "grad_norm_ratio", settings)
    points = gradients.norm_ratio_vs_length(diagnostics, cells)
    trend = gradients.norm_ratio_trend(points, [*cells, gradients.PROBE])
    probes = gradients.probe_order(diagnostics[gradients.PROBE].astype(str))
    for family_values, family in diagnostics.groupby(family_columns, dropna=False, sort=True):
        key = dict(zip(family_columns, family_values, strict=True))
        title = ", ".join(f"{c}={text(v)}" for c, v in key.items())
        trained = f"seeds trained with {title}"

        def part(frame: pd.DataFrame, key: dict = key) -> pd.DataFrame:
            return _as_probe_frame(_family_rows(frame, key))

        written["gradient_cosine"].append((title, gradient_plots.plot_probe_curves(
            part(cosine),
            f"Cosine of each probe reduction's policy gradient on the training batch with the "
            f"reference gradient (1/M) sum_i sum_t of M independent episodes; {trained}; "
            f"{PPO_NOTE}",
            "cosine with reference",
            f"line: mean over seeds of each seed's mean cosine in the env-step bin; band: "
            f"{confidence} Student t CI over seeds",
            report_dir / f"{GRADIENT_FIGURES['gradient_cosine']}-{slug(title)}",
        )))
        written["gradient_norm_ratio"].append((title, gradient_plots.plot_probe_curves(
            part(ratio),
            f"Norm ratio ||probe gradient|| / ||reference gradient|| on the training batch; "
            f"{trained}; {PPO_NOTE}",
            "||probe|| / ||reference|| (log scale)",
            f"line: geometric mean over seeds of each seed's geometric mean in the env-step "
            f"bin; band: {confidence} Student t CI over seeds on the log scale",
            report_dir / f"{GRADIENT_FIGURES['gradient_norm_ratio']}-{slug(title)}",
            log_y=True,
        )))
        written["gradient_length"].append((title, gradient_plots.plot_norm_ratio_vs_length(
            part(points), part(trend),
            f"Norm ratio against the probed batch's mean trajectory length; {trained}; "
            f"{PPO_NOTE}\npoint: one probe of one probed batch; line: geometric mean of the "
            f"ratios in log-spaced bins of mean length",
            report_dir / f"{GRADIENT_FIGURES['gradient_length']}-{slug(title)}",
            reductions=[p for p in probes if p in set(family[gradients.PROBE].astype(str))],
        )))
    return written


def claim_points(result: ClaimResult) -> pd.DataFrame:
    """The primary metric's comparisons of a claim as the points of `plots.plot_claim`: one per
    condition x grid point x treatment, faceted by view."""
    claim, rows = result.claim, result.comparisons
    rows = rows[rows["metric"] == claim.metrics[0]]
    lower = claim.metrics[0] in LOWER_IS_BETTER
    value, low, high = (("prob_sooner", "sooner_ci_low", "sooner_ci_high") if lower
                        else ("prob_improvement", "poi_ci_low", "poi_ci_high"))
    labels = []
    for _, row in rows.iterrows():
        parts = [text(row[c]) for c in claim.conditions]
        parts.append(f"lr={text(row['lr'])}" if "lr" in row else "")
        labels.append(f"{row['treatment']} vs {claim.control} \u00b7 " + " \u00b7 ".join(
            p for p in parts if p))
    facet_names = {"matched_lr": "same lr", "best_lr": "each at its best lr (odd seeds)"}
    return pd.DataFrame({
        "facet": rows["view"].map(facet_names).to_numpy(),
        "label": labels,
        "value": rows.get(value, pd.Series(np.nan, index=rows.index)).to_numpy(dtype=float),
        "low": rows.get(low, pd.Series(np.nan, index=rows.index)).to_numpy(dtype=float),
        "high": rows.get(high, pd.Series(np.nan, index=rows.index)).to_numpy(dtype=float),
        "verdict": rows["verdict"].to_numpy(),
    })


def write_claim_figures(results: Sequence[ClaimResult], report_dir: Path,
                        settings: ReportSettings) -> FigureFiles:
    """One figure per claim with comparisons: the effect with its interval and the verdict of
    every comparison of its primary metric."""
    figures = []
    for result in results:
        if result.comparisons.empty:
            continue
        claim = result.claim
        # A length is neither better nor worse: P(X>Y) is P(longer).
        better = ("sooner" if claim.metrics[0] in LOWER_IS_BETTER else
                  "longer" if claim.metrics[0] in LENGTH_METRICS else "better")
        title = (f"Claim {claim.id}: {claim.metrics[0]}, treatment against {claim.compare}="
                 f"{claim.control}\npoint: P(treatment {better} than control) over seed pairs; "
                 f"bar: {settings.confidence:.0%} "
                 f"{intervals.method_label(intervals.PROBABILITY_OF_IMPROVEMENT)}")
        axis = f"P({claim.metrics[0]} {better} than {claim.control})"
        figures.append((claim.id, plots.plot_claim(claim_points(result), title, axis,
                                                   report_dir / f"claim-{slug(claim.id)}")))
    return figures

"""Significance tables: within each family of cells, every reduction against a reference reduction.

A family is a set of cells that differ only in the reduction (same algo, env, optimiser, lr and
every other swept value); the best-lr view's families also pool the lrs. Each table is a
`ComparisonTable`: one numeric row per (family, reduction), the reference's row first, and the
long list of per-seed values each row used, so that every p-value can be recomputed.

Multiple comparisons: within one family and one metric, the p-values of the comparisons with the
reference form one Holm family (``statsmodels`` ``multipletests(method="holm")``). For final
return and AUC the Holm correction is applied to the Welch t-test p-values (``p_welch_holm``,
which decides the significance mark); the Mann-Whitney U p-values are also given raw and
Holm-corrected. For steps-to-threshold, which is censored, only the rank test is valid, and the
mark uses the Holm-corrected Mann-Whitney U p-values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from analysis import metrics, stats
from analysis.document import markdown_table

REFERENCE_REDUCTION = "mean"
ALPHA = 0.05
SIGNIFICANCE_MARK = "*"
SELECTION_METRIC = "auc"

METRIC_DESCRIPTIONS: dict[str, str] = {
    "final_return": "final return (per seed: mean return of the episodes that ended in the last "
    "{final:.0%} of the run's env steps; seeds without such an episode are left out)",
    "auc": "area under the curve (per seed: mean of its return curve over the whole run's grid)",
    "steps_to_threshold": "env steps to the threshold (per seed: first grid step at which its "
    "return curve reaches the env's threshold; censored when never reached)",
}


@dataclass(frozen=True)
class TableSettings:
    """How the tables are computed."""

    reference: str = REFERENCE_REDUCTION
    confidence: float = 0.95
    alpha: float = ALPHA
    n_resamples: int = stats.BOOTSTRAP_RESAMPLES
    bootstrap_seed: int = 0


@dataclass(frozen=True)
class ComparisonTable:
    """One significance table.

    - ``name``: file stem of its exports;
    - ``metric``: the per-seed metric tested;
    - ``caption``: what the table shows, which p-values are corrected and how lrs were chosen;
    - ``rows``: one row per (family, reduction), numeric;
    - ``values``: one row per seed value used by ``rows`` (columns ``table``, the family
      columns, ``reduction``, ``lr``, ``run_key``, ``seed``, ``value``).
    """

    name: str
    metric: str
    caption: str
    family_columns: tuple[str, ...]
    rows: pd.DataFrame
    values: pd.DataFrame


def group_summary(values: np.ndarray, settings: TableSettings) -> dict[str, float]:
    """N, mean and IQM of one group's per-seed values (the seed axis) with percentile bootstrap
    CIs (`analysis.metrics.bootstrap_ci`)."""
    mean_ci = metrics.bootstrap_ci(
        values, np.mean, settings.confidence, settings.bootstrap_seed, settings.n_resamples
    )
    iqm_ci = metrics.bootstrap_ci(
        values, metrics.iqm, settings.confidence, settings.bootstrap_seed, settings.n_resamples
    )
    return {
        "n": values.size,
        "mean": float(np.mean(values)) if values.size else np.nan,
        "mean_ci_low": mean_ci.low,
        "mean_ci_high": mean_ci.high,
        "iqm": float(metrics.iqm(values)) if values.size else np.nan,
        "iqm_ci_low": iqm_ci.low,
        "iqm_ci_high": iqm_ci.high,
    }


def compare_with_reference(x: np.ndarray, y: np.ndarray, settings: TableSettings) -> dict[str, Any]:
    """The comparison of a reduction's per-seed values ``x`` with the reference's ``y``:
    difference of means, Hedges' g and probability of improvement P(X > Y), each with a
    two-sample bootstrap CI (`analysis.stats.two_sample_interval`), the Welch and Mann-Whitney U
    p-values (unadjusted) and a note on degenerate cases."""
    interval = {
        "confidence": settings.confidence,
        "n_resamples": settings.n_resamples,
        "seed": settings.bootstrap_seed,
    }
    diff_ci = stats.two_sample_interval(x, y, stats.mean_difference, **interval)
    g_ci = stats.two_sample_interval(x, y, stats.hedges_g, **interval)
    poi_ci = stats.two_sample_interval(x, y, stats.probability_of_improvement, **interval)
    enough = min(x.size, y.size) >= 1
    return {
        "diff_mean": float(stats.mean_difference(x, y)) if enough else np.nan,
        "diff_ci_low": diff_ci.low,
        "diff_ci_high": diff_ci.high,
        "hedges_g": float(stats.hedges_g(x, y)),
        "g_ci_low": g_ci.low,
        "g_ci_high": g_ci.high,
        "prob_improvement": float(stats.probability_of_improvement(x, y)) if enough else np.nan,
        "poi_ci_low": poi_ci.low,
        "poi_ci_high": poi_ci.high,
        "p_welch": float(stats.welch_p_value(x, y)),
        "p_mwu": float(stats.mann_whitney_p_value(x, y)),
        "note": degenerate_note(x, y),
    }


def degenerate_note(x: np.ndarray, y: np.ndarray) -> str:
    """Why a comparison's statistics are NaN or exact, or "" when nothing is unusual."""
    if min(x.size, y.size) < stats.MIN_SEEDS_FOR_TEST:
        return f"fewer than {stats.MIN_SEEDS_FOR_TEST} seeds in a group: no test (p = NaN)"
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        if x[0] == y[0]:
            return "both groups the same constant: Welch p = 1, g = NaN"
        return "both groups constant, different: Welch p and g undefined (NaN)"
    return ""


def family_rows(
    groups: Mapping[str, np.ndarray], reference: str, settings: TableSettings
) -> list[dict[str, Any]]:
    """Rows of one family for a continuous metric: the reference's summary, then each other
    reduction's summary and comparison with the reference; Holm-corrected Welch and Mann-Whitney
    p-values over the family's comparisons. Without the reference, every reduction gets its
    summary only and the note says so."""
    rows = []
    for reduction, values in groups.items():
        row: dict[str, Any] = {"reduction": reduction, **group_summary(values, settings)}
        if reduction == reference:
            row["role"] = "reference"
        elif reference in groups:
            row.update(
                role="compared", **compare_with_reference(values, groups[reference], settings)
            )
        else:
            row.update(role="no reference", note=f"no '{reference}' cell in this family")
        rows.append(row)
    _add_holm(rows, "p_welch", "p_welch_holm")
    _add_holm(rows, "p_mwu", "p_mwu_holm")
    for row in rows:
        row["significant"] = bool(row.get("p_welch_holm", np.nan) < settings.alpha)
    return rows


def threshold_family_rows(
    groups: Mapping[str, np.ndarray], reference: str, settings: TableSettings
) -> list[dict[str, Any]]:
    """Rows of one family for steps-to-threshold (``+inf`` = censored, not reached).

    Per reduction: N, seeds that reached the threshold with a Wilson CI of the fraction, median
    steps (``+inf`` when at least half are censored); against the reference: P(reaching sooner)
    = P(X < Y) + P(X = Y)/2 with censored seeds tied and last, its bootstrap CI, and the
    Mann-Whitney U p-value (censored = worst rank), Holm-corrected over the family (the mark).
    """
    rows = []
    for reduction, values in groups.items():
        reached = int(np.isfinite(values).sum())
        low, high = (
            proportion_confint(reached, values.size, 1 - settings.confidence, method="wilson")
            if values.size
            else (np.nan, np.nan)
        )
        row: dict[str, Any] = {
            "reduction": reduction,
            "n": values.size,
            "n_reached": reached,
            "fraction_reached": reached / values.size if values.size else np.nan,
            "fraction_ci_low": low,
            "fraction_ci_high": high,
            "median_steps": float(np.median(values)) if values.size else np.nan,
        }
        if reduction == reference:
            row["role"] = "reference"
        elif reference in groups:
            ref = groups[reference]
            interval = stats.two_sample_interval(
                -values,
                -ref,
                stats.probability_of_improvement,
                settings.confidence,
                settings.n_resamples,
                settings.bootstrap_seed,
            )
            row.update(
                role="compared",
                prob_sooner=float(stats.probability_of_improvement(-values, -ref)),
                sooner_ci_low=interval.low,
                sooner_ci_high=interval.high,
                p_mwu=float(stats.mann_whitney_p_value(values, ref)),
                note=degenerate_note(values, ref) if min(values.size, ref.size) < 2 else "",
            )
        else:
            row.update(role="no reference", note=f"no '{reference}' cell in this family")
        rows.append(row)
    _add_holm(rows, "p_mwu", "p_mwu_holm")
    for row in rows:
        row["significant"] = bool(row.get("p_mwu_holm", np.nan) < settings.alpha)
    return rows


def _add_holm(rows: list[dict[str, Any]], column: str, adjusted_column: str) -> None:
    """Holm-correct ``column`` over the rows that have it (`analysis.stats.holm_adjusted`)."""
    compared = [row for row in rows if column in row]
    adjusted = stats.holm_adjusted(np.array([row[column] for row in compared]))
    for row, value in zip(compared, adjusted, strict=True):
        row[adjusted_column] = float(value)


def reduction_groups(
    frame: pd.DataFrame, metric: str, reductions: Sequence[str]
) -> dict[str, pd.DataFrame]:
    """Per reduction (in ``reductions`` order), its seeds with a value of ``metric`` (NaN
    dropped; ``+inf`` kept)."""
    return {
        reduction: part.dropna(subset=[metric])
        for reduction in reductions
        if len(part := frame[frame["reduction"] == reduction])
    }


def significance_table(
    per_seed: pd.DataFrame,
    family_columns: Sequence[str],
    metric: str,
    reductions: Sequence[str],
    settings: TableSettings,
    final_fraction: float = metrics.FINAL_FRACTION,
) -> ComparisonTable:
    """Every reduction against the reference within each family (all seeds of each cell).

    ``per_seed`` has one row per seed with the family columns, ``reduction``, ``lr``,
    ``run_key``, ``seed`` and ``metric``; ``reductions`` gives the row order.
    """
    build = threshold_family_rows if metric == "steps_to_threshold" else family_rows
    rows, values = [], []
    for family_values, family in per_seed.groupby(list(family_columns), dropna=False, sort=True):
        family_key = dict(zip(family_columns, family_values, strict=True))
        groups = reduction_groups(family, metric, reductions)
        arrays = {r: g[metric].to_numpy(dtype=float) for r, g in groups.items()}
        rows += [{**family_key, **row} for row in build(arrays, settings.reference, settings)]
        values += [_used_values(g, metric, family_columns) for g in groups.values()]
    name = f"significance-{metric}"
    return ComparisonTable(
        name=name,
        metric=metric,
        caption=significance_caption(metric, settings, final_fraction),
        family_columns=tuple(family_columns),
        rows=pd.DataFrame(rows),
        values=_values_frame(values, name),
    )


def select_best_lr(
    per_seed: pd.DataFrame,
    family_columns: Sequence[str],
    selection_metric: str = SELECTION_METRIC,
) -> pd.DataFrame:
    """Per family (without lr) and reduction, the lr with the highest mean ``selection_metric``
    over the selection seeds (even seed numbers); ties go to the smaller lr.

    Returns one row per (family, reduction) with ``lr`` (the selected one), ``selection_score``
    and ``n_selection_seeds``. Cells whose selection seeds have no value are not candidates.
    """
    selection = per_seed[is_selection_seed(per_seed["seed"])]
    scores = (
        selection.groupby([*family_columns, "reduction", "lr"], dropna=False)[selection_metric]
        .agg(selection_score="mean", n_selection_seeds="count")
        .reset_index()
        .dropna(subset=["selection_score"])
        .sort_values(["selection_score", "lr"], ascending=[False, True], kind="stable")
    )
    return scores.drop_duplicates([*family_columns, "reduction"], keep="first")


def is_selection_seed(seeds: pd.Series) -> pd.Series:
    """Whether each seed selects the lr in the best-lr view (even seed numbers); the odd ones
    are the evaluation seeds, so that the chosen lr's test is not biased by its selection."""
    return seeds.astype(int) % 2 == 0


def best_lr_table(
    per_seed: pd.DataFrame,
    family_columns: Sequence[str],
    metric: str,
    reductions: Sequence[str],
    settings: TableSettings,
    selection_metric: str = SELECTION_METRIC,
    final_fraction: float = metrics.FINAL_FRACTION,
) -> ComparisonTable:
    """Each reduction at its own best lr against the reference at its best lr.

    The lr is chosen on the even seeds by `select_best_lr`; ``metric`` is then tested on the odd
    seeds of the selected cells only. ``family_columns`` exclude lr and reduction; only families
    with more than one lr are included. Rows carry ``lr`` (the selected lr) and
    ``selection_score``.
    """
    lr_counts = per_seed.groupby(list(family_columns), dropna=False)["lr"].nunique()
    swept = lr_counts[lr_counts > 1].index
    in_swept = per_seed.set_index(list(family_columns)).index.isin(swept)
    candidates = per_seed[in_swept]
    chosen = select_best_lr(candidates, family_columns, selection_metric)
    evaluation = candidates[~is_selection_seed(candidates["seed"])].merge(
        chosen, on=[*family_columns, "reduction", "lr"], how="inner"
    )
    rows, values = [], []
    for family_values, family in evaluation.groupby(list(family_columns), dropna=False, sort=True):
        family_key = dict(zip(family_columns, family_values, strict=True))
        groups = reduction_groups(family, metric, reductions)
        arrays = {r: g[metric].to_numpy(dtype=float) for r, g in groups.items()}
        for row in family_rows(arrays, settings.reference, settings):
            selected = groups[row["reduction"]].iloc[0] if len(groups[row["reduction"]]) else None
            rows.append(
                {
                    **family_key,
                    **row,
                    "lr": np.nan if selected is None else selected["lr"],
                    "selection_score": np.nan if selected is None else selected["selection_score"],
                }
            )
        values += [_used_values(g, metric, family_columns) for g in groups.values()]
    name = f"best_lr-{metric}"
    return ComparisonTable(
        name=name,
        metric=metric,
        caption=best_lr_caption(metric, selection_metric, settings, final_fraction),
        family_columns=tuple(family_columns),
        rows=pd.DataFrame(rows),
        values=_values_frame(values, name),
    )


def _used_values(group: pd.DataFrame, metric: str, family_columns: Sequence[str]) -> pd.DataFrame:
    """The per-seed values of one group, as rows of `ComparisonTable.values`."""
    columns = list(dict.fromkeys([*family_columns, "reduction", "lr", "run_key", "seed"]))
    return group[[*columns, metric]].rename(columns={metric: "value"})


def _values_frame(parts: list[pd.DataFrame], name: str) -> pd.DataFrame:
    """The used values of one table, with the table's name first."""
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return frame.assign(table=name)[["table", *frame.columns]] if len(frame) else frame


def significance_caption(metric: str, settings: TableSettings, final_fraction: float) -> str:
    """What a significance table shows."""
    confidence = f"{settings.confidence:.0%}"
    description = METRIC_DESCRIPTIONS[metric].format(final=final_fraction)
    if metric == "steps_to_threshold":
        return (
            f"Steps to threshold: {description}. Each reduction against '{settings.reference}' "
            f"within its family (same cell values but the reduction), all seeds of each cell. "
            f"reached: seeds that reached it, with a {confidence} Wilson CI of the fraction; "
            f"median over seeds ('not reached' when at least half are censored); P(sooner): "
            f"probability that a seed of the reduction reaches it before one of the reference "
            f"(ties, including two censored seeds, count 1/2) with a {confidence} percentile "
            f"bootstrap CI; p MWU: two-sided Mann-Whitney U with censored seeds tied at the "
            f"worst rank; p MWU Holm: Holm-corrected within the family. "
            f"{SIGNIFICANCE_MARK}: p MWU Holm < {settings.alpha}."
        )
    return (
        f"{description.capitalize()}: each reduction against '{settings.reference}' within its "
        f"family (same cell values but the reduction), all seeds of each cell. "
        + _continuous_columns_text(settings)
    )


def best_lr_caption(
    metric: str, selection_metric: str, settings: TableSettings, final_fraction: float
) -> str:
    """What a best-lr table shows, including how the lr was selected."""
    description = METRIC_DESCRIPTIONS[metric].format(final=final_fraction)
    selection = METRIC_DESCRIPTIONS[selection_metric].format(final=final_fraction).split(" (")[0]
    return (
        f"Best learning rate per reduction, {description}. For each reduction the lr with the "
        f"highest mean {selection} over the even-numbered seeds was selected (ties: smaller "
        f"lr); the table then compares the odd-numbered seeds of the selected cells only, so "
        f"the seeds that chose the lr are not the seeds that test it. Family: same cell values "
        f"but reduction and lr. " + _continuous_columns_text(settings)
    )


def _continuous_columns_text(settings: TableSettings) -> str:
    """The caption's explanation of the columns of a continuous-metric table."""
    confidence = f"{settings.confidence:.0%}"
    return (
        f"N: seeds with a value. mean, IQM (interquartile mean): over seeds, with {confidence} "
        f"percentile bootstrap CIs ({settings.n_resamples} resamples of the seeds). diff: mean "
        f"minus the reference's mean; g: Hedges' g (bias-corrected standardised difference); "
        f"P(X>Y): probability that a seed of the reduction beats one of the reference (ties "
        f"1/2); their {confidence} CIs resample the seeds of each group independently. p Welch: "
        f"two-sided Welch t-test; p MWU: two-sided Mann-Whitney U (both unadjusted). p Welch "
        f"Holm: the Welch p-values Holm-corrected within the family (one family per table "
        f"block). {SIGNIFICANCE_MARK}: p Welch Holm < {settings.alpha}. Degenerate cases are "
        f"stated in the note column (NaN: not computable, never a made-up value)."
    )


# How the Markdown, HTML and LaTeX versions show the columns.
CONTINUOUS_DISPLAY = (
    ("N", "n", None),
    ("mean [CI]", "mean", ("mean_ci_low", "mean_ci_high")),
    ("IQM [CI]", "iqm", ("iqm_ci_low", "iqm_ci_high")),
    ("diff [CI]", "diff_mean", ("diff_ci_low", "diff_ci_high")),
    ("g [CI]", "hedges_g", ("g_ci_low", "g_ci_high")),
    ("P(X>Y) [CI]", "prob_improvement", ("poi_ci_low", "poi_ci_high")),
    ("p Welch", "p_welch", None),
    ("p MWU", "p_mwu", None),
    ("p Welch Holm", "p_welch_holm", None),
)
THRESHOLD_DISPLAY = (
    ("N", "n", None),
    ("reached [CI]", "fraction_reached", ("fraction_ci_low", "fraction_ci_high")),
    ("median steps", "median_steps", None),
    ("P(sooner) [CI]", "prob_sooner", ("sooner_ci_low", "sooner_ci_high")),
    ("p MWU", "p_mwu", None),
    ("p MWU Holm", "p_mwu_holm", None),
)


def display_frame(table: ComparisonTable) -> pd.DataFrame:
    """The table as text cells: estimates with their CIs in brackets, the reference marked
    "(ref.)", the selected lr in the best-lr view, and the significance mark."""
    spec = THRESHOLD_DISPLAY if table.metric == "steps_to_threshold" else CONTINUOUS_DISPLAY
    rows = []
    for _, row in table.rows.iterrows():
        shown: dict[str, str] = {c: _text(row[c]) for c in table.family_columns}
        reference = row["role"] == "reference"
        shown["reduction"] = row["reduction"] + (" (ref.)" if reference else "")
        if "selection_score" in row:
            shown["best lr"] = _text(row["lr"])
        for header, column, interval in spec:
            value = row.get(column, np.nan)
            if reference and column not in ("n", "mean", "iqm", "fraction_reached", "median_steps"):
                shown[header] = "\u2014"
            elif column == "fraction_reached":
                reached = f"{_text(row['n_reached'])}/{_text(row['n'])}"
                shown[header] = f"{reached} {_interval_text(row, interval)}"
            elif column == "median_steps":
                shown[header] = "not reached" if value == np.inf else _text(value)
            elif interval:
                shown[header] = f"{_text(value)} {_interval_text(row, interval)}"
            else:
                shown[header] = _text(value)
        shown["sig."] = SIGNIFICANCE_MARK if row["significant"] else ""
        shown["note"] = _text(row.get("note", "")) if isinstance(row.get("note"), str) else ""
        rows.append(shown)
    return pd.DataFrame(rows)


def _interval_text(row: pd.Series, interval: tuple[str, str]) -> str:
    """A CI as "[low, high]"."""
    return f"[{_text(row[interval[0]])}, {_text(row[interval[1]])}]"


def _text(value: Any) -> str:
    """A number with 4 significant digits, NaN as "NaN", other values as they are."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "NaN" if np.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def write_table(table: ComparisonTable, directory: Path) -> dict[str, Path]:
    """Write ``<name>.csv`` (numeric rows), ``<name>.md``, ``<name>.tex`` (booktabs, via
    ``pandas`` Styler) and ``<name>-values.csv`` (the per-seed values used). Returns the paths by
    format."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": directory / f"{table.name}.csv",
        "md": directory / f"{table.name}.md",
        "tex": directory / f"{table.name}.tex",
        "values": directory / f"{table.name}-values.csv",
    }
    table.rows.to_csv(paths["csv"], index=False)
    table.values.to_csv(paths["values"], index=False)
    shown = display_frame(table)
    paths["md"].write_text(f"{table.caption}\n\n{markdown_table(shown)}\n")
    paths["tex"].write_text(latex_table(shown, table.caption, f"tab:{table.name}"))
    return paths


LATEX_SPECIALS = {c: "\\" + c for c in "&%$#_{}"} | {
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "\u2014": "---",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    return "".join(LATEX_SPECIALS.get(c, c) for c in text)


def latex_table(frame: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs LaTeX table (``\\toprule``/``\\midrule``/``\\bottomrule``; needs
    ``\\usepackage{booktabs}``) of text cells, with the caption and label."""
    escaped = frame.map(latex_escape)
    escaped.columns = [latex_escape(str(c)) for c in frame.columns]
    return escaped.style.hide(axis="index").to_latex(
        hrules=True,
        caption=latex_escape(caption),
        label=label,
        position_float="centering",
        column_format="l" * len(frame.columns),
    )

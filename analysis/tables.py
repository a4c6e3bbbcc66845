"""Comparison tables: within each family of cells, every reduction against a reference reduction.

A family is a set of cells that differ only in the reduction (same algo, env, optimiser, lr and
every other swept value); the best-lr view's families also pool the lrs. Each table is a
`ComparisonTable`: one numeric row per (family, reduction), the reference's row first, and the
long list of per-seed values each row used, so that every p-value can be recomputed. Writing
tables to files is `analysis.exports`; this module only computes.

Per comparison (a reduction's seeds ``x`` against the reference's ``y``):

- **identical by construction**: when both cells hold the same seeds and every seed's episode
  stream is bit-identical (`analysis.cells.episode_streams`), e.g. reductions that differ by a
  constant gradient factor under Adam, the comparison is reported as identical and is not a
  test;
- **the test** (the significance mark): the exact rank-sum test (`analysis.stats`), with
  failed (diverged) seeds tied at the worst rank; Holm's correction within each family and
  metric over the comparisons that are genuine tests: not the identical ones, not those with
  fewer than 2 seeds in a group, and not those whose pooled values are all tied (the
  permutation null cannot reject them); ``family_size`` says how many were counted;
- **effect sizes** with calibrated intervals (`analysis.intervals`): P(X > Y) over all seeds,
  the mean difference and Hedges' g over the seeds that did not fail, with Welch's p as a
  secondary check of the mean difference;
- **power**: the smallest effect the two groups' N could detect with the configured power at
  the first Holm step's level alpha / family size (`analysis.power`), so that "no difference
  shown" says how large a difference could hide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from analysis import intervals, power, stats
from analysis.settings import ReportSettings

SIGNIFICANCE_MARK = "*"

METRIC_DESCRIPTIONS: dict[str, str] = {
    "final_return": "final return (per seed: mean return of the episodes that ended in the last "
    "{final:.0%} of the run's env steps, up to total_steps)",
    "auc": "area under the curve (per seed: mean of its return curve over the run's grid)",
    "steps_to_threshold": "env steps to the threshold (per seed: first grid step at which its "
    "return curve reaches the env's threshold; censored when never reached)",
    # Token tasks (analysis.responses): lengths in tokens, END included; longer is not better.
    "final_length": "final response length (per seed: mean tokens of the responses sampled "
    "in the last {final:.0%} of the run's responses)",
    "final_length_correct": "final length of correct responses (per seed: mean tokens of the "
    "correct responses sampled in the last {final:.0%} of the run's responses)",
    "final_length_incorrect": "final length of incorrect responses (per seed: mean tokens of "
    "the incorrect responses sampled in the last {final:.0%} of the run's responses; a seed "
    "with none there has no value)",
}


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


@dataclass(frozen=True)
class Group:
    """One reduction's seeds in a family: values of the metric (``-inf``: failed, ``+inf``:
    censored), seed numbers and episode-stream digests, aligned."""

    values: np.ndarray
    seeds: np.ndarray
    streams: np.ndarray

    @property
    def finite(self) -> np.ndarray:
        """The values that mean-type statistics use."""
        return self.values[np.isfinite(self.values)]


def identical_by_construction(a: Group, b: Group) -> bool:
    """Whether two groups are the same runs: the same seeds, each with a bit-identical episode
    stream (at least 2 seeds, so that a test would have been possible)."""
    if a.seeds.size < 2 or a.seeds.size != b.seeds.size:
        return False
    order_a, order_b = np.argsort(a.seeds), np.argsort(b.seeds)
    return bool(
        np.array_equal(a.seeds[order_a], b.seeds[order_b])
        and np.array_equal(a.streams[order_a].astype(str), b.streams[order_b].astype(str))
    )


def group_summary(group: Group, settings: ReportSettings, label: tuple) -> dict[str, Any]:
    """N (seeds with a value), failed seeds, and the mean and IQM over the seeds that did not
    fail, with their calibrated intervals."""
    finite = group.finite
    row: dict[str, Any] = {"n": group.values.size,
                           "n_failed": int(np.sum(group.values == -np.inf))}
    for estimator, prefix in ((intervals.MEAN, "mean"), (intervals.IQM, "iqm")):
        value, bounds = intervals.estimate(
            estimator, [finite], confidence=settings.confidence, n_resamples=settings.n_resamples,
            rng=intervals.cell_rng(settings.bootstrap_seed, *label, prefix),
        )
        row.update({prefix: value, f"{prefix}_ci_low": bounds.low,
                    f"{prefix}_ci_high": bounds.high})
    return row


def compare_with_reference(
    x: Group, y: Group, settings: ReportSettings, label: tuple
) -> dict[str, Any]:
    """The comparison of a reduction's seeds ``x`` with the reference's ``y`` (see the module
    docstring); p-values unadjusted, ``tested`` says whether it joins the Holm family."""
    if identical_by_construction(x, y):
        return {"identical": True, "tested": False, "p_rank": np.nan, "p_welch": np.nan,
                "note": "identical runs (every seed's episodes bit-identical): not tested"}
    common = {"confidence": settings.confidence, "n_resamples": settings.n_resamples}
    row: dict[str, Any] = {"identical": False}
    def rng(statistic: str) -> np.random.Generator:
        return intervals.cell_rng(settings.bootstrap_seed, *label, statistic)

    poi, poi_ci = intervals.estimate(intervals.PROBABILITY_OF_IMPROVEMENT, [x.values, y.values],
                                     **common, rng=rng("poi"))
    diff, diff_ci = intervals.estimate(intervals.MEAN_DIFFERENCE, [x.finite, y.finite], **common,
                                       rng=rng("diff"))
    g, g_ci = intervals.estimate(intervals.HEDGES_G, [x.finite, y.finite], **common, rng=rng("g"))
    row.update(
        prob_improvement=poi, poi_ci_low=poi_ci.low, poi_ci_high=poi_ci.high,
        diff_mean=diff, diff_ci_low=diff_ci.low, diff_ci_high=diff_ci.high,
        hedges_g=g, g_ci_low=g_ci.low, g_ci_high=g_ci.high,
        p_rank=float(stats.rank_sum_p_value(x.values, y.values)),
        p_welch=float(stats.welch_p_value(x.finite, y.finite)),
    )
    row.update(rank_test_status(x.values, y.values))
    return row


def rank_test_status(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Whether the rank test of ``x`` against ``y`` is a genuine test (``tested``) and, when it
    is not or a statistic is undefined, why (``note``)."""
    if min(x.size, y.size) < stats.MIN_SEEDS_FOR_TEST:
        return {"tested": False,
                "note": f"fewer than {stats.MIN_SEEDS_FOR_TEST} seeds in a group: not tested"}
    pooled = np.concatenate([x, y])
    if np.all(pooled == pooled[0]):
        return {"tested": False, "note": "every value tied (e.g. none reached): not tested"}
    notes = []
    if _is_constant(x[np.isfinite(x)]) and _is_constant(y[np.isfinite(y)]):
        notes.append("both groups constant: g and Welch undefined")
    if np.any(np.isinf(pooled)):
        notes.append("failed or censored seeds ranked worst")
    return {"tested": True, "note": "; ".join(notes)}


def _is_constant(values: np.ndarray) -> bool:
    return values.size == 0 or bool(np.all(values == values[0]))


def _count_identical_once(rows: list[dict[str, Any]], groups: Mapping[str, Group]) -> None:
    """A comparison whose runs are identical to an earlier compared reduction's is the same
    test: it is counted once in the Holm family and later takes that one's result."""
    seen: list[str] = []
    for row in rows:
        if not row.get("tested"):
            continue
        same = next((r for r in seen
                     if identical_by_construction(groups[row["reduction"]], groups[r])), None)
        if same is None:
            seen.append(row["reduction"])
        else:
            row.update(tested=False, same_test_as=same)


def _finish_family(
    rows: list[dict[str, Any]], groups: Mapping[str, Group], settings: ReportSettings
) -> None:
    """Holm over the family's genuine tests (identical comparisons once), the mark, the family
    size and the minimum detectable effect of each comparison at alpha / family size."""
    _count_identical_once(rows, groups)
    tested = [row for row in rows if row.get("tested")]
    adjusted = stats.holm_adjusted(np.array([row["p_rank"] for row in tested], dtype=float))
    for row, value in zip(tested, adjusted, strict=True):
        row["p_rank_holm"] = float(value)
    for row in rows:
        if row["role"] != "compared":
            row["significant"] = False
            continue
        row["family_size"] = len(tested)
        row["significant"] = bool(row.get("p_rank_holm", np.nan) < settings.alpha)
        if row.get("tested"):
            level = settings.alpha / len(tested)
            detectable = power.minimum_detectable_effect(
                row["n"], row["n_reference"], level, settings.power
            )
            row["mde_poi"] = detectable.probability_of_improvement
            row["mde_sd"] = detectable.shift_sd
    by_reduction = {row["reduction"]: row for row in rows}
    for row in rows:
        if "same_test_as" in row:
            same = by_reduction[row["same_test_as"]]
            for column in ("p_rank_holm", "significant", "mde_poi", "mde_sd"):
                if column in same:
                    row[column] = same[column]


def family_rows(
    groups: Mapping[str, Group], settings: ReportSettings, family: tuple = ()
) -> list[dict[str, Any]]:
    """Rows of one family for a continuous metric: each reduction's summary and, for all but
    the reference, its comparison with the reference. Without the reference every reduction
    gets its summary only and the note says so. ``identical_to`` lists the family's other
    reductions whose runs are identical to the row's."""
    reference = settings.reference
    rows = []
    for reduction, group in groups.items():
        label = (*family, reduction)
        row: dict[str, Any] = {"reduction": reduction, **group_summary(group, settings, label)}
        row["identical_to"] = ", ".join(
            other for other, peer in groups.items()
            if other != reduction and identical_by_construction(group, peer)
        )
        if reduction == reference:
            row["role"] = "reference"
        elif reference in groups:
            row.update(role="compared", n_reference=groups[reference].values.size,
                       **compare_with_reference(group, groups[reference], settings, label))
        else:
            row.update(role="no reference", note=f"no '{reference}' cell in this family")
        rows.append(row)
    _finish_family(rows, groups, settings)
    return rows


def threshold_family_rows(
    groups: Mapping[str, Group], settings: ReportSettings, family: tuple = ()
) -> list[dict[str, Any]]:
    """Rows of one family for steps-to-threshold (``+inf`` = censored, not reached; lower is
    better).

    Per reduction: N, seeds that reached the threshold with a Wilson CI of the fraction, median
    steps (``+inf`` when at least half are censored); against the reference: P(reaching
    sooner) = P(X < Y) + P(X = Y)/2 with censored seeds tied and last, with its calibrated
    interval, and the exact rank-sum p (censored = worst rank), Holm-corrected over the
    family's genuine tests (the mark).
    """
    reference = settings.reference
    rows = []
    for reduction, group in groups.items():
        values = group.values
        reached = int(np.isfinite(values).sum())
        low, high = (
            proportion_confint(reached, values.size, 1 - settings.confidence, method="wilson")
            if values.size else (np.nan, np.nan)
        )
        row: dict[str, Any] = {
            "reduction": reduction, "n": values.size, "n_reached": reached,
            "fraction_reached": reached / values.size if values.size else np.nan,
            "fraction_ci_low": low, "fraction_ci_high": high,
            "median_steps": float(np.median(values)) if values.size else np.nan,
            "identical_to": ", ".join(
                other for other, peer in groups.items()
                if other != reduction and identical_by_construction(group, peer)
            ),
        }
        if reduction == reference:
            row["role"] = "reference"
        elif reference in groups:
            ref = groups[reference]
            row.update(role="compared", n_reference=ref.values.size)
            if identical_by_construction(group, ref):
                row.update(identical=True, tested=False, p_rank=np.nan,
                           note="identical runs (every seed's episodes bit-identical): not tested")
            else:
                sooner, sooner_ci = intervals.estimate(
                    intervals.PROBABILITY_OF_IMPROVEMENT, [-values, -ref.values],
                    confidence=settings.confidence, n_resamples=settings.n_resamples,
                    rng=intervals.cell_rng(settings.bootstrap_seed, *family, reduction, "sooner"),
                )
                row.update(identical=False, prob_sooner=sooner, sooner_ci_low=sooner_ci.low,
                           sooner_ci_high=sooner_ci.high,
                           p_rank=float(stats.rank_sum_p_value(values, ref.values)),
                           **rank_test_status(values, ref.values))
        else:
            row.update(role="no reference", note=f"no '{reference}' cell in this family")
        rows.append(row)
    _finish_family(rows, groups, settings)
    return rows


def reduction_groups(
    frame: pd.DataFrame, metric: str, reductions: Sequence[str]
) -> dict[str, pd.DataFrame]:
    """Per reduction (in ``reductions`` order), its seeds with a value of ``metric`` (NaN
    dropped; ``+inf``/``-inf`` kept)."""
    return {
        reduction: part.dropna(subset=[metric])
        for reduction in reductions
        if len(part := frame[frame["reduction"] == reduction])
    }


def _group(frame: pd.DataFrame, metric: str) -> Group:
    streams = frame["stream"] if "stream" in frame else pd.Series(np.nan, index=frame.index)
    return Group(frame[metric].to_numpy(dtype=float), frame["seed"].to_numpy(dtype=int),
                 streams.astype(object).to_numpy())


def significance_table(
    per_seed: pd.DataFrame,
    family_columns: Sequence[str],
    metric: str,
    reductions: Sequence[str],
    settings: ReportSettings,
) -> ComparisonTable:
    """Every reduction against the reference within each family (all seeds of each cell).

    ``per_seed`` has one row per seed with the family columns, ``reduction``, ``lr``,
    ``run_key``, ``seed``, ``stream`` and ``metric``; ``reductions`` gives the row order.
    """
    build = threshold_family_rows if metric == "steps_to_threshold" else family_rows
    rows, values = [], []
    for family_values, family in per_seed.groupby(list(family_columns), dropna=False, sort=True):
        family_key = dict(zip(family_columns, family_values, strict=True))
        frames = reduction_groups(family, metric, reductions)
        groups = {r: _group(g, metric) for r, g in frames.items()}
        label = (metric, *map(str, family_values))
        rows += [{**family_key, **row} for row in build(groups, settings, label)]
        values += [_used_values(g, metric, family_columns) for g in frames.values()]
    name = f"significance-{metric}"
    return ComparisonTable(
        name=name, metric=metric, caption=significance_caption(metric, settings),
        family_columns=tuple(family_columns), rows=pd.DataFrame(rows),
        values=_values_frame(values, name),
    )


def select_best_lr(
    per_seed: pd.DataFrame, family_columns: Sequence[str], selection_metric: str
) -> pd.DataFrame:
    """Per family (without lr) and reduction, the lr with the highest mean ``selection_metric``
    over the selection seeds (even seed numbers; failed seeds, ``-inf``, make a cell's mean
    ``-inf``); ties go to the smaller lr.

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
    settings: ReportSettings,
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
    chosen = select_best_lr(candidates, family_columns, settings.selection_metric)
    evaluation = candidates[~is_selection_seed(candidates["seed"])].merge(
        chosen, on=[*family_columns, "reduction", "lr"], how="inner"
    )
    rows, values = [], []
    for family_values, family in evaluation.groupby(list(family_columns), dropna=False, sort=True):
        family_key = dict(zip(family_columns, family_values, strict=True))
        frames = reduction_groups(family, metric, reductions)
        groups = {r: _group(g, metric) for r, g in frames.items()}
        label = ("best_lr", metric, *map(str, family_values))
        for row in family_rows(groups, settings, label):
            selected = frames[row["reduction"]].iloc[0] if len(frames[row["reduction"]]) else None
            rows.append({
                **family_key, **row,
                "lr": np.nan if selected is None else selected["lr"],
                "selection_score": np.nan if selected is None else selected["selection_score"],
            })
        values += [_used_values(g, metric, family_columns) for g in frames.values()]
    name = f"best_lr-{metric}"
    return ComparisonTable(
        name=name, metric=metric, caption=best_lr_caption(metric, settings),
        family_columns=tuple(family_columns), rows=pd.DataFrame(rows),
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


def significance_caption(metric: str, settings: ReportSettings) -> str:
    """What a significance table shows."""
    confidence = f"{settings.confidence:.0%}"
    description = METRIC_DESCRIPTIONS[metric].format(final=settings.final_fraction)
    if metric == "steps_to_threshold":
        return (
            f"Steps to threshold: {description}. Each reduction against '{settings.reference}' "
            f"within its family (same cell values but the reduction), all seeds of each cell. "
            f"reached: seeds that reached it, with a {confidence} Wilson CI of the fraction; "
            f"median over seeds ('not reached' when at least half are censored); P(sooner): "
            f"probability that a seed of the reduction reaches it before one of the reference "
            f"(ties, including two censored seeds, count 1/2) with a {confidence} "
            f"{intervals.method_label(intervals.PROBABILITY_OF_IMPROVEMENT)}. "
            + _test_columns_text(settings)
        )
    return (
        f"{description.capitalize()}: each reduction against '{settings.reference}' within its "
        f"family (same cell values but the reduction), all seeds of each cell. "
        + _continuous_columns_text(settings)
    )


def best_lr_caption(metric: str, settings: ReportSettings) -> str:
    """What a best-lr table shows, including how the lr was selected."""
    description = METRIC_DESCRIPTIONS[metric].format(final=settings.final_fraction)
    selection = METRIC_DESCRIPTIONS[settings.selection_metric].format(
        final=settings.final_fraction
    ).split(" (")[0]
    return (
        f"Best learning rate per reduction, {description}. For each reduction the lr with the "
        f"highest mean {selection} over the even-numbered seeds was selected (ties: smaller "
        f"lr); the table then compares the odd-numbered seeds of the selected cells only, so "
        f"the seeds that chose the lr are not the seeds that test it. Family: same cell values "
        f"but reduction and lr. " + _continuous_columns_text(settings)
    )


def _continuous_columns_text(settings: ReportSettings) -> str:
    """The caption's explanation of the columns of a continuous-metric table."""
    confidence = f"{settings.confidence:.0%}"
    label = intervals.method_label
    return (
        f"N: seeds with a value (failed: diverged seeds, ranked worst by the test and P(X>Y), "
        f"left out of means). mean, IQM (interquartile mean): over the seeds that did not "
        f"fail. diff: mean minus the reference's mean; g: Hedges' g; P(X>Y): probability that "
        f"a seed of the reduction beats one of the reference (ties 1/2). Intervals "
        f"({confidence}; bootstrap: {settings.n_resamples} resamples): mean "
        f"{label(intervals.MEAN)}, IQM {label(intervals.IQM)}, diff "
        f"{label(intervals.MEAN_DIFFERENCE)}, g {label(intervals.HEDGES_G)}, P(X>Y) "
        f"{label(intervals.PROBABILITY_OF_IMPROVEMENT)} (their measured coverage: Methods). "
        f"p Welch: two-sided Welch t-test of the means (secondary, unadjusted). "
        + _test_columns_text(settings)
    )


def _test_columns_text(settings: ReportSettings) -> str:
    """The caption's explanation of the test, Holm and power columns."""
    return (
        f"p rank: two-sided exact Wilcoxon-Mann-Whitney rank-sum test (exact with ties; the "
        f"primary test); p Holm (m): Holm-corrected within the family over its m genuine tests "
        f"(identical runs, groups under 2 seeds and all-tied comparisons are not tests). "
        f"{SIGNIFICANCE_MARK}: p Holm < {settings.alpha}. MDE: the smallest P(X>Y) (and the "
        f"equivalent normal shift in SD units) that the two groups' N detect with "
        f"{settings.power:.0%} power at level {settings.alpha}/m; a comparison without a mark "
        f"cannot exclude an effect smaller than that. Degenerate cases are stated in the note "
        f"column (NaN: not computable, never a made-up value)."
    )


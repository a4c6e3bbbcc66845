"""Statistics of the report against known truth: exact p-values, error rates, power, hand
computations, identical-run detection and Holm families."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.special
import scipy.stats
from statsmodels.stats.power import TTestIndPower

from analysis import aggregate, intervals, metrics, stats, tables
from analysis.exports import display_frame
from analysis.settings import ReportSettings
from analysis.tables import Group

FAST = ReportSettings(n_resamples=500)


def three_standard_errors(rate: float, replicates: int) -> float:
    """Three binomial standard errors of an empirical rate."""
    return 3 * np.sqrt(rate * (1 - rate) / replicates)


def full_permutation_p_value(x: np.ndarray, y: np.ndarray) -> float:
    """The two-sided p-value of the rank-sum statistic over every assignment of the pooled
    values to the groups (scipy's exact permutation test on the midranks)."""
    ranks = scipy.stats.rankdata(np.concatenate([x, y]))
    return scipy.stats.permutation_test(
        (ranks[: x.size], ranks[x.size:]), lambda a, b, axis: np.sum(a, axis=axis),
        n_resamples=np.inf, permutation_type="independent",
    ).pvalue


def groups_of(
    values: dict[str, np.ndarray], streams: dict[str, list[str]] | None = None
) -> dict[str, Group]:
    """`tables.Group`s with seeds 0..n-1 and distinct streams unless given."""
    streams = streams or {}
    groups = {}
    for name, v in values.items():
        digests = streams.get(name, [f"{name}{i}" for i in range(v.size)])
        groups[name] = Group(v, np.arange(v.size), np.array(digests, dtype=object))
    return groups


def test_rank_sum_p_value_equals_the_full_permutation_with_ties() -> None:
    rng = np.random.default_rng(5)
    for _ in range(12):
        m, n = rng.integers(3, 8, size=2)
        x = rng.integers(0, 4, m).astype(float)  # few distinct values: many ties
        y = rng.integers(1, 5, n).astype(float)
        assert stats.rank_sum_p_value(x, y) == pytest.approx(full_permutation_p_value(x, y))
    censored = np.array([np.inf, np.inf, 3.0, 1.0])
    other = np.array([np.inf, 2.0, 2.0, 0.0, 5.0])
    assert stats.rank_sum_p_value(censored, other) == pytest.approx(
        full_permutation_p_value(censored, other)
    )


def test_rank_sum_p_value_is_exact_under_separation_and_without_ties() -> None:
    x, y = np.arange(10.0) + 20, np.arange(10.0)
    # Only the two most extreme of C(20, 10) assignments are as extreme: p = 2 / C(20, 10).
    assert stats.rank_sum_p_value(x, y) == pytest.approx(2 / scipy.special.comb(20, 10))
    failed = np.full(10, -np.inf)  # every seed failed: ranked worst, tied
    assert stats.rank_sum_p_value(x, failed) == pytest.approx(2 / scipy.special.comb(20, 10))
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=9), rng.normal(0.5, 1, size=11)
    exact = scipy.stats.mannwhitneyu(a, b, method="exact").pvalue
    assert stats.rank_sum_p_value(a, b) == pytest.approx(exact)
    assert stats.rank_sum_p_value(np.full(4, 2.0), np.full(3, 2.0)) == 1.0
    assert np.isnan(stats.rank_sum_p_value(np.array([1.0]), b))


def test_holm_family_wise_error_rate_is_at_most_nominal_under_the_null() -> None:
    """Seven identical groups (a reference and six reductions, 10 seeds each): rejecting where
    the Holm-corrected exact rank-sum p < 0.05 must reject at least one of the six at most 5%
    of the time (family-wise error), while each uncorrected test rejects at most at 5% (exact
    tests of discrete statistics are conservative)."""
    replicates, alpha = 400, 0.05
    groups = np.random.default_rng(2024).normal(size=(replicates, 7, 10))

    p_values = stats.rank_sum_p_value(groups[:, 1:, :], groups[:, :1, :])
    # Holm rejects something exactly when its first step does: min p < alpha / m (checked on
    # a few families; statsmodels' multipletests is slow to call 400 times).
    for family in p_values[:20]:
        assert (stats.holm_adjusted(family) < alpha).any() == (family.min() < alpha / 6)
    family_wise = np.mean(p_values.min(axis=1) < alpha / 6)

    assert family_wise <= alpha + three_standard_errors(alpha, replicates)
    assert np.mean(p_values < alpha) <= alpha + three_standard_errors(alpha, p_values.size)
    # Ties (e.g. returns that hit a ceiling): still at most nominal.
    tied = np.minimum(np.round(groups * 2), 1.0)
    tied_p = stats.rank_sum_p_value(tied[:, 1:, :], tied[:, :1, :])
    assert np.mean(tied_p < alpha) <= alpha + three_standard_errors(alpha, tied_p.size)


def test_welch_power_matches_the_noncentral_t_prediction() -> None:
    """A shift of one standard deviation with 10 seeds per group is detected at the power the
    noncentral t distribution predicts (df = 18, noncentrality delta / sqrt(2 / n))."""
    replicates, n, shift, alpha = 4000, 10, 1.0, 0.05
    rng = np.random.default_rng(7)
    x = rng.normal(shift, 1.0, size=(replicates, n))
    y = rng.normal(0.0, 1.0, size=(replicates, n))
    expected = TTestIndPower().power(effect_size=shift, nobs1=n, alpha=alpha)

    empirical = np.mean(stats.welch_p_value(x, y) < alpha)

    assert abs(empirical - expected) <= three_standard_errors(expected, replicates)


def test_family_rows_test_by_rank_and_holm_over_genuine_tests_only() -> None:
    rng = np.random.default_rng(3)
    values = {
        "mean": rng.normal(0, 1, 8),
        "sum": rng.normal(1.5, 1, 8),
        "traj_mean": rng.normal(0.2, 1, 8),
        "constant": np.array([2.0]),  # one seed: not a test
    }
    groups = groups_of(values)

    rows = {row["reduction"]: row for row in tables.family_rows(groups, FAST, ("f",))}

    rank = [stats.rank_sum_p_value(values[r], values["mean"]) for r in ("sum", "traj_mean")]
    holm = stats.holm_adjusted(np.array(rank))
    assert rows["sum"]["p_rank"] == pytest.approx(rank[0])
    assert rows["sum"]["p_rank_holm"] == pytest.approx(holm[0])
    assert rows["traj_mean"]["p_rank_holm"] == pytest.approx(holm[1])
    assert rows["sum"]["family_size"] == 2 and not rows["constant"]["tested"]
    assert "p_rank_holm" not in rows["constant"]
    assert rows["sum"]["p_welch"] == pytest.approx(
        scipy.stats.ttest_ind(values["sum"], values["mean"], equal_var=False).pvalue
    )
    assert rows["sum"]["significant"] == (holm[0] < 0.05)
    assert rows["mean"]["role"] == "reference" and "p_rank" not in rows["mean"]
    assert rows["sum"]["mean_ci_low"] < rows["sum"]["mean"] < rows["sum"]["mean_ci_high"]
    assert rows["sum"]["diff_ci_low"] < rows["sum"]["diff_mean"] < rows["sum"]["diff_ci_high"]
    # The MDE is stated at alpha / m with the groups' N, and is beyond 1/2.
    assert 0.5 < rows["sum"]["mde_poi"] < 1 and rows["sum"]["mde_sd"] > 0


def test_identical_runs_are_reported_not_tested() -> None:
    low, high = [f"low{i}" for i in range(5)], [f"high{i}" for i in range(5)]
    values = {"mean": np.arange(5.0), "traj_mean": np.arange(5.0),
              "sum": np.arange(5.0) + 10, "per_step": np.arange(5.0) + 10}
    groups = groups_of(values, {"mean": low, "traj_mean": low, "sum": high, "per_step": high})

    rows = {row["reduction"]: row for row in tables.family_rows(groups, FAST, ("f",))}

    assert rows["traj_mean"]["identical"] and not rows["traj_mean"]["tested"]
    assert "identical" in rows["traj_mean"]["note"] and rows["mean"]["identical_to"] == "traj_mean"
    assert rows["sum"]["identical_to"] == "per_step"
    # Separation at 5 vs 5: p = 2 / C(10, 5); sum and per_step are one test, counted once.
    assert rows["sum"]["family_size"] == 1
    assert rows["per_step"]["same_test_as"] == "sum" and not rows["per_step"]["tested"]
    assert rows["sum"]["p_rank_holm"] == pytest.approx(2 / 252)
    assert rows["per_step"]["p_rank_holm"] == rows["sum"]["p_rank_holm"]
    assert rows["sum"]["significant"] and rows["per_step"]["significant"]


def test_two_different_constants_are_a_test_and_all_tied_is_not() -> None:
    groups = groups_of({"mean": np.full(6, 3.0), "sum": np.full(6, 4.0),
                        "traj_mean": np.full(6, 3.0)})

    rows = {row["reduction"]: row for row in tables.family_rows(groups, FAST, ("f",))}

    assert rows["sum"]["tested"] and rows["sum"]["significant"]
    assert rows["sum"]["p_rank"] == pytest.approx(2 / scipy.special.comb(12, 6))
    assert np.isnan(rows["sum"]["hedges_g"]) and "constant" in rows["sum"]["note"]
    assert not rows["traj_mean"]["tested"] and "tied" in rows["traj_mean"]["note"]
    assert rows["sum"]["family_size"] == 1


def test_failed_seeds_rank_worst_and_leave_the_means() -> None:
    values = {"mean": np.array([1.0, 2.0, 3.0, 4.0]),
              "sum": np.array([5.0, 6.0, -np.inf, -np.inf])}

    rows = {row["reduction"]: row for row in tables.family_rows(groups_of(values), FAST, ("f",))}

    assert rows["sum"]["n"] == 4 and rows["sum"]["n_failed"] == 2
    assert rows["sum"]["mean"] == pytest.approx(5.5)
    assert rows["sum"]["diff_mean"] == pytest.approx(5.5 - 2.5)
    # P(X > Y): 5 and 6 beat all four (8 pairs); the failed ones lose all: 8 / 16.
    assert rows["sum"]["prob_improvement"] == pytest.approx(0.5)
    assert rows["sum"]["p_rank"] == pytest.approx(
        stats.rank_sum_p_value(values["sum"], values["mean"])
    )


def test_hedges_g_and_probability_of_improvement_by_hand() -> None:
    x, y = np.array([1.0, 2.0, 3.0, 6.0]), np.array([0.0, 1.0, 2.0])
    pooled_sd = np.sqrt((3 * np.var(x, ddof=1) + 2 * np.var(y, ddof=1)) / 5)

    assert intervals.hedges_g(x, y) == pytest.approx((1 - 3 / (4 * 7 - 9)) * 2.0 / pooled_sd)
    # Pairs (x, y): 12; x > y in 9 of them, ties (1,1) and (2,2): 2 -> (9 + 1) / 12.
    assert intervals.probability_of_improvement(x, y) == pytest.approx(10 / 12)
    welch = intervals.welch_interval([x, y], 0.95)
    result = scipy.stats.ttest_ind(x, y, equal_var=False).confidence_interval(0.95)
    assert (welch.low, welch.high) == pytest.approx((result.low, result.high))


def test_analytic_intervals_behave_at_the_edges() -> None:
    x, y = np.arange(10.0) + 20, np.arange(10.0)
    _, poi = intervals.estimate(intervals.PROBABILITY_OF_IMPROVEMENT, [x, y])
    assert poi.high == 1.0 and 0.7 < poi.low < 0.95  # separation: not collapsed to [1, 1]
    _, t = intervals.estimate(intervals.MEAN, [y], method="analytic")
    expected = scipy.stats.t.interval(0.95, 9, loc=np.mean(y), scale=scipy.stats.sem(y))
    assert (t.low, t.high) == pytest.approx(expected)
    g, g_ci = intervals.estimate(intervals.HEDGES_G, [y + 3, y])
    assert g_ci.low < g < g_ci.high
    x = np.random.default_rng(4).lognormal(size=(3, 12))
    studentized = intervals.interval([x], intervals.mean, "studentized",
                                     standard_error=intervals.mean_standard_error,
                                     rng=np.random.default_rng(0))
    # The bootstrap-t interval is asymmetric around a skewed sample's mean: longer upward.
    centre = x.mean(axis=-1)
    assert ((studentized.high - centre) > (centre - studentized.low)).all()
    value, none = intervals.estimate(intervals.MEAN, [np.array([1.0])])
    assert value == 1.0 and np.isnan(none.low) and np.isnan(none.high)


def test_studentized_interval_ignores_resamples_of_one_repeated_value() -> None:
    """At 3 seeds a ninth of the resamples draw one seed three times; rounding can make their
    standard error a tiny nonzero number (not 0) whose pivot must not reach the quantiles."""
    x = np.array([0.1, 0.7, 0.45])
    assert np.std([0.1] * 3, ddof=1) > 0  # the rounding the interval must see through
    value, bounds = intervals.estimate(intervals.MEAN, [x], n_resamples=2000)
    assert 0.1 - 1 < bounds.low < value < bounds.high < 0.7 + 1
    _, difference = intervals.estimate(intervals.MEAN_DIFFERENCE, [x, x + 1], n_resamples=2000,
                                       method="studentized")
    assert -3 < difference.low < -1 < difference.high < 1


def test_iqm_trims_exactly_a_quarter_from_each_end() -> None:
    values = np.arange(1.0, 11.0)  # 10 values: 2.5 from each end; 3 and 8 at weight 1/2
    assert intervals.iqm(values) == pytest.approx((0.5 * 3 + 4 + 5 + 6 + 7 + 0.5 * 8) / 5)
    eight = np.array([100.0, 3.0, 1.0, 6.0, 2.0, 5.0, 4.0, -50.0])
    assert intervals.iqm(eight) == pytest.approx(scipy.stats.trim_mean(eight, 0.25))
    tasks = [np.array([0.0, 1.0, 2.0, 3.0]), np.array([10.0, 4.0, 5.0, -9.0])]
    # Pooled and sorted: -9 0 1 2 3 4 5 10 -> middle half 1 2 3 4.
    assert aggregate.pooled_iqm(*tasks) == pytest.approx(2.5)


def test_aggregate_statistics_by_hand() -> None:
    tasks = [np.array([0.1, 0.5]), np.array([0.9, 1.3, 0.2])]

    assert aggregate.optimality_gap(*tasks) == pytest.approx((0.9 + 0.5 + 0.1 + 0 + 0.8) / 5)
    assert aggregate.mean_of_env_means(*tasks) == pytest.approx((0.3 + 0.8) / 2)
    profile = aggregate.performance_profile(tasks, np.array([0.3, 1.0]))
    assert profile == pytest.approx([(1 / 2 + 2 / 3) / 2, (0 + 1 / 3) / 2])


def test_stratified_bootstrap_resamples_within_each_env() -> None:
    """An env whose seeds all score the same adds no variance: the mean of env means varies
    by half of the other env's mean."""
    tasks = [np.zeros(3), np.array([1.0, 2.0, 3.0, 4.0, 5.0])]
    rng = np.random.default_rng

    both = intervals.interval(tasks, aggregate.mean_of_env_means, "percentile",
                              n_resamples=4000, rng=rng(0))
    alone = intervals.interval(tasks[1:], aggregate.mean_of_env_means, "percentile",
                               n_resamples=4000, rng=rng(0))

    assert both.high - both.low == pytest.approx((alone.high - alone.low) / 2, rel=0.1)


def test_steps_to_threshold_is_censored_when_not_reached() -> None:
    curves = pd.DataFrame(
        [[1.0, 5.0, 9.0], [np.nan, 2.0, 3.0], [np.nan, np.nan, np.nan]],
        index=pd.Index([0, 1, 2], name="seed"),
        columns=pd.Index([10.0, 20.0, 30.0], name="env_step"),
    )

    steps = metrics.steps_to_threshold(curves, threshold=5.0)

    assert steps.tolist() == [20.0, np.inf, np.inf]


def test_censored_steps_compare_by_rank_with_censored_worst() -> None:
    values = {
        "mean": np.array([np.inf, np.inf, np.inf, 400.0]),
        "sum": np.array([100.0, 200.0, np.inf, 300.0]),
        "traj_mean": np.full(4, np.inf),
    }
    groups = groups_of(values)

    rows = {r["reduction"]: r for r in tables.threshold_family_rows(groups, FAST, ("f",))}

    assert rows["mean"]["n_reached"] == 1 and rows["sum"]["n_reached"] == 3
    assert rows["mean"]["median_steps"] == np.inf  # at least half censored: "not reached"
    assert rows["sum"]["median_steps"] == 250.0
    # sum sooner than mean: 100, 200, 300 beat all four (12 pairs); inf ties 3 infs (1.5) and
    # loses to 400 -> (12 + 1.5) / 16.
    assert rows["sum"]["prob_sooner"] == pytest.approx(13.5 / 16)
    assert rows["sum"]["p_rank"] == pytest.approx(
        full_permutation_p_value(values["sum"], values["mean"])
    )
    # Both never reaching it with the reference nearly never reaching: a test, not a tie...
    assert rows["traj_mean"]["tested"]
    assert rows["sum"]["family_size"] == 2
    # ...but two groups that never reach it are all tied: not a test.
    never = groups_of({"mean": np.full(4, np.inf), "traj_mean": np.full(4, np.inf)})
    alone = {r["reduction"]: r for r in tables.threshold_family_rows(never, FAST, ("g",))}
    assert not alone["traj_mean"]["tested"] and alone["traj_mean"]["family_size"] == 0
    shown = display_frame(
        tables.ComparisonTable(
            "t", "steps_to_threshold", "", (), pd.DataFrame(list(rows.values())), pd.DataFrame()
        )
    )
    assert shown.loc[shown["reduction"] == "mean (ref.)", "median steps"].item() == "not reached"
    assert shown.loc[shown["reduction"] == "sum", "p Holm (m)"].item().endswith("(2)")

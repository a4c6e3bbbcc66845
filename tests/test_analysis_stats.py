"""Statistics of the report against known truth: error rates, power, hand computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from statsmodels.stats.power import TTestIndPower

from analysis import aggregate, metrics, stats, tables

FAST = tables.TableSettings(n_resamples=500)


def three_standard_errors(rate: float, replicates: int) -> float:
    """Three binomial standard errors of an empirical rate."""
    return 3 * np.sqrt(rate * (1 - rate) / replicates)


def test_holm_family_wise_error_rate_is_at_most_nominal_under_the_null() -> None:
    """Seven identical groups (a reference and six reductions, 10 seeds each): rejecting where
    the Holm-corrected Welch p < 0.05 must reject at least one of the six at most 5% of the time
    (family-wise error), while each uncorrected test rejects at its nominal 5%."""
    replicates, alpha = 400, 0.05
    rng = np.random.default_rng(2024)
    groups = rng.normal(size=(replicates, 7, 10))

    p_values = stats.welch_p_value(groups[:, 1:, :], groups[:, :1, :])
    adjusted = np.array([stats.holm_adjusted(family) for family in p_values])

    family_wise = np.mean((adjusted < alpha).any(axis=1))
    per_test = np.mean(p_values < alpha)
    assert family_wise <= alpha + three_standard_errors(alpha, replicates)
    assert abs(per_test - alpha) <= three_standard_errors(alpha, p_values.size)


@pytest.mark.slow
def test_holm_corrected_mann_whitney_family_wise_error_rate_under_the_null() -> None:
    """As above for the Mann-Whitney U p-values (slow: statsmodels' multipletests runs a garbage
    collection on every call)."""
    replicates, alpha = 1000, 0.05
    groups = np.random.default_rng(11).normal(size=(replicates, 7, 10))

    p_values = stats.mann_whitney_p_value(groups[:, 1:, :], groups[:, :1, :])
    adjusted = np.array([stats.holm_adjusted(family) for family in p_values])

    family_wise = np.mean((adjusted < alpha).any(axis=1))
    assert family_wise <= alpha + three_standard_errors(alpha, replicates)
    assert abs(np.mean(p_values < alpha) - alpha) <= three_standard_errors(alpha, p_values.size)


def test_welch_power_matches_the_noncentral_t_prediction() -> None:
    """A shift of one standard deviation with 10 seeds per group is detected at the power the
    noncentral t distribution predicts (equal variances and sizes: df = 18, noncentrality
    delta / sqrt(2 / n)), within three standard errors."""
    replicates, n, shift, alpha = 4000, 10, 1.0, 0.05
    rng = np.random.default_rng(7)
    x = rng.normal(shift, 1.0, size=(replicates, n))
    y = rng.normal(0.0, 1.0, size=(replicates, n))
    df = 2 * n - 2
    critical = scipy.stats.t.ppf(1 - alpha / 2, df)
    noncentrality = shift / np.sqrt(2 / n)
    expected = scipy.stats.nct.sf(critical, df, noncentrality) + scipy.stats.nct.cdf(
        -critical, df, noncentrality
    )
    assert expected == pytest.approx(
        TTestIndPower().power(effect_size=shift, nobs1=n, alpha=alpha), abs=1e-6
    )

    p_values = stats.welch_p_value(x, y)
    empirical = np.mean(p_values < alpha)
    # A family of one comparison: Holm leaves its p-value unchanged.
    assert stats.holm_adjusted(p_values[:1]) == pytest.approx(p_values[:1])

    assert abs(empirical - expected) <= three_standard_errors(expected, replicates)


def test_family_rows_use_the_vectorised_tests_and_holm() -> None:
    rng = np.random.default_rng(3)
    groups = {
        "mean": rng.normal(0, 1, 8),
        "sum": rng.normal(1.5, 1, 8),
        "traj_mean": rng.normal(0.2, 1, 8),
    }

    rows = {row["reduction"]: row for row in tables.family_rows(groups, "mean", FAST)}

    welch = [
        scipy.stats.ttest_ind(groups[r], groups["mean"], equal_var=False).pvalue
        for r in ("sum", "traj_mean")
    ]
    holm = stats.holm_adjusted(np.array(welch))
    assert rows["sum"]["p_welch"] == pytest.approx(welch[0])
    assert rows["sum"]["p_welch_holm"] == pytest.approx(holm[0])
    assert rows["traj_mean"]["p_welch_holm"] == pytest.approx(holm[1])
    assert rows["sum"]["p_mwu"] == pytest.approx(
        scipy.stats.mannwhitneyu(groups["sum"], groups["mean"], alternative="two-sided").pvalue
    )
    assert rows["mean"]["role"] == "reference" and "p_welch" not in rows["mean"]
    assert rows["sum"]["significant"] == (holm[0] < 0.05)
    assert rows["sum"]["mean_ci_low"] < rows["sum"]["mean"] < rows["sum"]["mean_ci_high"]
    assert rows["sum"]["diff_ci_low"] < rows["sum"]["diff_mean"] < rows["sum"]["diff_ci_high"]


def test_degenerate_groups_give_stated_values_not_crashes() -> None:
    constant = np.full(5, 3.0)
    groups = {
        "mean": constant,
        "sum": constant.copy(),  # the same constant: Welch p = 1
        "traj_mean": np.full(5, 4.0),  # another constant: Welch p undefined
        "constant": np.array([2.0]),  # one seed: no test
    }

    rows = {row["reduction"]: row for row in tables.family_rows(groups, "mean", FAST)}

    assert rows["sum"]["p_welch"] == 1.0 and rows["sum"]["p_mwu"] == 1.0
    assert np.isnan(rows["sum"]["hedges_g"])
    assert "same constant" in rows["sum"]["note"]
    assert np.isnan(rows["traj_mean"]["p_welch"]) and rows["traj_mean"]["p_mwu"] < 1
    assert "undefined" in rows["traj_mean"]["note"]
    assert np.isnan(rows["constant"]["p_welch"]) and np.isnan(rows["constant"]["p_mwu"])
    assert np.isnan(rows["constant"]["p_welch_holm"])
    assert "fewer than 2 seeds" in rows["constant"]["note"]
    # Holm counts only the tests that could be done: the family here is {sum} for Welch.
    assert rows["sum"]["p_welch_holm"] == 1.0
    assert rows["traj_mean"]["prob_improvement"] == 1.0


def test_hedges_g_and_probability_of_improvement_by_hand() -> None:
    x, y = np.array([1.0, 2.0, 3.0, 6.0]), np.array([0.0, 1.0, 2.0])
    pooled_sd = np.sqrt((3 * np.var(x, ddof=1) + 2 * np.var(y, ddof=1)) / 5)
    expected_g = (1 - 3 / (4 * 7 - 9)) * (3.0 - 1.0) / pooled_sd

    assert stats.hedges_g(x, y) == pytest.approx(expected_g)
    # Pairs (x, y): 12; x > y in 9 of them, ties (1,1) and (2,2): 2 -> (9 + 1) / 12.
    assert stats.probability_of_improvement(x, y) == pytest.approx(10 / 12)
    interval = stats.two_sample_interval(x, y, stats.mean_difference, n_resamples=2000)
    scipy_interval = scipy.stats.bootstrap(
        (x, y),
        stats.mean_difference,
        n_resamples=2000,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert interval == pytest.approx((scipy_interval.low, scipy_interval.high))


def test_iqm_matches_hand_computation() -> None:
    values = np.arange(1.0, 11.0)  # 10 values: 2 trimmed from each end
    assert metrics.iqm(values) == pytest.approx(np.mean(values[2:8]))
    tasks = [np.array([0.0, 1.0, 2.0, 3.0]), np.array([10.0, 4.0, 5.0, -9.0])]
    # Pooled and sorted: -9 0 1 2 3 4 5 10 -> middle half 1 2 3 4.
    assert aggregate.pooled_iqm(tasks) == pytest.approx(2.5)


def test_optimality_gap_and_performance_profile_by_hand() -> None:
    tasks = [np.array([0.1, 0.5]), np.array([0.9, 1.3, 0.2])]

    assert aggregate.optimality_gap(tasks) == pytest.approx((0.9 + 0.5 + 0.1 + 0 + 0.8) / 5)
    profile = aggregate.performance_profile(tasks, np.array([0.3, 1.0]))
    assert profile == pytest.approx([(1 / 2 + 2 / 3) / 2, (0 + 1 / 3) / 2])


def test_stratified_bootstrap_resamples_within_each_env() -> None:
    tasks = [np.array([0.0, 0.0, 0.0]), np.array([1.0, 2.0, 3.0, 4.0, 5.0])]

    resamples = aggregate.stratified_resamples(tasks, 1000, np.random.default_rng(0))

    assert [r.shape for r in resamples] == [(1000, 3), (1000, 5)]
    assert (resamples[0] == 0).all() and np.isin(resamples[1], tasks[1]).all()
    value, interval = aggregate.aggregate_with_interval(
        tasks, aggregate.pooled_mean, n_resamples=2000
    )
    assert value == pytest.approx(15 / 8)
    # Only the second env varies: the pooled mean's spread is 5/8 of that env's mean's.
    env_mean = aggregate.stratified_bootstrap_interval(
        tasks[1:], aggregate.pooled_mean, n_resamples=2000
    )
    assert interval.high - interval.low == pytest.approx(
        (env_mean[1] - env_mean[0]) * 5 / 8, rel=0.1
    )


def test_steps_to_threshold_is_censored_when_not_reached() -> None:
    curves = pd.DataFrame(
        [[1.0, 5.0, 9.0], [np.nan, 2.0, 3.0], [np.nan, np.nan, np.nan]],
        index=pd.Index([0, 1, 2], name="seed"),
        columns=pd.Index([10.0, 20.0, 30.0], name="env_step"),
    )

    steps = metrics.steps_to_threshold(curves, threshold=5.0)

    assert steps.tolist() == [20.0, np.inf, np.inf]


def test_censored_steps_compare_by_rank_with_censored_worst() -> None:
    groups = {
        "mean": np.array([np.inf, np.inf, np.inf, 400.0]),
        "sum": np.array([100.0, 200.0, np.inf, 300.0]),
    }

    rows = {r["reduction"]: r for r in tables.threshold_family_rows(groups, "mean", FAST)}

    assert rows["mean"]["n_reached"] == 1 and rows["sum"]["n_reached"] == 3
    assert rows["mean"]["median_steps"] == np.inf  # at least half censored: "not reached"
    assert rows["sum"]["median_steps"] == 250.0
    # sum sooner than mean: 100, 200, 300 beat all four (12 pairs); inf ties 3 infs (1.5) and
    # loses to 400 -> (12 + 1.5) / 16.
    assert rows["sum"]["prob_sooner"] == pytest.approx(13.5 / 16)
    censored_as_worst = scipy.stats.mannwhitneyu(
        groups["sum"], groups["mean"], alternative="two-sided"
    ).pvalue
    finite_ranks = scipy.stats.mannwhitneyu(
        [1, 2, 5, 3], [5, 5, 5, 4], alternative="two-sided"
    ).pvalue
    assert rows["sum"]["p_mwu"] == pytest.approx(censored_as_worst)
    assert rows["sum"]["p_mwu"] == pytest.approx(finite_ranks)
    assert rows["sum"]["p_mwu_holm"] == pytest.approx(rows["sum"]["p_mwu"])
    shown = tables.display_frame(
        tables.ComparisonTable(
            "t", "steps_to_threshold", "", (), pd.DataFrame(list(rows.values())), pd.DataFrame()
        )
    )
    assert shown.loc[shown["reduction"] == "mean (ref.)", "median steps"].item() == "not reached"

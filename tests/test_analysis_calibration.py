"""Coverage calibration of the interval methods (`analysis.calibration`): the chosen methods
cover as the committed table says, the check can fail, and `ESTIMATORS` follows the table.

Tolerances: a coverage c measured over R replicates has binomial SE sqrt(c (1 - c) / R); a
check allows 3 SE (of both measurements when two are compared) plus an allowance:
``SMALL_SAMPLE_ALLOWANCE`` (2 points: the rule's admissible shortfall; bootstrap intervals of
n = 10 seeds are too narrow by about sqrt((n - 1) / n), e.g. the IQM's percentile interval
covers 92.9% on normal data) and ``RESAMPLING_ALLOWANCE`` (1 point, for comparing runs with
different bootstrap resample counts and different Monte Carlo streams).
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from test_analysis import REPO_ROOT

from analysis import calibration, intervals

NOMINAL = intervals.CONFIDENCE
SMALL_SAMPLE_ALLOWANCE = 0.02
RESAMPLING_ALLOWANCE = 0.01
REPLICATES = 400
RESAMPLES = 1000
TEST_SEED = 7  # not the committed table's seed: an independent run


def se(coverage: float, replicates: int) -> float:
    return math.sqrt(max(coverage * (1 - coverage), NOMINAL * (1 - NOMINAL)) / replicates)


@pytest.fixture(scope="module")
def committed() -> pd.DataFrame:
    return calibration.load_calibration()


@pytest.fixture(scope="module")
def reduced() -> pd.DataFrame:
    """The chosen method of every estimator at n = 10, 20 on normal and skewed data."""
    chosen = {name: [e.method] for name, e in intervals.ESTIMATORS.items()}
    return calibration.calibrate(
        ["normal", "skewed"], [10, 20], replicates=REPLICATES, resamples=RESAMPLES,
        methods=chosen, base_seed=TEST_SEED,
    )


def test_chosen_methods_cover_near_nominal_or_as_recorded(
    reduced: pd.DataFrame, committed: pd.DataFrame
) -> None:
    """Each chosen method covers within 3 SE + the small-sample allowance of nominal, except
    where the committed table records a larger shortfall (or excess): there it must agree with
    the recorded coverage within 3 combined SE + the resampling allowance. (The recorded
    shortfalls: the t interval of the mean and the noncentral-t interval of g on lognormal
    data, 85-91%.)"""
    recorded = committed.set_index(["estimator", "method", "distribution", "n"])["coverage"]
    for row in reduced.itertuples():
        before = float(recorded[row.estimator, row.method, row.distribution, row.n])
        spread = 3 * math.hypot(se(row.coverage, REPLICATES), se(before, 2000))
        low = min(NOMINAL - SMALL_SAMPLE_ALLOWANCE, before - RESAMPLING_ALLOWANCE) - spread
        high = max(NOMINAL + SMALL_SAMPLE_ALLOWANCE, before + RESAMPLING_ALLOWANCE) + spread
        assert low <= row.coverage <= high, (row, before)
        if row.distribution == "normal":
            tolerance = 3 * se(NOMINAL, REPLICATES) + SMALL_SAMPLE_ALLOWANCE
            assert abs(row.coverage - NOMINAL) <= tolerance, row


def test_percentile_bootstrap_of_the_mean_undercovers_at_five_seeds() -> None:
    """Known truth: at n = 5 the percentile bootstrap's interval of a normal mean is the
    plug-in SD over sqrt(5) times z, too narrow (about 85% coverage, not 95%): the check
    detects it, while the t interval on the same replicates covers."""
    table = calibration.calibrate(
        ["normal"], [5], replicates=REPLICATES, resamples=RESAMPLES, estimators=["mean"],
        methods={"mean": ["percentile", "analytic"]}, base_seed=TEST_SEED,
    ).set_index("method")["coverage"]
    margin = 3 * se(NOMINAL, REPLICATES)
    assert table["percentile"] < NOMINAL - SMALL_SAMPLE_ALLOWANCE - margin
    assert abs(table["analytic"] - NOMINAL) <= margin


def test_noncentral_t_interval_of_g_is_exact_on_normal_data() -> None:
    """The interval of delta by noncentral-t inversion is exact for normal data, also at a
    large effect and n = 5 (where scaling its bounds by g's bias correction covered 93.5%)."""
    rng = np.random.default_rng(3)
    replicates, delta = 4000, 2.0
    y = rng.normal(size=(replicates, 5))
    x = rng.normal(size=(replicates, 5)) + delta
    low, high = intervals.hedges_g_interval([x, y], NOMINAL)
    coverage = np.mean((low <= delta) & (delta <= high))
    assert abs(coverage - NOMINAL) <= 3 * se(NOMINAL, replicates)


def test_true_values_match_monte_carlo() -> None:
    """The quadrature truths against 10^6 draws (5 SE)."""
    rng = np.random.default_rng(11)
    for name, distribution in calibration.DISTRIBUTIONS.items():
        y = distribution.sample(rng, (1_000_000,))
        y2 = distribution.sample(rng, (1_000_000,))
        shift = calibration.EFFECT_SD * distribution.sd
        low, high = np.quantile(y, [0.25, 0.75])
        middle = y[(y >= low) & (y <= high)]
        assert calibration.true_value("mean", distribution) == pytest.approx(
            y.mean(), abs=5 * y.std() / 1000), name
        assert calibration.true_value("iqm", distribution) == pytest.approx(
            middle.mean(), abs=5 * y.std() / 1000), name
        poi = np.mean(y + shift > y2)
        assert calibration.true_value("probability_of_improvement", distribution) == (
            pytest.approx(poi, abs=5 * math.sqrt(poi * (1 - poi) / 1e6))), name


def test_estimators_use_the_methods_the_committed_table_recommends(
    committed: pd.DataFrame,
) -> None:
    assert calibration.recommended_methods(committed) == {
        name: estimator.method for name, estimator in intervals.ESTIMATORS.items()
    }
    expected_rows = sum(
        len(calibration.methods_of(e)) for e in intervals.ESTIMATORS.values()
    ) * len(calibration.DISTRIBUTIONS) * len(calibration.SEEDS)
    assert len(committed) == expected_rows
    assert list(committed.columns) == list(calibration.COLUMNS)
    assert (committed["replicates"] == calibration.REPLICATES).all()


def test_coverage_text_states_the_chosen_methods_range(committed: pd.DataFrame) -> None:
    text = calibration.coverage_text("mean", committed)
    chosen = intervals.MEAN.method
    rows = committed[(committed["estimator"] == "mean") & (committed["method"] == chosen)]
    large = rows[rows["n"] >= 10]["coverage"]
    label = intervals.method_label(intervals.MEAN)
    assert text.startswith(f"{label[0].upper()}{label[1:]}: measured coverage ")
    assert f"{100 * large.min():.1f}–{100 * large.max():.1f}% at n = 10–20" in text
    assert "at n = 5)" in text and "normal, skewed and bimodal" in text
    assert "analysis/calibration.csv" in text
    for name in intervals.ESTIMATORS:
        assert "measured coverage" in calibration.coverage_text(name, committed)


def run_calibration(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "analysis.calibration", *args], cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=120,
    )


def test_cli_prints_the_table_and_writes_it(tmp_path) -> None:
    output = tmp_path / "calibration.csv"
    result = run_calibration("--replicates", "50", "--resamples", "200", "--write", str(output))
    assert result.returncode == 0, result.stderr
    assert "coverage % (mean width)" in result.stdout
    for name in intervals.ESTIMATORS:
        assert name in result.stdout
    table = pd.read_csv(output)
    assert list(table.columns) == list(calibration.COLUMNS)
    assert set(table["n"]) == {5, 10, 20} and (table["replicates"] == 50).all()
    assert table["coverage"].between(0, 1).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--replicates", "0"], "--replicates must be at least 10, got 0"),
        (["--resamples", "5"], "--resamples must be at least 100, got 5"),
        (["--confidence", "1.5"], "--confidence must be in (0, 1), got 1.5"),
        (["--n", "2", "10"], "--n values must be at least 3 seeds, got 2"),
    ],
)
def test_cli_rejects_bad_values(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """In process (the subprocess path is the test above): argparse's usage line and one
    error line, exit status 2, nothing computed."""
    with pytest.raises(SystemExit) as exit_info:
        calibration.main(args)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines()[-1].endswith(f"error: {message}")

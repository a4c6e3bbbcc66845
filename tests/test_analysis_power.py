"""Power of the rank-sum test and Welch's t (`analysis.power`) against simulation of the exact
test, seeds needed, and the pilot-sweep CLI.

Tolerance of a simulated power P over R replicates: 3 binomial SE (sqrt(P (1 - P) / R)) plus
``APPROXIMATION_ALLOWANCE`` = 2 points for the Beta approximation of U under the alternative
(measured error at most 1.4 points at n = 10 per group and 0.5 at n = 20, see the module).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from statsmodels.stats.power import TTestIndPower
from test_analysis import REPO_ROOT, write_result_file

from analysis import power, stats
from analysis.cells import PER_SEED_COLUMNS, per_seed_metrics

REPLICATES = 10_000
APPROXIMATION_ALLOWANCE = 0.02


def simulated_power(n: int, shift_sd: float, alpha: float, seed: int) -> float:
    """Share of ``REPLICATES`` normal-shift datasets (n seeds per group) where the exact
    rank-sum test (`analysis.stats.rank_sum_p_value`) has p < alpha."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(REPLICATES, n)) + shift_sd
    y = rng.normal(size=(REPLICATES, n))
    return float(np.mean(stats.rank_sum_p_value(x, y) < alpha))


def tolerance(probability: float) -> float:
    return 3 * math.sqrt(probability * (1 - probability) / REPLICATES) + APPROXIMATION_ALLOWANCE


@pytest.mark.parametrize("n", [10, 20])
@pytest.mark.parametrize("shift_sd", [0.6, 1.0, 1.5])
def test_rank_test_power_matches_simulation_of_the_exact_test(n: int, shift_sd: float) -> None:
    predicted = power.rank_test_power(n, n, power.shift_to_probability(shift_sd), 0.05)
    simulated = simulated_power(n, shift_sd, 0.05, seed=n * 100 + int(10 * shift_sd))
    assert abs(predicted - simulated) <= tolerance(simulated), (predicted, simulated)


@pytest.mark.parametrize("n_x, n_y, alpha", [(10, 10, 0.05), (7, 12, 0.01), (20, 20, 0.0025)])
def test_rejection_region_is_where_the_exact_p_value_is_below_alpha(
    n_x: int, n_y: int, alpha: float
) -> None:
    """The exact region of `rank_test_power` is the primary test's: p < alpha iff U <= low
    or U >= high, on data spanning all of U's range."""
    rng = np.random.default_rng(1)
    shift = rng.uniform(-3, 3, size=(4000, 1))
    x = rng.normal(size=(4000, n_x)) + shift
    y = rng.normal(size=(4000, n_y))
    u = (x[:, :, None] > y[:, None, :]).sum(axis=(1, 2))
    low, high = power.rejection_region(n_x, n_y, alpha)
    rejected = stats.rank_sum_p_value(x, y) < alpha
    np.testing.assert_array_equal(rejected, (u <= low) | (u >= high))
    assert rejected.any() and not rejected.all()


@pytest.mark.parametrize("n, alpha", [(10, 0.05), (20, 0.05), (20, 0.05 / 4)])
def test_power_at_the_minimum_detectable_effect_is_the_requested_power(
    n: int, alpha: float
) -> None:
    detectable = power.minimum_detectable_effect(n, n, alpha, 0.8)
    assert detectable.shift_sd == pytest.approx(
        power.probability_to_shift(detectable.probability_of_improvement))
    simulated = simulated_power(n, detectable.shift_sd, alpha, seed=n)
    assert abs(simulated - 0.8) <= tolerance(0.8), (detectable, simulated)


def test_minimum_detectable_effect_shrinks_with_seeds_and_is_nan_when_undetectable() -> None:
    effects = [power.minimum_detectable_effect(n, n, 0.05).shift_sd for n in (5, 10, 20, 40)]
    assert effects == sorted(effects, reverse=True)
    # 2 + 2 seeds: the smallest exact two-sided p is 1/3; nothing is detectable at 0.05.
    undetectable = power.minimum_detectable_effect(2, 2, 0.05)
    assert math.isnan(undetectable.probability_of_improvement)
    assert math.isnan(undetectable.shift_sd)
    # Stricter levels need larger effects (the Holm level alpha / m).
    assert (power.minimum_detectable_effect(10, 10, 0.05 / 5).shift_sd
            > power.minimum_detectable_effect(10, 10, 0.05).shift_sd)


def test_welch_minimum_detectable_effect_has_the_requested_power() -> None:
    effect = power.welch_minimum_detectable_effect(10, 14, 0.05, 0.8)
    assert TTestIndPower().power(effect, 10, 0.05, ratio=1.4) == pytest.approx(0.8, abs=1e-4)
    assert math.isnan(power.welch_minimum_detectable_effect(1, 5, 0.05, 0.8))


def test_seeds_needed_is_monotone_and_matches_statsmodels_for_welch() -> None:
    effects = [0.3, 0.5, 0.8, 1.2, 2.0]
    for test in ("rank", "welch"):
        by_effect = [power.seeds_needed(e, 0.05, 0.8, test) for e in effects]
        assert by_effect == sorted(by_effect, reverse=True)
        by_power = [power.seeds_needed(0.8, 0.05, p, test) for p in (0.5, 0.8, 0.9, 0.95)]
        assert by_power == sorted(by_power)
        by_alpha = [power.seeds_needed(0.8, a, 0.8, test) for a in (0.1, 0.05, 0.01, 0.001)]
        assert by_alpha == sorted(by_alpha)
    for effect in effects:
        exact = TTestIndPower().solve_power(effect_size=effect, alpha=0.05, power=0.8)
        assert power.seeds_needed(effect, 0.05, 0.8, "welch") == max(2, math.ceil(exact))
        n = power.seeds_needed(effect, 0.05, 0.8, "rank")
        probability = power.shift_to_probability(effect)
        assert power.rank_test_power(n, n, probability, 0.05) >= 0.8
        assert n == 2 or power.rank_test_power(n - 1, n - 1, probability, 0.05) < 0.8
        # The rank test pays a little efficiency for validity (ARE 3/pi under normality).
        assert n >= power.seeds_needed(effect, 0.05, 0.8, "welch") - 1
    with pytest.raises(ValueError):
        power.seeds_needed(0.0)
    with pytest.raises(ValueError):
        power.seeds_needed(0.5, test="sign")


# --- the pilot CLI -------------------------------------------------------------------------

LEVELS = {"mean": 100.0, "sum": 130.0, "traj_mean": 105.0}
LRS = (0.001, 0.01)
SEEDS = [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def pilot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pilot sweep: 2 lrs x 3 reductions x 5 seeds, final returns level + N(0, 20)."""
    experiment = tmp_path_factory.mktemp("pilot") / "pilot"
    rng = np.random.default_rng(0)
    for lr in LRS:
        for reduction, level in LEVELS.items():
            episodes = []
            for seed in SEEDS:
                value = level + rng.normal(0, 20)
                episodes += [(seed, step, value * step / 100) for step in range(20, 101, 20)]
            write_result_file(experiment / "data", f"{reduction}-{lr}", SEEDS, episodes,
                              reduction=reduction, lr=lr)
    return experiment


def run_power(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "analysis.power", *args], cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=120,
    )


def test_cli_prints_seeds_needed_per_comparison(pilot: Path) -> None:
    result = run_power(str(pilot), "--effect", "20")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if "seeds_rank" in line)
    rows = [line.split() for line in lines[header + 1:]]
    columns = lines[header].split()
    assert len(rows) == len(LRS) * (len(LEVELS) - 1)
    assert {row[columns.index("reduction")] for row in rows} == {"sum", "traj_mean"}
    # The same numbers from the per-seed metrics: pooled SD of the two groups, level alpha / 2.
    per_seed = per_seed_metrics(pilot)
    cells = [c for c in per_seed.columns if c not in PER_SEED_COLUMNS]
    table = power.pilot_table(per_seed, cells, 20.0)
    for row, expected in zip(rows, table.itertuples(), strict=True):
        x = per_seed.loc[(per_seed["reduction"] == expected.reduction)
                         & (per_seed["lr"] == expected.lr), "final_return"]
        y = per_seed.loc[(per_seed["reduction"] == "mean")
                         & (per_seed["lr"] == expected.lr), "final_return"]
        sd = math.sqrt((x.var() + y.var()) / 2)
        assert expected.pooled_sd == pytest.approx(sd)
        assert expected.level == pytest.approx(0.025)
        assert expected.seeds_welch == power.seeds_needed(20 / sd, 0.025, 0.8, "welch")
        assert expected.seeds_rank == power.seeds_needed(20 / sd, 0.025, 0.8, "rank")
        assert int(row[columns.index("seeds_rank")]) == expected.seeds_rank
        assert int(row[columns.index("seeds_welch")]) == expected.seeds_welch
        assert 2 <= expected.seeds_welch <= expected.seeds_rank + 1 < 1000
        assert int(row[columns.index("n")]) == len(SEEDS)
    relative = run_power(str(pilot), "--effect", "0.2", "--relative", "--metric", "auc")
    assert relative.returncode == 0, relative.stderr
    assert "0.2 x |mean of mean|" in relative.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}", "--effect", "1"], "experiment directory not found"),
        (["{pilot}", "--effect", "0"], "--effect must be > 0, got 0.0"),
        (["{pilot}", "--effect", "1", "--power", "1.2"], "--power must be in (0, 1), got 1.2"),
        (["{pilot}", "--effect", "1", "--metric", "loss"], "invalid choice: 'loss'"),
    ],
)
def test_cli_rejects_bad_input_with_one_line(
    pilot: Path, tmp_path: Path, args: list[str], message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In process: exit status 2 (argparse's, or main's for a missing directory), nothing on
    stdout, the error on the last stderr line (after argparse's usage line)."""
    filled = [a.format(missing=tmp_path / "nowhere", pilot=pilot) for a in args]
    try:
        status = power.main(filled)
    except SystemExit as exit_info:
        status = exit_info.code
    assert status == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    last = captured.err.strip().splitlines()
    assert "error:" in last[-1] and message in last[-1]
    if "nowhere" in filled[0]:
        assert len(last) == 1

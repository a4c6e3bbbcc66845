"""Power of the suite's tests, the smallest effects they can detect, and seeds needed.

The primary test is the exact two-sided rank-sum test (`analysis.stats.rank_sum_p_value`,
rejecting where p < alpha); its effect size is theta = P(X > Y). `rank_test_power` computes
its power from two exact pieces and one approximation:

- the rejection region is exact: the rank sums whose exact two-sided p-value (no ties) is
  below alpha, from the exact null distribution of the Mann-Whitney U (`null_distribution`);
- U / (n_x n_y) under the alternative is approximated by the Beta distribution with its mean
  theta and its exact variance ``[theta (1 - theta) + (n_y - 1) (p1 - theta^2) + (n_x - 1)
  (p2 - theta^2)] / (n_x n_y)`` (Lehmann 1975), with continuity correction; ``p1 = P(X > Y,
  X > Y')`` and ``p2 = P(X > Y, X' > Y)`` are those of a normal location shift with that
  theta (both: the bivariate normal probability that two differences with correlation 1/2
  exceed 0). The Beta is bounded like U and skewed like it near theta = 1.

Accuracy, against 200,000 simulated normal shifts per point at alpha = 0.05 and shifts of
0.5-2 SD (power 7-100%): within 1.4 points at n = 10 per group, 0.5 at n = 20, 4.2 at n = 5.
A normal U with the same moments is off by up to 3.1 points at n = 10 and 8 at n = 5.
Noether's (1987) formula ``Phi(sqrt(12 n_x n_y / (N + 1)) |theta - 1/2| - z_{1-alpha/2})``
(`noether_power`, null variance and nominal alpha) understates power by up to 9 points at
n = 10 (77% where the exact test has 85%, at a 1.5 SD shift; 89% for 98% at 2 SD), so the
suite does not use it. tests/test_analysis_power.py checks the Beta approximation against the
exact test (`analysis.stats.rank_sum_p_value`).

Effects in SD units (``shift_sd``) are normal location shifts ``delta``, for which
``theta = Phi(delta / sqrt(2))``. Welch's t is powered as the two-sample t-test of
``statsmodels.stats.power.TTestIndPower`` (equal variances; Welch's degrees of freedom equal
``n_x + n_y - 2`` there when the groups are the same size).

``python -m analysis.power <experiment_dir> --effect E`` sizes a sweep from a pilot (Colas,
Sigaud and Oudeyer 2018, "How many random seeds?"): per family of cells that differ only in the
reduction, each reduction against the reference reduction, the pooled SD of the metric over
the pilot's finite per-seed values turns E (return units, or with ``--relative`` a fraction of
the reference's mean) into SD units, and the seeds per group for the requested power at level
alpha / m follow, next to the pilot's seeds and the effect it can detect now. m is the number
of comparisons in the family (the first Holm step's level, as in the report's tables;
``--no-holm`` uses alpha).
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.optimize
import scipy.stats
from statsmodels.stats.power import TTestIndPower

from analysis.cli import ArgumentParser
from analysis.settings import ALPHA, POWER, REFERENCE_REDUCTION

# Beyond this many pooled seeds the null distribution of U is taken as normal (continuity
# corrected); its critical values are then within 0.1% of n_x n_y of the exact ones (at 100 +
# 100 seeds: equal at alpha 0.05, 8 of 10,000 apart at alpha 0.001).
EXACT_NULL_MAX_SEEDS = 200
MAX_SEEDS = 100_000
METRICS = ("final_return", "auc")
EXIT_USAGE = 2


class DetectableEffect(NamedTuple):
    """The smallest effect detectable with the requested power: as P(X > Y) (>= 1/2) and as the
    equivalent normal location shift in SD units. NaN for both where the test cannot reject at
    that level with those seeds at all."""

    probability_of_improvement: float
    shift_sd: float


# --- effect scales -------------------------------------------------------------------------


def shift_to_probability(shift_sd: float) -> float:
    """P(X > Y) of a normal location shift of ``shift_sd`` standard deviations."""
    return float(scipy.stats.norm.cdf(shift_sd / math.sqrt(2)))


def probability_to_shift(probability: float) -> float:
    """The normal location shift (in SDs) whose P(X > Y) is ``probability``."""
    return float(math.sqrt(2) * scipy.stats.norm.ppf(probability))


# --- the rank-sum test ---------------------------------------------------------------------


@lru_cache(maxsize=1024)
def null_distribution(n_x: int, n_y: int) -> np.ndarray:
    """P(U = u) for u = 0 .. n_x n_y under the null (no ties), U the Mann-Whitney count of
    pairs with x above y: the recursion P_{m,n}(u) = m/(m+n) P_{m-1,n}(u - n) + n/(m+n)
    P_{m,n-1}(u) over the larger group's seeds (all terms positive: numerically stable)."""
    m, n = (n_x, n_y) if n_x <= n_y else (n_y, n_x)  # U's distribution is symmetric in (m, n)
    # rows[k]: the distribution for (k, j) at the current j, k = 0..m.
    rows = [np.ones(1) for _ in range(m + 1)]
    for j in range(1, n + 1):
        new = [np.ones(1)]
        for k in range(1, m + 1):
            values = np.zeros(k * j + 1)
            values[j:] += k / (k + j) * new[k - 1]  # the largest value is an x: U gains j
            values[: k * (j - 1) + 1] += j / (k + j) * rows[k]  # the largest value is a y
            new.append(values)
        rows = new
    return rows[m]


@lru_cache(maxsize=4096)
def rejection_region(n_x: int, n_y: int, alpha: float) -> tuple[int, int]:
    """``(low, high)``: the exact two-sided rank-sum test at level alpha (p < alpha, no ties)
    rejects where U <= low or U >= high (``low = -1`` and ``high = n_x n_y + 1``: never).
    Symmetric: ``high = n_x n_y - low``."""
    top = n_x * n_y
    if n_x + n_y <= EXACT_NULL_MAX_SEEDS:
        cumulative = np.cumsum(null_distribution(n_x, n_y))  # P(U <= u)
        # Two-sided p of U = u <= top/2 is 2 P(U <= u) (symmetry); reject while it is < alpha.
        low = int(np.searchsorted(cumulative * 2, alpha, side="left")) - 1
        low = min(low, (top - 1) // 2)
    else:
        mean, sd = top / 2, math.sqrt(top * (n_x + n_y + 1) / 12)
        # P(U <= u) ~ Phi((u + 0.5 - mean) / sd) < alpha / 2.
        low = math.ceil(mean + sd * scipy.stats.norm.ppf(alpha / 2) - 0.5) - 1
    return low, top - low


def _alternative_moments(n_x: int, n_y: int, effect: float) -> tuple[float, float]:
    """Mean and SD of U under a normal location shift with P(X > Y) = effect."""
    if effect in (0.0, 1.0):
        return n_x * n_y * effect, 0.0
    a = scipy.stats.norm.ppf(effect)  # X - Y ~ N(delta, 2): P(X > Y) = Phi(a), a = delta / sqrt 2
    # p1 = p2 = P(X > Y, X > Y') = P(Z1 < a, Z2 < a), corr(Z1, Z2) = 1/2.
    both = scipy.stats.multivariate_normal(cov=[[1, 0.5], [0.5, 1]]).cdf([a, a])
    variance = n_x * n_y * (
        effect * (1 - effect) + (n_x + n_y - 2) * (both - effect**2)
    )
    return n_x * n_y * effect, math.sqrt(max(variance, 0.0))


def rank_test_power(n_x: int, n_y: int, effect: float, alpha: float = ALPHA) -> float:
    """Power of the exact two-sided rank-sum test at level ``alpha`` with ``n_x`` and ``n_y``
    seeds when P(X > Y) = ``effect`` (a normal location shift; see the module docstring):
    P(U <= low) + P(U >= high) for the exact `rejection_region`, U / (n_x n_y) Beta with
    U's mean and variance, continuity corrected. 0 where the region is empty."""
    _check_level(alpha)
    if not 0 <= effect <= 1:
        raise ValueError(f"effect P(X > Y) must be in [0, 1], got {effect}")
    if min(n_x, n_y) < 1:
        return 0.0
    low, high = rejection_region(n_x, n_y, alpha)
    if low < 0:
        return 0.0
    mean, sd = _alternative_moments(n_x, n_y, effect)
    if sd == 0:
        return float(mean <= low or mean >= high)
    pairs = n_x * n_y
    centre, spread = mean / pairs, (sd / pairs) ** 2
    concentration = centre * (1 - centre) / spread - 1
    if concentration <= 0:  # not a Beta's moments (one seed per group): normal U
        return float(scipy.stats.norm.cdf((low + 0.5 - mean) / sd)
                     + scipy.stats.norm.sf((high - 0.5 - mean) / sd))
    beta = scipy.stats.beta(centre * concentration, (1 - centre) * concentration)
    return float(beta.cdf((low + 0.5) / pairs) + beta.sf((high - 0.5) / pairs))


def noether_power(n_x: int, n_y: int, effect: float, alpha: float = ALPHA) -> float:
    """Noether's (1987) normal approximation of the rank-sum test's power (reference only:
    see the module docstring)."""
    total = n_x + n_y
    z = scipy.stats.norm.ppf(1 - alpha / 2)
    return float(scipy.stats.norm.cdf(
        math.sqrt(12 * n_x * n_y / (total + 1)) * abs(effect - 0.5) - z
    ))


@lru_cache(maxsize=4096)
def minimum_detectable_effect(
    n_x: int, n_y: int, alpha: float = ALPHA, power: float = POWER
) -> DetectableEffect:
    """The smallest P(X > Y) >= 1/2 that the rank-sum test at ``alpha`` detects with
    probability ``power`` given ``n_x`` and ``n_y`` seeds (root of `rank_test_power` in the
    effect), and the same effect as a normal shift in SDs. NaN where no effect is detectable
    (the smallest attainable p-value is not below alpha)."""
    _check_level(alpha)
    _check_power(power)
    undetectable = DetectableEffect(math.nan, math.nan)
    if min(n_x, n_y) < 1 or rejection_region(n_x, n_y, alpha)[0] < 0:
        return undetectable
    gap = lambda effect: rank_test_power(n_x, n_y, effect, alpha) - power  # noqa: E731
    top = 1 - 1e-12
    if gap(0.5) >= 0:
        effect = 0.5
    elif gap(top) < 0:
        return undetectable
    else:
        effect = scipy.optimize.brentq(gap, 0.5, top, xtol=1e-10)
    return DetectableEffect(float(effect), probability_to_shift(min(effect, top)))


# --- Welch's t -----------------------------------------------------------------------------


def welch_power(n_x: int, n_y: int, effect_sd: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided two-sample t-test at ``alpha`` for a shift of ``effect_sd`` SDs
    (``TTestIndPower``)."""
    return float(TTestIndPower().power(effect_sd, n_x, alpha, ratio=n_y / n_x))


def welch_minimum_detectable_effect(
    n_x: int, n_y: int, alpha: float = ALPHA, power: float = POWER
) -> float:
    """The smallest shift in SDs that the two-sided t-test at ``alpha`` detects with
    probability ``power`` given ``n_x`` and ``n_y`` seeds (``TTestIndPower.solve_power``);
    NaN with fewer than 2 seeds in a group."""
    _check_level(alpha)
    _check_power(power)
    if min(n_x, n_y) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(TTestIndPower().solve_power(
            effect_size=None, nobs1=n_x, alpha=alpha, power=power, ratio=n_y / n_x
        ))


# --- seeds needed --------------------------------------------------------------------------


def seeds_needed(
    effect_sd: float, alpha: float = ALPHA, power: float = POWER, test: str = "rank"
) -> int:
    """Seeds per group (equal groups) for ``power`` at level ``alpha`` against a normal shift
    of ``effect_sd`` SDs: the smallest n with the rank-sum test's power (`rank_test_power`)
    at least ``power`` (``test="rank"``) or the t-test's (`welch_power`, ``test="welch"``).
    At least 2."""
    _check_level(alpha)
    _check_power(power)
    if not effect_sd > 0:
        raise ValueError(f"effect_sd must be > 0, got {effect_sd}")
    if test not in ("rank", "welch"):
        raise ValueError(f"test must be 'rank' or 'welch', got {test!r}")
    effect = shift_to_probability(effect_sd)

    def reached(n: int) -> bool:
        if test == "welch":
            return welch_power(n, n, effect_sd, alpha) >= power
        return rank_test_power(n, n, effect, alpha) >= power

    # Doubling, bisection for the first n that reaches, then lower while n - 1 also reaches
    # (an exact test's power is monotone in n only up to the discreteness of its region).
    high = 2
    while not reached(high):
        high *= 2
        if high > MAX_SEEDS:
            raise ValueError(f"more than {MAX_SEEDS} seeds per group needed")
    low = high // 2  # does not reach (or is 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if reached(middle) else (middle, high)
    while high > 2 and reached(high - 1):
        high -= 1
    return high


def _check_level(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _check_power(power: float) -> None:
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}")


# --- pilot sweeps --------------------------------------------------------------------------


def pilot_table(
    per_seed: pd.DataFrame,
    cell_columns: Sequence[str],
    effect: float,
    *,
    metric: str = "final_return",
    alpha: float = ALPHA,
    power: float = POWER,
    relative: bool = False,
    reference: str = REFERENCE_REDUCTION,
    holm: bool = True,
) -> pd.DataFrame:
    """One row per comparison of a pilot sweep (each reduction against ``reference`` within
    each family of cells differing only in ``reduction``): the pilot's seeds, the pooled SD of
    ``metric`` over finite values, the effect in units and SDs, the level (alpha / m, m the
    family's comparisons, when ``holm``), the current rank-test MDE (P(X > Y), SDs, units)
    and the seeds per group needed by the rank test and by Welch."""
    family_columns = [c for c in cell_columns if c != "reduction"]
    rows = []
    grouped = per_seed.groupby(family_columns, dropna=False, sort=True) if family_columns else [
        ((), per_seed)
    ]
    for family, members in grouped:
        family = family if isinstance(family, tuple) else (family,)
        by_reduction = {r: g for r, g in members.groupby("reduction", sort=True)}
        if reference not in by_reduction:
            continue
        compared = [r for r in by_reduction if r != reference]
        level = alpha / len(compared) if holm and compared else alpha
        y_all = by_reduction[reference][metric].to_numpy(float)
        y = y_all[np.isfinite(y_all)]
        for reduction in compared:
            x_all = by_reduction[reduction][metric].to_numpy(float)
            x = x_all[np.isfinite(x_all)]
            sd = _pooled_sd(x, y)
            units = effect * abs(float(np.mean(y))) if relative and y.size else effect
            effect_sd = units / sd if sd > 0 else math.nan
            mde = minimum_detectable_effect(len(x_all), len(y_all), level, power)
            row = dict(zip(family_columns, family, strict=True))
            row.update(
                reduction=reduction, reference=reference, n=len(x_all), n_reference=len(y_all),
                pooled_sd=sd, effect=units, effect_sd=effect_sd, level=level,
                mde_poi=mde.probability_of_improvement, mde_sd=mde.shift_sd,
                mde=mde.shift_sd * sd,
                seeds_rank=_seeds_or_nan(effect_sd, level, power, "rank"),
                seeds_welch=_seeds_or_nan(effect_sd, level, power, "welch"),
            )
            rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.astype({"seeds_rank": "Int64", "seeds_welch": "Int64"})
    return table


def _pooled_sd(x: np.ndarray, y: np.ndarray) -> float:
    """The pooled standard deviation of two samples (NaN with fewer than 3 values in all)."""
    df = x.size + y.size - 2
    if df < 1:
        return math.nan
    squares = ((x - x.mean()) ** 2).sum() if x.size else 0.0
    squares += ((y - y.mean()) ** 2).sum() if y.size else 0.0
    return math.sqrt(squares / df)


def _seeds_or_nan(effect_sd: float, alpha: float, power: float, test: str) -> float:
    if not (math.isfinite(effect_sd) and effect_sd > 0):
        return math.nan
    try:
        return float(seeds_needed(effect_sd, alpha, power, test))
    except ValueError:
        return math.nan


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m analysis.power",
        description="Seeds per group needed to detect an effect, from a pilot sweep's spread "
        "(Colas et al. 2018), for the rank-sum test and Welch's t.",
    )
    parser.add_argument("experiment_dir", help="results/<name> of the pilot sweep")
    parser.add_argument("--effect", type=float, required=True,
                        help="effect to detect, in the metric's units (a fraction of the "
                        "reference's mean with --relative)")
    parser.add_argument("--metric", choices=METRICS, default="final_return",
                        help="default: %(default)s")
    parser.add_argument("--power", type=float, default=POWER, help="default: %(default)s")
    parser.add_argument("--alpha", type=float, default=ALPHA, help="default: %(default)s")
    parser.add_argument("--relative", action="store_true",
                        help="--effect is a fraction of the reference reduction's mean")
    parser.add_argument("--reference", default=REFERENCE_REDUCTION,
                        help="reference reduction (default: %(default)s)")
    parser.add_argument("--no-holm", dest="holm", action="store_false",
                        help="level alpha per comparison instead of alpha / family size")
    args = parser.parse_args(argv)
    if not args.effect > 0:
        parser.error(f"--effect must be > 0, got {args.effect}")
    if not 0 < args.power < 1:
        parser.error(f"--power must be in (0, 1), got {args.power}")
    if not 0 < args.alpha < 1:
        parser.error(f"--alpha must be in (0, 1), got {args.alpha}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prints the pilot table; exit status 2 when the experiment has no data."""
    args = parse_args(argv)
    from analysis.cells import PER_SEED_COLUMNS, per_seed_metrics
    from analysis.load import DatasetError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            per_seed = per_seed_metrics(args.experiment_dir)
    except DatasetError as error:
        print(f"analysis.power: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    cells = [c for c in per_seed.columns if c not in PER_SEED_COLUMNS]
    table = pilot_table(
        per_seed, cells, args.effect, metric=args.metric, alpha=args.alpha, power=args.power,
        relative=args.relative, reference=args.reference, holm=args.holm,
    )
    if table.empty:
        print(f"analysis.power: error: no family with a '{args.reference}' cell and another "
              "reduction", file=sys.stderr)
        return EXIT_USAGE
    unit = f"{args.effect:g} x |mean of {args.reference}|" if args.relative else f"{args.effect:g}"
    level = f"alpha / m (alpha {args.alpha:g}, m comparisons per family)" if args.holm else (
        f"alpha {args.alpha:g}"
    )
    print(
        f"seeds per group for {args.power:.0%} power to detect a {args.metric} difference of "
        f"{unit} (in SDs: over the pilot's pooled SD of finite values) at level {level}"
    )
    print("mde: the rank test's minimum detectable shift with the pilot's seeds (SD, units)")
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

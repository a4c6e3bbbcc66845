"""How a report computes its metrics, tests and intervals: one settings object, with the
defaults of ``python -m analysis.report``."""

from __future__ import annotations

from dataclasses import dataclass

from analysis import intervals

FINAL_FRACTION = 0.1  # share of a run's env steps that the final return averages over
GRID_POINTS = 100  # env-step grid points per learning curve
THRESHOLD_FRACTION = 0.5  # normalised score whose return is the steps-to-threshold target
REFERENCE_REDUCTION = "mean"
ALPHA = 0.05
SELECTION_METRIC = "auc"
POWER = 0.8  # the power at which minimum detectable effects are stated
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class ReportSettings:
    """Everything that changes a number of the report."""

    grid_points: int = GRID_POINTS
    final_fraction: float = FINAL_FRACTION
    confidence: float = intervals.CONFIDENCE
    bootstrap_seed: int = BOOTSTRAP_SEED
    n_resamples: int = intervals.N_RESAMPLES
    reference: str = REFERENCE_REDUCTION
    alpha: float = ALPHA
    power: float = POWER
    threshold_fraction: float = THRESHOLD_FRACTION
    selection_metric: str = SELECTION_METRIC

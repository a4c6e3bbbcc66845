"""Gradient diagnostics on a synthetic dataset whose answers are known: loading the rows, the
per-cell summary (mean over seeds of per-seed means), the curves, the mean / traj_mean
norm-ratio identity, and the report's section (present with diagnostics rows, absent without)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_analysis import rising_episodes, write_result_file

from analysis import gradients
from analysis.load import DIAGNOSTICS_FRAME_COLUMNS, cell_columns, load_dataset
from analysis.prose import identity_text
from analysis.report import write_report
from analysis.settings import ReportSettings
from bench import schema

SEEDS = [0, 1, 2]
ALGOS = ("a2c", "ppo")
TOTAL_STEPS = 200
TRAJECTORIES = 4  # N of every probed batch
# Per probe: its cosine with the reference on seed 0; seed s adds 0.1 s at every probe.
COSINE_BASE = {probe: 0.3 + 0.05 * i for i, probe in enumerate(schema.REDUCTIONS)}
# The one batch whose mean / traj_mean pair violates the identity (mean's ratio doubled).
VIOLATION = ("ppo", 1, 1)  # algo, seed, update
SETTINGS = ReportSettings(n_resamples=300)


def probed_updates(seed: int) -> list[int]:
    """Seeds 0 and 1 are probed at updates 0-3, seed 2 only at 0 and 1 (so the mean over seeds
    of per-seed means differs from the mean over all probes)."""
    return [0, 1] if seed == 2 else [0, 1, 2, 3]


def batch_steps(update: int) -> int:
    """sum_i T_i of the batch probed at ``update``: mean lengths 10, 15, 20, 25."""
    return TRAJECTORIES * (10 + 5 * update)


def traj_mean_ratio(seed: int) -> float:
    """traj_mean's norm ratio: 1.0, 1.1, 1.2 for seeds 0, 1, 2 (constant per seed)."""
    return 1.0 + 0.1 * seed


def norm_ratio(probe: str, seed: int, update: int) -> float:
    """Norm ratios as the weights make them: mean = traj_mean x N / sum T_i, sum = traj_mean x
    N, the others some positive values."""
    base, steps = traj_mean_ratio(seed), batch_steps(update)
    return {
        "sum": base * TRAJECTORIES,
        "per_step": base * TRAJECTORIES,
        "mean": base * TRAJECTORIES / steps,
        "traj_mean": base,
        "traj_step_mean": base * TRAJECTORIES / steps * 0.9,
        "constant": base / 500,
        "length_power": base * (steps / TRAJECTORIES) ** -0.5,
    }[probe]


def diagnostics_rows(algo: str) -> list[dict[str, Any]]:
    """One row per seed x probed update x probe reduction."""
    rows = []
    for seed in SEEDS:
        for update in probed_updates(seed):
            for probe in schema.REDUCTIONS:
                ratio = norm_ratio(probe, seed, update)
                if probe == "mean" and (algo, seed, update) == VIOLATION:
                    ratio *= 2
                rows.append({
                    "seed": seed, "update": update, "env_step": 50 * (update + 1),
                    "batch_steps": batch_steps(update), "batch_trajectories": TRAJECTORIES,
                    "probe_reduction": probe,
                    "grad_cosine": COSINE_BASE[probe] + 0.1 * seed,
                    "grad_norm_ratio": ratio,
                    "reference_norm": 3.0,
                    "step_cosine": 0.9,
                    "noise_cosine": 0.2 + 0.05 * seed,
                    "noise_trace": 1.5,
                    "batch_length_std": 2.0,
                })
    return rows


def write_experiment(experiment: Path, with_diagnostics: bool) -> None:
    """Two cells (a2c and ppo on cartpole, trained with mean), 3 seeds each."""
    for algo in ALGOS:
        write_result_file(
            experiment / "data", f"{algo}-mean", SEEDS, rising_episodes(SEEDS, TOTAL_STEPS, 100),
            algo=algo, reduction="mean", total_steps=TOTAL_STEPS,
            diagnostics=diagnostics_rows(algo) if with_diagnostics else None,
        )


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gradients") / "gradients"
    write_experiment(path, with_diagnostics=True)
    return path


@pytest.fixture(scope="module")
def report_dir(experiment: Path) -> Path:
    return write_report(experiment, SETTINGS).parent


def test_diagnostics_rows_are_loaded_apart_from_episodes_and_updates(experiment: Path) -> None:
    dataset = load_dataset(experiment)
    rows_per_algo = sum(len(probed_updates(s)) for s in SEEDS) * len(schema.REDUCTIONS)

    assert list(dataset.diagnostics.columns) == list(DIAGNOSTICS_FRAME_COLUMNS)
    assert len(dataset.diagnostics) == 2 * rows_per_algo
    assert dataset.updates["update"].notna().all() and len(dataset.updates) == 2 * 3 * 4
    assert dataset.updates.columns.intersection(list(schema.DIAGNOSTICS_COLUMNS)).empty
    assert (dataset.runs["n_diagnostics"] == rows_per_algo).all()
    assert (dataset.diagnostics["learning_rate"] == 3e-4).all()


def test_diagnostics_follow_the_seed_claiming_rule(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_result_file(data, "run", [0], [(0, 10, 1.0)], diagnostics=[
        {"seed": 0, "update": 0, "env_step": 50, "probe_reduction": "sum", "grad_cosine": 0.5}])
    with pytest.warns(UserWarning):
        write_result_file(data, "run", [0, 1], [(0, 10, 1.0), (1, 10, 2.0)],
                          file_name="zz-again.parquet", diagnostics=[
            {"seed": s, "update": 0, "env_step": 50, "probe_reduction": "sum",
             "grad_cosine": 0.9} for s in (0, 1)])
        dataset = load_dataset(tmp_path)

    by_seed = dataset.diagnostics.set_index("seed")["grad_cosine"]
    assert by_seed.to_dict() == {0: 0.5, 1: 0.9}  # seed 0 from the first file only


def test_a_dataset_without_diagnostics_has_an_empty_frame(tmp_path: Path) -> None:
    write_experiment(tmp_path, with_diagnostics=False)
    dataset = load_dataset(tmp_path)

    assert dataset.diagnostics.empty
    assert list(dataset.diagnostics.columns) == list(DIAGNOSTICS_FRAME_COLUMNS)
    assert gradients.gradient_results(dataset.diagnostics, cell_columns(dataset), SETTINGS) is None


def test_summary_is_the_mean_over_seeds_of_each_seeds_mean(experiment: Path) -> None:
    dataset = load_dataset(experiment)
    summary = gradients.gradient_summary(dataset.diagnostics, cell_columns(dataset), SETTINGS)

    assert len(summary) == 2 * len(schema.REDUCTIONS)
    for algo in ALGOS:
        assert summary.loc[summary["algo"] == algo, "probe_reduction"].tolist() == list(
            schema.REDUCTIONS)
    rows = summary[summary["algo"] == "a2c"].set_index("probe_reduction")
    assert (rows["n_seeds"] == 3).all() and (rows["n_probes"] == 10).all()
    for probe in schema.REDUCTIONS:
        # Seeds' means 0, 0.1, 0.2 above the base: 0.1 (over all probes it would be 0.08).
        assert rows.loc[probe, "grad_cosine"] == pytest.approx(COSINE_BASE[probe] + 0.1)
        assert rows.loc[probe, "grad_cosine_ci_low"] < rows.loc[probe, "grad_cosine"]
        assert rows.loc[probe, "grad_cosine"] < rows.loc[probe, "grad_cosine_ci_high"]
        assert rows.loc[probe, "grad_cosine_n"] == 3
        # Within the range of the seeds' values widened by their spread (3 seeds: wide).
        assert rows.loc[probe, "grad_cosine_ci_low"] > COSINE_BASE[probe] - 0.5
        assert rows.loc[probe, "grad_cosine_ci_high"] < COSINE_BASE[probe] + 0.7
    assert rows.loc["traj_mean", "grad_norm_ratio"] == pytest.approx(1.1)
    assert rows.loc["mean", "noise_cosine"] == pytest.approx(0.25)
    # step_cosine is 0.9 everywhere: the mean is exact, the interval degenerate or a point.
    assert rows.loc["sum", "step_cosine"] == pytest.approx(0.9)
    # Mean length: seeds 0 and 1 average 17.5 over updates 0-3, seed 2 12.5 over 0-1.
    assert rows.loc["sum", "mean_length"] == pytest.approx((17.5 + 17.5 + 12.5) / 3)


def test_curves_average_seeds_per_env_step_bin(experiment: Path) -> None:
    dataset = load_dataset(experiment)
    cells = cell_columns(dataset)
    cosine = gradients.gradient_curves(dataset.diagnostics, cells, "grad_cosine", SETTINGS)
    ratio = gradients.gradient_curves(dataset.diagnostics, cells, "grad_norm_ratio", SETTINGS)

    curve = cosine[(cosine["algo"] == "a2c") & (cosine["probe_reduction"] == "sum")]
    assert curve["env_step"].tolist() == [50.0, 100.0, 150.0, 200.0]  # one bin per probe
    assert curve["n_seeds"].tolist() == [3, 3, 2, 2]
    np.testing.assert_allclose(curve["value"], COSINE_BASE["sum"] + np.array(
        [0.1, 0.1, 0.05, 0.05]))
    geometric = ratio[(ratio["algo"] == "a2c") & (ratio["probe_reduction"] == "traj_mean")]
    assert geometric["value"].iloc[0] == pytest.approx(np.exp(np.log([1.0, 1.1, 1.2]).mean()))
    assert (geometric["low"] > 0).all()


def test_norm_ratio_against_mean_length(experiment: Path) -> None:
    dataset = load_dataset(experiment)
    points = gradients.norm_ratio_vs_length(dataset.diagnostics, cell_columns(dataset))

    assert len(points) == len(dataset.diagnostics)
    np.testing.assert_allclose(points["mean_length"],
                               points["update"].map(lambda u: batch_steps(u) / TRAJECTORIES))
    trend = gradients.norm_ratio_trend(points, ["algo", "probe_reduction"])
    sums = trend[(trend["algo"] == "a2c") & (trend["probe_reduction"] == "sum")]
    assert sums["n_points"].sum() == 10


def test_identity_holds_except_on_the_violating_batch(experiment: Path) -> None:
    diagnostics = load_dataset(experiment).diagnostics
    consistent = diagnostics[diagnostics["algo"] == "a2c"]

    assert gradients.max_identity_deviation(consistent) < 1e-12
    assert gradients.max_identity_deviation(diagnostics) == pytest.approx(1.0)
    identity = gradients.norm_ratio_identity(diagnostics)
    assert len(identity) == 2 * sum(len(probed_updates(s)) for s in SEEDS)
    worst = identity.loc[identity["deviation"].idxmax()]
    assert (worst["run_key"], worst["seed"], worst["update"]) == ("ppo-mean", 1, 1)
    assert np.isnan(gradients.max_identity_deviation(
        diagnostics[diagnostics["probe_reduction"] != "traj_mean"]))

    results = gradients.gradient_results(consistent, ["algo"], SETTINGS)
    assert results is not None and "as it must by construction" in identity_text(results)


def test_report_has_the_gradient_section_with_figures_and_tables(report_dir: Path) -> None:
    index = (report_dir / "index.md").read_text()

    assert index.index("## Summary per cell") < index.index("## Gradient diagnostics")
    assert index.index("## Gradient diagnostics") < index.index("## Completeness")
    assert index.index("## Gradient diagnostics") < index.index("## Provenance")
    section = index.split("## Gradient diagnostics")[1].split("\n## ")[0]
    assert "**Identity check failed**: on 1 of 20 probed batches" in section
    assert "run `ppo-mean`, seed 1, update 1" in section
    for measure in ("grad_cosine", "grad_norm_ratio", "step_cosine", "noise_cosine"):
        assert f"`{measure}`" in section
    assert "first epoch" in section
    for stem in ("gradient_cosine", "gradient_norm_ratio", "gradient_norm_vs_length"):
        name = f"{stem}-reduction=mean_optim=adam_lr=0.0003"
        assert (report_dir / f"{name}.png").stat().st_size > 0
        assert (report_dir / f"{name}.pdf").stat().st_size > 0
        assert f"{name}.png" in section
    table = pd.read_csv(report_dir / "gradient_diagnostics.csv")
    row = table[(table["algo"] == "ppo") & (table["probe_reduction"] == "length_power")].iloc[0]
    assert row["grad_cosine"] == pytest.approx(COSINE_BASE["length_power"] + 0.1)
    assert "\\toprule" in (report_dir / "gradient_diagnostics.tex").read_text()
    assert "| probe |" in (report_dir / "gradient_diagnostics.md").read_text()
    identity = pd.read_csv(report_dir / "gradient_identity.csv")
    assert len(identity) == 20 and identity["deviation"].max() == pytest.approx(1.0)
    assert "<h2>Gradient diagnostics</h2>" in (report_dir / "index.html").read_text()


def test_report_without_diagnostics_has_no_gradient_section(tmp_path: Path) -> None:
    experiment = tmp_path / "plain"
    write_experiment(experiment, with_diagnostics=False)

    report = write_report(experiment, SETTINGS).parent

    assert "Gradient diagnostics" not in (report / "index.md").read_text()
    assert not list(report.glob("gradient_*"))

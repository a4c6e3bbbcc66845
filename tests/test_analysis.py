"""Tests of the reading side (`analysis`) on small synthetic datasets written like the trainer's."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.stats
import yaml

from analysis import intervals, metrics
from analysis.load import (
    SUMMARY_UPDATE_COLUMNS,
    DatasetError,
    DuplicateSeedsWarning,
    SkippedFileWarning,
    cell_columns,
    load_dataset,
)
from bench import schema

REPO_ROOT = Path(__file__).resolve().parents[1]
ARROW_TYPES = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
}


def write_result_file(
    data_dir: Path,
    run_key: str,
    seeds: list[int],
    episodes: list[tuple[int, int, float]],
    *,
    algo: str = "ppo",
    env: str = "cartpole",
    reduction: str = "mean",
    optim: str = "adam",
    lr: float = 3e-4,
    swept: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    total_steps: int = 100,
    diverged_seeds: tuple[int, ...] = (),
    schema_version: int = schema.SCHEMA_VERSION,
    file_name: str | None = None,
    diagnostics: list[dict[str, Any]] | None = None,
) -> Path:
    """Write one results file as the trainer would: ``episodes`` are (seed, env_step, return);
    each seed also gets one update row per 50 env steps. ``diagnostics`` are the values of
    gradient diagnostics rows (seed, update, env_step, probe_reduction, ...), written with the
    run's identity columns. Returns the file's path."""
    swept = swept or {}
    identity = {
        "run_key": run_key,
        "algo": algo,
        "env": env,
        "reduction": reduction,
        "optim": optim,
        "lr": lr,
    }
    rows = [
        {
            **identity,
            **swept,
            "kind": schema.KIND_EPISODE,
            "seed": seed,
            "env_step": step,
            "wall_time": step / 1000,
            "episode": index,
            "episode_return": value,
            "episode_length": 10,
            "terminated": True,
        }
        for index, (seed, step, value) in enumerate(episodes)
    ]
    rows += [
        {
            **identity,
            **swept,
            "kind": schema.KIND_UPDATE,
            "seed": seed,
            "env_step": step,
            "wall_time": step / 1000,
            "update": step // 50 - 1,
            "loss": 0.5,
            "policy_loss": 0.1,
            "value_loss": 0.2,
            "entropy": 0.6,
            "approx_kl": 0.01,
            "clip_fraction": 0.1,
            "grad_norm": 1.0,
            "learning_rate": lr,
            "batch_steps": 50,
            "batch_trajectories": 5,
            "diverged": seed in diverged_seeds and step == total_steps,
        }
        for seed in seeds
        for step in range(50, total_steps + 1, 50)
    ]
    rows += [
        {**identity, **swept, "kind": schema.KIND_DIAGNOSTICS, "learning_rate": lr, **values}
        for values in diagnostics or []
    ]
    resolved = config or {
        "algo": {"name": algo},
        "optim": {"name": optim, "lr": lr},
        "total_steps": total_steps,
    }
    metadata = {
        schema.SCHEMA_VERSION_KEY: str(schema_version),
        schema.RUN_KEY_KEY: run_key,
        schema.SEEDS_KEY: json.dumps(seeds),
        schema.CONFIG_KEY: yaml.safe_dump(resolved),
        schema.OVERRIDES_KEY: json.dumps([f"{k}={v}" for k, v in swept.items()]),
        schema.COMMAND_KEY: "python -m bench.run",
        schema.SWEPT_COLUMNS_KEY: json.dumps(list(swept)),
        schema.VERSIONS_KEY: json.dumps({"torch": "2.9.0", "numpy": "2.4.6"}),
        schema.GIT_COMMIT_KEY: "abc1234",
        schema.DEVICE_KEY: "cpu",
        schema.HOST_KEY: "testhost",
        schema.STARTED_AT_KEY: "2026-01-01T00:00:00+00:00",
        schema.FINISHED_AT_KEY: "2026-01-01T00:01:00+00:00",
        schema.DIVERGED_SEEDS_KEY: json.dumps(list(diverged_seeds)),
    }
    fields = [pa.field(name, ARROW_TYPES[kind]) for name, kind in schema.COLUMNS.items()]
    fields += [pa.field(name, pa.scalar(value).type) for name, value in swept.items()]
    table = pa.Table.from_pylist(rows, schema=pa.schema(fields, metadata=metadata))
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / (file_name or f"{run_key}-s{'_'.join(map(str, seeds))}.parquet")
    pq.write_table(table, path)
    return path


def rising_episodes(seeds: list[int], total_steps: int, level: float) -> list[tuple]:
    """Episodes every 20 steps whose return rises to about ``level``, differing per seed."""
    return [
        (seed, step, level * step / total_steps + seed)
        for seed in seeds
        for step in range(20, total_steps + 1, 20)
    ]


def test_load_unifies_files_with_different_swept_columns(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_result_file(
        data,
        "run_a",
        [0, 1],
        [(0, 10, 1.0), (1, 10, 2.0)],
        swept={"algo.gamma": 0.9},
        config={"algo": {"gamma": 0.9}, "total_steps": 100},
    )
    write_result_file(
        data,
        "run_b",
        [0],
        [(0, 10, 3.0)],
        swept={"optim.eps": 1e-5},
        config={"algo": {"gamma": 0.99}, "optim": {"eps": 1e-5}, "total_steps": 100},
    )

    dataset = load_dataset(tmp_path)

    assert dataset.swept_columns == ("algo.gamma", "optim.eps")
    assert cell_columns(dataset) == [
        "algo",
        "env",
        "reduction",
        "optim",
        "lr",
        "algo.gamma",
        "optim.eps",
    ]
    episodes = dataset.episodes.set_index(["run_key", "seed"]).sort_index()
    assert episodes.loc[("run_a", 0), "algo.gamma"] == 0.9
    assert episodes.loc[("run_b", 0), "algo.gamma"] == 0.99  # from run_b's config
    assert episodes.loc[("run_b", 0), "optim.eps"] == 1e-5
    assert np.isnan(episodes.loc[("run_a", 0), "optim.eps"])  # not in run_a's config
    assert len(dataset.episodes) == 3
    assert set(dataset.updates["run_key"]) == {"run_a", "run_b"}
    assert dataset.episodes["episode"].dtype == np.int64
    runs = dataset.runs.set_index("run_key")
    assert runs.loc["run_a", "seeds"] == [0, 1]
    assert runs.loc["run_b", "algo.gamma"] == 0.99
    assert runs.loc["run_a", "versions"] == {"torch": "2.9.0", "numpy": "2.4.6"}
    assert dataset.skipped == []


def test_load_with_summary_update_columns(tmp_path: Path) -> None:
    """`update_columns` loads only those update columns (the report's way to hold a stepwise
    study); every other frame and the runs table are what a full load gives; a bad column name
    is refused with the valid choices."""
    data = tmp_path / "data"
    for name, gamma in (("run_a", 0.9), ("run_b", 0.99)):
        write_result_file(
            data,
            name,
            [0, 1],
            [(0, 10, 1.0), (1, 10, 2.0)],
            swept={"algo.gamma": gamma},
            config={"algo": {"gamma": gamma}, "total_steps": 100},
        )
    full = load_dataset(tmp_path)
    summary = load_dataset(tmp_path, update_columns=SUMMARY_UPDATE_COLUMNS)

    assert list(summary.updates.columns) == list(SUMMARY_UPDATE_COLUMNS)
    pd.testing.assert_frame_equal(summary.updates, full.updates[list(SUMMARY_UPDATE_COLUMNS)])
    pd.testing.assert_frame_equal(summary.episodes, full.episodes)
    pd.testing.assert_frame_equal(summary.runs, full.runs)
    assert full.runs["n_updates"].tolist() == [4, 4]
    with pytest.raises(ValueError, match="unknown update column.*'loss_typo'.*valid choices"):
        load_dataset(tmp_path, update_columns=("run_key", "loss_typo"))


def test_invalid_files_are_skipped_and_reported(tmp_path: Path) -> None:
    data = tmp_path / "data"
    good = write_result_file(data, "good", [0], [(0, 10, 1.0)])
    wrong_version = write_result_file(data, "old", [0], [(0, 10, 5.0)], schema_version=99)
    duplicate = write_result_file(
        data, "good", [0], [(0, 10, 7.0)], file_name="zz-good-again.parquet"
    )
    corrupt = data / "corrupt.parquet"
    corrupt.write_bytes(b"not parquet at all")
    foreign = data / "foreign.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    (data / ".tmp-partial.parquet").write_bytes(b"half written")

    with pytest.warns(SkippedFileWarning) as caught:
        dataset = load_dataset(tmp_path)

    reasons = {skipped.path: skipped.reason for skipped in dataset.skipped}
    assert set(reasons) == {wrong_version, duplicate, corrupt, foreign}
    assert "schema version '99'" in reasons[wrong_version]
    assert "already loaded from " + good.name in reasons[duplicate]
    assert "not a readable parquet file" in reasons[corrupt]
    assert "not a bench results file" in reasons[foreign]
    messages = [str(warning.message) for warning in caught]
    assert all(any(str(path) in message for message in messages) for path in reasons)
    assert dataset.episodes["episode_return"].tolist() == [1.0]
    assert dataset.runs["path"].tolist() == [str(good)]


def test_each_run_and_seed_is_taken_from_one_file(tmp_path: Path) -> None:
    """Overlapping seed sets ([0, 1] and [0, 1, 9] of one run): seeds 0 and 1 come from the
    first file by name, 9 from the second, and the repeated seeds are reported."""
    data = tmp_path / "data"
    first = write_result_file(data, "run", [0, 1], [(0, 10, 1.0), (1, 10, 2.0)])
    second = write_result_file(data, "run", [0, 1, 9], [(0, 10, 7.0), (1, 10, 8.0), (9, 10, 9.0)],
                               diverged_seeds=(1, 9))
    with pytest.warns(DuplicateSeedsWarning, match="seeds 0, 1 left out, already loaded from"):
        dataset = load_dataset(tmp_path)
    episodes = dataset.episodes.sort_values("seed")
    assert episodes[["seed", "episode_return"]].values.tolist() == [[0, 1.0], [1, 2.0], [9, 9.0]]
    assert dataset.updates.groupby("seed").size().to_dict() == {0: 2, 1: 2, 9: 2}
    assert dataset.runs["seeds"].tolist() == [[0, 1], [9]]
    assert dataset.runs["diverged_seeds"].tolist() == [[], [9]]
    (duplicate,) = dataset.duplicates
    assert (duplicate.path, duplicate.loaded_from, duplicate.seeds) == (second, first, [0, 1])
    assert dataset.skipped == []


def test_a_file_whose_rows_do_not_match_its_digest_is_skipped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    good = write_result_file(data, "good", [0], [(0, 10, 1.0)])
    damaged = write_result_file(data, "damaged", [0], [(0, 10, 5.0)])
    table = pq.read_table(damaged)
    metadata = {**table.schema.metadata, schema.CONTENT_DIGEST_KEY.encode(): b"0" * 64}
    pq.write_table(table.replace_schema_metadata(metadata), damaged)
    intact = pq.read_table(good)
    metadata = {**intact.schema.metadata,
                schema.CONTENT_DIGEST_KEY.encode(): schema.content_digest(intact).encode()}
    pq.write_table(intact.replace_schema_metadata(metadata), good)
    with pytest.warns(SkippedFileWarning, match="content check failed"):
        dataset = load_dataset(tmp_path)
    assert [s.path for s in dataset.skipped] == [damaged]
    assert dataset.runs["path"].tolist() == [str(good)]


@pytest.mark.filterwarnings("ignore::analysis.load.SkippedFileWarning")
@pytest.mark.parametrize("layout", ["missing", "no_data_dir", "empty", "only_invalid"])
def test_unusable_experiment_dir_raises_clear_error(tmp_path: Path, layout: str) -> None:
    experiment = tmp_path / "experiment"
    if layout != "missing":
        experiment.mkdir()
    if layout in ("empty", "only_invalid"):
        (experiment / "data").mkdir()
    if layout == "only_invalid":
        (experiment / "data" / "bad.parquet").write_bytes(b"junk")

    with pytest.raises(DatasetError, match=str(experiment)):
        load_dataset(experiment)


GRID = [10, 20, 30, 40]
GRID_EPISODES = pd.DataFrame(
    [
        # run_key, seed, env_step, episode_return
        ("r", 0, 5, 1.0),
        ("r", 0, 8, 3.0),
        ("r", 0, 25, 10.0),
        ("r", 1, 15, 4.0),
        ("r", 1, 20, 6.0),  # on a grid point: belongs to the bin ending there
        ("r", 1, 45, 100.0),  # after the last grid point: unused
        ("r", 2, 50, 7.0),  # no episode on the grid at all
    ],
    columns=["run_key", "seed", "env_step", "episode_return"],
)


def test_returns_on_grid_hand_example() -> None:
    curves = metrics.returns_on_grid(GRID_EPISODES, GRID)

    expected = np.array(
        [
            [2.0, 2.0, 10.0, 10.0],  # mean of 1 and 3, carried to 20, then 10 carried to 40
            [np.nan, 5.0, 5.0, 5.0],  # NaN before the first episode, mean of 4 and 6
            [np.nan, np.nan, np.nan, np.nan],
        ]
    )
    np.testing.assert_array_equal(curves.to_numpy(), expected)
    assert curves.columns.tolist() == GRID
    assert curves.index.tolist() == [("r", 0), ("r", 1), ("r", 2)]


def test_returns_on_grid_rejects_unsorted_grid() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        metrics.returns_on_grid(GRID_EPISODES, [20, 10])


def test_area_under_curve_ignores_points_before_first_episode() -> None:
    auc = metrics.area_under_curve(metrics.returns_on_grid(GRID_EPISODES, GRID))

    assert auc.loc[("r", 0)] == pytest.approx((2 + 2 + 10 + 10) / 4)
    assert auc.loc[("r", 1)] == pytest.approx(5.0)
    assert np.isnan(auc.loc[("r", 2)])


def test_final_return_hand_example() -> None:
    episodes = pd.DataFrame(
        [
            ("r", 0, 85, 1.0),
            ("r", 0, 90, 2.0),
            ("r", 0, 95, 4.0),
            ("r", 0, 100, 6.0),
            ("r", 0, 104, 50.0),  # ended after total_steps: left out
            ("r", 1, 50, 3.0),
        ],
        columns=["run_key", "seed", "env_step", "episode_return"],
    )

    last_tenth = metrics.final_return(episodes, total_steps=100)
    last_half = metrics.final_return(episodes, total_steps=100, fraction=0.5)

    assert last_tenth.loc[("r", 0)] == pytest.approx(5.0)  # 95 and 100; 90 is not after 90
    assert np.isnan(last_tenth.loc[("r", 1)])  # no episode in the window
    assert last_half.loc[("r", 0)] == pytest.approx((1 + 2 + 4 + 6) / 4)
    assert np.isnan(last_half.loc[("r", 1)])


def test_interval_engine_is_reproducible_and_needs_two_values() -> None:
    values = np.arange(20, dtype=float)
    rng = np.random.default_rng

    first = intervals.estimate(intervals.IQM, [values], n_resamples=2000, rng=rng(1))
    again = intervals.estimate(intervals.IQM, [values], n_resamples=2000, rng=rng(1))
    single = intervals.estimate(intervals.IQM, [np.array([3.0])])

    assert first == again
    assert first[1].low < first[0] < first[1].high
    assert np.isnan(single[1].low) and np.isnan(single[1].high)
    with pytest.raises(ValueError, match="unknown interval method 'nope'"):
        intervals.interval([values], intervals.mean, "nope")


def test_curve_band_only_where_every_seed_has_a_value() -> None:
    curves = metrics.returns_on_grid(GRID_EPISODES[GRID_EPISODES["seed"] < 2], GRID)

    band = metrics.curve_band(curves)

    assert np.isnan(band["value"].iloc[0]) and np.isnan(band["low"].iloc[0])
    assert band["value"].tolist()[1:] == [3.5, 7.5, 7.5]
    assert (band["low"].iloc[1:] <= band["value"].iloc[1:]).all()
    # Student t over the two seeds at each grid point.
    data = curves.to_numpy()[:, 1]
    expected = scipy.stats.t.interval(0.95, 1, loc=data.mean(), scale=scipy.stats.sem(data))
    assert (band["low"].iloc[1], band["high"].iloc[1]) == pytest.approx(expected)
    assert (band["n_seeds"] == 2).all()


def run_report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "analysis.report", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_cli_end_to_end(tmp_path: Path) -> None:
    experiment = tmp_path / "quick"
    data = experiment / "data"
    seeds = [0, 1, 2]
    for algo in ("a2c", "ppo"):
        for reduction, level in (("sum", 100.0), ("mean", 50.0)):
            write_result_file(
                data,
                f"{algo}-{reduction}",
                seeds,
                rising_episodes(seeds, 200, level),
                algo=algo,
                reduction=reduction,
                total_steps=200,
                diverged_seeds=(2,) if (algo, reduction) == ("ppo", "sum") else (),
            )
    (data / "broken.parquet").write_bytes(b"junk")

    result = run_report(str(experiment))

    assert result.returncode == 0, result.stderr
    assert "broken.parquet" in result.stderr
    report = experiment / "report"
    index = (report / "index.md").read_text()
    for expected in (
        "# Report: quick",
        "broken.parquet",
        "abc1234",
        "torch",
        "0\u20132",
        "convergence-optim=adam_lr=0.0003.png",
    ):
        assert expected in index
    assert (report / "convergence-optim=adam_lr=0.0003.png").stat().st_size > 0
    assert (report / "convergence-optim=adam_lr=0.0003.pdf").stat().st_size > 0
    with open(report / "summary.csv") as handle:
        summary = list(csv.DictReader(handle))
    assert len(summary) == 4
    ppo_sum = next(r for r in summary if (r["algo"], r["reduction"]) == ("ppo", "sum"))
    assert ppo_sum["n_seeds"] == "3" and ppo_sum["n_diverged"] == "1"
    # After step 180 (last 10% of 200) each seed has one episode, at 200: return 100 + seed;
    # seed 2 diverged: failed, left out of the mean.
    assert float(ppo_sum["final_return_mean"]) == pytest.approx(100.5)
    assert ppo_sum["final_return_n"] == "2"
    assert float(ppo_sum["final_return_ci_low"]) <= 100.5 <= float(ppo_sum["final_return_ci_high"])
    per_seed = pd.read_csv(report / "per_seed_metrics.csv")
    assert len(per_seed) == 12
    failed = per_seed[per_seed["diverged"]]
    assert len(failed) == 1 and (failed[["final_return", "auc"]] == -np.inf).all(axis=None)
    assert per_seed["final_return"].notna().all()


def test_report_cli_bad_path_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-experiment"

    result = run_report(str(missing))

    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_analysis_does_not_import_torch() -> None:
    code = "import sys, analysis.report; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0

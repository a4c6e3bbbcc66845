"""Packed jobs: grid points that share a process as slots. A slot's numbers do not depend on
what shares its process (bitwise, for every algorithm), the planner groups exactly the grid
points that can share one, and a packed sweep writes the same data as one job per point."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bench import schema
from bench.config import make_job
from bench.packing import longest_first, plan_packs
from bench.run import train_pack
from bench.slots import pack_key

REPO = Path(__file__).resolve().parent.parent


def point_config(results_dir: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        config = compose("config", overrides=[f"results_dir={results_dir}",
                                              "progress_interval_s=0", *overrides])
    return OmegaConf.to_container(config, resolve=True)


def point_rows(results_dir: Path, run_key: str) -> pd.DataFrame:
    """A grid point's rows (its own files) in a fixed order, wall-clock column aside."""
    files = sorted((results_dir / "default" / "data").glob(f"{run_key}-*.parquet"))
    frame = pd.concat([pd.read_parquet(path) for path in files])
    frame = frame.drop(columns=list(schema.NONDETERMINISTIC_COLUMNS))
    order = ["kind", "seed", "episode", "update"]
    return frame.sort_values(order, na_position="first").reset_index(drop=True)


# Per algorithm: the shared settings, then the point under test and what it is packed with
# (other reductions, rates, coefficients and overlapping seeds).
CASES = {
    "reinforce": (["algo=reinforce", "algo.num_envs=2", "algo.episodes_per_update=3",
                   "total_steps=700"],
                  ["reduction=mean", "optim.lr=0.01", "seeds=[0,1,2]"],
                  [["reduction=sum", "optim.lr=0.001", "seeds=[0,1,5]"],
                   ["reduction=length_power", "reduction.alpha=0.3", "seeds=[2,3]"],
                   ["reduction=traj_step_mean", "algo.entropy_coef=0.05", "algo.gamma=0.9",
                    "seeds=[1]"]]),
    "vpg": (["algo=vpg", "algo.steps_per_update=200", "total_steps=800", "optim=sgd"],
            ["reduction=traj_mean", "optim.lr=0.01", "seeds=[0,1]"],
            [["reduction=constant", "reduction.max_length=50", "optim.lr=0.1", "seeds=[0,1,2]"],
             ["reduction=mean", "algo.value_coef=2.0", "optim.momentum=0.9", "seeds=[3]"]]),
    "a2c": (["algo=a2c", "total_steps=800", "optim=rmsprop"],
            ["reduction=mean", "seeds=[0,1]"],
            [["reduction=sum", "optim.lr=0.003", "algo.max_grad_norm=null", "seeds=[1,2]"],
             ["reduction=traj_mean", "algo.gae_lambda=0.9", "optim.alpha=0.9", "seeds=[0]"]]),
    "ppo": (["algo=ppo", "total_steps=1024", "algo.minibatch_unit=segments",
             "env=acrobot"],
            ["reduction=traj_step_mean", "seeds=[0,1]"],
            [["reduction=mean", "optim.lr=0.001", "algo.clip_coef=0.1", "seeds=[0,1,2]"],
             ["reduction=sum", "algo.target_kl=0.001", "optim.eps=1e-8", "seeds=[1]"],
             ["reduction=traj_mean", "algo.entropy_coef=0.0", "optim.betas=[0.8,0.99]",
              "seeds=[4]"]]),
    "per_step": (["algo=ppo", "total_steps=256", "algo.rollout_steps=32",
                  "reduction=per_step"],
                 ["optim.lr=0.001", "seeds=[0,1]"],
                 [["optim.lr=0.01", "algo.value_coef=1.0", "seeds=[1,2]"]]),
    # The VPG write-up's loop: one episode per update, handed out on per_step's schedule.
    "reinforce_per_step": (["algo=reinforce", "algo.episodes_per_update=1",
                            "algo.baseline=none", "reduction=per_step", "optim=adam",
                            "total_steps=1500"],
                           ["optim.lr=0.01", "seeds=[0,1]"],
                           [["optim.lr=0.03", "seeds=[1,2,3]"], ["optim.lr=0.001", "seeds=[4]"]]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_grid_point_packed_with_others_gives_bitwise_the_rows_it_gives_alone(case, tmp_path):
    shared, point, others = CASES[case]
    alone_dir, packed_dir = tmp_path / "alone", tmp_path / "packed"
    alone = make_job(point_config(alone_dir, *shared, *point), point)
    (outcome,) = train_pack([alone])
    assert outcome.status == "done"
    points = [make_job(point_config(packed_dir, *shared, *overrides), overrides)
              for overrides in [*others[:1], point, *others[1:]]]
    assert len({pack_key(p.config) for p in points}) == 1
    assert [o.status for o in train_pack(points)] == ["done"] * len(points)
    packed = points[1]
    assert packed.run_key == alone.run_key
    expected, actual = point_rows(alone_dir, alone.run_key), point_rows(packed_dir, alone.run_key)
    assert len(expected) and expected.kind.eq("update").any()
    pd.testing.assert_frame_equal(actual, expected, check_exact=True)


@pytest.mark.parametrize("episodes, num_envs", [(1, 1), (3, 2)])
def test_slots_whose_episode_lengths_differ_widely_give_the_rows_they_give_alone(
        episodes, num_envs, tmp_path):
    """Episode batches are handed out slot by slot as they complete (no lockstep): slots whose
    batches take from about 10 to 500 steps (Adam at these rates takes some seeds to 500-step
    CartPole episodes within 5000 steps, others not) update at their own pace, and every grid
    point's rows are bitwise those it gives alone."""
    shared = ["algo=reinforce", "optim=adam", "total_steps=5000",
              f"algo.episodes_per_update={episodes}", f"algo.num_envs={num_envs}"]
    grid = [["reduction=sum", "optim.lr=0.02", "seeds=[0,1]"],
            ["reduction=mean", "optim.lr=0.003", "seeds=[2]"],
            ["reduction=traj_mean", "optim.lr=0.01", "seeds=[1]"]]
    points = [make_job(point_config(tmp_path / "packed", *shared, *o), o) for o in grid]
    assert [o.status for o in train_pack(points)] == ["done"] * len(points)
    for index, overrides in enumerate(grid):
        alone_dir = tmp_path / f"alone-{index}"
        alone = make_job(point_config(alone_dir, *shared, *overrides), overrides)
        train_pack([alone])
        pd.testing.assert_frame_equal(point_rows(tmp_path / "packed", alone.run_key),
                                      point_rows(alone_dir, alone.run_key), check_exact=True)
    frame = pd.read_parquet(tmp_path / "packed" / "default" / "data")
    batch_steps = frame[frame.kind == "update"].batch_steps
    assert batch_steps.max() >= 20 * batch_steps.min()


def test_a_diverging_slot_is_frozen_without_touching_the_others(tmp_path):
    shared = ["env=pendulum", "optim=sgd", "total_steps=600", "algo.episodes_per_update=2"]
    point = ["optim.lr=0.001", "seeds=[0,1]"]
    alone = make_job(point_config(tmp_path / "a", *shared, *point), point)
    train_pack([alone])
    wild = ["optim.lr=1e30", "seeds=[0,1]"]
    points = [make_job(point_config(tmp_path / "b", *shared, *o), o) for o in (wild, point)]
    outcomes = train_pack(points)
    assert outcomes[0].diverged_seeds == [0, 1] and outcomes[1].diverged_seeds == []
    pd.testing.assert_frame_equal(point_rows(tmp_path / "b", alone.run_key),
                                  point_rows(tmp_path / "a", alone.run_key), check_exact=True)


def test_resume_trains_only_the_missing_points_and_seeds(tmp_path):
    shared = ["total_steps=300", "algo.episodes_per_update=2"]
    first = ["reduction=mean", "seeds=2"]
    train_pack([make_job(point_config(tmp_path, *shared, *first), first)])
    grown = ["reduction=mean", "seeds=3"]
    other = ["reduction=sum", "seeds=2"]
    points = [make_job(point_config(tmp_path, *shared, *o), o) for o in (grown, other)]
    outcomes = train_pack(points)
    assert [(o.status, o.seeds) for o in outcomes] == [("done", [2]), ("done", [0, 1])]
    assert [o.status for o in train_pack(points)] == ["skipped", "skipped"]
    frame = pd.read_parquet(tmp_path / "default" / "data")
    seeds = frame[frame.kind == "update"].groupby("reduction").seed.unique()
    assert sorted(seeds["mean"]) == [0, 1, 2] and sorted(seeds["sum"]) == [0, 1]


def configs(*grid: list[str]) -> list[dict]:
    return [point_config(Path("unused"), *overrides) for overrides in grid]


def test_planner_groups_batchable_differences_and_separates_shapes_and_code_paths():
    grid = [["reduction=mean", "optim.lr=0.1"], ["reduction=sum", "optim.lr=0.01"],
            ["reduction=per_step"], ["reduction=per_step", "optim.lr=0.5"],
            ["optim=sgd"], ["algo=ppo"], ["algo.num_envs=2"],
            ["reduction=length_power", "reduction.alpha=0.2", "algo.gamma=0.5"]]
    assert plan_packs(configs(*grid), max_slots=100) == [[0, 1, 7], [2, 3], [4], [5], [6]]


def test_planner_splits_large_groups_into_even_packs_of_at_most_max_slots():
    grid = [[f"optim.lr={lr}", "seeds=10"] for lr in (1, 2, 3, 4, 5)]
    assert plan_packs(configs(*grid), max_slots=20) == [[0, 1], [2, 3], [4]]
    assert plan_packs(configs(*grid), max_slots=30) == [[0, 1, 2], [3, 4]]
    assert plan_packs(configs(*grid), max_slots=5) == [[0], [1], [2], [3], [4]]


def test_the_slowest_packs_start_first():
    grid = [["optim.lr=0.1", "seeds=2"], ["reduction=per_step", "seeds=2"], ["algo=ppo"],
            ["optim=sgd", "seeds=8"]]
    points = configs(*grid)
    assert longest_first(plan_packs(points, max_slots=100), points) == [[1], [3], [2], [0]]


def multirun(*overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "bench.run", "--multirun", "progress_interval_s=0",
               *overrides]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_a_packed_sweep_writes_the_data_of_one_job_per_point(tmp_path):
    """Through the entry point: the same grid with the packing sweeper (the default) and with
    Hydra's basic sweeper gives the same files (one per grid point, same run keys and seeds)
    and the same rows; the packed sweep says what each job holds and counts grid points."""
    grid = ["reduction=mean,sum,per_step", "optim.lr=0.001,0.01", "seeds=2",
            "total_steps=300", "algo.episodes_per_update=2", "hydra.launcher.n_jobs=2"]
    packed = multirun(f"results_dir={tmp_path / 'packed'}", "hydra.sweeper.max_slots=4", *grid)
    basic = multirun(f"results_dir={tmp_path / 'basic'}", "hydra/sweeper=basic", *grid)
    assert "6 grid points (12 seeds) packed into 3 jobs of at most 4 slots" in packed.stderr
    assert re.search(r"\[sweep\] job \d/3 started: .*: 2 grid points, 4 slots", packed.stderr)
    for result in (packed, basic):
        assert "6/6 grid points finished in" in result.stderr
        assert "6 done, 0 skipped (already complete), 0 failed" in result.stderr
    assert "| 12 seeds in 3 processes" in packed.stderr
    assert "| 12 seeds in 6 processes" in basic.stderr
    names = {d: sorted(p.name for p in (tmp_path / d / "default" / "data").glob("*.parquet"))
             for d in ("packed", "basic")}
    assert len(names["packed"]) == 6 and names["packed"] == names["basic"]
    frames = {d: pd.read_parquet(tmp_path / d / "default" / "data")
              .drop(columns=list(schema.NONDETERMINISTIC_COLUMNS))
              .sort_values(["run_key", "kind", "seed", "episode", "update"])
              .reset_index(drop=True) for d in ("packed", "basic")}
    pd.testing.assert_frame_equal(frames["packed"], frames["basic"], check_exact=True)
    (summary,) = (tmp_path / "packed" / "default" / "hydra").glob("*/summary.json")
    content = json.loads(summary.read_text())
    assert (content["points"], content["jobs"], content["processes"]) == (6, 3, 3)


def test_a_bad_grid_point_fails_alone_in_its_pack(tmp_path):
    command = [sys.executable, "-m", "bench.run", "--multirun", f"results_dir={tmp_path}",
               "progress_interval_s=0", "total_steps=300", "seeds=2",
               "algo.episodes_per_update=2", "optim.lr=0.001,-1"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "packed into 1 job of" in result.stderr
    assert "2/2 grid points finished in" in result.stderr
    assert "1 done, 0 skipped (already complete), 1 failed" in result.stderr
    assert re.search(r"FAILED grid point 2 .*optim.lr=-1", result.stderr)
    assert len(list((tmp_path / "default" / "data").glob("*.parquet"))) == 1
    (record,) = (tmp_path / "default" / "failures").glob("*.json")
    assert "optim.lr=-1" in json.loads(record.read_text())["overrides"]

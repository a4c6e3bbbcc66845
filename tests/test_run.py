"""End to end through the user's entry points: `python -m bench.run` (single and multirun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from bench import schema
from bench.reductions import REDUCTIONS

REPO = Path(__file__).resolve().parent.parent
TINY = ["total_steps=600", "algo.episodes_per_update=2", "progress_interval_s=0"]


def bench_run(
    results_dir: Path, *overrides: str, check: bool = True, multirun: bool = False
) -> subprocess.CompletedProcess:
    flags = ["--multirun"] if multirun else []
    command = [sys.executable, "-m", "bench.run", *flags, f"results_dir={results_dir}", *overrides]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return result


def data_files(results_dir: Path, name: str = "default") -> list[Path]:
    return sorted((results_dir / name / "data").glob("*.parquet"))


def test_every_reduction_on_discrete_and_continuous_envs_writes_readable_parquet(tmp_path):
    reductions = ",".join(REDUCTIONS)
    bench_run(
        tmp_path,
        f"reduction={reductions}",
        "env=cartpole,pendulum",
        "seeds=2",
        *TINY,
        multirun=True,
    )
    files = data_files(tmp_path)
    assert len(files) == 2 * len(REDUCTIONS)
    frame = pd.read_parquet(tmp_path / "default" / "data")
    assert set(frame.columns) >= set(schema.COLUMNS)
    cells = frame.groupby(["env", "reduction"])
    assert len(cells) == 14
    for (env, reduction), cell in cells:
        episodes, updates = cell[cell.kind == "episode"], cell[cell.kind == "update"]
        assert sorted(episodes.seed.unique()) == [0, 1], (env, reduction)
        assert updates.groupby("seed").env_step.max().ge(600).all()
        assert updates.loss.notna().all() and not updates.diverged.any()
        assert episodes.episode_length.gt(0).all()
        if env == "pendulum":
            assert episodes.episode_length.eq(200).all() and not episodes.terminated.any()
    for path in files:
        metadata = pq.read_schema(path).metadata
        assert metadata[schema.SCHEMA_VERSION_KEY.encode()] == str(schema.SCHEMA_VERSION).encode()
        assert json.loads(metadata[schema.SEEDS_KEY.encode()]) == [0, 1]
        assert b"reduction:" in metadata[schema.CONFIG_KEY.encode()]


def test_same_command_gives_identical_results_and_reruns_are_skipped(tmp_path):
    overrides = [
        "seeds=3",
        "env=acrobot",
        "algo.num_envs=2",
        "algo.baseline=value",
        "algo.returns=total",
        "algo.normalize_advantages=true",
        "algo.entropy_coef=0.01",
        "algo.max_grad_norm=0.5",
        "reduction=length_power",
        *TINY,
    ]
    bench_run(tmp_path / "a", *overrides)
    bench_run(tmp_path / "b", *overrides)
    (first,), (second,) = data_files(tmp_path / "a"), data_files(tmp_path / "b")
    assert first.name == second.name  # same run key and seed list
    a, b = pd.read_parquet(first), pd.read_parquet(second)
    deterministic = [c for c in a.columns if c not in schema.NONDETERMINISTIC_COLUMNS]
    pd.testing.assert_frame_equal(a[deterministic], b[deterministic])
    updates = a[a.kind == "update"]
    assert updates.value_loss.notna().all() and updates.grad_norm.gt(0).all()
    # Swept values are columns of their own.
    for column in ("algo.baseline", "algo.num_envs", "algo.max_grad_norm"):
        assert column in a.columns
    assert set(a["algo.baseline"]) == {"value"}

    modified = first.stat().st_mtime_ns
    rerun = bench_run(tmp_path / "a", *overrides)
    assert "skip" in rerun.stderr and "already complete" in rerun.stderr
    assert data_files(tmp_path / "a") == [first] and first.stat().st_mtime_ns == modified


def test_more_seeds_later_trains_only_the_missing_ones(tmp_path):
    bench_run(tmp_path, "seeds=2", *TINY)
    result = bench_run(tmp_path, "seeds=[0,1,2]", *TINY)
    assert "training [2]" in result.stderr
    frame = pd.read_parquet(tmp_path / "default" / "data")
    assert len(data_files(tmp_path)) == 2 and frame.run_key.nunique() == 1
    per_seed = frame[frame.kind == "update"].groupby("seed").update.agg(["min", "count"])
    assert per_seed.index.tolist() == [0, 1, 2] and per_seed["min"].eq(0).all()


def test_a_seed_starts_the_same_whatever_else_is_in_the_job(tmp_path):
    bench_run(tmp_path / "alone", "seeds=[1]", *TINY)
    bench_run(tmp_path / "together", "seeds=[0,1,2]", *TINY)
    alone = pd.read_parquet(tmp_path / "alone" / "default" / "data")
    together = pd.read_parquet(tmp_path / "together" / "default" / "data")
    together = together[together.seed == 1]
    # The first batch is bitwise the same episodes (same init, env seeds, action noise).
    first = ["episode", "episode_return", "episode_length", "env_step"]
    head = alone[alone.kind == "episode"][first].head(2).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        head, together[together.kind == "episode"][first].head(2).reset_index(drop=True)
    )


def test_divergence_is_recorded_and_the_job_completes(tmp_path):
    bench_run(tmp_path, "env=pendulum", "optim=sgd", "optim.lr=1e30", "seeds=2", *TINY)
    (path,) = data_files(tmp_path)
    frame = pd.read_parquet(path)
    updates = frame[frame.kind == "update"].sort_values(["seed", "update"])
    for _, rows in updates.groupby("seed"):
        flags = rows.diverged.tolist()
        assert flags[-1] and not any(flags[:-1])  # the diverged row is the seed's last
    assert json.loads(pq.read_schema(path).metadata[schema.DIVERGED_SEEDS_KEY.encode()]) == [0, 1]


BAD_INPUTS = [
    (["algo=foo"], ["algo/foo", "reinforce"]),
    (["reduction=median"], ["reduction/median", "traj_step_mean"]),
    (["optim=adagrad"], ["optim/adagrad", "rmsprop"]),
    (["env=pong"], ["env/pong", "cartpole"]),
    (["reduction.name=median"], ["'median'", "valid choices", "per_step"]),
    (["seeds=0"], ["seeds", "0"]),
    (["seeds=[1,1]"], ["seeds", "distinct"]),
    (["total_steps=-5"], ["total_steps", "-5"]),
    (["device=tpu"], ["'tpu'", "auto, cpu, cuda"]),
    (["algo.baseline=critic"], ["'critic'", "batch_mean"]),
    (["env.backend=jax"], ["'jax'", "torch, gymnasium"]),
    (["env=lunarlander", "env.backend=torch"], ["'LunarLander-v3'", "CartPole-v1", "gymnasium"]),
    (["+env.kwargs.bogus=1"], ["bogus", "sutton_barto_reward"]),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append((["device=cuda"], ["cuda", "not available"]))


@pytest.mark.parametrize("overrides, fragments", BAD_INPUTS, ids=lambda v: " ".join(v))
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, overrides, fragments):
    result = bench_run(tmp_path, *overrides, check=False)
    assert result.returncode != 0
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert not (tmp_path / "default" / "data").exists()


def test_smoke_sweep_then_report(tmp_path):
    """`make sweep EXP=smoke` and `make report EXP=smoke`, through their Python entry points."""
    bench_run(tmp_path, "+experiment=smoke", multirun=True)
    assert len(data_files(tmp_path, "smoke")) == 2
    report = subprocess.run(
        [sys.executable, "-m", "analysis.report", str(tmp_path / "smoke")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert report.returncode == 0, report.stderr
    index = (tmp_path / "smoke" / "report" / "index.md").read_text()
    assert "reinforce" in index and "mean" in index and "sum" in index


def test_every_env_config_trains(tmp_path):
    # Token tasks (env.backend=tokens) are algo=grpo's; tests/test_grpo.py trains them.
    envs = sorted(path.stem for path in (REPO / "conf" / "env").glob("*.yaml")
                  if yaml.safe_load(path.read_text()).get("backend") != "tokens")
    assert envs == ["acrobot", "cartpole", "hopper", "lunarlander", "mountaincar",
                    "mountaincar_continuous", "pendulum"]
    bench_run(
        tmp_path,
        f"env={','.join(envs)}",
        "seeds=1",
        "total_steps=300",
        "algo.episodes_per_update=1",
        "progress_interval_s=0",
        multirun=True,
    )
    frame = pd.read_parquet(tmp_path / "default" / "data")
    assert sorted(frame.env.unique()) == envs
    assert frame[frame.kind == "update"].groupby("env").env_step.max().ge(300).all()


def test_vpg_step_batches_end_to_end(tmp_path):
    """algo=vpg: every update of every seed consumes exactly steps_per_update env steps; with
    cut_episode=drop the loss uses the steps of whole segments only."""
    bench_run(
        tmp_path,
        "algo=vpg",
        "algo.steps_per_update=200",
        "algo.num_envs=2",
        "algo.cut_episode=bootstrap,drop",
        "reduction=traj_mean",
        "seeds=2",
        "total_steps=1000",
        "progress_interval_s=0",
        multirun=True,
    )
    frame = pd.read_parquet(tmp_path / "default" / "data")
    assert set(frame.algo) == {"vpg"} and set(frame["algo.cut_episode"]) == {"bootstrap", "drop"}
    updates = frame[frame.kind == "update"]
    assert (updates.env_step == 200 * (updates["update"] + 1)).all()
    assert updates.groupby(["algo.cut_episode", "seed"]).size().eq(5).all()
    by_rule = updates.groupby("algo.cut_episode").batch_steps
    assert by_rule.max()["bootstrap"] == by_rule.min()["bootstrap"] == 200
    assert by_rule.max()["drop"] < 200  # the two cut segments (one per sub-env) are left out
    episodes = frame[frame.kind == "episode"]
    assert (
        episodes.groupby(["run_key", "seed"])
        .episode.apply(lambda e: e.is_monotonic_increasing)
        .all()
    )

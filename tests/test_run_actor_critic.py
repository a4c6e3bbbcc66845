"""A2C and PPO end to end through `python -m bench.run`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from bench.reductions import REDUCTIONS

REPO = Path(__file__).resolve().parent.parent


def bench_run(results_dir: Path, *overrides: str, multirun: bool = False) -> None:
    flags = ["--multirun"] if multirun else []
    command = [sys.executable, "-m", "bench.run", *flags, f"results_dir={results_dir}",
               "progress_interval_s=0", *overrides]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


def test_every_reduction_runs_for_a2c_and_ppo_on_discrete_and_continuous_envs(tmp_path):
    bench_run(tmp_path, "algo=a2c,ppo", f"reduction={','.join(REDUCTIONS)}",
              "env=cartpole,pendulum", "seeds=2", "total_steps=512", "++algo.num_envs=2",
              "++algo.rollout_steps=64", multirun=True)
    frame = pd.read_parquet(tmp_path / "default" / "data")
    assert frame.groupby(["algo", "env", "reduction"]).ngroups == 2 * 2 * len(REDUCTIONS)
    updates = frame[frame.kind == "update"]
    assert updates.loss.notna().all() and not updates.diverged.any()
    per_job = updates.groupby(["algo", "env", "reduction", "seed"]).size()
    # 512 steps = 4 rollouts of 128; A2C one gradient step each, PPO 4 epochs x 4 minibatches.
    assert set(per_job.loc["a2c"]) == {4} and set(per_job.loc["ppo"]) == {64}
    ppo = updates[updates.algo == "ppo"]
    assert ppo.clip_fraction.notna().all() and ppo.batch_steps.eq(32).all()
    assert updates[updates.algo == "a2c"].clip_fraction.isna().all()
    # Annealed PPO learning rate decreases rollout by rollout, constant within one.
    lrs = ppo[(ppo.env == "cartpole") & (ppo.reduction == "mean") & (ppo.seed == 0)]
    assert lrs.groupby("env_step").learning_rate.nunique().eq(1).all()
    assert lrs.learning_rate.is_monotonic_decreasing and lrs.learning_rate.iloc[0] == 2.5e-4


def test_stepwise_mode_updates_after_every_step(tmp_path):
    bench_run(tmp_path, "algo=a2c,ppo", "++algo.rollout_steps=1", "++algo.num_envs=1",
              "++algo.num_minibatches=1", "seeds=2", "total_steps=150", multirun=True)
    frame = pd.read_parquet(tmp_path / "default" / "data")
    updates = frame[frame.kind == "update"]
    per_seed = updates.groupby(["algo", "seed"]).size()
    assert set(per_seed.loc["a2c"]) == {150} and set(per_seed.loc["ppo"]) == {150 * 4}
    assert updates.batch_steps.eq(1).all()
    a2c = updates[(updates.algo == "a2c") & (updates.seed == 0)]
    assert a2c.env_step.tolist() == list(range(1, 151))


def test_rollout_scope_segments_target_kl_and_normalisation_options_run(tmp_path):
    bench_run(tmp_path, "algo=ppo", "reduction=traj_mean", "reduction.scope=rollout",
              "algo.minibatch_unit=segments", "algo.target_kl=1e-6",
              "algo.normalize_advantages=rollout", "algo.normalize_observation=true",
              "algo.normalize_reward=true", "algo.shared_network=true", "env=pendulum",
              "seeds=2", "total_steps=1024")
    frame = pd.read_parquet(tmp_path / "default" / "data")
    updates = frame[frame.kind == "update"]
    # With a tiny target KL, seeds stop their epochs early: fewer than 16 steps per rollout.
    assert updates.groupby(["seed", "env_step"]).size().max() < 16
    episodes = frame[frame.kind == "episode"]
    assert episodes.episode_return.lt(-100).all()  # raw Pendulum returns, not normalised ones

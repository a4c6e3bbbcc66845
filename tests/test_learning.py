"""Learning checks (slow; `make test-slow`): the algorithms actually learn."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
RANDOM_POLICY_CARTPOLE = 22  # mean return of a uniformly random policy on CartPole-v1


@pytest.mark.slow
def test_reinforce_learns_cartpole(tmp_path):
    """Reward-to-go, batch-mean baseline, Adam: the mean return over the last 10% of 200k
    steps is far above a random policy's for at least 8 of 10 seeds (measured: 397-490)."""
    total_steps = 200_000
    command = [
        sys.executable, "-m", "bench.run", "algo=reinforce", "env=cartpole", "reduction=mean",
        "optim=adam", "algo.returns=reward_to_go", "algo.baseline=batch_mean", "seeds=10",
        f"total_steps={total_steps}", f"results_dir={tmp_path}", "progress_interval_s=0",
    ]
    subprocess.run(command, cwd=REPO, check=True, timeout=1800)
    frame = pd.read_parquet(tmp_path / "default" / "data")
    episodes = frame[frame.kind == "episode"]
    final = episodes[episodes.env_step > 0.9 * total_steps].groupby("seed").episode_return.mean()
    assert len(final) == 10
    assert (final > 10 * RANDOM_POLICY_CARTPOLE).sum() >= 8, final.to_dict()

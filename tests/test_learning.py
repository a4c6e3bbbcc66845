"""Learning checks (slow; `make test-slow`): the algorithms actually learn.

Each runs one real job of 10 seeds through `python -m bench.run` and checks the mean return
over the last 10% of the run's env steps per seed. The thresholds are the issues' acceptance
criteria; the figures measured on the project's machine are in each docstring. Those figures
were measured on the gymnasium backend; classic control now defaults to the torch backend, on
which the REINFORCE and PPO CartPole checks and the backend comparison passed (6 min 37 s
together); the A2C and Pendulum checks have not been re-run on it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
RANDOM_POLICY_CARTPOLE = 22  # mean return of a uniformly random policy on CartPole-v1


def final_returns(tmp_path: Path, total_steps: int, *overrides: str) -> pd.Series:
    """Train 10 seeds and return each seed's mean return over the last 10% of steps."""
    command = [
        sys.executable, "-m", "bench.run", "seeds=10", f"total_steps={total_steps}",
        f"results_dir={tmp_path}", "progress_interval_s=0", *overrides,
    ]
    subprocess.run(command, cwd=REPO, check=True, timeout=3600)
    frame = pd.read_parquet(tmp_path / "default" / "data")
    episodes = frame[frame.kind == "episode"]
    final = episodes[episodes.env_step > 0.9 * total_steps].groupby("seed").episode_return.mean()
    assert len(final) == 10
    return final


@pytest.mark.slow
def test_reinforce_learns_cartpole(tmp_path):
    """Reward-to-go, batch-mean baseline, Adam, 200k steps: far above a random policy's for at
    least 8 of 10 seeds (measured: 426-486, all 10 seeds, 2 min)."""
    final = final_returns(tmp_path, 200_000, "algo=reinforce", "env=cartpole", "reduction=mean",
                          "optim=adam", "algo.returns=reward_to_go", "algo.baseline=batch_mean")
    assert (final > 10 * RANDOM_POLICY_CARTPOLE).sum() >= 8, final.to_dict()


@pytest.mark.slow
def test_ppo_solves_cartpole(tmp_path):
    """CleanRL defaults, reduction=mean, 500k steps: >= 450 for at least 8 of 10 seeds
    (measured: 500.0 for all 10 seeds, 4 min 44 s)."""
    final = final_returns(tmp_path, 500_000, "algo=ppo", "env=cartpole", "reduction=mean")
    assert (final >= 450).sum() >= 8, final.to_dict()


@pytest.mark.slow
def test_a2c_learns_cartpole(tmp_path):
    """SB3 defaults (Adam), reduction=mean, 500k steps: clearly above 200 for most seeds
    (measured: 500.0 for all 10 seeds, 5 min 33 s)."""
    final = final_returns(tmp_path, 500_000, "algo=a2c", "env=cartpole", "reduction=mean")
    assert (final > 200).sum() >= 6, final.to_dict()


@pytest.mark.slow
def test_ppo_learns_pendulum(tmp_path):
    """PPO on Pendulum-v1 with continuous-control settings (4 x 1024-step rollouts, 32
    minibatches x 10 epochs, gamma 0.9, lr 1e-3, no entropy bonus; rl-zoo3's Pendulum PPO
    without gSDE), 1M steps: from about -1200 to better than -400 for most seeds
    (measured: -170 to -184, all 10 seeds, from -1225 over the first 20k steps; 12 min)."""
    final = final_returns(
        tmp_path, 1_000_000, "algo=ppo", "env=pendulum", "reduction=mean",
        "algo.rollout_steps=1024", "algo.num_minibatches=32", "algo.update_epochs=10",
        "algo.gamma=0.9", "algo.entropy_coef=0.0", "optim.lr=1e-3",
    )
    assert (final > -400).sum() >= 6, final.to_dict()


def binned_returns(tmp_path: Path, total_steps: int, bins: int, *overrides: str) -> pd.DataFrame:
    """Train 10 seeds; each seed's mean episode return in `bins` equal spans of env steps
    (rows: seeds, columns: bins)."""
    subprocess.run([sys.executable, "-m", "bench.run", "seeds=10", f"total_steps={total_steps}",
                    f"results_dir={tmp_path}", "progress_interval_s=0", *overrides],
                   cwd=REPO, check=True, timeout=3600)
    episodes = pd.read_parquet(tmp_path / "default" / "data").query("kind == 'episode'")
    span = ((episodes.env_step - 1) * bins // total_steps).clip(upper=bins - 1)
    table = episodes.groupby(["seed", span]).episode_return.mean().unstack()
    assert table.shape == (10, bins)
    return table


@pytest.mark.slow
def test_torch_and_gymnasium_backends_learn_alike(tmp_path):
    """PPO on CartPole, 10 seeds x 100k steps per backend: in each fifth of the run, the
    per-seed mean returns of the two backends do not differ (Welch's t-test per fifth,
    Holm-corrected over the five, all adjusted p >= 0.01), and both learn. Same statistics, not
    the same numbers: the backends draw resets from different generators."""
    from scipy import stats  # noqa: PLC0415 (slow test only)
    from statsmodels.stats.multitest import multipletests  # noqa: PLC0415

    curves = {
        backend: binned_returns(tmp_path / backend, 100_000, 5, "algo=ppo", "env=cartpole",
                                "reduction=mean", f"env.backend={backend}")
        for backend in ("torch", "gymnasium")
    }
    p_values = [stats.ttest_ind(curves["torch"][b], curves["gymnasium"][b], equal_var=False).pvalue
                for b in range(5)]
    adjusted = multipletests(p_values, method="holm")[1]
    summary = {backend: curve.mean().round(1).tolist() for backend, curve in curves.items()}
    assert (adjusted >= 0.01).all(), (summary, adjusted)
    for curve in curves.values():
        assert curve[4].mean() > 5 * RANDOM_POLICY_CARTPOLE, summary

"""REINFORCE's returns on hand-built batches: cut segments, truncation, baselines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bench.algos.reinforce import drop_cut_segments, returns_and_advantages
from bench.config import ConfigError, check_config
from bench.rollout import Batch

REPO = Path(__file__).resolve().parent.parent

GAMMA = 0.5
CRITIC_VALUE = 10.0


def critic(obs: torch.Tensor) -> torch.Tensor:
    """A value function that returns CRITIC_VALUE everywhere."""
    return torch.full(obs.shape[:2], CRITIC_VALUE)


def hand_batch() -> Batch:
    """One seed, one sub-env, 6 slots: an episode that started in an earlier batch and
    terminates (2 steps), one cut by the time limit (2 steps), one cut by the batch end (2 steps).
    """
    flags = {
        "terminated": [0, 1, 0, 0, 0, 0],
        "truncated": [0, 0, 0, 1, 0, 0],
        "cut": [0, 0, 0, 0, 0, 1],
    }
    as_bool = {key: torch.tensor([value], dtype=torch.bool) for key, value in flags.items()}
    last = as_bool["terminated"] | as_bool["truncated"] | as_bool["cut"]
    return Batch(
        obs=torch.zeros(1, 6, 4),
        next_obs=torch.zeros(1, 6, 4),
        actions=torch.zeros(1, 6, dtype=torch.long),
        log_probs=torch.zeros(1, 6),
        rewards=torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]),
        valid=torch.ones(1, 6, dtype=torch.bool),
        trajectory=torch.tensor([[0, 0, 1, 1, 2, 2]]),
        last=last,
        num_blocks=1,
        slots=torch.arange(1),
        ready=torch.ones(1, dtype=torch.bool),
        **as_bool,
    )


def algo(**options) -> dict:
    defaults = {
        "gamma": GAMMA,
        "returns": "reward_to_go",
        "baseline": "none",
        "normalize_advantages": False,
        "cut_episode": "zero",
        "truncation": "end",
    }
    return {**defaults, **options}


def test_zero_completion_is_the_plain_reward_to_go_of_each_segment() -> None:
    returns, advantages = returns_and_advantages(hand_batch(), critic, algo(), GAMMA)
    expected = [1 + 0.5 * 2, 2, 3 + 0.5 * 4, 4, 5 + 0.5 * 6, 6]
    torch.testing.assert_close(returns, torch.tensor([expected]))
    torch.testing.assert_close(advantages, returns)


def test_bootstrap_completes_cut_segments_and_optionally_truncations_with_the_critic() -> None:
    boot = GAMMA * CRITIC_VALUE
    returns, _ = returns_and_advantages(
        hand_batch(), critic, algo(baseline="value", cut_episode="bootstrap"), GAMMA
    )
    cut_tail = [5 + 0.5 * (6 + boot), 6 + boot]
    torch.testing.assert_close(returns, torch.tensor([[2.0, 2, 5, 4, *cut_tail]]))
    returns, advantages = returns_and_advantages(
        hand_batch(),
        critic,
        algo(baseline="value", cut_episode="bootstrap", truncation="bootstrap"),
        GAMMA,
    )
    truncated_tail = [3 + 0.5 * (4 + boot), 4 + boot]
    torch.testing.assert_close(returns, torch.tensor([[2.0, 2, *truncated_tail, *cut_tail]]))
    torch.testing.assert_close(advantages, returns - CRITIC_VALUE)  # terminal: no bootstrap


def test_drop_leaves_the_cut_segment_out() -> None:
    batch = drop_cut_segments(hand_batch())
    assert batch.valid.tolist() == [[True, True, True, True, False, False]]
    returns, advantages = returns_and_advantages(batch, critic, algo(baseline="batch_mean"), GAMMA)
    kept = torch.tensor([2.0, 2, 5, 4])
    torch.testing.assert_close(returns[0, :4], kept)
    torch.testing.assert_close(advantages[0, :4], kept - kept.mean())
    assert advantages[0, 4:].eq(0).all()


def test_total_return_of_a_segment_is_its_return_from_its_first_step() -> None:
    returns, _ = returns_and_advantages(hand_batch(), critic, algo(returns="total"), GAMMA)
    torch.testing.assert_close(returns, torch.tensor([[2.0, 2, 5, 5, 8, 8]]))


def composed(*overrides: str) -> dict:
    """The resolved config `python -m bench.run <overrides>` would get."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


@pytest.mark.parametrize("option", ["cut_episode", "truncation"])
def test_bootstrap_without_a_critic_is_a_config_error(option: str) -> None:
    config = composed("algo.batch_unit=steps", f"algo.{option}=bootstrap")
    with pytest.raises(ConfigError, match=f"algo.{option}=bootstrap needs .*baseline=value"):
        check_config(config)


def test_steps_per_update_must_split_over_the_sub_envs() -> None:
    config = composed("algo.batch_unit=steps", "algo.num_envs=3", "algo.steps_per_update=100")
    with pytest.raises(ConfigError, match="multiple of algo.num_envs"):
        check_config(config)


def test_vpg_preset_only_sets_reinforce_options() -> None:
    reinforce, vpg = composed("algo=reinforce")["algo"], composed("algo=vpg")["algo"]
    assert set(vpg) == set(reinforce)
    assert {k for k in vpg if vpg[k] != reinforce[k]} == {
        "name",
        "batch_unit",
        "baseline",
        "normalize_advantages",
        "cut_episode",
        "truncation",
    }
    assert vpg["steps_per_update"] == 4000 and vpg["returns"] == "reward_to_go"
    check_config(composed("algo=vpg"))

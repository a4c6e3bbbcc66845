"""Returns along trajectories: hand-computed examples."""

from __future__ import annotations

import torch

from bench.advantages import (
    broadcast_from_first_step,
    first_steps,
    masked_mean,
    masked_std,
    normalize,
    reward_to_go,
)


def test_reward_to_go_stops_at_trajectory_ends() -> None:
    # One seed, one sub-env: an episode of 3 steps, one of 2, then padding.
    rewards = torch.tensor([[[1.0, 2.0, 3.0, 10.0, 20.0, 0.0]]])
    last = torch.tensor([[[False, False, True, False, True, False]]])
    gamma = 0.5
    expected = torch.tensor(
        [[[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 10 + 0.5 * 20, 20.0, 0.0]]]
    )
    torch.testing.assert_close(reward_to_go(rewards, last, gamma), expected)


def test_total_return_is_broadcast_from_each_episode_start() -> None:
    rewards = torch.tensor([[[1.0, 2.0, 3.0, 10.0, 20.0, 0.0]]])
    last = torch.tensor([[[False, False, True, False, True, False]]])
    valid = torch.tensor([[[True] * 5 + [False]]])
    trajectory = torch.tensor([[0, 0, 0, 1, 1, 0]])
    returns = reward_to_go(rewards, last, 0.5).reshape(1, 6)
    first = first_steps(valid, last).reshape(1, 6)
    assert first.tolist() == [[True, False, False, True, False, False]]
    total = broadcast_from_first_step(returns, first, trajectory, valid.reshape(1, 6))
    episode_one, episode_two = 1 + 0.5 * 2 + 0.25 * 3, 10 + 0.5 * 20
    torch.testing.assert_close(total, torch.tensor([[episode_one] * 3 + [episode_two] * 2 + [0.0]]))


def test_masked_statistics_ignore_invalid_entries_per_seed() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, -5.0, 7.0, 7.0]])
    valid = torch.tensor([[True, True, True, False], [True, True, False, False]])
    torch.testing.assert_close(masked_mean(values, valid), torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(masked_std(values, valid), torch.tensor([1.0, 50.0**0.5]))
    normalized = normalize(values, valid)
    assert normalized[0, 3] == 0 and normalized[1, 2:].eq(0).all()
    torch.testing.assert_close(masked_mean(normalized, valid), torch.zeros(2), atol=1e-6, rtol=0)

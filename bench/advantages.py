"""Returns and advantages along trajectories, and masked per-seed statistics.

Inputs are time-major per sub-env, ``[S, E, T]``: trajectories are contiguous in t and
``last`` marks each one's final step, so nothing flows across a trajectory boundary. Discounts
are per slot: a float or a ``[S, 1]`` tensor. Masked statistics sum with
`bench.reductions.slot_sum`, so a slot's value does not depend on how far M is padded.
"""

from __future__ import annotations

import torch

from bench.reductions import slot_sum

Discount = float | torch.Tensor  # a float, or one value per slot [S, 1]


def _over_time(value: Discount) -> Discount:
    """A per-slot ``[S, 1]`` value broadcastable against ``[S, E, T]``."""
    return value[..., None] if isinstance(value, torch.Tensor) else value


def reward_to_go(
    rewards: torch.Tensor,
    last: torch.Tensor,
    gamma: Discount,
    bootstrap: torch.Tensor | None = None,
) -> torch.Tensor:
    """G_t = sum_{k >= t} gamma^(k-t) r_k within each trajectory: ``[S, E, T]``.

    ``bootstrap`` (same shape, zero except on last steps) completes a trajectory whose episode
    goes on: at a last step, G_t = r_t + gamma * bootstrap_t.
    """
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    continues = (~last).to(rewards.dtype)
    if bootstrap is None:
        bootstrap = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[-1])):
        running = rewards[..., t] + gamma * (continues[..., t] * running + bootstrap[..., t])
        returns[..., t] = running
    return returns


def generalized_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    last: torch.Tensor,
    gamma: Discount,
    gae_lambda: Discount,
) -> torch.Tensor:
    """GAE(lambda) advantages along each trajectory, all tensors ``[S, E, T]``.

    delta_t = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t), with s'_t the transition's
    successor: at a time-limit truncation or a rollout cut, the observation where the episode
    was stopped, so those bootstrap and only true terminations do not.
    A_t = delta_t + gamma * lambda * (1 - last_t) * A_{t+1}: nothing flows across a
    trajectory's end. lambda = 1 gives Monte Carlo returns minus V, lambda = 0 one-step TD.
    """
    not_terminal = (~terminated).to(rewards.dtype)
    continues = (~last).to(rewards.dtype)
    deltas = rewards + _over_time(gamma) * not_terminal * next_values - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        running = deltas[..., t] + gamma * gae_lambda * continues[..., t] * running
        advantages[..., t] = running
    return advantages


def first_steps(valid: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Bool ``[S, E, T]``: the first valid step of each trajectory."""
    previous_last = torch.ones_like(last)
    previous_last[..., 1:] = last[..., :-1]
    return valid & previous_last


def broadcast_from_first_step(
    values: torch.Tensor, first: torch.Tensor, trajectory: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Each step gets its trajectory's first-step value; all tensors ``[S, M]`` (0 if invalid)."""
    per_trajectory = torch.zeros_like(values).scatter_add_(
        1, trajectory, torch.where(first, values, torch.zeros_like(values))
    )
    return torch.gather(per_trajectory, 1, trajectory) * valid


def spread_over_trajectory(flags: torch.Tensor, trajectory: torch.Tensor) -> torch.Tensor:
    """Bool ``[S, M]``: steps whose trajectory has any flagged step (``flags [S, M]``)."""
    per_trajectory = torch.zeros(flags.shape, dtype=torch.float32, device=flags.device)
    per_trajectory.scatter_add_(1, trajectory, flags.to(torch.float32))
    return torch.gather(per_trajectory, 1, trajectory) > 0


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid entries of each slot's row: ``[S, M] -> [S]`` (0 for an empty row)."""
    weights = valid.to(values.dtype)
    return slot_sum(values * weights) / weights.sum(dim=1).clamp(min=1)


def masked_std(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Unbiased standard deviation over valid entries of each row: ``[S, M] -> [S]``."""
    weights = valid.to(values.dtype)
    centred = (values - masked_mean(values, valid)[:, None]) * weights
    return (slot_sum(centred.pow(2)) / (weights.sum(dim=1) - 1).clamp(min=1)).sqrt()


def normalize(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Standardise each seed's valid entries to mean 0, std 1; invalid entries become 0."""
    mean, std = masked_mean(values, valid), masked_std(values, valid)
    return (values - mean[:, None]) / (std[:, None] + 1e-8) * valid


def group_advantages(
    rewards: torch.Tensor, scale_by_std: bool, epsilon: float = 1e-4
) -> torch.Tensor:
    """GRPO's group-relative advantages ``[S, P, G]``: each response's reward minus the mean
    reward of the G responses to its prompt (axis -1), divided by the group's unbiased standard
    deviation plus ``epsilon`` when ``scale_by_std`` (GRPO; Dr. GRPO drops the division, which
    it argues favours prompts whose groups agree). As TRL's ``GRPOTrainer`` computes them (its
    ``scale_rewards`` and the 1e-4)."""
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if not scale_by_std:
        return centred
    return centred / (rewards.std(dim=-1, keepdim=True) + epsilon)

"""Turning one collection or one gradient step into result rows (shared by the algorithms)."""

from __future__ import annotations

import numpy as np
import torch

from bench.advantages import masked_mean
from bench.reductions import trajectory_lengths
from bench.rollout import FinishedEpisodes
from bench.store import RunRecorder


def seed_rows(values: torch.Tensor, seed_index: np.ndarray) -> np.ndarray:
    """Per-seed values ``[S]`` of the recorded seeds (`seed_index`), as float64 numpy."""
    return values.detach().cpu().numpy().astype(np.float64)[seed_index]


def running_index(seed_index: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-seed running index of new items (in order), advancing `counts [S]` in place."""
    index = np.empty(len(seed_index), dtype=np.int64)
    for position, seed in enumerate(seed_index):
        index[position] = counts[seed]
        counts[seed] += 1
    return index


def approx_kl(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """KL(old || new) per seed from per-step log-probabilities ``[S, M]``: the k3 estimator
    mean((r - 1) - log r), r = pi_new / pi_old, over valid steps (float64 ``[S]``)."""
    log_ratio = log_probs - old_log_probs
    return masked_mean(log_ratio.exp() - 1 - log_ratio, valid).to(torch.float64)


def record_episodes(
    recorder: RunRecorder, finished: FinishedEpisodes, episodes_done: np.ndarray,
    wall_time: float,
) -> None:
    """One episode row per finished episode; advances the per-seed `episodes_done` counts."""
    recorder.add_episodes(finished.seed_index, {
        "episode": running_index(finished.seed_index, episodes_done),
        "env_step": finished.env_step,
        "episode_return": finished.episode_return,
        "episode_length": finished.episode_length,
        "terminated": finished.terminated,
        "wall_time": np.full(len(finished.seed_index), wall_time),
    })


def record_update(
    recorder: RunRecorder,
    seed_index: np.ndarray,
    updates_done: np.ndarray,
    env_steps: np.ndarray,
    loss: torch.Tensor,
    terms: dict[str, torch.Tensor],
    valid: torch.Tensor,
    trajectory: torch.Tensor,
    kl: torch.Tensor,
    grad_norm: torch.Tensor,
    learning_rate: float,
    newly_diverged: np.ndarray,
    wall_time: float,
) -> None:
    """One update row per seed in `seed_index` for a gradient step on the steps `valid`
    ``[S, M]``; advances `updates_done`. Per-step terms are averaged over valid steps
    (unweighted); a missing ``value_loss`` or ``clipped`` term gives a null column."""
    def term_mean(name: str) -> np.ndarray:
        if name not in terms:
            return np.full(len(seed_index), np.nan)
        return seed_rows(masked_mean(terms[name], valid), seed_index)

    recorder.add_updates(seed_index, {
        "update": updates_done[seed_index],
        "env_step": env_steps[seed_index],
        "loss": seed_rows(loss, seed_index),
        "policy_loss": term_mean("policy_loss"),
        "value_loss": term_mean("value_loss"),
        "entropy": term_mean("entropy"),
        "approx_kl": seed_rows(kl, seed_index),
        "clip_fraction": term_mean("clipped"),
        "grad_norm": seed_rows(grad_norm, seed_index),
        "learning_rate": np.full(len(seed_index), learning_rate),
        "batch_steps": seed_rows(valid.sum(dim=1), seed_index).astype(np.int64),
        "batch_trajectories": seed_rows(
            (trajectory_lengths(valid, trajectory) > 0).sum(dim=1), seed_index
        ).astype(np.int64),
        "diverged": newly_diverged[seed_index],
        "wall_time": np.full(len(seed_index), wall_time),
    })
    updates_done[seed_index] += 1

"""REINFORCE (Williams, 1992) for S seeds at once.

    for each update, per seed:
        1. rollout:     run the policy for `episodes_per_update` whole episodes
                        (batch_unit=episodes) or exactly `steps_per_update` steps, cutting the
                        episodes still running at the batch end (batch_unit=steps)
        2. advantages:  A_t = R_t - b_t, with R_t the total return R(tau) or the reward-to-go
                        G_t of the trajectory (episode or cut segment; a cut segment's return is
                        completed by `cut_episode`), and b_t none, the batch mean of R_t, or a
                        learned V(s_t)
        3. loss:        l_t = -log pi(a_t|s_t) A_t - c_H H[pi(.|s_t)] + c_V (V(s_t) - R_t)^2 / 2
        4. update:      one gradient step on sum_t w_t l_t, w from the configured reduction

Seeds are a batch axis: every tensor is ``[S, ...]`` and they update in lockstep, a seed
that has its episodes waiting for the others.
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial

import numpy as np
import torch

from bench import reductions
from bench.advantages import (
    broadcast_from_first_step,
    first_steps,
    masked_mean,
    normalize,
    reward_to_go,
    spread_over_trajectory,
)
from bench.config import Job, make_reduction
from bench.envs import make_seed_envs
from bench.networks import Policy, ValueFunction
from bench.optim import SeedOptimizer
from bench.progress import ProgressLine
from bench.records import UpdateRows, approx_kl, record_episodes
from bench.rollout import Batch, EpisodeCollector, StepCollector
from bench.seeding import SeedNoise
from bench.store import RunRecorder


def drop_cut_segments(batch: Batch) -> Batch:
    """The batch without the steps of segments cut at the batch end (cut_episode=drop)."""
    in_cut_segment = spread_over_trajectory(batch.cut, batch.trajectory)
    return replace(batch, valid=batch.valid & ~in_cut_segment)


def returns_and_advantages(
    batch: Batch, critic: ValueFunction | None, algo: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step return targets R_t and advantages A_t, ``[S, M]``."""
    num_seeds, num_envs, steps = batch.valid.shape[0], batch.num_envs, batch.steps_per_env
    time_major = (num_seeds, num_envs, steps)
    valid = batch.valid
    # Episodes that go on past a trajectory's last step: complete the return with V(s').
    continues = torch.zeros_like(batch.cut)
    if algo["cut_episode"] == "bootstrap":
        continues |= batch.cut
    if algo["truncation"] == "bootstrap":
        continues |= batch.truncated
    bootstrap = None
    if continues.any():
        with torch.no_grad():
            bootstrap = torch.where(continues & valid, critic(batch.next_obs), 0.0)
        bootstrap = bootstrap.view(time_major)
    rewards_to_go = reward_to_go(
        batch.rewards.view(time_major), batch.last.view(time_major), algo["gamma"], bootstrap
    ).reshape_as(batch.rewards)
    if algo["returns"] == "total":
        # G_0 of each episode is R(tau) = sum_t gamma^t r_t; every step of it gets that value.
        first = first_steps(valid.view(time_major), batch.last.view(time_major))
        returns = broadcast_from_first_step(
            rewards_to_go, first.reshape_as(valid), batch.trajectory, valid
        )
    else:
        returns = rewards_to_go * valid

    if algo["baseline"] == "none":
        baseline = torch.zeros_like(returns)
    elif algo["baseline"] == "batch_mean":
        baseline = masked_mean(returns, valid)[:, None].expand_as(returns)
    else:
        with torch.no_grad():
            baseline = critic(batch.obs)
    advantages = (returns - baseline) * valid
    if algo["normalize_advantages"]:
        advantages = normalize(advantages, valid)
    return returns, advantages


def per_step_losses(
    slots: slice,
    *,
    policy: Policy,
    critic: ValueFunction | None,
    batch: Batch,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    algo: dict,
) -> dict[str, torch.Tensor]:
    """l_t = -log pi(a_t|s_t) A_t - c_H H_t [+ c_V (V(s_t) - R_t)^2 / 2] on step `slots`."""
    dist = policy.distribution(batch.obs[:, slots])
    policy_loss = -dist.log_prob(batch.actions[:, slots]) * advantages[:, slots]
    entropy = dist.entropy()
    terms = {"policy_loss": policy_loss, "entropy": entropy}
    loss = policy_loss - algo["entropy_coef"] * entropy
    if critic is not None:
        value_loss = 0.5 * (critic(batch.obs[:, slots]) - returns[:, slots]).pow(2)
        terms["value_loss"] = value_loss
        loss = loss + algo["value_coef"] * value_loss
    terms["loss"] = loss
    return terms


def train(job: Job, recorder: RunRecorder, progress: ProgressLine) -> list[int]:
    """Train every seed of `job` for `total_steps` env steps; returns the diverged seeds."""
    config, algo, device = job.config, job.config["algo"], job.device
    num_seeds, total_steps = len(job.seeds), config["total_steps"]
    env_cfg = config["env"]
    envs = make_seed_envs(env_cfg, job.seeds, algo["num_envs"], device)
    spec = envs.spec
    network = algo["network"]
    policy = Policy(
        job.seeds, spec.obs_dim, spec.action_dim, spec.discrete, network["hidden_sizes"],
        network["activation"], network["init_log_std"],
    ).to(device)
    critic = None
    parameters = list(policy.parameters())
    if algo["baseline"] == "value":
        critic = ValueFunction(
            job.seeds, spec.obs_dim, network["hidden_sizes"], network["activation"]
        ).to(device)
        parameters += list(critic.parameters())
    optimizer = SeedOptimizer(parameters, config["optim"], num_seeds, algo["max_grad_norm"])
    reduction = make_reduction(config)
    noise = SeedNoise(job.seeds, device)
    if algo["batch_unit"] == "episodes":
        collector = EpisodeCollector(envs, policy, noise, algo["episodes_per_update"], device)
    else:
        collector = StepCollector(envs, policy, noise, algo["steps_per_update"], device)
    episodes_done = np.zeros(num_seeds, dtype=np.int64)
    updates_done = np.zeros(num_seeds, dtype=np.int64)
    diverged = np.zeros(num_seeds, dtype=bool)
    update_rows = UpdateRows()
    start = time.perf_counter()

    while True:
        acting = ~diverged & (collector.env_steps < total_steps)
        if not acting.any():
            break

        # 1. Rollout: whole episodes or a fixed number of steps per acting seed.
        batch, finished = collector.collect(acting)
        if algo["cut_episode"] == "drop":
            batch = drop_cut_segments(batch)
        record_episodes(recorder, finished, episodes_done, time.perf_counter() - start)
        progress.add_returns(finished.episode_return)

        # 2. Returns and advantages.
        returns, advantages = returns_and_advantages(batch, critic, algo)

        # 3. Per-step losses, computable for any slice of step slots (per_step loops over them).
        step_losses = partial(
            per_step_losses, policy=policy, critic=critic, batch=batch,
            advantages=advantages, returns=returns, algo=algo,
        )

        # 4. Update: the reduction is the one call that turns per-step losses into gradients.
        optimizer.zero_grad()
        weights = reductions.step_weights(reduction, batch.valid, batch.trajectory)
        loss, terms = reductions.backward(reduction, step_losses, weights)
        stepped = torch.as_tensor(acting, device=device)
        grad_norm, newly_diverged = optimizer.step(loss, skip=~stepped)

        # 5. Record: one row per acting seed, with the KL of the step on the batch.
        with torch.no_grad():
            new_log_probs = policy.distribution(batch.obs).log_prob(batch.actions)
        update_rows.add(
            stepped, loss, terms, batch.valid, batch.trajectory,
            approx_kl(new_log_probs, batch.log_probs, batch.valid), grad_norm, newly_diverged,
            optimizer.learning_rate, collector.env_steps, time.perf_counter() - start,
        )
        diverged |= update_rows.flush(recorder, updates_done)
        progress.update(collector.env_steps, int(acting.sum()), int(updates_done.max()))

    envs.close()
    progress.update(collector.env_steps, 0, int(updates_done.max()), final=True)
    return [seed for seed, bad in zip(job.seeds, diverged, strict=True) if bad]

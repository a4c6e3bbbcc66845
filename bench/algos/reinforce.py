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

Slots (grid point, seed) are a batch axis: every tensor is ``[S, ...]``. With whole episodes
a slot updates as soon as its own batch is complete (`bench.rollout.EpisodeCollector` hands
out the batches that are complete, and only those slots compute steps 2-4), so a slot's
numbers are those it gets alone, however long the other slots' episodes are. Learning rates,
reductions and the scalar coefficients are per slot (`bench.slots`).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np
import torch

from bench import reductions
from bench.advantages import (
    Discount,
    broadcast_from_first_step,
    first_steps,
    masked_mean,
    normalize,
    reward_to_go,
    spread_over_trajectory,
)
from bench.diagnostics import BatchShape, make_probe
from bench.envs import make_seed_envs
from bench.loop import Bookkeeping, slot_optimizer, slot_reductions
from bench.networks import Policy, ValueFunction, only_slots
from bench.progress import ProgressLine
from bench.records import PackRecorder, approx_kl
from bench.rollout import Batch, EpisodeCollector, StepCollector
from bench.seeding import SeedNoise
from bench.slots import Slots


def drop_cut_segments(batch: Batch) -> Batch:
    """The batch without the steps of segments cut at the batch end (cut_episode=drop)."""
    in_cut_segment = spread_over_trajectory(batch.cut, batch.trajectory)
    return replace(batch, valid=batch.valid & ~in_cut_segment)


def returns_and_advantages(
    batch: Batch, critic: ValueFunction | None, algo: dict, gamma: Discount
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step return targets R_t and advantages A_t, ``[S, M]`` (`gamma`: per slot)."""
    num_seeds, num_envs, steps = batch.valid.shape[0], batch.num_blocks, batch.block_length
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
        batch.rewards.view(time_major), batch.last.view(time_major), gamma, bootstrap
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
    steps: dict[str, torch.Tensor],
    *,
    policy: Policy,
    critic: ValueFunction | None,
    entropy_coef: torch.Tensor,
    value_coef: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """l_t = -log pi(a_t|s_t) A_t - c_H H_t [+ c_V (V(s_t) - R_t)^2 / 2] on a batch of steps
    (obs, actions, advantages, returns ``[S, K, ...]``; coefficients per slot ``[S, 1]``)."""
    dist = policy.distribution(steps["obs"])
    policy_loss = -dist.log_prob(steps["actions"]) * steps["advantages"]
    entropy = dist.entropy()
    terms = {"policy_loss": policy_loss, "entropy": entropy}
    loss = policy_loss - entropy_coef * entropy
    if critic is not None:
        value_loss = 0.5 * (critic(steps["obs"]) - steps["returns"]).pow(2)
        terms["value_loss"] = value_loss
        loss = loss + value_coef * value_loss
    terms["loss"] = loss
    return terms


def train(slots: Slots, recorder: PackRecorder, progress: ProgressLine) -> np.ndarray:
    """Train every slot for `total_steps` env steps; returns the diverged slots (bool [S])."""
    config, algo, device = slots.config, slots.config["algo"], slots.device
    total_steps, seeds = config["total_steps"], list(slots.seeds)
    envs = make_seed_envs(config["env"], seeds, algo["num_envs"], device)
    spec, network = envs.spec, algo["network"]
    policy = Policy(
        seeds, spec.obs_dim, spec.action_dim, spec.discrete, network["hidden_sizes"],
        network["activation"], network["init_log_std"],
    ).to(device)
    critic = None
    parameters = list(policy.parameters())
    if algo["baseline"] == "value":
        critic = ValueFunction(
            seeds, spec.obs_dim, network["hidden_sizes"], network["activation"]
        ).to(device)
        parameters += list(critic.parameters())
    optimizer = slot_optimizer(slots, parameters)
    reduction = slot_reductions(slots)
    coefficients = {name: slots.tensor(f"algo.{name}")  # [S, 1] each
                    for name in ("gamma", "entropy_coef", "value_coef")}
    noise = SeedNoise(seeds, device)
    if algo["batch_unit"] == "episodes":
        # The hand-out schedule is for speed only: a slot's batches are its own either way.
        ready_fraction, group_ratio = (EpisodeCollector.PER_STEP_SCHEDULE if reduction.per_step
                                       else (None, None))
        collector = EpisodeCollector(envs, policy, noise, algo["episodes_per_update"], device,
                                     ready_fraction=ready_fraction, group_ratio=group_ratio)
    else:
        collector = StepCollector(envs, policy, noise, algo["steps_per_update"], device)
    books = Bookkeeping(slots, recorder, progress)

    def prepared(batch: Batch) -> tuple[Batch, torch.Tensor]:
        """A batch as an update uses it, and its advantages (for gradient diagnostics)."""
        if algo["cut_episode"] == "drop":
            batch = drop_cut_segments(batch)
        gamma = coefficients["gamma"][batch.slots]
        return batch, returns_and_advantages(batch, critic, algo, gamma)[1]

    probe = make_probe(
        slots, recorder, optimizer, sampler=policy, distribution=policy.distribution,
        modules=(policy, critic), policy_params=list(policy.parameters()), advantages=prepared,
        batch_shape=BatchShape(episodes=algo["episodes_per_update"])
        if algo["batch_unit"] == "episodes" else
        BatchShape(num_envs=algo["num_envs"],
                   steps_per_env=algo["steps_per_update"] // algo["num_envs"]))

    while True:
        # Slots that may start a batch; a slot with one in progress finishes it regardless.
        starting = ~books.diverged & (collector.env_steps < total_steps)
        acting = starting | collector.collecting
        if not acting.any():
            break

        # 1. Rollout: whole episodes or a fixed number of steps per acting slot. An episode
        # batch is that of the slots whose batch is complete (`batch.ready`): only they update.
        batch, finished = collector.collect(starting)
        if algo["cut_episode"] == "drop":
            batch = drop_cut_segments(batch)
        books.episodes(finished)
        # Gradient diagnostics (off by default): every reduction's gradient on this batch,
        # before the update, against one from the probe's own episodes.
        if probe is not None:
            probe.measure(batch, collector.env_steps, books.updates_done)

        # 2-5 compute the batch's rows only, the slots `batch.slots`: their coefficients,
        # reductions and networks.
        rows = batch.slots
        coef = {name: values[rows] for name, values in coefficients.items()}
        reduction_of_rows = reduction.take(rows)
        with only_slots(rows, policy, critic):
            # 2. Returns and advantages.
            returns, advantages = returns_and_advantages(batch, critic, algo, coef["gamma"])

            # 3-4. Loss and update: the reduction is the one call that turns per-step losses
            # into gradients (per_step slices the batch and loops).
            optimizer.zero_grad()
            weights = reductions.step_weights(reduction_of_rows, batch.valid, batch.trajectory)
            steps = {"obs": batch.obs, "actions": batch.actions, "advantages": advantages,
                     "returns": returns}
            loss_fn = partial(per_step_losses, policy=policy, critic=critic,
                              entropy_coef=coef["entropy_coef"], value_coef=coef["value_coef"])
            loss, terms = reductions.backward(reduction_of_rows, loss_fn, steps, weights)
            grad_norm, newly_diverged = optimizer.step(loss, skip=~batch.ready, slots=rows)

            # 5. Record: one row per slot that updated, with the KL of the step on the batch.
            with torch.no_grad():
                new_log_probs = policy.distribution(batch.obs).log_prob(batch.actions)
        books.update_rows.add(
            batch.ready, loss, terms, batch.valid, batch.trajectory,
            approx_kl(new_log_probs, batch.log_probs, batch.valid), grad_norm, newly_diverged,
            optimizer.learning_rate, collector.env_steps, books.elapsed(), slots=rows,
        )
        books.end_of_collection(collector.env_steps, acting)

    return books.finish(envs, collector.env_steps)

"""The actor-critic training loop that A2C and PPO share, for S seeds at once.

    for each rollout (all seeds in lockstep, `num_envs` sub-envs per seed):
        1. rollout:     `rollout_steps` steps of every sub-env with the current policy;
                        trajectories are the segments cut by episode ends and the rollout end
        2. advantages:  GAE(lambda) with the critic before the update; returns R = A + V;
                        truncations and rollout cuts bootstrap from V(s'), terminations do not
        3. epochs:      `update_epochs` passes over the rollout in `num_minibatches` shuffled
                        minibatches (per seed); per minibatch:
        4. loss:        the algorithm's per-step loss l_t (a2c.py or ppo.py)
        5. update:      one gradient step on sum_t w_t l_t, w from the configured reduction,
                        computed over the minibatch or once over the rollout (reduction.scope)

`rollout_steps=1 num_envs=1` is the stepwise (online) actor-critic. Every gradient step is
one row of the updates table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from bench import reductions
from bench.advantages import generalized_advantages, normalize
from bench.config import Job, make_reduction
from bench.envs import Normalization, make_seed_envs
from bench.networks import ActorCritic
from bench.optim import SeedOptimizer
from bench.progress import ProgressLine
from bench.records import UpdateRows, approx_kl, record_episodes
from bench.rollout import Batch, MinibatchSampler, StepCollector, gather_slots
from bench.seeding import SeedNoise
from bench.store import RunRecorder

# step_losses(slots, *, net, minibatch, algo) -> per-step terms [S, len(slots)], with "loss".
StepLosses = Callable[..., dict[str, torch.Tensor]]
# Per-step tensors of a rollout that minibatches are gathered from.
MINIBATCH_FIELDS = ("obs", "actions", "log_probs", "advantages", "returns", "values", "trajectory")


def rollout_advantages(
    batch: Batch, net: ActorCritic, algo: dict
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GAE advantages, returns R = A + V and the critic's values V(s_t), ``[S, M]``."""
    time_major = (batch.valid.shape[0], batch.num_envs, batch.steps_per_env)
    with torch.no_grad():
        values = net.values(batch.obs)
        next_values = net.values(batch.next_obs)
    advantages = generalized_advantages(
        batch.rewards.view(time_major), values.view(time_major), next_values.view(time_major),
        batch.terminated.view(time_major), batch.last.view(time_major),
        algo["gamma"], algo["gae_lambda"],
    ).reshape_as(values) * batch.valid
    return advantages, (advantages + values) * batch.valid, values


def train(job: Job, recorder: RunRecorder, progress: ProgressLine, step_losses: StepLosses
          ) -> list[int]:
    """Train every seed of `job` for `total_steps` env steps; returns the diverged seeds."""
    config, algo, device = job.config, job.config["algo"], job.device
    num_seeds, env_cfg, network = len(job.seeds), job.config["env"], algo["network"]
    normalization = Normalization(algo["normalize_observation"], algo["normalize_reward"],
                                  algo["gamma"])
    envs = make_seed_envs(env_cfg, job.seeds, algo["num_envs"], device, normalization)
    spec = envs.spec
    net = ActorCritic(
        job.seeds, spec.obs_dim, spec.action_dim, spec.discrete, network["hidden_sizes"],
        network["activation"], network["init_log_std"], algo["shared_network"],
    ).to(device)
    optimizer = SeedOptimizer(net.parameters(), config["optim"], num_seeds,
                              algo["max_grad_norm"])
    reduction, scope = make_reduction(config), config["reduction"]["scope"]
    steps_per_rollout = algo["num_envs"] * algo["rollout_steps"]
    collector = StepCollector(envs, net, SeedNoise(job.seeds, device), steps_per_rollout, device)
    sampler = MinibatchSampler(job.seeds, algo["num_minibatches"], algo["minibatch_unit"],
                               device)
    num_rollouts = math.ceil(config["total_steps"] / steps_per_rollout)
    base_lr = optimizer.learning_rate
    episodes_done = np.zeros(num_seeds, dtype=np.int64)
    updates_done = np.zeros(num_seeds, dtype=np.int64)
    diverged = np.zeros(num_seeds, dtype=bool)
    update_rows = UpdateRows()
    start = time.perf_counter()

    for rollout_index in range(num_rollouts):
        acting = ~diverged
        if not acting.any():
            break
        if algo["anneal_lr"]:  # linearly to 0 over the run, as CleanRL
            optimizer.set_learning_rate(base_lr * (1 - rollout_index / num_rollouts))

        # 1. Rollout.
        batch, finished = collector.collect(acting)
        record_episodes(recorder, finished, episodes_done, time.perf_counter() - start)
        progress.add_returns(finished.episode_return)

        # 2. Advantages and returns with the critic before the update.
        advantages, returns, values = rollout_advantages(batch, net, algo)
        if algo["normalize_advantages"] == "rollout":
            advantages = normalize(advantages, batch.valid)
        rollout = {"obs": batch.obs, "actions": batch.actions, "log_probs": batch.log_probs,
                   "advantages": advantages, "returns": returns, "values": values,
                   "trajectory": batch.trajectory}
        if scope == "rollout":
            rollout_weights = reductions.step_weights(reduction, batch.valid, batch.trajectory)

        # 3. Epochs of shuffled minibatches.
        acting_on_device = torch.as_tensor(acting, device=device)
        early_stopped = torch.zeros(num_seeds, dtype=torch.bool, device=device)
        for _ in range(algo["update_epochs"]):
            for index, valid in sampler.epoch(batch.valid, batch.trajectory):
                minibatch = {name: gather_slots(rollout[name], index) for name in rollout}
                if algo["normalize_advantages"] == "minibatch":
                    minibatch["advantages"] = normalize(minibatch["advantages"], valid)
                if scope == "rollout":
                    weights = gather_slots(rollout_weights, index) * valid
                else:
                    weights = reductions.step_weights(reduction, valid, minibatch["trajectory"])

                # 4-5. Loss and update: the reduction is the one call that backpropagates.
                stepped = (acting_on_device & ~early_stopped & ~optimizer.diverged
                           & valid.any(dim=1))
                optimizer.zero_grad()
                loss, terms = reductions.backward(
                    reduction, partial(step_losses, net=net, minibatch=minibatch, algo=algo),
                    weights,
                )
                grad_norm, newly_diverged = optimizer.step(loss, skip=~stepped)
                with torch.no_grad():  # KL of this step on its minibatch
                    last_kl = approx_kl(net.distribution(minibatch["obs"]).log_prob(
                        minibatch["actions"]), minibatch["log_probs"], valid)
                update_rows.add(stepped, loss, terms, valid, minibatch["trajectory"], last_kl,
                                grad_norm, newly_diverged, optimizer.learning_rate,
                                collector.env_steps, time.perf_counter() - start)
            if algo.get("target_kl") is not None:  # PPO: a seed stops its epochs (per seed)
                early_stopped |= last_kl > algo["target_kl"]
        diverged |= update_rows.flush(recorder, updates_done)
        progress.update(collector.env_steps, int(acting.sum()), int(updates_done.max()))

    envs.close()
    progress.update(collector.env_steps, 0, int(updates_done.max()), final=True)
    return [seed for seed, bad in zip(job.seeds, diverged, strict=True) if bad]

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
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from bench import reductions
from bench.advantages import Discount, generalized_advantages, normalize
from bench.diagnostics import BatchShape, make_probe
from bench.envs import Normalization, make_seed_envs
from bench.loop import Bookkeeping, slot_optimizer, slot_reductions
from bench.networks import ActorCritic
from bench.progress import ProgressLine
from bench.records import PackRecorder, approx_kl
from bench.rollout import Batch, MinibatchSampler, StepCollector, gather_slots
from bench.seeding import SeedNoise
from bench.slots import Slots

# step_losses(minibatch, *, net, algo, coef) -> per-step terms [S, K] with "loss": the
# algorithm's loss on a batch of steps; `coef` holds per-slot coefficients [S, 1].
StepLosses = Callable[..., dict[str, torch.Tensor]]
# Per-slot loss coefficients (config paths under `algo`); a missing or null one is +inf.
COEFFICIENTS = ("value_coef", "entropy_coef", "clip_coef", "target_kl")


def rollout_advantages(
    batch: Batch, net: ActorCritic, gamma: Discount, gae_lambda: Discount
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GAE advantages, returns R = A + V and the critic's values V(s_t), ``[S, M]``."""
    time_major = (batch.valid.shape[0], batch.num_blocks, batch.block_length)
    with torch.no_grad():
        values = net.values(batch.obs)
        next_values = net.values(batch.next_obs)
    advantages = generalized_advantages(
        batch.rewards.view(time_major), values.view(time_major), next_values.view(time_major),
        batch.terminated.view(time_major), batch.last.view(time_major), gamma, gae_lambda,
    ).reshape_as(values) * batch.valid
    return advantages, (advantages + values) * batch.valid, values


def train(slots: Slots, recorder: PackRecorder, progress: ProgressLine,
          step_losses: StepLosses) -> np.ndarray:
    """Train every slot for `total_steps` env steps; returns the diverged slots (bool [S])."""
    config, algo, device = slots.config, slots.config["algo"], slots.device
    seeds, network = list(slots.seeds), algo["network"]
    # Reward normalisation discounts with gamma, which is then the same for every slot.
    normalization = Normalization(algo["normalize_observation"], algo["normalize_reward"],
                                  algo["gamma"])
    envs = make_seed_envs(config["env"], seeds, algo["num_envs"], device, normalization)
    spec = envs.spec
    net = ActorCritic(
        seeds, spec.obs_dim, spec.action_dim, spec.discrete, network["hidden_sizes"],
        network["activation"], network["init_log_std"], algo["shared_network"],
    ).to(device)
    optimizer = slot_optimizer(slots, net.parameters())
    reduction, scope = slot_reductions(slots), config["reduction"]["scope"]
    gamma, gae_lambda = slots.tensor("algo.gamma"), slots.tensor("algo.gae_lambda")
    coef = {name: slots.tensor(f"algo.{name}") for name in COEFFICIENTS}
    target_kl = coef["target_kl"][:, 0].to(torch.float64)
    loss_fn = partial(step_losses, net=net, algo=algo, coef=coef)
    steps_per_rollout = algo["num_envs"] * algo["rollout_steps"]
    collector = StepCollector(envs, net, SeedNoise(seeds, device), steps_per_rollout, device)
    sampler = MinibatchSampler(seeds, algo["num_minibatches"], algo["minibatch_unit"], device)
    num_rollouts = math.ceil(config["total_steps"] / steps_per_rollout)
    books = Bookkeeping(slots, recorder, progress)

    def prepared(batch: Batch) -> tuple[Batch, torch.Tensor]:
        """A batch and its advantages, normalised over the batch where the algorithm normalises
        them at all (for gradient diagnostics)."""
        rows = batch.slots
        advantages = rollout_advantages(batch, net, gamma[rows], gae_lambda[rows])[0]
        if algo["normalize_advantages"] != "none":
            advantages = normalize(advantages, batch.valid)
        return batch, advantages

    probe = make_probe(
        slots, recorder, optimizer, sampler=net, distribution=net.distribution, modules=(net,),
        policy_params=[*net.torso.parameters(), *net.policy.parameters()], advantages=prepared,
        batch_shape=BatchShape(num_envs=algo["num_envs"], steps_per_env=algo["rollout_steps"]))

    for rollout_index in range(num_rollouts):
        acting = ~books.diverged
        if not acting.any():
            break
        if algo["anneal_lr"]:  # linearly to 0 over the run, as CleanRL, from each slot's lr
            optimizer.set_learning_rate(
                optimizer.base_learning_rate * (1 - rollout_index / num_rollouts))

        # 1. Rollout.
        batch, finished = collector.collect(acting)
        books.episodes(finished)
        # Gradient diagnostics (off by default): every reduction's gradient on this rollout,
        # before the first epoch, against one from the probe's own episodes.
        if probe is not None:
            probe.measure(batch, collector.env_steps, books.updates_done)

        # 2. Advantages and returns with the critic before the update.
        advantages, returns, values = rollout_advantages(batch, net, gamma, gae_lambda)
        if algo["normalize_advantages"] == "rollout":
            advantages = normalize(advantages, batch.valid)
        rollout = {"obs": batch.obs, "actions": batch.actions, "log_probs": batch.log_probs,
                   "advantages": advantages, "returns": returns, "values": values,
                   "trajectory": batch.trajectory}
        if scope == "rollout":
            rollout_weights = reductions.step_weights(reduction, batch.valid, batch.trajectory)

        # 3. Epochs of shuffled minibatches.
        acting_on_device = torch.as_tensor(acting, device=device)
        early_stopped = torch.zeros(len(slots), dtype=torch.bool, device=device)
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
                loss, terms = reductions.backward(reduction, loss_fn, minibatch, weights)
                grad_norm, newly_diverged = optimizer.step(loss, skip=~stepped)
                with torch.no_grad():  # KL of this step on its minibatch
                    last_kl = approx_kl(net.distribution(minibatch["obs"]).log_prob(
                        minibatch["actions"]), minibatch["log_probs"], valid)
                books.update_rows.add(stepped, loss, terms, valid, minibatch["trajectory"],
                                      last_kl, grad_norm, newly_diverged,
                                      optimizer.learning_rate, collector.env_steps,
                                      books.elapsed())
            # PPO's target_kl (+inf where unset): a slot stops its epochs for this rollout.
            early_stopped |= last_kl > target_kl
        books.end_of_collection(collector.env_steps, acting)

    return books.finish(envs, collector.env_steps)

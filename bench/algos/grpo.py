"""GRPO (Shao et al., 2024) on a verifiable token task, for S slots at once.

    base model: a supervised warm start per seed (`bench.lm.warm_start`, cached); it is the RL
                start and the KL reference pi_ref
    for each batch:
        1. rollout:     `prompts_per_update` prompts per slot, `group_size` (G) responses to each,
                        sampled token by token until END or the task's max_response_length
        2. advantages:  A_i = r_i - mean(r of i's group), divided by (std(r of i's group) + 1e-4)
                        where `scale_rewards` (GRPO; Dr. GRPO drops it), for every token of i
        3. epochs:      `update_epochs` passes over the batch in `num_minibatches` shuffled
                        minibatches of responses (per slot); per minibatch:
        4. loss:        l_t = -min(rho_t A_i, clip(rho_t, 1 - eps_low, 1 + eps_high) A_i)
                              + beta KL_t(pi || pi_ref) - c_H H_t,   rho_t = pi / pi_old
                        per response token t (TRL's GRPOTrainer; eps_high > eps_low is DAPO's
                        clip-higher); tokens after END are masked everywhere
        5. update:      one gradient step on sum_t w_t l_t, w from the configured reduction over
                        the minibatch's tokens (reduction.scope=minibatch, TRL's per-step
                        normalisation) or over the whole batch (rollout): the reduction is the
                        TRL loss_type / verl loss_agg_mode (README)

`total_steps` counts sampled responses per slot (the `env_step` column: samples seen). Each
response is an episode row (reward, length, whether it ended, whether it is correct); each
gradient step an update row that also carries its batch's accuracy and response lengths and
the KL to the reference (its `approx_kl` is null).
Slots (grid point, seed) are a batch axis as for the other algorithms: learning rates,
reductions, `scale_rewards`, the clip range, beta and the entropy coefficient are per slot.
"""

from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path

import numpy as np
import torch

from bench import reductions
from bench.advantages import group_advantages
from bench.lm.tasks import END, PAD, Prompts, Task, make_task
from bench.lm.transformer import SlotTransformer, sample, sequence_logprobs
from bench.lm.warm_start import CACHE_DIRNAME, base_models
from bench.loop import Bookkeeping, slot_optimizer, slot_reductions
from bench.progress import ProgressLine
from bench.records import PackRecorder
from bench.rollout import FinishedEpisodes, MinibatchSampler, gather_slots
from bench.seeding import CounterStreams
from bench.slots import Slots

# Per-slot coefficients of the loss (config paths under `algo`), ``[S, 1, 1]`` each.
COEFFICIENTS = ("epsilon_low", "epsilon_high", "beta", "entropy_coef")


def task_of(env: dict) -> Task:
    """The token task an `env` config names (env.id; its kwargs; max_episode_steps is the
    task's max_response_length)."""
    return make_task(env["id"], max_response_length=env["max_episode_steps"],
                     **(env["kwargs"] or {}))


def token_losses(batch: dict[str, torch.Tensor], *, policy: SlotTransformer,
                 coef: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-token terms ``[S, B*T]`` of GRPO's loss on a batch of responses (prompt tokens and
    mask ``[S, B, W]``; responses, their mask, old and reference log-probabilities
    ``[S, B, T]``; advantages ``[S, B]``): the clipped policy loss, the KL to the reference
    (k3), the entropy, whether the ratio was clipped, and their total "loss". Exactly 0 after
    END (the mask), where no gradient flows."""
    mask = batch["response_mask"]
    logprobs, entropy = sequence_logprobs(policy, batch["prompt_tokens"], batch["prompt_mask"],
                                          batch["responses"], mask)
    advantages = batch["advantages"][..., None]
    ratio = (logprobs - batch["old_logprobs"]).exp()
    low, high = 1 - coef["epsilon_low"], 1 + coef["epsilon_high"]
    clipped_ratio = torch.minimum(torch.maximum(ratio, low), high)
    policy_loss = -torch.minimum(ratio * advantages, clipped_ratio * advantages)
    clipped = ((ratio < low) & (advantages < 0)) | ((ratio > high) & (advantages > 0))
    log_ref_ratio = batch["ref_logprobs"] - logprobs
    kl_reference = log_ref_ratio.exp() - log_ref_ratio - 1
    loss = policy_loss + coef["beta"] * kl_reference - coef["entropy_coef"] * entropy
    zero = torch.zeros((), dtype=loss.dtype, device=loss.device)
    terms = {"policy_loss": policy_loss, "kl_reference": kl_reference, "entropy": entropy,
             "clipped": clipped.to(loss.dtype), "loss": loss}
    return {name: torch.where(mask, value, zero).flatten(1) for name, value in terms.items()}


def token_layout(response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reduction's view of responses ``[S, B, T]``: valid tokens and each token's response
    (its trajectory id), both ``[S, B*T]``."""
    num_slots, batch, width = response_mask.shape
    trajectory = torch.arange(batch, device=response_mask.device).repeat_interleave(width)
    return response_mask.flatten(1), trajectory.expand(num_slots, -1)


def batch_statistics(correct: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    """Accuracy and mean response length, overall and over correct and incorrect responses,
    per slot (``[S]``, NaN where a group is empty) of verdicts and lengths ``[S, B]``."""
    lengths = lengths.to(torch.float64)

    def mean_where(where: torch.Tensor) -> torch.Tensor:
        count = where.sum(dim=1)
        total = torch.where(where, lengths, 0.0).sum(dim=1)
        return torch.where(count > 0, total / count.clamp(min=1), math.nan)

    return {"accuracy": correct.to(torch.float64).mean(dim=1),
            "response_length": lengths.mean(dim=1),
            "response_length_correct": mean_where(correct),
            "response_length_incorrect": mean_where(~correct)}


def train(slots: Slots, recorder: PackRecorder, progress: ProgressLine) -> np.ndarray:
    """Train every slot for `total_steps` sampled responses; returns the diverged slots."""
    config, algo, device = slots.config, slots.config["algo"], slots.device
    seeds = list(slots.seeds)
    task = task_of(config["env"])
    cache_dir = Path(config["results_dir"]) / config["name"] / CACHE_DIRNAME
    policy = base_models(seeds, task, config["env"], algo["network"], algo["warm_start"],
                         device, cache_dir)
    reference = copy.deepcopy(policy).requires_grad_(False)
    optimizer = slot_optimizer(slots, policy.parameters())
    reduction, scope = slot_reductions(slots), config["reduction"]["scope"]
    coef = {name: slots.tensor(f"algo.{name}")[:, :, None] for name in COEFFICIENTS}
    scale_rewards = torch.tensor(slots.values("algo.scale_rewards"), device=device)[:, None]
    loss_fn = partial(token_losses, policy=policy, coef=coef)
    prompts_per_update, group_size = algo["prompts_per_update"], algo["group_size"]
    responses_per_update = prompts_per_update * group_size
    prompt_streams = CounterStreams.for_seeds(seeds, "task_prompts", device)
    sampling_streams = CounterStreams.for_seeds(seeds, "actions", device)
    sampler = MinibatchSampler(seeds, algo["num_minibatches"], "steps", device)
    every_response = torch.ones(len(slots), responses_per_update, dtype=torch.bool,
                                device=device)
    num_batches = math.ceil(config["total_steps"] / responses_per_update)
    no_kl = torch.full((len(slots),), math.nan, dtype=torch.float64, device=device)
    env_steps = np.zeros(len(slots), dtype=np.int64)
    books = Bookkeeping(slots, recorder, progress)

    for _ in range(num_batches):
        acting = ~books.diverged
        if not acting.any():
            break

        # 1. Rollout: G responses to each of P prompts per slot.
        prompts: Prompts = task.sample_prompts(prompt_streams, prompts_per_update)
        prompts = prompts.repeat(group_size)
        uniforms = sampling_streams.uniform((responses_per_update, task.max_response_length))
        responses, response_mask, _ = sample(
            policy, prompts.tokens, prompts.mask, task.max_response_length, END,
            uniforms[:, 0], pad_token=PAD)
        correct, rewards = task.reward(prompts, responses, response_mask)
        lengths = response_mask.sum(dim=-1)
        ended = ((responses == END) & response_mask).any(dim=-1)
        env_steps += responses_per_update * acting
        books.episodes(_responses_as_episodes(acting, env_steps, rewards, lengths, ended,
                                              correct))
        statistics = batch_statistics(correct, lengths)

        # 2. Group-relative advantages, one per response.
        grouped = rewards.view(len(slots), prompts_per_update, group_size)
        advantages = torch.where(scale_rewards[:, :, None],
                                 group_advantages(grouped, scale_by_std=True),
                                 group_advantages(grouped, scale_by_std=False))
        with torch.no_grad():  # old and reference log-probabilities, by a full forward pass
            old_logprobs, _ = sequence_logprobs(policy, prompts.tokens, prompts.mask, responses,
                                                response_mask)
            ref_logprobs, _ = sequence_logprobs(reference, prompts.tokens, prompts.mask,
                                                responses, response_mask)
        batch = {"prompt_tokens": prompts.tokens, "prompt_mask": prompts.mask,
                 "responses": responses, "response_mask": response_mask,
                 "old_logprobs": old_logprobs, "ref_logprobs": ref_logprobs,
                 "advantages": advantages.view(len(slots), -1)}
        if scope == "rollout":
            batch_weights = reductions.step_weights(
                reduction, *token_layout(response_mask)).view(response_mask.shape)

        # 3. Epochs of shuffled minibatches of responses.
        acting_on_device = torch.as_tensor(acting, device=device)
        for _ in range(algo["update_epochs"]):
            # Each response is one unit to shuffle (unit "steps": the trajectory ids go unused).
            for index, _ in sampler.epoch(every_response, every_response.long()):
                minibatch = {name: gather_slots(value, index) for name, value in batch.items()}
                valid, trajectory = token_layout(minibatch["response_mask"])
                if scope == "rollout":
                    weights = gather_slots(batch_weights, index).flatten(1)
                else:
                    weights = reductions.step_weights(reduction, valid, trajectory)

                # 4-5. Loss and update: the reduction is the one call that backpropagates.
                stepped = acting_on_device & ~optimizer.diverged
                optimizer.zero_grad()
                loss, terms = reductions.backward(reduction, loss_fn, minibatch, weights)
                grad_norm, newly_diverged = optimizer.step(loss, skip=~stepped)
                # approx_kl is null: a forward pass after every step would cost a quarter of
                # the training time; kl_reference and clip_fraction say how far the policy moved.
                books.update_rows.add(stepped, loss, terms, valid, trajectory, no_kl,
                                      grad_norm, newly_diverged, optimizer.learning_rate,
                                      env_steps, books.elapsed(), batch_columns=statistics)
        books.end_of_collection(env_steps, acting)

    return books.finish(None, env_steps)


def _responses_as_episodes(acting: np.ndarray, env_steps: np.ndarray, rewards: torch.Tensor,
                           lengths: torch.Tensor, ended: torch.Tensor,
                           correct: torch.Tensor) -> FinishedEpisodes:
    """One episode row per response of the acting slots, in sampling order."""
    per_slot = rewards.shape[1]
    seed_index = np.repeat(np.flatnonzero(acting), per_slot)

    def host(values: torch.Tensor) -> np.ndarray:
        return values[torch.as_tensor(acting, device=values.device)].flatten().cpu().numpy()

    return FinishedEpisodes(seed_index, env_steps[seed_index],
                            host(rewards).astype(np.float64), host(lengths).astype(np.int64),
                            host(ended), host(correct))

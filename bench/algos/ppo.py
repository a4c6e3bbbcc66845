"""PPO with the clipped surrogate (Schulman et al., 2017) for S seeds at once.

    loop (bench/algos/actor_critic.py): rollout of `rollout_steps` x `num_envs`, GAE(lambda)
    advantages, then `update_epochs` epochs of `num_minibatches` minibatches, one gradient
    step on sum_t w_t l_t each, with r_t = pi(a_t|s_t) / pi_old(a_t|s_t) and

        l_t = max(-A_t r_t, -A_t clip(r_t, 1 - eps, 1 + eps))
              + c_V max((V - R_t)^2, (V_old + clip(V - V_old, -eps, eps) - R_t)^2) / 2
              - c_H H[pi(.|s_t)]

(the value term unclipped, (V - R_t)^2 / 2, when `clip_value_loss` is false), as in CleanRL's
ppo.py. With `target_kl`, a seed whose KL on its last minibatch exceeds it stops its epochs
for this rollout (CleanRL stops the whole batch; here each seed decides for itself).
"""

from __future__ import annotations

from functools import partial

import torch

from bench.algos import actor_critic
from bench.networks import ActorCritic


def step_losses(
    steps: dict[str, torch.Tensor], *, net: ActorCritic, algo: dict,
    coef: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """PPO's per-step loss terms on a batch of steps: ``[S, K]`` (coefficients per slot)."""
    dist, values = net(steps["obs"])
    ratio = (dist.log_prob(steps["actions"]) - steps["log_probs"]).exp()
    advantages, clip = steps["advantages"], coef["clip_coef"]
    policy_loss = torch.max(-advantages * ratio,
                            -advantages * torch.clamp(ratio, 1 - clip, 1 + clip))
    returns, old_values = steps["returns"], steps["values"]
    value_loss = (values - returns).pow(2)
    if algo["clip_value_loss"]:
        clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
        value_loss = torch.max(value_loss, (clipped_values - returns).pow(2))
    value_loss = 0.5 * value_loss
    entropy = dist.entropy()
    loss = policy_loss + coef["value_coef"] * value_loss - coef["entropy_coef"] * entropy
    return {"loss": loss, "policy_loss": policy_loss, "value_loss": value_loss,
            "entropy": entropy, "clipped": ((ratio - 1).abs() > clip).to(ratio.dtype)}


train = partial(actor_critic.train, step_losses=step_losses)

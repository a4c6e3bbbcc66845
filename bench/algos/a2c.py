"""A2C (Mnih et al., 2016, synchronous variant) for S seeds at once.

    loop (bench/algos/actor_critic.py): rollout of `rollout_steps` x `num_envs`, GAE(lambda)
    advantages, then per minibatch (one, by default) one gradient step on sum_t w_t l_t with

        l_t = -log pi(a_t|s_t) A_t  +  c_V (V(s_t) - R_t)^2  -  c_H H[pi(.|s_t)]

The value term is the squared error without a 1/2, as in Stable-Baselines3's A2C.
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
    """A2C's per-step loss terms on a batch of steps: ``[S, K]`` (coefficients per slot)."""
    dist, values = net(steps["obs"])
    policy_loss = -dist.log_prob(steps["actions"]) * steps["advantages"]
    value_loss = (values - steps["returns"]).pow(2)
    entropy = dist.entropy()
    loss = policy_loss + coef["value_coef"] * value_loss - coef["entropy_coef"] * entropy
    return {"loss": loss, "policy_loss": policy_loss, "value_loss": value_loss,
            "entropy": entropy}


train = partial(actor_critic.train, step_losses=step_losses)

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
    slots: slice, *, net: ActorCritic, minibatch: dict[str, torch.Tensor], algo: dict
) -> dict[str, torch.Tensor]:
    """A2C's per-step loss terms on the minibatch's step `slots`: ``[S, len(slots)]``."""
    dist, values = net(minibatch["obs"][:, slots])
    policy_loss = -dist.log_prob(minibatch["actions"][:, slots]) * minibatch["advantages"][:, slots]
    value_loss = (values - minibatch["returns"][:, slots]).pow(2)
    entropy = dist.entropy()
    loss = policy_loss + algo["value_coef"] * value_loss - algo["entropy_coef"] * entropy
    return {"loss": loss, "policy_loss": policy_loss, "value_loss": value_loss,
            "entropy": entropy}


train = partial(actor_critic.train, step_losses=step_losses)

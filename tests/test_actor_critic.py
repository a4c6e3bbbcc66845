"""A2C/PPO machinery: GAE on a hand-built rollout, minibatch splits, reduction scope."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from bench import reductions
from bench.advantages import generalized_advantages
from bench.algos import a2c, ppo
from bench.envs import Normalization, SeedEnvs, describe_env, make_env
from bench.networks import ActorCritic
from bench.reductions import Reduction
from bench.rollout import MinibatchSampler, gather_slots
from bench.seeding import env_reset_seeds

GAMMA, LAMBDA = 0.9, 0.8


def test_gae_on_a_hand_built_rollout() -> None:
    """One sub-env, 6 steps: an episode that terminates at t=1, one truncated at t=3 (bootstraps
    from the final observation's value), and a segment cut by the rollout end at t=5."""
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    values = torch.tensor([0.5, 0.4, 0.3, 0.2, 0.1, 0.7])
    # V(s'): obs[t+1] inside a trajectory, the final observation at the truncation (9.0), the
    # observation after the cut (8.0); the terminal's successor value (99) must be ignored.
    next_values = torch.tensor([0.4, 99.0, 0.2, 9.0, 0.7, 8.0])
    terminated = torch.tensor([False, True, False, False, False, False])
    last = torch.tensor([False, True, False, True, False, True])

    def expected() -> list[float]:
        """Independently: A_t = sum_k (gamma lambda)^k delta_{t+k} within the trajectory."""
        deltas = [
            rewards[t] + GAMMA * (0.0 if terminated[t] else next_values[t]) - values[t]
            for t in range(6)
        ]
        out = []
        for t in range(6):
            total, k = 0.0, t
            while True:
                total += (GAMMA * LAMBDA) ** (k - t) * deltas[k]
                if last[k]:
                    break
                k += 1
            out.append(float(total))
        return out

    advantages = generalized_advantages(
        *(x.view(1, 1, 6) for x in (rewards, values, next_values, terminated, last)),
        GAMMA,
        LAMBDA,
    )
    torch.testing.assert_close(advantages.flatten(), torch.tensor(expected()))
    # Hand values for two entries, to pin the formula itself.
    assert advantages[0, 0, 1].item() == pytest.approx(2.0 - 0.4)  # terminal: r - V
    assert advantages[0, 0, 5].item() == pytest.approx(6.0 + GAMMA * 8.0 - 0.7)  # cut: bootstrap
    # lambda = 1 gives discounted return-to-go (with bootstrap) minus V.
    monte_carlo = generalized_advantages(
        *(x.view(1, 1, 6) for x in (rewards, values, next_values, terminated, last)), GAMMA, 1.0
    )
    assert monte_carlo[0, 0, 2].item() == pytest.approx(3.0 + GAMMA * (4.0 + GAMMA * 9.0) - 0.3)


def ragged_rollout(num_seeds: int = 3, slots: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    valid = torch.ones(num_seeds, slots, dtype=torch.bool)
    valid[2] = False  # a seed that does not act
    cuts = [[5, 6, 13, 24], [2, 3, 9, 17, 24], [24]]
    trajectory = torch.zeros(num_seeds, slots, dtype=torch.long)
    for s, ends in enumerate(cuts):
        start = 0
        for number, end in enumerate(ends):
            trajectory[s, start:end] = number
            start = end
    return valid, trajectory


@pytest.mark.parametrize("unit", ["steps", "segments"])
def test_every_step_is_in_exactly_one_minibatch_per_epoch(unit: str) -> None:
    valid, trajectory = ragged_rollout()
    sampler = MinibatchSampler([0, 1, 2], num_minibatches=4, unit=unit)
    orders = []
    for _ in range(2):
        minibatches = sampler.epoch(valid, trajectory)
        assert len(minibatches) == 4
        for s in range(3):
            used = torch.cat([index[s][mask[s]] for index, mask in minibatches])
            assert sorted(used.tolist()) == torch.nonzero(valid[s]).flatten().tolist()
        if unit == "steps":
            sizes = {int(mask[0].sum()) for _, mask in minibatches}
            assert sizes == {6}
        else:  # each trajectory lies in one minibatch, whole
            for index, mask in minibatches:
                ids = trajectory[0][index[0][mask[0]]]
                for i in ids.unique():
                    assert (ids == i).sum() == (trajectory[0] == i).sum()
        orders.append([index[0][mask[0]].tolist() for index, mask in minibatches])
    assert orders[0] != orders[1]  # reshuffled every epoch


def actor_critic_batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    valid, trajectory = ragged_rollout()
    num_seeds, slots = valid.shape
    rollout = {
        "obs": torch.randn(num_seeds, slots, 4, generator=generator),
        "actions": torch.randint(0, 2, (num_seeds, slots), generator=generator),
        "log_probs": torch.full((num_seeds, slots), -0.7),
        "advantages": torch.randn(num_seeds, slots, generator=generator),
        "returns": torch.randn(num_seeds, slots, generator=generator),
        "values": torch.zeros(num_seeds, slots),
        "trajectory": trajectory,
    }
    net = ActorCritic([0, 1, 2], 4, 2, True, [8, 8], "tanh", 0.0, shared=False)
    return net, rollout, valid


def gradient_of(net, losses, batch, weights) -> list[torch.Tensor]:
    net.zero_grad()
    reductions.backward(Reduction("sum"), losses, batch, weights)
    return [p.grad.clone() for p in net.parameters()]


def coefficients(num_slots: int = 3) -> dict[str, torch.Tensor]:
    values = {"value_coef": 0.5, "entropy_coef": 0.01, "clip_coef": 0.2}
    return {name: torch.full((num_slots, 1), value) for name, value in values.items()}


@pytest.mark.parametrize("name", ["sum", "mean", "traj_mean"])
@pytest.mark.parametrize("algorithm", [a2c, ppo])
def test_rollout_scope_minibatch_gradients_sum_to_the_rollout_gradient(name, algorithm) -> None:
    net, rollout, valid = actor_critic_batch()
    losses = partial(algorithm.step_losses, net=net, algo={"clip_value_loss": True},
                     coef=coefficients())
    reduction = Reduction(name)
    rollout_weights = reductions.step_weights(reduction, valid, rollout["trajectory"])
    full = gradient_of(net, losses, rollout, rollout_weights)
    summed = [torch.zeros_like(g) for g in full]
    for index, mask in MinibatchSampler([0, 1, 2], 4, "steps").epoch(valid, rollout["trajectory"]):
        minibatch = {key: gather_slots(value, index) for key, value in rollout.items()}
        weights = gather_slots(rollout_weights, index) * mask
        parts = gradient_of(net, losses, minibatch, weights)
        summed = [a + b for a, b in zip(summed, parts, strict=True)]
    for a, b in zip(summed, full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_minibatch_scope_weights_use_the_minibatch_only() -> None:
    _, rollout, valid = actor_critic_batch()
    index, mask = MinibatchSampler([0, 1, 2], 4, "steps").epoch(valid, rollout["trajectory"])[0]
    weights = reductions.step_weights(
        Reduction("mean"), mask, gather_slots(rollout["trajectory"], index)
    )
    torch.testing.assert_close(weights[0].sum(), torch.tensor(1.0, dtype=torch.float64))


def test_per_step_loop_matches_sum_for_ppo_losses() -> None:
    net, rollout, valid = actor_critic_batch()
    losses = partial(ppo.step_losses, net=net, algo={"clip_value_loss": True},
                     coef=coefficients())
    weights = reductions.step_weights(Reduction("sum"), valid, rollout["trajectory"])
    expected = gradient_of(net, losses, rollout, weights)
    net.zero_grad()
    reductions.backward(Reduction("per_step"), losses, rollout, weights)
    for p, g in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_reward_normalisation_keeps_raw_rewards_for_episode_statistics() -> None:
    spec = describe_env("Pendulum-v1", 5)
    envs = SeedEnvs(spec, [3], 1, normalization=Normalization(observation=True, reward=True))
    replay = make_env("Pendulum-v1", 5)
    replay.reset(seed=env_reset_seeds(3, 1)[0])
    action = torch.full((1, 1, 1), 1.0)
    for _ in range(7):  # across an episode end (step limit 5)
        step = envs.step(action, torch.tensor([True]))
        _, raw, *_ = replay.step(action[0, 0].numpy())
        assert step.raw_reward[0, 0] == pytest.approx(raw)
        assert step.reward[0, 0] != pytest.approx(raw)
        if step.truncated[0, 0]:
            replay.reset()

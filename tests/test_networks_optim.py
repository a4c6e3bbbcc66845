"""Seed-batched networks and the per-slot optimiser: independence across the leading axis."""

from __future__ import annotations

import pytest
import torch

from bench.networks import Policy, ValueFunction, _in_sequence
from bench.optim import SlotOptimizer

ADAM = {"name": "adam", "lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}


def policy(seeds: list[int], discrete: bool = True) -> Policy:
    return Policy(
        seeds,
        obs_dim=4,
        action_dim=3,
        discrete=discrete,
        hidden_sizes=[16, 16],
        activation="tanh",
        init_log_std=-0.5,
    )


def test_a_seed_has_the_same_initial_network_whatever_else_is_in_the_job() -> None:
    alone, together = policy([7]), policy([3, 7, 11])
    for a, b in zip(alone.parameters(), together.parameters(), strict=True):
        torch.testing.assert_close(a[0], b[1], rtol=0, atol=0)
    assert not torch.allclose(together.body.layers[0].weight[0], together.body.layers[0].weight[1])
    value = ValueFunction([7], 4, [16, 16], "tanh")
    assert not torch.allclose(value.body.layers[0].weight, alone.body.layers[0].weight)


@pytest.mark.parametrize("discrete", [True, False])
def test_sample_log_probs_match_the_distribution(discrete: bool) -> None:
    net = policy([0, 1], discrete)
    obs = torch.randn(2, 64, 4)
    noise = torch.rand(2, 64) if discrete else torch.randn(2, 64, 3)
    actions, log_probs = net.sample(obs, noise)
    with torch.no_grad():
        torch.testing.assert_close(log_probs, net.distribution(obs).log_prob(actions))


def test_discrete_sampling_follows_the_policy_probabilities() -> None:
    net = policy([0])
    obs = torch.zeros(1, 1, 4).expand(1, 20000, 4)
    actions, _ = net.sample(obs, torch.rand(1, 20000, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        probs = net.distribution(obs[:, :1]).probs[0, 0]
    frequencies = torch.bincount(actions.flatten(), minlength=3) / 20000
    torch.testing.assert_close(frequencies, probs, atol=0.015, rtol=0)


def test_grad_norm_and_clipping_are_per_slot() -> None:
    net = policy([0, 1, 2])
    optimizer = SlotOptimizer(net.parameters(), [ADAM] * 3, [0.5] * 3)
    scale = torch.tensor([1.0, 100.0, 0.001])
    (net.body(torch.ones(3, 2, 4)).sum(dim=(1, 2)) * scale).sum().backward()
    expected_norms = torch.stack(
        [
            torch.cat([p.grad[s].flatten() for p in net.parameters() if p.grad is not None]).norm()
            for s in range(3)
        ]
    )
    grad_norm, diverged = optimizer.step(torch.zeros(3))
    torch.testing.assert_close(grad_norm.float(), expected_norms, rtol=1e-5, atol=0)
    assert not diverged.any()


def test_grad_clipping_matches_torch_for_each_slot() -> None:
    nets = [policy([seed]) for seed in (0, 1)]
    batched = policy([0, 1])
    obs = torch.randn(2, 5, 4)
    sgd = {"name": "sgd", "lr": ADAM["lr"], "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}
    max_norms = [0.1, 0.05]
    optimizer = SlotOptimizer(batched.parameters(), [sgd, sgd], max_norms)
    (batched.body(obs).pow(2).sum(dim=(1, 2)) * 50).sum().backward()
    optimizer.step(torch.zeros(2))
    for s, net in enumerate(nets):
        single = torch.optim.SGD(net.parameters(), lr=ADAM["lr"])
        (net.body(obs[s : s + 1]).pow(2).sum() * 50).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), max_norms[s])
        single.step()
        for a, b in zip(net.parameters(), batched.parameters(), strict=True):
            torch.testing.assert_close(a[0], b[s], rtol=1e-5, atol=1e-7)


def test_a_diverged_slot_is_frozen_and_the_others_go_on() -> None:
    net = policy([0, 1, 2])
    optimizer = SlotOptimizer(net.parameters(), [ADAM] * 3, [None] * 3)
    before = [p.detach().clone() for p in net.parameters()]
    loss = net.body(torch.ones(3, 2, 4)).sum(dim=(1, 2))
    loss.sum().backward()
    for p in net.parameters():
        p.grad[1] = float("nan")
    _, diverged = optimizer.step(torch.tensor([0.0, float("nan"), 0.0]))
    assert diverged.tolist() == [False, True, False]
    for old, new in zip(before, net.parameters(), strict=True):
        assert torch.equal(old[1], new[1])
        assert not torch.equal(old[[0, 2]], new[[0, 2]])
    # Later steps keep it frozen and do not report it again.
    optimizer.zero_grad()
    net.body(torch.ones(3, 2, 4)).sum().backward()
    _, diverged = optimizer.step(torch.zeros(3))
    assert not diverged.any()
    for old, new in zip(before, net.parameters(), strict=True):
        assert torch.equal(old[1], new[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_block_sums_are_cumsums_last_value_bit_for_bit(dtype: torch.dtype) -> None:
    """SeedLinear's backward adds its block sums with `_in_sequence`, which must give what the
    cumulative sum it replaced gave (the committed evidence was made with it), on strided
    views as the backward passes them and for any number of blocks."""
    generator = torch.Generator().manual_seed(0)
    for blocks in (2, 3, 7, 40):
        values = torch.randn(3, 9, blocks, 17, generator=generator) * 100
        strided = values.to(dtype).transpose(1, 2)  # [3, blocks, 9, 17], not contiguous
        assert not strided.is_contiguous()
        expected = strided.cumsum(dim=1)[:, -1]
        assert torch.equal(_in_sequence(strided), expected), blocks

"""Episode batches without lockstep: a slot's batch is handed out when it is complete, and what
each slot collects is exactly what it collects alone, whatever the schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.envs import make_seed_envs
from bench.networks import Policy, only_slots
from bench.reductions import Reduction, SlotReductions, step_weights
from bench.rollout import EpisodeCollector
from bench.seeding import SeedNoise

CPU = torch.device("cpu")
FIELDS = ("obs", "next_obs", "actions", "log_probs", "rewards", "trajectory", "last",
          "terminated", "truncated")


def episode_collector(seeds: list[int], num_envs: int, episodes: int,
                      ready_fraction: float | None = None,
                      backend: str = "torch",
                      group_ratio: float | None = None) -> EpisodeCollector:
    env_cfg = {"id": "CartPole-v1", "max_episode_steps": 500, "backend": backend, "kwargs": {}}
    envs = make_seed_envs(env_cfg, seeds, num_envs, CPU)
    policy = Policy(seeds, 4, 2, True, [16], "tanh", 0.0)
    return EpisodeCollector(envs, policy, SeedNoise(seeds, CPU), episodes, CPU, ready_fraction,
                            group_ratio)


def run(collect: EpisodeCollector, wanted: int) -> tuple[list[list[dict]], list[np.ndarray]]:
    """Collect until every slot has had `wanted` batches (a slot starts one only while it has
    fewer). Returns each slot's batches in order (its valid steps and episodes) and, per call,
    the slots that were handed a batch."""
    num_slots = len(collect.env_steps)
    received = np.zeros(num_slots, dtype=np.int64)
    per_slot: list[list[dict]] = [[] for _ in range(num_slots)]
    handed_out = []
    while (received < wanted).any():
        batch, episodes = collect.collect(received < wanted)
        ready = batch.ready.numpy()
        assert batch.slots.tolist() == np.flatnonzero(ready).tolist()  # their rows only
        for r, s in enumerate(np.flatnonzero(ready)):
            valid = batch.valid[r]
            assert valid[: int(valid.sum())].all()  # a slot's steps are packed to the front
            own = episodes.seed_index == s
            per_slot[s].append({
                **{name: getattr(batch, name)[r][valid] for name in FIELDS},
                "env_steps": int(collect.env_steps[s]),
                "episodes": (episodes.env_step[own], episodes.episode_return[own],
                             episodes.episode_length[own], episodes.terminated[own]),
            })
        assert episodes.seed_index.size == 0 or ready[episodes.seed_index].all()
        received += ready
        handed_out.append(ready)
    assert (received == wanted).all()
    return per_slot, handed_out


def assert_same_batches(actual: list[dict], expected: list[dict]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        for name in FIELDS:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
        assert got["env_steps"] == want["env_steps"]
        for got_column, want_column in zip(got["episodes"], want["episodes"], strict=True):
            np.testing.assert_array_equal(got_column, want_column)


@pytest.mark.parametrize("backend, num_envs, episodes, ready_fraction, group_ratio", [
    ("torch", 1, 1, 0.5, None), ("torch", 2, 3, 0.5, None), ("torch", 1, 2, 0.01, None),
    ("torch", 2, 3, 1.0, None), ("gymnasium", 2, 3, 0.5, None),
    ("torch", 1, 1, *EpisodeCollector.PER_STEP_SCHEDULE), ("torch", 1, 1, 0.5, 1.0),
])
def test_each_slot_collects_what_it_collects_alone_whatever_the_schedule(
        backend: str, num_envs: int, episodes: int, ready_fraction: float,
        group_ratio: float | None) -> None:
    seeds, wanted = [0, 1, 2, 3, 4, 5], 4
    packed, handed_out = run(
        episode_collector(seeds, num_envs, episodes, ready_fraction, backend, group_ratio),
        wanted)
    for s, seed in enumerate(seeds):
        alone, _ = run(episode_collector([seed], num_envs, episodes, backend=backend), wanted)
        assert_same_batches(packed[s], alone[0])


def test_a_slot_whose_batch_is_complete_updates_before_a_slower_one_finishes() -> None:
    """With random policies, CartPole episodes last from about 8 to over 50 steps: the first
    call hands out the batches that completed first while the other slots carry on with the
    steps they have, a slot handed out does not step until it starts a batch again, and a fast
    slot goes through more batches than a slow one in the same time."""
    seeds = list(range(8))
    collect = episode_collector(seeds, 1, 1, ready_fraction=0.25)
    batch, _ = collect.collect(np.ones(len(seeds), dtype=bool))
    first = batch.ready.numpy()
    assert 0 < first.sum() < len(seeds)
    assert collect.collecting.tolist() == (~first).tolist()
    at_first = collect.env_steps.copy()
    handed_out = first.copy()
    while collect.collecting.any():  # no slot starts a new batch
        ready = collect.collect(np.zeros(len(seeds), dtype=bool))[0].ready.numpy()
        assert ready.any() and not (ready & handed_out).any()
        handed_out |= ready
        assert (collect.env_steps[first] == at_first[first]).all()
    assert (collect.env_steps[~first] > at_first[~first]).any()

    _, calls = run(episode_collector(seeds, 1, 1, ready_fraction=0.25), 6)
    batches = np.cumsum(calls, axis=0)  # per call, each slot's batches so far
    assert (batches.max(axis=1) - batches.min(axis=1)).max() >= 2


def test_ready_fraction_must_lie_in_the_unit_interval() -> None:
    with pytest.raises(ValueError, match="ready_fraction"):
        episode_collector([0], 1, 1, ready_fraction=0.0)
    with pytest.raises(ValueError, match="group_ratio"):
        episode_collector([0], 1, 1, group_ratio=0.5)


def test_only_slots_computes_those_slots_bitwise_and_leaves_the_others_untouched() -> None:
    """What an update computes on some slots' rows is bitwise what it computes on all rows,
    and the other slots' parameters get exact zero gradients (so the optimiser skips them)."""
    torch.manual_seed(0)
    policy = Policy([0, 1, 2, 3, 4], 3, 2, False, [64, 64], "tanh", 0.0)  # log_std too
    obs, actions = torch.randn(5, 70, 3), torch.randn(5, 70, 2)  # rows > GRAD_BLOCK
    full = policy.distribution(obs).log_prob(actions)
    full.sum().backward()
    full_grads = [param.grad.clone() for param in policy.parameters()]
    policy.zero_grad()
    rows, others = torch.tensor([1, 3]), torch.tensor([0, 2, 4])
    with only_slots(rows, policy):
        part = policy.distribution(obs[rows]).log_prob(actions[rows])
    part.sum().backward()
    assert policy.body.slots is None and policy.slots is None  # restored
    assert torch.equal(part, full[rows])
    for param, expected in zip(policy.parameters(), full_grads, strict=True):
        assert torch.equal(param.grad[rows], expected[rows])
        assert not param.grad[others].any()


def test_the_reductions_of_some_slots_weigh_their_rows_as_all_slots_do() -> None:
    per_slot = SlotReductions((Reduction("mean"), Reduction("length_power", alpha=0.3),
                               Reduction("constant", max_length=9), Reduction("traj_mean")))
    valid = torch.rand(4, 30) < 0.8
    trajectory = torch.randint(0, 5, (4, 30))
    full = step_weights(per_slot, valid, trajectory)
    rows = torch.tensor([1, 2])
    part = step_weights(per_slot.take(rows), valid[rows], trajectory[rows])
    assert torch.equal(part, full[rows])

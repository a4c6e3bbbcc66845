"""Environments and episode collection: boundaries, seeding, quotas, and an independent replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.envs import SeedEnvs, describe_env, make_env, make_seed_envs
from bench.networks import Policy
from bench.rollout import EpisodeCollector, StepCollector
from bench.seeding import SeedNoise, env_reset_seeds

CPU = torch.device("cpu")


def collector(
    gym_id: str,
    max_steps: int,
    seeds: list[int],
    num_envs: int,
    episodes: int = 0,
    steps: int = 0,
    backend: str = "gymnasium",
    ready_fraction: float | None = None,
):
    """An EpisodeCollector (`episodes` per update) or a StepCollector (`steps` per update)."""
    env_cfg = {"id": gym_id, "max_episode_steps": max_steps, "backend": backend, "kwargs": {}}
    envs = make_seed_envs(env_cfg, seeds, num_envs, CPU)
    spec = envs.spec
    policy = Policy(seeds, spec.obs_dim, spec.action_dim, spec.discrete, [16], "tanh", 0.0)
    if steps:
        return StepCollector(envs, policy, SeedNoise(seeds, CPU), steps, CPU)
    return EpisodeCollector(envs, policy, SeedNoise(seeds, CPU), episodes, CPU, ready_fraction)


def collect_batches(collect, wanted: np.ndarray) -> list:
    """Call an EpisodeCollector until seed s has had ``wanted[s]`` batches handed out (a seed
    acts only while it has fewer); returns every call's (batch, episodes)."""
    received = np.zeros(len(wanted), dtype=np.int64)
    collected = []
    while (received < wanted).any():
        batch, episodes = collect.collect(received < wanted)
        received += batch.ready.numpy()
        collected.append((batch, episodes))
    assert (received == wanted).all()
    return collected


def row_of(batch, s: int) -> int | None:
    """The batch's row of seed s (None if the batch has none)."""
    rows = np.flatnonzero(batch.slots.numpy() == s)
    return int(rows[0]) if rows.size else None


def trajectories(batch, r: int) -> dict[int, np.ndarray]:
    """Positions of each trajectory in the batch's row r, in position order."""
    valid = batch.valid[r].numpy()
    ids = batch.trajectory[r].numpy()
    return {int(i): np.flatnonzero(valid & (ids == i)) for i in np.unique(ids[valid])}


@pytest.mark.parametrize(
    "gym_id, max_steps",
    [("CartPole-v1", 25), ("Pendulum-v1", 15)],  # CartPole: terminations and truncations
)
def test_recorded_episodes_match_an_independent_replay(gym_id: str, max_steps: int) -> None:
    """Replaying the batch's actions in a fresh env seeded the same way gives the same
    observations, rewards, episode returns, lengths and termination flags."""
    seeds = [4, 9]
    collect = collector(gym_id, max_steps, seeds, num_envs=1, episodes=5)
    collected = collect_batches(collect, np.array([2, 2]))
    all_recorded = []
    for s, seed in enumerate(seeds):
        env = make_env(gym_id, max_steps)
        obs, _ = env.reset(seed=env_reset_seeds(seed, 1)[0])
        replayed = []
        for batch, _ in collected:
            r = row_of(batch, s)
            if r is None:
                continue
            for slots in trajectories(batch, r).values():
                total, terminated = 0.0, False
                for m in slots:
                    np.testing.assert_allclose(batch.obs[r, m].numpy(), obs, rtol=0, atol=1e-6)
                    action = batch.actions[r, m].numpy()
                    if not collect.envs.spec.discrete:
                        action = np.clip(action, env.action_space.low, env.action_space.high)
                    obs, reward, terminated, truncated, _ = env.step(action)
                    np.testing.assert_allclose(batch.next_obs[r, m].numpy(), obs, atol=1e-6)
                    assert batch.rewards[r, m].item() == pytest.approx(reward, rel=1e-6)
                    total += reward
                assert batch.last[r, slots[-1]] and (terminated or truncated)
                assert not batch.last[r, slots[:-1]].any()
                assert bool(batch.terminated[r, slots[-1]]) == terminated
                replayed.append((float(total), len(slots), bool(terminated)))
                obs, _ = env.reset()
        recorded = [
            (float(ret), int(length), bool(term))
            for _, episodes in collected
            for ret, length, term, index in zip(
                episodes.episode_return,
                episodes.episode_length,
                episodes.terminated,
                episodes.seed_index,
                strict=True,
            )
            if index == s
        ]
        assert len(recorded) == 10
        assert recorded == replayed  # exact: same rewards summed in the same order
        all_recorded.extend(recorded)
    if gym_id == "CartPole-v1":  # with these seeds, both ways of ending occur
        assert {term for _, _, term in all_recorded} == {True, False}
    else:
        assert all(length == max_steps and not term for _, length, term in all_recorded)


def test_an_ended_episode_resets_within_the_step_and_reports_its_final_observation() -> None:
    spec = describe_env("Pendulum-v1", 3)
    envs = SeedEnvs(spec, [0], num_envs=1)
    replay = make_env("Pendulum-v1", 3)
    replay_obs, _ = replay.reset(seed=env_reset_seeds(0, 1)[0])
    action = torch.full((1, 1, 1), 0.5)
    for step_index in range(7):
        np.testing.assert_allclose(envs.obs[0, 0], replay_obs, atol=1e-6)
        step = envs.step(action, torch.tensor([True]))
        replay_obs, reward, _, truncated, _ = replay.step(action[0, 0].numpy())
        assert step.is_transition[0, 0] and step.reward[0, 0] == pytest.approx(reward)
        np.testing.assert_allclose(step.next_obs[0, 0], replay_obs, atol=1e-6)
        assert bool(step.truncated[0, 0]) == truncated == (step_index % 3 == 2)
        if truncated:  # the env already holds the next episode's first observation
            replay_obs, _ = replay.reset()
            assert not np.allclose(envs.obs[0, 0], step.next_obs[0, 0])


@pytest.mark.parametrize("backend", ["gymnasium", "torch"])
@pytest.mark.parametrize("ready_fraction", [1.0, 0.5])
def test_each_seed_gets_exactly_its_episodes(backend: str, ready_fraction: float) -> None:
    """Every batch handed out holds exactly its seed's counted episodes, whole, whether the
    collector waits for every seed (ready_fraction=1) or hands out each batch early."""
    seeds = [0, 1, 2]
    collect = collector("CartPole-v1", 60, seeds, num_envs=2, episodes=5, backend=backend,
                        ready_fraction=ready_fraction)
    for batch, episodes in collect_batches(collect, np.array([1, 0, 1])):
        ready = batch.ready.numpy()
        counts = np.bincount(episodes.seed_index, minlength=3)
        assert counts.tolist() == (5 * ready).tolist()
        assert collect.env_steps[1] == 0
        assert batch.slots.tolist() == np.flatnonzero(ready).tolist()  # their rows only
        for r, s in enumerate(np.flatnonzero(ready)):
            lengths = sorted(len(slots) for slots in trajectories(batch, r).values())
            recorded = sorted(episodes.episode_length[episodes.seed_index == s].tolist())
            assert lengths == recorded  # every counted episode is whole and in the batch
            # Trajectory ids run on over the sub-envs (sub-env 0 runs 3 episodes, sub-env 1 two).
            assert sorted(trajectories(batch, r)) == [0, 1, 2, 3, 4] and batch.num_blocks == 1
            # Counted transitions never exceed the seed's env steps (discarded ones are extra).
            assert batch.valid[r].sum() <= collect.env_steps[s]
    # The next batch of each seed starts every counted episode afresh.
    collected = collect_batches(collect, np.ones(3, dtype=np.int64))
    counts = sum(np.bincount(episodes.seed_index, minlength=3) for _, episodes in collected)
    assert counts.tolist() == [5, 5, 5]


@pytest.mark.parametrize("backend", ["gymnasium", "torch"])
def test_env_step_of_each_episode_is_the_seeds_running_count(backend: str) -> None:
    collect = collector("CartPole-v1", 500, [5], num_envs=1, episodes=4, backend=backend)
    _, episodes = collect.collect(np.ones(1, dtype=bool))
    np.testing.assert_array_equal(episodes.env_step, np.cumsum(episodes.episode_length))
    assert collect.env_steps[0] == episodes.episode_length.sum()


def test_step_batches_have_exactly_their_steps_and_carry_the_env_state_on() -> None:
    """batch_unit=steps: every update holds exactly steps_per_update steps per acting seed;
    an episode cut at a batch end continues in the next batch (no reset), and its statistics
    are recorded once, whole, matching a replay of the segments on a fresh env."""
    seeds, num_envs, steps = [2, 6], 2, 50
    collect = collector("CartPole-v1", 500, seeds, num_envs, steps=steps)
    batches = [collect.collect(np.array([True, True])) for _ in range(4)]
    paused_batch, _ = collect.collect(np.array([True, False]))
    assert paused_batch.valid.sum(dim=1).tolist() == [steps, 0]
    for batch, _ in batches:
        assert batch.valid.sum(dim=1).tolist() == [steps, steps]
        assert batch.block_length == steps // num_envs
    assert collect.env_steps.tolist() == [5 * steps, 4 * steps]

    for s, seed in enumerate(seeds):
        replayed_in_seed = 0
        for e in range(num_envs):
            env = make_env("CartPole-v1", 500)
            obs, _ = env.reset(seed=env_reset_seeds(seed, num_envs)[e])
            total, length, replayed = 0.0, 0, []
            block = slice(e * steps // num_envs, (e + 1) * steps // num_envs)
            for batch, _ in batches:
                for m in range(block.start, block.stop):
                    np.testing.assert_allclose(batch.obs[s, m].numpy(), obs, atol=1e-6)
                    obs, reward, terminated, truncated, _ = env.step(int(batch.actions[s, m]))
                    total, length = total + reward, length + 1
                    ended = terminated or truncated
                    assert bool(batch.last[s, m]) == (ended or m == block.stop - 1)
                    assert bool(batch.cut[s, m]) == (not ended and m == block.stop - 1)
                    if ended:
                        replayed.append((total, length))
                        total, length = 0.0, 0
                        obs, _ = env.reset()
            recorded_all = [
                (float(r), int(n))
                for _, episodes in batches
                for r, n, index in zip(
                    episodes.episode_return,
                    episodes.episode_length,
                    episodes.seed_index,
                    strict=True,
                )
                if index == s
            ]
            # Episodes of both sub-envs are interleaved in time; every replayed one is there.
            for episode in replayed:
                assert episode in recorded_all
            replayed_in_seed += len(replayed)
        assert len(recorded_all) == replayed_in_seed > 0  # whole episodes only, each once


@pytest.mark.parametrize("backend", ["gymnasium", "torch"])
def test_step_segments_are_trajectories_with_ids_per_segment(backend: str) -> None:
    collect = collector("CartPole-v1", 500, [0], 1, steps=120, backend=backend)
    batch, episodes = collect.collect(np.array([True]))
    ids = batch.trajectory[0].numpy()
    lengths = np.bincount(ids, minlength=120)
    ended = int(batch.terminated[0].sum() + batch.truncated[0].sum())
    assert (lengths > 0).sum() == ended + int(batch.cut[0].sum())  # segments = ends + cut
    assert len(episodes.episode_length) == ended
    # Whole episodes recorded in this batch are exactly the segments that ended.
    assert sorted(episodes.episode_length.tolist()) == sorted(
        int(lengths[i]) for i in np.unique(ids[batch.terminated[0].numpy()])
    )

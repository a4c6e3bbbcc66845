"""The torch backend's wrapper (time limit, same-step autoreset, seeding, pausing,
normalisation) against gymnasium's rules, and a rollout that never syncs with the host."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from gymnasium.wrappers.utils import RunningMeanStd
from host_sync import ForbidHostSync

from bench.envs import Normalization, TorchSeedEnvs, describe, make_seed_envs
from bench.envs.classic_control import CLASSIC_CONTROL
from bench.networks import Policy
from bench.rollout import StepCollector
from bench.seeding import SeedNoise
from bench.store import REPO_ROOT

CPU = torch.device("cpu")
ENV_IDS = {"CartPole-v1": "cartpole", "Acrobot-v1": "acrobot", "MountainCar-v0": "mountaincar",
           "MountainCarContinuous-v0": "mountaincar_continuous", "Pendulum-v1": "pendulum"}


def env_config(gym_id: str, max_episode_steps: int, backend: str = "torch") -> dict:
    return {"id": gym_id, "max_episode_steps": max_episode_steps, "backend": backend,
            "kwargs": {}}


def step_collector(gym_id: str, max_steps: int, seeds: list[int], num_envs: int, steps: int,
                   normalization: Normalization = Normalization()) -> StepCollector:
    envs = make_seed_envs(env_config(gym_id, max_steps), seeds, num_envs, CPU, normalization)
    spec = envs.spec
    policy = Policy(seeds, spec.obs_dim, spec.action_dim, spec.discrete, [16], "tanh", 0.0)
    return StepCollector(envs, policy, SeedNoise(seeds, CPU), steps * num_envs, CPU)


def test_every_classic_control_env_config_uses_the_torch_backend() -> None:
    for gym_id, name in ENV_IDS.items():
        config = yaml.safe_load((REPO_ROOT / "conf" / "env" / f"{name}.yaml").read_text())
        assert (config["id"], config["backend"]) == (gym_id, "torch")
    assert set(ENV_IDS) == set(CLASSIC_CONTROL)


def test_cartpole_transitions_episodes_and_resets_replay_in_gymnasium() -> None:
    """Each sub-env's steps replay in gymnasium's CartPole started from the same states: the
    same observations, rewards, terminations and time-limit truncations (limit 25, so both
    occur), final observations at episode ends, and recorded episode returns and lengths."""
    seeds, num_envs, steps = [3, 8], 2, 120
    collect = step_collector("CartPole-v1", 25, seeds, num_envs, steps)
    batch, episodes = collect.collect(np.ones(2, dtype=bool))
    env = gym.make("CartPole-v1").unwrapped
    endings = set()
    for s in range(len(seeds)):
        replayed = []
        for e in range(num_envs):
            block = range(e * steps, (e + 1) * steps)
            start, total, length = True, 0.0, 0
            for m in block:
                if start:  # a new episode: gymnasium starts from the state it began in
                    env.reset(seed=0)
                    env.state = batch.obs[s, m].double().numpy()
                    start = False
                obs, reward, terminated, _, _ = env.step(int(batch.actions[s, m]))
                length += 1
                truncated = length == 25
                np.testing.assert_allclose(batch.next_obs[s, m].numpy(), obs, atol=1e-5)
                assert batch.rewards[s, m].item() == reward
                assert bool(batch.terminated[s, m]) == terminated
                assert bool(batch.truncated[s, m]) == truncated
                total += reward
                if terminated or truncated:
                    endings.add((terminated, truncated))
                    replayed.append((total, length))
                    start, total, length = True, 0.0, 0
                elif m + 1 in block:  # mid-episode: the next step starts where this one ended
                    np.testing.assert_array_equal(batch.obs[s, m + 1], batch.next_obs[s, m])
        recorded = episodes.seed_index == s
        assert sorted(zip(episodes.episode_return[recorded].tolist(),
                          episodes.episode_length[recorded].tolist(), strict=True)) \
            == sorted(replayed)
    assert {(True, False), (False, True)} <= endings


@pytest.mark.parametrize("gym_id", sorted(CLASSIC_CONTROL))
def test_first_observations_follow_gymnasiums_reset_distribution(gym_id: str) -> None:
    """Over many sub-envs, the first observations lie in the range of gymnasium's reset and
    cover it (compared with gymnasium's own resets from many seeds)."""
    envs = TorchSeedEnvs(describe(env_config(gym_id, 10)), range(256), 4)
    torch_obs = envs.obs.reshape(-1, envs.spec.obs_dim).double().numpy()
    gym_env = gym.make(gym_id)
    gym_obs = np.array([gym_env.reset(seed=seed)[0] for seed in range(1024)], dtype=np.float64)
    low, high = gym_obs.min(axis=0), gym_obs.max(axis=0)
    span = np.maximum(high - low, 1e-12)
    assert (torch_obs >= low - 0.02 * span).all() and (torch_obs <= high + 0.02 * span).all()
    assert (torch_obs.min(axis=0) <= low + 0.05 * span).all()
    assert (torch_obs.max(axis=0) >= high - 0.05 * span).all()
    np.testing.assert_allclose(torch_obs.mean(axis=0), gym_obs.mean(axis=0), atol=0.1 * span.max())


def test_a_seeds_environments_do_not_depend_on_the_other_seeds() -> None:
    alone = TorchSeedEnvs(describe(env_config("CartPole-v1", 30)), [5], 3)
    together = TorchSeedEnvs(describe(env_config("CartPole-v1", 30)), [1, 5, 9], 3)
    actions = torch.zeros(3, 3, dtype=torch.int64)
    for _ in range(60):  # through terminations and resets
        torch.testing.assert_close(alone.obs[0], together.obs[1], rtol=0, atol=0)
        first = alone.step(actions[:1], torch.tensor([True]))
        second = together.step(actions, torch.ones(3, dtype=torch.bool))
        torch.testing.assert_close(first.next_obs[0], second.next_obs[1], rtol=0, atol=0)
        assert torch.equal(first.terminated[0], second.terminated[1])


def test_a_paused_seed_does_not_move_and_keeps_its_random_streams() -> None:
    envs = TorchSeedEnvs(describe(env_config("CartPole-v1", 3)), [0, 1], 2)
    reference = TorchSeedEnvs(describe(env_config("CartPole-v1", 3)), [1], 2)
    actions = torch.ones(2, 2, dtype=torch.int64)
    before = envs.obs[1].clone()
    for _ in range(7):  # seed 0 runs through two time limits, seed 1 waits
        step = envs.step(actions, torch.tensor([True, False]))
        assert not step.is_transition[1].any() and step.is_transition[0].all()
    torch.testing.assert_close(envs.obs[1], before, rtol=0, atol=0)
    for _ in range(7):  # then seed 1 runs exactly as it would have alone
        step = envs.step(actions, torch.tensor([False, True]))
        alone = reference.step(actions[:1], torch.tensor([True]))
        torch.testing.assert_close(step.next_obs[1], alone.next_obs[0], rtol=0, atol=0)
        torch.testing.assert_close(envs.obs[1], reference.obs[0], rtol=0, atol=0)


def test_normalisation_follows_gymnasiums_wrappers() -> None:
    """Observation and reward normalisation per sub-env: the same running statistics and
    clipping as gymnasium's NormalizeObservation/NormalizeReward (fed the raw values)."""
    spec = describe(env_config("Pendulum-v1", 7))
    normalization = Normalization(observation=True, reward=True, gamma=0.9, clip=2.0)
    normalized = TorchSeedEnvs(spec, [2], 2, normalization=normalization)
    raw = TorchSeedEnvs(spec, [2], 2)
    obs_rms = [RunningMeanStd(shape=(3,)) for _ in range(2)]
    return_rms = [RunningMeanStd(shape=()) for _ in range(2)]
    discounted = [0.0, 0.0]

    def expected_obs(e: int, obs: np.ndarray) -> np.ndarray:
        obs_rms[e].update(obs[None])
        return np.clip((obs - obs_rms[e].mean) / np.sqrt(obs_rms[e].var + 1e-8), -2, 2)

    for e in range(2):
        np.testing.assert_allclose(normalized.obs[0, e], expected_obs(e, raw.obs[0, e].numpy()),
                                   rtol=1e-5, atol=1e-5)
    actions = torch.tensor([[[1.5], [-0.7]]])
    for _ in range(16):  # across two episode ends (limit 7)
        got = normalized.step(actions, torch.tensor([True]))
        want = raw.step(actions, torch.tensor([True]))
        torch.testing.assert_close(got.raw_reward, want.raw_reward, rtol=0, atol=0)
        for e in range(2):
            np.testing.assert_allclose(got.next_obs[0, e],
                                       expected_obs(e, want.next_obs[0, e].numpy()),
                                       rtol=1e-5, atol=1e-5)
            reward = float(want.raw_reward[0, e])
            discounted[e] = discounted[e] * 0.9 * (1 - bool(want.terminated[0, e])) + reward
            return_rms[e].update(np.array([discounted[e]]))
            expected = np.clip(reward / np.sqrt(return_rms[e].var + 1e-8), -2, 2)
            assert float(got.reward[0, e]) == pytest.approx(expected, rel=1e-6)
            if want.truncated[0, e]:  # the reset observation enters the statistics too
                np.testing.assert_allclose(normalized.obs[0, e],
                                           expected_obs(e, raw.obs[0, e].numpy()),
                                           rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gym_id", ["CartPole-v1", "Pendulum-v1"])
def test_a_rollout_step_makes_no_host_synchronisation(gym_id: str) -> None:
    """Acting, stepping, autoreset and episode bookkeeping of a collection step are tensor
    code only (checked on CPU tensors; the CUDA test below checks the device itself)."""
    collect = step_collector(gym_id, 5, [0, 1, 2], 2, 8,
                             Normalization(observation=True, reward=True))
    collect.envs.skip_idle_resets = False  # the CUDA code path (a CPU-only shortcut)
    acting = torch.tensor([True, False, True])
    noise = collect._draw_noise(acting, 12)
    with ForbidHostSync():
        for t in range(12):
            collect._act_and_step(acting, noise[:, t])
        for _ in range(40):  # episode collection's per-step noise, across block refills
            collect._act_and_step(acting, collect._step_noise(acting))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_collection_on_cuda_matches_cpu_and_syncs_once() -> None:
    results = {}
    for device in ("cpu", "cuda"):
        envs = make_seed_envs(env_config("CartPole-v1", 50), [0, 1], 2, torch.device(device))
        policy = Policy([0, 1], 4, 2, True, [16], "tanh", 0.0).to(device)
        collect = StepCollector(envs, policy, SeedNoise([0, 1], device), 64, torch.device(device))
        batch, episodes = collect.collect(np.ones(2, dtype=bool))
        results[device] = (batch.actions.cpu(), episodes.episode_length)
    # Same uniforms on both devices; float rounding may flip a rare action, so compare most.
    agreement = (results["cpu"][0] == results["cuda"][0]).float().mean()
    assert agreement > 0.95

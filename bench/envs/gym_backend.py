"""The gymnasium backend: gymnasium environments for a batch of seeds, S seeds x E
sub-environments.

Each seed has its own gymnasium ``SyncVectorEnv`` of E sub-environments, so a seed whose batch
is complete can pause (its vector env is simply not stepped) while the others go on.

Autoreset: gymnasium 1.x's default (NEXT_STEP) resets a finished sub-env on its *next* step,
which is then not a transition and would desynchronise sub-envs that must take the same number
of transitions. The vector envs here use SAME_STEP instead: a sub-env that terminates or is
truncated is reset within the same ``step`` call, its last observation comes back in
``infos["final_obs"]``. So every step of a stepped seed is a transition, its successor
observation is ``next_obs`` (the final observation where the episode ended), and the
observation to act on next is ``obs`` (the new episode's first one). No transition crosses an
episode boundary.

Sub-env e of seed s is seeded once, at its first reset, from seed s alone
(`bench.seeding.env_reset_seeds`); later resets continue its own random stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from bench.seeding import env_reset_seeds


@dataclass(frozen=True)
class EnvSpec:
    """What the algorithms need to know about an environment."""

    gym_id: str
    max_episode_steps: int
    discrete: bool
    obs_dim: int
    action_dim: int  # number of actions (discrete) or action dimensions (continuous)
    action_low: np.ndarray | None  # continuous only: the box the env accepts
    action_high: np.ndarray | None


@dataclass(frozen=True)
class Normalization:
    """Optional observation/reward normalisation wrappers, per sub-environment (so no
    statistics cross seeds), as CleanRL's continuous-control PPO uses them: running mean/std
    normalisation, then clipping to [-clip, clip]."""

    observation: bool = False
    reward: bool = False
    gamma: float = 0.99  # discount of the return whose running std scales rewards
    clip: float = 10.0


class RawReward(gym.Wrapper):
    """Puts the environment's own reward in ``info["raw_reward"]`` before any reward wrapper
    changes it, so episode returns are always recorded in the environment's units."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "raw_reward": float(reward)}


def make_env(
    gym_id: str,
    max_episode_steps: int,
    kwargs: dict | None = None,
    normalization: Normalization = Normalization(),
) -> gym.Env:
    """One gymnasium environment with the configured step limit and normalisation wrappers."""
    env = gym.make(gym_id, max_episode_steps=max_episode_steps, **(kwargs or {}))
    if normalization.observation:
        env = gym.wrappers.NormalizeObservation(env)
        bound = normalization.clip
        env = gym.wrappers.TransformObservation(
            env, lambda obs: np.clip(obs, -bound, bound).astype(np.float32), env.observation_space
        )
    if normalization.reward:
        env = RawReward(env)
        env = gym.wrappers.NormalizeReward(env, gamma=normalization.gamma)
        env = gym.wrappers.ClipReward(env, -normalization.clip, normalization.clip)
    return env


def describe_env(gym_id: str, max_episode_steps: int, kwargs: dict | None = None) -> EnvSpec:
    """Build an `EnvSpec` by instantiating the environment once."""
    env = make_env(gym_id, max_episode_steps, kwargs)
    try:
        obs_space, action_space = env.observation_space, env.action_space
        if len(obs_space.shape) != 1:
            raise ValueError(f"{gym_id}: only flat observation spaces are supported")
        if isinstance(action_space, gym.spaces.Discrete):
            return EnvSpec(gym_id, max_episode_steps, True, obs_space.shape[0],
                           int(action_space.n), None, None)
        if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            return EnvSpec(gym_id, max_episode_steps, False, obs_space.shape[0],
                           action_space.shape[0], action_space.low.copy(),
                           action_space.high.copy())
        raise ValueError(f"{gym_id}: unsupported action space {action_space}")
    finally:
        env.close()


@dataclass
class StepResult:
    """Outcome of one step, as tensors on the job's device: ``[S, E]`` (``next_obs``
    ``[S, E, obs_dim]``).

    ``is_transition`` is False for sub-envs of seeds that were not stepped; the other fields are
    meaningful only where it is True. ``next_obs`` is the transition's successor observation:
    for an episode that ended, its final observation (the env has already been reset).
    ``reward`` is what the agent learns from (normalised if configured), ``raw_reward`` the
    environment's own reward (episode statistics use it); both float64.
    """

    reward: torch.Tensor
    raw_reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    is_transition: torch.Tensor
    next_obs: torch.Tensor


class SeedEnvs:
    """S x E gymnasium sub-environments (the ``gymnasium`` backend). The interface is the torch
    backend's: tensors on `device` in and out, the current observations ``obs [S, E, obs_dim]``;
    the environments themselves step on the host, one seed's vector env at a time."""

    def __init__(
        self,
        spec: EnvSpec,
        seeds: Sequence[int],
        num_envs: int,
        kwargs: dict | None = None,
        normalization: Normalization = Normalization(),
        device: torch.device | str = "cpu",
        stream: str = "env",
    ) -> None:
        """`stream`: the `bench.seeding` stream of the first resets' seeds."""
        self.spec = spec
        self.seeds = list(seeds)
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.normalizes_reward = normalization.reward

        def make() -> gym.Env:
            return make_env(spec.gym_id, spec.max_episode_steps, kwargs, normalization)

        self.vector_envs = [
            SyncVectorEnv(
                [make] * num_envs,
                autoreset_mode=AutoresetMode.SAME_STEP,
            )
            for _ in self.seeds
        ]
        shape = (len(self.seeds), num_envs)
        self._obs = np.zeros((*shape, spec.obs_dim), dtype=np.float32)
        for s, (seed, vector_env) in enumerate(zip(self.seeds, self.vector_envs, strict=True)):
            self._obs[s], _ = vector_env.reset(seed=env_reset_seeds(seed, num_envs, stream))

    @property
    def obs(self) -> torch.Tensor:
        """The observations to act on ``[S, E, obs_dim]`` (a copy, on the device)."""
        return torch.tensor(self._obs, device=self.device)

    def step(self, actions: torch.Tensor, stepped: torch.Tensor) -> StepResult:
        """Step the vector envs of the seeds where ``stepped [S]`` is True with
        ``actions[s]``. Continuous actions are clipped to the action box here, and only here.
        """
        shape = (len(self.seeds), self.num_envs)
        reward = np.zeros(shape, dtype=np.float64)
        raw_reward = np.zeros(shape, dtype=np.float64)
        terminated = np.zeros(shape, dtype=bool)
        truncated = np.zeros(shape, dtype=bool)
        is_transition = np.zeros(shape, dtype=bool)
        next_obs = np.zeros_like(self._obs)
        actions = actions.cpu().numpy()
        if not self.spec.discrete:
            actions = np.clip(actions, self.spec.action_low, self.spec.action_high)
        for s in np.flatnonzero(np.asarray(stepped.cpu())):
            obs, step_reward, step_terminated, step_truncated, infos = \
                self.vector_envs[s].step(actions[s])
            self._obs[s] = obs
            next_obs[s] = obs
            for e in np.flatnonzero(infos.get("_final_obs", ())):
                next_obs[s, e] = infos["final_obs"][e]
            reward[s] = step_reward
            raw_reward[s] = self._raw_rewards(infos, step_reward) if self.normalizes_reward \
                else step_reward
            terminated[s] = step_terminated
            truncated[s] = step_truncated
            is_transition[s] = True

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(array, device=self.device)

        return StepResult(tensor(reward), tensor(raw_reward), tensor(terminated),
                          tensor(truncated), tensor(is_transition), tensor(next_obs))

    @staticmethod
    def _raw_rewards(infos: dict, reward: np.ndarray) -> np.ndarray:
        """The environments' own rewards from `RawReward`'s info; for a sub-env that ended,
        gymnasium keeps the step's info under ``final_info`` (the reset's info replaces it)."""
        raw = np.array(reward, dtype=np.float64)
        for source in (infos, infos.get("final_info", {})):
            if "raw_reward" in source:
                present = source["_raw_reward"]
                raw[present] = source["raw_reward"][present]
        return raw

    def reset_envs(self, mask: torch.Tensor) -> None:
        """Start a new episode now in the sub-envs where ``mask [S, E]`` is True.

        Their random streams continue (no re-seeding).
        """
        mask = np.asarray(mask.cpu())
        for s in np.flatnonzero(mask.any(axis=1)):
            obs, _ = self.vector_envs[s].reset(options={"reset_mask": mask[s].copy()})
            self._obs[s] = obs

    def close(self) -> None:
        for vector_env in self.vector_envs:
            vector_env.close()

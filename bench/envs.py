"""Gymnasium environments for a batch of seeds: S seeds x E sub-environments.

Each seed has its own gymnasium ``SyncVectorEnv`` of E sub-environments, so a seed whose batch
is complete can pause (its vector env is simply not stepped) while the others go on. The
vector envs use gymnasium 1.x's default NEXT_STEP autoreset: after a sub-env reports
terminated or truncated, its next ``step`` ignores the action and returns the first
observation of a new episode. That step is not a transition and is flagged so
(``is_transition`` False); no transition ever crosses an episode boundary.

Sub-env e of seed s is seeded once, at its first reset, from seed s alone
(`bench.seeding.env_reset_seeds`); later resets continue its own random stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
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


def make_env(gym_id: str, max_episode_steps: int, kwargs: dict | None = None) -> gym.Env:
    """One gymnasium environment with the configured step limit."""
    return gym.make(gym_id, max_episode_steps=max_episode_steps, **(kwargs or {}))


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
    """Outcome of one step of the stepped seeds; arrays are ``[S, E]``.

    ``is_transition`` is False for sub-envs of seeds that were not stepped and for autoreset
    steps; `reward`, `terminated`, `truncated` are meaningful only where it is True.
    """

    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    is_transition: np.ndarray


class SeedEnvs:
    """S x E gymnasium sub-environments; the current observations are ``obs [S, E, obs_dim]``."""

    def __init__(
        self, spec: EnvSpec, seeds: Sequence[int], num_envs: int, kwargs: dict | None = None
    ) -> None:
        self.spec = spec
        self.seeds = list(seeds)
        self.num_envs = num_envs
        self.vector_envs = [
            SyncVectorEnv(
                [lambda: make_env(spec.gym_id, spec.max_episode_steps, kwargs)] * num_envs,
                autoreset_mode=AutoresetMode.NEXT_STEP,
            )
            for _ in self.seeds
        ]
        shape = (len(self.seeds), num_envs)
        self.obs = np.zeros((*shape, spec.obs_dim), dtype=np.float32)
        # True where the sub-env's last step ended an episode, so its next step is a reset.
        self.autoreset_pending = np.zeros(shape, dtype=bool)
        for s, (seed, vector_env) in enumerate(zip(self.seeds, self.vector_envs, strict=True)):
            self.obs[s], _ = vector_env.reset(seed=env_reset_seeds(seed, num_envs))

    def step(self, actions: np.ndarray, stepped_seeds: Sequence[int]) -> StepResult:
        """Step the vector envs of the seeds (indices) in `stepped_seeds` with ``actions[s]``.

        Continuous actions are clipped to the action box here, and only here.
        """
        shape = (len(self.seeds), self.num_envs)
        result = StepResult(
            reward=np.zeros(shape, dtype=np.float64),
            terminated=np.zeros(shape, dtype=bool),
            truncated=np.zeros(shape, dtype=bool),
            is_transition=np.zeros(shape, dtype=bool),
        )
        if not self.spec.discrete:
            actions = np.clip(actions, self.spec.action_low, self.spec.action_high)
        for s in stepped_seeds:
            obs, reward, terminated, truncated, _ = self.vector_envs[s].step(actions[s])
            self.obs[s] = obs
            result.reward[s] = reward
            result.terminated[s] = terminated
            result.truncated[s] = truncated
            result.is_transition[s] = ~self.autoreset_pending[s]
            self.autoreset_pending[s] = terminated | truncated
        return result

    def reset_envs(self, mask: np.ndarray) -> None:
        """Start a new episode now in the sub-envs where ``mask [S, E]`` is True.

        Their random streams continue (no re-seeding); a pending autoreset is cancelled.
        """
        for s in np.flatnonzero(mask.any(axis=1)):
            obs, _ = self.vector_envs[s].reset(options={"reset_mask": mask[s].copy()})
            self.obs[s] = obs
            self.autoreset_pending[s] &= ~mask[s]

    def close(self) -> None:
        for vector_env in self.vector_envs:
            vector_env.close()

"""Torch-native environments for a batch of seeds: S seeds x E sub-environments as one batch
of classic-control dynamics (`bench.envs.classic_control`) on the job's device.

What gymnasium's wrappers do for the gymnasium backend is done here, with the same rules:

- time limit (``TimeLimit``): ``truncated`` once a sub-env has taken `max_episode_steps`
  steps in its episode (an episode can be both terminated and truncated, as in gymnasium);
- autoreset SAME_STEP (``SyncVectorEnv``): a sub-env whose episode ended is reset within the
  same step; ``next_obs`` keeps its final observation, ``obs`` is the new episode's first;
- seeding: sub-env e of seed s draws its reset states from its own counter-based stream
  (`bench.seeding.CounterStreams`, stream ``env``), so it depends on seed s alone;
- optional running observation/reward normalisation per sub-env (gymnasium's
  ``NormalizeObservation`` + clip, ``NormalizeReward`` + clip, in that order and with the same
  update rules), with the environment's own reward kept as ``raw_reward``.

Nothing here transfers to the host: a step is a fixed sequence of tensor operations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bench.envs.classic_control import CLASSIC_CONTROL, make_classic_control
from bench.envs.gym_backend import EnvSpec, Normalization, StepResult
from bench.seeding import CounterStreams

# gymnasium's RunningMeanStd starts with this count; its normalisers add this under the sqrt.
_RMS_INITIAL_COUNT = 1e-4
_NORMALIZE_EPSILON = 1e-8


def supports(gym_id: str) -> bool:
    """Whether the torch backend implements `gym_id`."""
    return gym_id in CLASSIC_CONTROL


def describe_torch_env(gym_id: str, max_episode_steps: int) -> EnvSpec:
    """The `EnvSpec` of a torch-native environment (no gymnasium instance needed)."""
    dynamics = CLASSIC_CONTROL[gym_id]
    return EnvSpec(gym_id, max_episode_steps, dynamics.discrete, dynamics.obs_dim,
                   dynamics.action_dim, dynamics.action_low, dynamics.action_high)


class RunningMeanStd:
    """Running mean and variance of values ``[..., *shape]`` per leading index, updated one
    sample at a time as gymnasium's ``RunningMeanStd`` (parallel-variance rule, count 1e-4
    to start), for every index where a mask is True."""

    def __init__(self, shape: tuple[int, ...], device: torch.device) -> None:
        self.mean = torch.zeros(shape, dtype=torch.float64, device=device)
        self.var = torch.ones(shape, dtype=torch.float64, device=device)
        self.count = torch.full(shape[:2], _RMS_INITIAL_COUNT, dtype=torch.float64,
                                device=device)

    def update(self, value: torch.Tensor, mask: torch.Tensor) -> None:
        """Add one sample ``value [S, E, ...]`` where ``mask [S, E]`` is True."""
        trailing = (1,) * (value.dim() - 2)
        count = self.count.view(*self.count.shape, *trailing)
        delta = value.to(torch.float64) - self.mean
        total = count + 1
        mean = self.mean + delta / total
        var = (self.var * count + delta.square() * count / total) / total
        where = mask.view(*mask.shape, *trailing)
        self.mean = torch.where(where, mean, self.mean)
        self.var = torch.where(where, var, self.var)
        self.count = self.count + mask

    def scale(self) -> torch.Tensor:
        return torch.sqrt(self.var + _NORMALIZE_EPSILON)


class TorchSeedEnvs:
    """S x E torch-native sub-environments; the current observations are
    ``obs [S, E, obs_dim]`` (float32, on `device`)."""

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
        """`stream`: the `bench.seeding` stream of the reset states (its own per purpose)."""
        self.spec = spec
        self.seeds = list(seeds)
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.normalization = normalization
        self.shape = (len(self.seeds), num_envs)
        # On the CPU a host check is free, and skipping the reset computation when no sub-env
        # ended saves most of a step's cost at small S; on CUDA it would synchronise.
        self.skip_idle_resets = self.device.type == "cpu"
        self.dynamics = make_classic_control(spec.gym_id, len(self.seeds) * num_envs,
                                             self.device, kwargs)
        self.resets = CounterStreams.for_seeds(self.seeds, stream, self.device,
                                               rows_per_seed=num_envs)
        self.elapsed = torch.zeros(self.shape, dtype=torch.int64, device=self.device)
        if normalization.observation:
            self.obs_rms = RunningMeanStd((*self.shape, spec.obs_dim), self.device)
        if normalization.reward:
            self.return_rms = RunningMeanStd(self.shape, self.device)
            self.discounted_reward = torch.zeros(self.shape, dtype=torch.float64,
                                                 device=self.device)
        if not spec.discrete:
            self.action_low = torch.as_tensor(spec.action_low, device=self.device)
            self.action_high = torch.as_tensor(spec.action_high, device=self.device)
        everywhere = torch.ones(self.shape, dtype=torch.bool, device=self.device)
        self._reset(everywhere)
        self.obs = self._observe(everywhere)

    def _reset(self, mask: torch.Tensor) -> bool:
        """New episodes where ``mask [S, E]``; only those sub-envs advance their streams.
        Returns False when it skipped the computation because no sub-env was masked."""
        if self.skip_idle_resets and not bool(mask.any()):
            return False
        flat = mask.reshape(-1)
        uniforms = self.resets.uniform((self.dynamics.reset_uniforms,), flat,
                                       dtype=torch.float64)[:, 0]
        self.dynamics.reset(flat, uniforms)
        self.elapsed = torch.where(mask, 0, self.elapsed)
        return True

    def _observe(self, updated: torch.Tensor) -> torch.Tensor:
        """The observation of every sub-env ``[S, E, obs_dim]``; with observation
        normalisation, the statistics of the sub-envs where ``updated [S, E]`` take it in."""
        obs = self.dynamics.observe().view(*self.shape, -1)
        if not self.normalization.observation:
            return obs
        self.obs_rms.update(obs, updated)
        normalized = (obs - self.obs_rms.mean) / self.obs_rms.scale()
        bound = self.normalization.clip
        return normalized.clamp(-bound, bound).to(torch.float32)

    def _normalize_reward(self, reward: torch.Tensor, terminated: torch.Tensor,
                          stepped: torch.Tensor) -> torch.Tensor:
        gamma = self.normalization.gamma
        discounted = self.discounted_reward * gamma * ~terminated + reward
        self.discounted_reward = torch.where(stepped, discounted, self.discounted_reward)
        self.return_rms.update(self.discounted_reward, stepped)
        bound = self.normalization.clip
        return (reward / self.return_rms.scale()).clamp(-bound, bound)

    def step(self, actions: torch.Tensor, stepped: torch.Tensor) -> StepResult:
        """Step the sub-envs of the seeds where ``stepped [S]`` (bool tensor) is True with
        ``actions [S, E(, action_dim)]`` (both on the device); the other seeds' sub-envs stay
        exactly as they were.
        Continuous actions are clipped to the action box here, and only here."""
        stepped_envs = stepped[:, None].expand(self.shape)
        if self.spec.discrete:
            actions = actions.reshape(-1)
        else:
            actions = torch.clamp(actions, self.action_low, self.action_high)
            actions = actions.reshape(-1, self.spec.action_dim)
        state_before = self.dynamics.state  # `step` replaces the tensor, never writes into it
        raw_reward, terminated = self.dynamics.step(actions)
        flat_stepped = stepped_envs.reshape(-1, 1)
        self.dynamics.state = torch.where(flat_stepped, self.dynamics.state, state_before)
        raw_reward = raw_reward.view(self.shape)
        terminated = terminated.view(self.shape) & stepped_envs
        self.elapsed = self.elapsed + stepped_envs
        truncated = (self.elapsed >= self.spec.max_episode_steps) & stepped_envs
        next_obs = self._observe(stepped_envs)
        reward = raw_reward
        if self.normalization.reward:
            reward = self._normalize_reward(raw_reward, terminated, stepped_envs)
        ended = terminated | truncated
        # Sub-envs that did not reset (paused ones included) observe what they did before, with
        # unchanged statistics, so one observation of all of them is the next `obs`.
        self.obs = self._observe(ended) if self._reset(ended) else next_obs
        return StepResult(reward=reward, raw_reward=raw_reward, terminated=terminated,
                          truncated=truncated, is_transition=stepped_envs, next_obs=next_obs)

    def reset_envs(self, mask: torch.Tensor) -> None:
        """Start a new episode now in the sub-envs where ``mask [S, E]`` is True."""
        if self._reset(mask):
            self.obs = self._observe(mask)

    def close(self) -> None:
        """Nothing to release (the gymnasium backend's counterpart closes its envs)."""


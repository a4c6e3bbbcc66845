"""Rollout storage and collection of whole-episode batches, per seed and in lockstep.

A `Batch` holds, for every seed, M = E * T step slots laid out sub-env-major (slot
``m = e * T + t``), so each trajectory's steps are contiguous and ``view(S, E, T)`` recovers
time. Only real transitions of counted episodes fill slots; ``valid`` marks them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.envs import SeedEnvs
from bench.networks import Policy
from bench.seeding import SeedNoise


@dataclass
class Batch:
    """Steps of one update, ``[S, M]`` per field (obs ``[S, M, obs_dim]``)."""

    obs: torch.Tensor
    actions: torch.Tensor  # long [S, M] (discrete) or float [S, M, action_dim], unclipped
    log_probs: torch.Tensor  # log pi(a|s) when the action was sampled
    rewards: torch.Tensor
    valid: torch.Tensor  # bool: the slot holds a real step
    trajectory: torch.Tensor  # long: trajectory id within the seed, e * T + k
    last: torch.Tensor  # bool: last step of its trajectory
    terminated: torch.Tensor  # bool: last step and a terminal state (not a time-limit cut)
    num_envs: int

    @property
    def steps_per_env(self) -> int:
        """T, the time length of each sub-env's block of slots."""
        return self.valid.shape[1] // self.num_envs


@dataclass
class FinishedEpisodes:
    """Episodes that finished during a collection (one entry each)."""

    seed_index: np.ndarray  # index into the job's seed list
    env_step: np.ndarray  # the seed's env-step count when the episode ended
    episode_return: np.ndarray  # undiscounted
    episode_length: np.ndarray
    terminated: np.ndarray


class _SlotBuffer:
    """Growable numpy storage ``[S, E, capacity, ...]`` written at per-sub-env positions."""

    def __init__(self, shape: tuple[int, int], fields: dict[str, tuple[tuple[int, ...], type]]):
        self.shape = shape
        self.capacity = 64
        self.fields = fields
        self.data = {
            name: np.zeros((*shape, self.capacity, *trailing), dtype=dtype)
            for name, (trailing, dtype) in fields.items()
        }
        self.position = np.zeros(shape, dtype=np.int64)

    def append(self, where: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """Append ``values[name][where]`` at each selected sub-env's next position."""
        seed_index, env_index = np.nonzero(where)
        if seed_index.size == 0:
            return
        slot = self.position[seed_index, env_index]
        if slot.max() >= self.capacity:
            self._grow()
        for name, value in values.items():
            self.data[name][seed_index, env_index, slot] = value[seed_index, env_index]
        self.position[seed_index, env_index] += 1

    def _grow(self) -> None:
        for name, array in self.data.items():
            grown = np.zeros((*self.shape, 2 * self.capacity, *array.shape[3:]), array.dtype)
            grown[:, :, : self.capacity] = array
            self.data[name] = grown
        self.capacity *= 2


class EpisodeCollector:
    """Collects `episodes_per_update` whole episodes per seed with the current policy.

    Sub-env e of every seed runs ``quota[e]`` of the episodes (the episodes are split as evenly
    as possible). An episode is counted when it starts while its sub-env still has quota, so
    the batch is not biased toward short episodes. A sub-env with its quota met keeps stepping
    only while other sub-envs of its seed still run (gymnasium steps a vector env's sub-envs
    together); the episode it starts then is discarded and is reset at the next collection.
    A seed whose sub-envs all met their quota pauses until every seed has its batch.

    ``env_steps[s]`` counts every transition seed s took, discarded ones included.
    """

    def __init__(
        self,
        envs: SeedEnvs,
        policy: Policy,
        noise: SeedNoise,
        episodes_per_update: int,
        device: torch.device,
    ) -> None:
        num_seeds, num_envs = len(envs.seeds), envs.num_envs
        self.envs, self.policy, self.noise, self.device = envs, policy, noise, device
        self.quota = np.array(
            [episodes_per_update // num_envs + (e < episodes_per_update % num_envs)
             for e in range(num_envs)]
        )
        self.env_steps = np.zeros(num_seeds, dtype=np.int64)
        self.mid_episode = np.zeros((num_seeds, num_envs), dtype=bool)

    def collect(self, acting: np.ndarray) -> tuple[Batch, FinishedEpisodes]:
        """Run the seeds where ``acting [S]`` is True until each has its episodes."""
        envs, spec = self.envs, self.envs.spec
        shape = (len(envs.seeds), envs.num_envs)
        # Episodes left unfinished by the previous collection were discarded: start afresh.
        stale = self.mid_episode & acting[:, None]
        if stale.any():
            envs.reset_envs(stale)
            self.mid_episode &= ~stale

        action_shape = () if spec.discrete else (spec.action_dim,)
        action_dtype = np.int64 if spec.discrete else np.float32
        buffer = _SlotBuffer(shape, {
            "obs": ((spec.obs_dim,), np.float32),
            "actions": (action_shape, action_dtype),
            "log_probs": ((), np.float32),
            "rewards": ((), np.float32),
            "episode_in_env": ((), np.int64),
            "last": ((), bool),
            "terminated": ((), bool),
        })
        started = np.zeros(shape, dtype=np.int64)
        completed = np.zeros(shape, dtype=np.int64)
        counted = np.zeros(shape, dtype=bool)
        running_return = np.zeros(shape, dtype=np.float64)
        running_length = np.zeros(shape, dtype=np.int64)
        finished: list[tuple[np.ndarray, ...]] = []

        while True:
            needs_episodes = acting[:, None] & (completed < self.quota)
            stepped = needs_episodes.any(axis=1)
            if not stepped.any():
                break
            obs = envs.obs.copy()
            obs_tensor = torch.as_tensor(obs, device=self.device)
            if spec.discrete:
                noise = self.noise.uniform((envs.num_envs,), stepped)
            else:
                noise = self.noise.normal((envs.num_envs, spec.action_dim), stepped)
            actions, log_probs = self.policy.sample(obs_tensor, noise)
            actions, log_probs = actions.cpu().numpy(), log_probs.cpu().numpy()
            step = envs.step(actions, np.flatnonzero(stepped))

            transition = step.is_transition
            episode_start = transition & ~self.mid_episode
            counted[episode_start] = (started < self.quota[None, :])[episode_start]
            started[episode_start] += 1
            self.mid_episode |= transition
            self.env_steps += transition.sum(axis=1)
            running_return[transition] += step.reward[transition]
            running_length[transition] += 1
            ended = transition & (step.terminated | step.truncated)
            buffer.append(transition & counted, {
                "obs": obs,
                "actions": actions,
                "log_probs": log_probs,
                "rewards": step.reward.astype(np.float32),
                "episode_in_env": started - 1,
                "last": ended,
                "terminated": step.terminated,
            })

            counted_end = ended & counted
            if counted_end.any():
                seed_index, _ = np.nonzero(counted_end)
                finished.append((
                    seed_index,
                    self.env_steps[seed_index],
                    running_return[counted_end],
                    running_length[counted_end],
                    step.terminated[counted_end],
                ))
                completed += counted_end
            self.mid_episode &= ~ended
            counted &= ~ended
            running_return[ended] = 0.0
            running_length[ended] = 0

        return self._to_batch(buffer), self._to_episodes(finished)

    def _to_batch(self, buffer: _SlotBuffer) -> Batch:
        num_seeds, num_envs = buffer.shape
        steps = int(buffer.position.max())
        data = {name: array[:, :, :steps] for name, array in buffer.data.items()}
        valid = np.arange(steps)[None, None, :] < buffer.position[:, :, None]
        trajectory = np.arange(num_envs)[None, :, None] * steps + data["episode_in_env"]
        trajectory = np.where(valid, trajectory, 0)

        def slots(array: np.ndarray) -> torch.Tensor:
            flat = array.reshape(num_seeds, num_envs * steps, *array.shape[3:])
            return torch.as_tensor(flat, device=self.device)

        return Batch(
            obs=slots(data["obs"]),
            actions=slots(data["actions"]),
            log_probs=slots(data["log_probs"]),
            rewards=slots(data["rewards"]),
            valid=slots(valid),
            trajectory=slots(trajectory),
            last=slots(data["last"] & valid),
            terminated=slots(data["terminated"] & valid),
            num_envs=num_envs,
        )

    @staticmethod
    def _to_episodes(finished: list[tuple[np.ndarray, ...]]) -> FinishedEpisodes:
        if not finished:
            empty = np.zeros(0, dtype=np.int64)
            return FinishedEpisodes(empty, empty, empty.astype(float), empty, empty.astype(bool))
        columns = [np.concatenate(parts) for parts in zip(*finished, strict=True)]
        return FinishedEpisodes(*columns)

"""Rollout storage and batch collection, per seed and in lockstep.

A `Batch` holds, for every seed, M = E * T step slots laid out sub-env-major (slot
``m = e * T + t``), so each trajectory's steps are contiguous and ``view(S, E, T)`` recovers
time. ``valid`` marks the slots that hold a transition of the batch.

Two ways to fill a batch (``algo.batch_unit``):

- `EpisodeCollector` (``episodes``): whole episodes, ``episodes_per_update`` per seed;
- `StepCollector` (``steps``): exactly ``steps_per_update`` transitions per seed; an episode
  still running at the batch end is a cut segment, and the environments carry on from there in
  the next batch.

Episode statistics (`FinishedEpisodes`) are always of whole episodes: an episode that spans
two step batches is recorded once, when it ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.envs import SeedEnvs, StepResult
from bench.networks import Policy
from bench.seeding import SeedNoise, torch_generators


@dataclass
class Batch:
    """Steps of one update, ``[S, M]`` per field (observations ``[S, M, obs_dim]``)."""

    obs: torch.Tensor
    next_obs: torch.Tensor  # successor observation (an ended episode's final observation)
    actions: torch.Tensor  # long [S, M] (discrete) or float [S, M, action_dim], unclipped
    log_probs: torch.Tensor  # log pi(a|s) when the action was sampled
    rewards: torch.Tensor
    valid: torch.Tensor  # bool: the slot holds a transition of the batch
    trajectory: torch.Tensor  # long: trajectory (episode or segment) id within the seed
    last: torch.Tensor  # bool: last step of its trajectory
    terminated: torch.Tensor  # bool: last step, and the episode reached a terminal state
    truncated: torch.Tensor  # bool: last step, and the time limit cut the episode
    cut: torch.Tensor  # bool: last step, and the batch ended while the episode ran on
    num_envs: int

    @property
    def steps_per_env(self) -> int:
        """T, the time length of each sub-env's block of slots."""
        return self.valid.shape[1] // self.num_envs


@dataclass
class FinishedEpisodes:
    """Whole episodes that finished during a collection (one entry each)."""

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


class _Collector:
    """What both collectors share: acting with per-seed noise, stepping, episode statistics.

    ``env_steps[s]`` counts every transition seed s took. Running episode returns and lengths
    persist across collections, so an episode is recorded whole when it ends.
    """

    def __init__(
        self, envs: SeedEnvs, policy: Policy, noise: SeedNoise, device: torch.device
    ) -> None:
        shape = (len(envs.seeds), envs.num_envs)
        self.envs, self.policy, self.noise, self.device = envs, policy, noise, device
        self.env_steps = np.zeros(shape[0], dtype=np.int64)
        self.mid_episode = np.zeros(shape, dtype=bool)
        self.running_return = np.zeros(shape, dtype=np.float64)
        self.running_length = np.zeros(shape, dtype=np.int64)

    def _new_buffer(self) -> _SlotBuffer:
        spec = self.envs.spec
        action_shape = () if spec.discrete else (spec.action_dim,)
        return _SlotBuffer((len(self.envs.seeds), self.envs.num_envs), {
            "obs": ((spec.obs_dim,), np.float32),
            "next_obs": ((spec.obs_dim,), np.float32),
            "actions": (action_shape, np.int64 if spec.discrete else np.float32),
            "log_probs": ((), np.float32),
            "rewards": ((), np.float32),
            "trajectory_in_env": ((), np.int64),
            "last": ((), bool),
            "terminated": ((), bool),
            "truncated": ((), bool),
        })

    def _act_and_step(self, stepped: np.ndarray) -> tuple[dict[str, np.ndarray], StepResult]:
        """Sample actions for every sub-env of the seeds where ``stepped [S]`` is True and step
        them. Returns the transition's fields (``[S, E, ...]``) and the step result."""
        envs, spec = self.envs, self.envs.spec
        obs = envs.obs.copy()
        if spec.discrete:
            noise = self.noise.uniform((envs.num_envs,), stepped)
        else:
            noise = self.noise.normal((envs.num_envs, spec.action_dim), stepped)
        actions, log_probs = self.policy.sample(torch.as_tensor(obs, device=self.device), noise)
        actions, log_probs = actions.cpu().numpy(), log_probs.cpu().numpy()
        step = envs.step(actions, np.flatnonzero(stepped))
        fields = {
            "obs": obs,
            "next_obs": step.next_obs,
            "actions": actions,
            "log_probs": log_probs,
            "rewards": step.reward.astype(np.float32),
            "last": step.terminated | step.truncated,
            "terminated": step.terminated,
            "truncated": step.truncated,
        }
        return fields, step

    def _track_episodes(
        self, step: StepResult, record: np.ndarray, finished: list[tuple[np.ndarray, ...]]
    ) -> np.ndarray:
        """Advance step counts and running episode statistics; append to `finished` the
        episodes that ended where `record` is True. Returns the ``[S, E]`` mask of ended ones."""
        transition = step.is_transition
        self.env_steps += transition.sum(axis=1)
        self.mid_episode |= transition
        self.running_return[transition] += step.raw_reward[transition]
        self.running_length[transition] += 1
        ended = transition & (step.terminated | step.truncated)
        recorded = ended & record
        if recorded.any():
            seed_index, _ = np.nonzero(recorded)
            finished.append((
                seed_index,
                self.env_steps[seed_index],
                self.running_return[recorded],
                self.running_length[recorded],
                step.terminated[recorded],
            ))
        self.mid_episode &= ~ended
        self.running_return[ended] = 0.0
        self.running_length[ended] = 0
        return ended

    def _to_batch(self, buffer: _SlotBuffer, cut: np.ndarray | None = None) -> Batch:
        """Stack the buffer into a `Batch`; ``cut [S, E, T]`` marks batch-end cuts."""
        num_seeds, num_envs = buffer.shape
        steps = int(buffer.position.max())
        data = {name: array[:, :, :steps] for name, array in buffer.data.items()}
        valid = np.arange(steps)[None, None, :] < buffer.position[:, :, None]
        trajectory = np.arange(num_envs)[None, :, None] * steps + data["trajectory_in_env"]
        trajectory = np.where(valid, trajectory, 0)
        cut = np.zeros_like(valid) if cut is None else cut & valid

        def slots(array: np.ndarray) -> torch.Tensor:
            flat = array.reshape(num_seeds, num_envs * steps, *array.shape[3:])
            return torch.as_tensor(flat, device=self.device)

        return Batch(
            obs=slots(data["obs"]),
            next_obs=slots(data["next_obs"]),
            actions=slots(data["actions"]),
            log_probs=slots(data["log_probs"]),
            rewards=slots(data["rewards"]),
            valid=slots(valid),
            trajectory=slots(trajectory),
            last=slots((data["last"] | cut) & valid),
            terminated=slots(data["terminated"] & valid),
            truncated=slots(data["truncated"] & valid),
            cut=slots(cut),
            num_envs=num_envs,
        )

    @staticmethod
    def _to_episodes(finished: list[tuple[np.ndarray, ...]]) -> FinishedEpisodes:
        if not finished:
            empty = np.zeros(0, dtype=np.int64)
            return FinishedEpisodes(empty, empty, empty.astype(float), empty, empty.astype(bool))
        columns = [np.concatenate(parts) for parts in zip(*finished, strict=True)]
        return FinishedEpisodes(*columns)


class EpisodeCollector(_Collector):
    """Collects `episodes_per_update` whole episodes per seed with the current policy.

    Sub-env e of every seed runs ``quota[e]`` of the episodes (split as evenly as possible).
    An episode is counted when it starts while its sub-env still has quota, so the batch is not
    biased toward short episodes. A sub-env with its quota met keeps stepping only while other
    sub-envs of its seed still run (gymnasium steps a vector env's sub-envs together); the
    episode it starts then is discarded and is reset at the next collection. A seed whose
    sub-envs all met their quota pauses until every seed has its batch.
    ``env_steps`` includes the discarded transitions.
    """

    def __init__(
        self,
        envs: SeedEnvs,
        policy: Policy,
        noise: SeedNoise,
        episodes_per_update: int,
        device: torch.device,
    ) -> None:
        super().__init__(envs, policy, noise, device)
        num_envs = envs.num_envs
        self.quota = np.array(
            [episodes_per_update // num_envs + (e < episodes_per_update % num_envs)
             for e in range(num_envs)]
        )

    def collect(self, acting: np.ndarray) -> tuple[Batch, FinishedEpisodes]:
        """Run the seeds where ``acting [S]`` is True until each has its episodes."""
        shape = (len(self.envs.seeds), self.envs.num_envs)
        # Episodes left unfinished by the previous collection were discarded: start afresh.
        stale = self.mid_episode & acting[:, None]
        if stale.any():
            self.envs.reset_envs(stale)
            self.mid_episode &= ~stale
            self.running_return[stale], self.running_length[stale] = 0.0, 0

        buffer = self._new_buffer()
        started = np.zeros(shape, dtype=np.int64)
        completed = np.zeros(shape, dtype=np.int64)
        counted = np.zeros(shape, dtype=bool)
        finished: list[tuple[np.ndarray, ...]] = []
        while True:
            stepped = (acting[:, None] & (completed < self.quota)).any(axis=1)
            if not stepped.any():
                break
            episode_start = stepped[:, None] & ~self.mid_episode
            counted[episode_start] = (started < self.quota)[episode_start]
            started += episode_start
            fields, step = self._act_and_step(stepped)
            buffer.append(step.is_transition & counted,
                          {**fields, "trajectory_in_env": started - 1})
            ended = self._track_episodes(step, counted, finished)
            completed += ended & counted
            counted &= ~ended
        return self._to_batch(buffer), self._to_episodes(finished)


class StepCollector(_Collector):
    """Collects exactly `steps_per_update` transitions per acting seed, ``steps_per_update / E``
    per sub-env. Episodes that run past the batch end are cut there (the segment's last step is
    marked ``cut``) and continue, under the updated policy, in the next batch."""

    def __init__(
        self,
        envs: SeedEnvs,
        policy: Policy,
        noise: SeedNoise,
        steps_per_update: int,
        device: torch.device,
    ) -> None:
        super().__init__(envs, policy, noise, device)
        if steps_per_update % envs.num_envs:
            raise ValueError(
                f"steps_per_update ({steps_per_update}) must be a multiple of num_envs "
                f"({envs.num_envs})"
            )
        self.steps_per_env = steps_per_update // envs.num_envs

    def collect(self, acting: np.ndarray) -> tuple[Batch, FinishedEpisodes]:
        """Step the seeds where ``acting [S]`` is True for `steps_per_env` steps each."""
        shape = (len(self.envs.seeds), self.envs.num_envs)
        buffer = self._new_buffer()
        segment = np.zeros(shape, dtype=np.int64)
        finished: list[tuple[np.ndarray, ...]] = []
        for _ in range(self.steps_per_env):
            fields, step = self._act_and_step(acting)
            buffer.append(step.is_transition, {**fields, "trajectory_in_env": segment})
            segment += self._track_episodes(step, np.ones(shape, dtype=bool), finished)
        # The batch ends mid-episode wherever the last step did not end the episode.
        cut = np.zeros((*shape, self.steps_per_env), dtype=bool)
        cut[:, :, -1] = acting[:, None] & self.mid_episode
        return self._to_batch(buffer, cut), self._to_episodes(finished)


class MinibatchSampler:
    """Per-seed shuffled minibatches of a batch's step slots, one epoch at a time.

    ``unit="steps"``: each seed's slots are shuffled and cut into `num_minibatches` equal
    parts (what SB3 and CleanRL do; a trajectory's steps scatter over minibatches).
    ``unit="segments"``: each seed's trajectories (episodes or rollout segments) are shuffled
    and minibatch k gets those that start in the k-th share of the shuffled steps, so every
    minibatch holds whole trajectories and trajectory-level reductions see whole segments;
    minibatch sizes then vary and are padded (``mask`` False).
    Each seed shuffles with its own generator.
    """

    def __init__(self, seeds: list[int], num_minibatches: int, unit: str) -> None:
        self.generators = torch_generators(seeds, "minibatches")
        self.num_minibatches = num_minibatches
        self.unit = unit

    def epoch(
        self, valid: torch.Tensor, trajectory: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Minibatches ``(index [S, K], mask [S, K])`` into the M slots: `mask` is True on the
        minibatch's slots, which are all valid (False only on padding); every valid slot of
        every seed is in exactly one minibatch."""
        num_seeds, num_slots = valid.shape
        parts: list[list[np.ndarray]] = [[] for _ in range(self.num_minibatches)]
        valid_np, trajectory_np = valid.cpu().numpy(), trajectory.cpu().numpy()
        for s, generator in enumerate(self.generators):
            order = torch.randperm(num_slots, generator=generator).numpy()
            if self.unit == "steps":
                chunks = np.array_split(order, self.num_minibatches)
            else:
                chunks = self._segment_chunks(order, valid_np[s], trajectory_np[s])
            for k, chunk in enumerate(chunks):
                parts[k].append(chunk[valid_np[s, chunk]])
        minibatches = []
        for per_seed in parts:
            width = max(1, max(len(chunk) for chunk in per_seed))
            index = np.zeros((num_seeds, width), dtype=np.int64)
            mask = np.zeros((num_seeds, width), dtype=bool)
            for s, chunk in enumerate(per_seed):
                index[s, : len(chunk)] = np.sort(chunk)
                mask[s, : len(chunk)] = True
            minibatches.append((torch.as_tensor(index, device=valid.device),
                                torch.as_tensor(mask, device=valid.device)))
        return minibatches

    def _segment_chunks(
        self, order: np.ndarray, valid: np.ndarray, trajectory: np.ndarray
    ) -> list[np.ndarray]:
        """Whole trajectories per minibatch, in the shuffled order of their first slots."""
        ids = trajectory[order][valid[order]]
        if ids.size == 0:
            return [np.zeros(0, dtype=np.int64)] * self.num_minibatches
        _, first = np.unique(ids, return_index=True)
        shuffled_ids = ids[np.sort(first)]
        steps = np.array([np.sum(valid & (trajectory == i)) for i in shuffled_ids])
        starts = np.concatenate([[0], np.cumsum(steps)[:-1]])
        share = np.minimum(starts * self.num_minibatches // max(steps.sum(), 1),
                           self.num_minibatches - 1)
        slots = np.arange(len(valid))
        return [
            slots[valid & np.isin(trajectory, shuffled_ids[share == k])]
            for k in range(self.num_minibatches)
        ]


def gather_slots(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor [S, M, ...]`` at slots ``index [S, K]``: ``[S, K, ...]``."""
    expanded = index.view(*index.shape, *([1] * (tensor.dim() - 2)))
    return torch.gather(tensor, 1, expanded.expand(*index.shape, *tensor.shape[2:]))

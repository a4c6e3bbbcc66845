"""Rollout storage and batch collection, per seed and in lockstep, on the job's device.

A `Batch` holds, for every slot (grid point and seed, `bench.slots`), M step positions laid
out sub-env-major in ``num_envs`` blocks of T (position ``m = e * T + t``), so each
trajectory's steps are contiguous and ``view(S, num_envs, T)`` recovers time. ``valid``
marks the positions that hold a transition of the batch. A step batch has one block per
sub-env (every sub-env takes T steps). An episode batch is one block per slot: each slot's
kept steps, sub-env after sub-env, packed to the front, so where a slot's steps lie depends on
its own episodes only and not on how long another slot's are (which decides M).

Two ways to fill a batch (``algo.batch_unit``):

- `EpisodeCollector` (``episodes``): whole episodes, ``episodes_per_update`` per seed;
- `StepCollector` (``steps``): exactly ``steps_per_update`` transitions per seed; an episode
  still running at the batch end is a cut segment, and the environments carry on from there in
  the next batch.

Episode statistics (`FinishedEpisodes`) are always of whole episodes: an episode that spans
two step batches is recorded once, when it ends.

Collection is tensor code on the device end to end: each step's tensors are kept as they are
and stacked once at the end of the collection, and the only transfers to the host are one
per collection (episode statistics and step counts), plus, for whole episodes, one scalar per
step (whether any seed still needs episodes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.envs import SeedEnvs, StepResult
from bench.networks import Policy
from bench.seeding import CounterStreams, SeedNoise


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
    num_blocks: int  # blocks of contiguous time: one per sub-env, or one per slot

    @property
    def block_length(self) -> int:
        """T, the time length of each block of positions."""
        return self.valid.shape[1] // self.num_blocks


@dataclass
class FinishedEpisodes:
    """Whole episodes that finished during a collection (one entry each), in the order they
    ended within each seed."""

    seed_index: np.ndarray  # index into the job's seed list
    env_step: np.ndarray  # the seed's env-step count when the episode ended
    episode_return: np.ndarray  # undiscounted
    episode_length: np.ndarray
    terminated: np.ndarray


class _Collector:
    """What both collectors share: acting with per-seed noise, stepping, episode statistics.

    ``env_steps[s]`` (host copy, updated at the end of each collection) counts every
    transition seed s took. Running episode returns and lengths persist across collections,
    so an episode is recorded whole when it ends.
    """

    def __init__(
        self, envs: SeedEnvs, policy: Policy, noise: SeedNoise, device: torch.device
    ) -> None:
        self.shape = (len(envs.seeds), envs.num_envs)
        self.envs, self.policy, self.noise, self.device = envs, policy, noise, device
        self.env_steps = np.zeros(self.shape[0], dtype=np.int64)
        self._env_steps = torch.zeros(self.shape[0], dtype=torch.int64, device=device)
        self.mid_episode = torch.zeros(self.shape, dtype=torch.bool, device=device)
        self.running_return = torch.zeros(self.shape, dtype=torch.float64, device=device)
        self.running_length = torch.zeros(self.shape, dtype=torch.int64, device=device)

    def _draw_noise(self, drawing: torch.Tensor, draws: int) -> torch.Tensor:
        """Action noise for `draws` steps of every sub-env: ``[S, draws, E(, action_dim)]``."""
        spec = self.envs.spec
        if spec.discrete:
            return self.noise.uniform((self.envs.num_envs,), drawing, draws)
        return self.noise.normal((self.envs.num_envs, spec.action_dim), drawing, draws)

    def _step_noise(self, drawing: torch.Tensor) -> torch.Tensor:
        """Action noise for one step of every sub-env: ``[S, E(, action_dim)]``."""
        spec = self.envs.spec
        if spec.discrete:
            return self.noise.step("uniform", (self.envs.num_envs,), drawing)
        return self.noise.step("normal", (self.envs.num_envs, spec.action_dim), drawing)

    def _act_and_step(
        self, stepped: torch.Tensor, noise: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], StepResult]:
        """Sample actions for every sub-env from ``noise [S, E(, action_dim)]``, step the seeds
        where ``stepped [S]`` is True, and advance step counts and running episode statistics.
        Returns the transition's per-sub-env fields (``[S, E, ...]``) and the step result."""
        obs = self.envs.obs
        actions, log_probs = self.policy.sample(obs, noise)
        step = self.envs.step(actions, stepped)
        transition = step.is_transition
        # Out of place: the previous steps' fields hold the old tensors.
        self._env_steps = self._env_steps + transition.sum(dim=1)
        self.mid_episode = self.mid_episode | transition
        self.running_return = self.running_return + torch.where(transition, step.raw_reward, 0.0)
        self.running_length = self.running_length + transition
        ended = transition & (step.terminated | step.truncated)
        fields = {
            "obs": obs,
            "next_obs": step.next_obs,
            "actions": actions,
            "log_probs": log_probs,
            "rewards": step.reward.to(torch.float32),
            "last": ended,
            "terminated": step.terminated,
            "truncated": step.truncated,
            # What an episode that ended here is recorded with.
            "episode_return": self.running_return,
            "episode_length": self.running_length,
            "episode_env_step": self._env_steps[:, None].expand(self.shape),
        }
        self.mid_episode = self.mid_episode & ~ended
        self.running_return = torch.where(ended, 0.0, self.running_return)
        self.running_length = torch.where(ended, 0, self.running_length)
        return fields, step

    def _to_batch(
        self, steps: list[dict[str, torch.Tensor]], kept: torch.Tensor | None = None,
        acting: torch.Tensor | None = None, cut: torch.Tensor | None = None,
    ) -> tuple[Batch, FinishedEpisodes]:
        """Stack per-step fields into a `Batch` and the episodes that ended in it.

        Either ``kept [S, E, T]``: which steps belong to the batch, packed into one block per
        slot; or ``acting [S]``: every step of the acting slots' sub-envs belongs to it (one
        block of T per sub-env). ``cut [S, E, T]`` marks batch-end cuts (of a step batch).
        """
        num_seeds, num_envs = self.shape
        data = {name: torch.stack([step[name] for step in steps], dim=2) for name in steps[0]}
        self.env_steps = self._env_steps.cpu().numpy()
        if kept is None:
            valid = acting[:, None, None].expand(num_seeds, num_envs, len(steps))
            ended = data["last"] & valid
            episodes = self._episodes(ended, data)
            trajectory = (torch.arange(num_envs, device=self.device)[None, :, None] * len(steps)
                          + data["trajectory_in_env"])
            cut = torch.zeros_like(valid) if cut is None else cut & valid
            fields = {name: data[name] for name in ("obs", "next_obs", "actions", "log_probs",
                                                    "rewards", "terminated", "truncated")}
            fields.update(valid=valid, trajectory=torch.where(valid, trajectory, 0),
                          last=ended | cut, cut=cut)
            blocks = num_envs
        else:
            ended = data["last"] & kept
            episodes = self._episodes(ended, data)
            # Trajectory ids run on from sub-env to sub-env within the slot.
            per_env = torch.where(kept, data["trajectory_in_env"] + 1, 0).amax(dim=2)
            offsets = (per_env.cumsum(dim=1) - per_env)[:, :, None]
            fields = {name: data[name] for name in ("obs", "next_obs", "actions", "log_probs",
                                                    "rewards", "terminated", "truncated")}
            fields.update(trajectory=data["trajectory_in_env"] + offsets, last=ended,
                          cut=torch.zeros_like(kept))
            # Position of each kept step within its slot; the others go to a spare position
            # past the end, which is dropped.
            flat_kept = kept.reshape(num_seeds, -1)
            counts = flat_kept.sum(dim=1, keepdim=True)
            length = int(counts.max()) if counts.numel() else 0
            target = torch.where(flat_kept, flat_kept.cumsum(dim=1) - 1, length)
            for name, values in fields.items():
                values = values.reshape(num_seeds, -1, *values.shape[3:])
                index = target.view(*target.shape, *([1] * (values.dim() - 2)))
                packed = values.new_zeros((num_seeds, length + 1, *values.shape[2:]))
                packed.scatter_(1, index.expand_as(values), values)
                fields[name] = packed[:, None, :length]
            fields["valid"] = (torch.arange(length, device=self.device) < counts)[:, None]
            blocks = 1
        for name in ("terminated", "truncated", "last", "trajectory"):
            fields[name] = fields[name] & fields["valid"] if name != "trajectory" else \
                torch.where(fields["valid"], fields[name], 0)

        def positions(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.reshape(num_seeds, -1, *tensor.shape[3:])

        batch = Batch(**{name: positions(values) for name, values in fields.items()},
                      num_blocks=blocks)
        return batch, episodes

    @staticmethod
    def _episodes(ended: torch.Tensor, data: dict[str, torch.Tensor]) -> FinishedEpisodes:
        """The episodes that end at the steps ``ended [S, E, T]``, ordered within each seed by
        the seed's step count, then sub-env (one transfer to the host)."""
        seed_index, env_index, _ = (i.cpu().numpy() for i in torch.nonzero(ended, as_tuple=True))
        env_step, episode_return, episode_length, terminated = (
            data[name][ended].cpu().numpy()
            for name in ("episode_env_step", "episode_return", "episode_length", "terminated")
        )
        order = np.lexsort((env_index, env_step, seed_index))
        return FinishedEpisodes(seed_index[order], env_step[order], episode_return[order],
                                episode_length[order], terminated[order])


class EpisodeCollector(_Collector):
    """Collects `episodes_per_update` whole episodes per seed with the current policy.

    Sub-env e of every seed runs ``quota[e]`` of the episodes (split as evenly as possible).
    An episode is counted when it starts while its sub-env still has quota, so the batch is not
    biased toward short episodes. A sub-env with its quota met keeps stepping only while other
    sub-envs of its seed still run (a seed's sub-envs step together, as in a vector env); the
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
        self.quota = torch.tensor(
            [episodes_per_update // num_envs + (e < episodes_per_update % num_envs)
             for e in range(num_envs)], device=device,
        )

    def collect(self, acting: np.ndarray) -> tuple[Batch, FinishedEpisodes]:
        """Run the seeds where ``acting [S]`` is True until each has its episodes."""
        acting = torch.as_tensor(acting, device=self.device)
        # Episodes left unfinished by the previous collection were discarded: start afresh.
        stale = self.mid_episode & acting[:, None]
        self.envs.reset_envs(stale)
        self.mid_episode &= ~stale
        self.running_return = torch.where(stale, 0.0, self.running_return)
        self.running_length = torch.where(stale, 0, self.running_length)

        zeros = torch.zeros(self.shape, dtype=torch.int64, device=self.device)
        started, completed = zeros, zeros
        counted = torch.zeros(self.shape, dtype=torch.bool, device=self.device)
        steps: list[dict[str, torch.Tensor]] = []
        kept: list[torch.Tensor] = []
        while True:
            stepped = acting & (completed < self.quota).any(dim=1)
            if not bool(stepped.any()):
                break
            episode_start = stepped[:, None] & ~self.mid_episode
            counted = torch.where(episode_start, started < self.quota, counted)
            started = started + episode_start
            fields, step = self._act_and_step(stepped, self._step_noise(stepped))
            steps.append({**fields, "trajectory_in_env": started - 1})
            kept.append(step.is_transition & counted)
            ended = fields["last"]
            completed = completed + (ended & counted)
            counted = counted & ~ended
        if not steps:
            raise ValueError("collect() needs at least one acting seed")
        return self._to_batch(steps, kept=torch.stack(kept, dim=2))


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
        acting = torch.as_tensor(acting, device=self.device)
        # The noise of the whole collection in one draw (the same numbers as step by step).
        noise = self._draw_noise(acting, self.steps_per_env)
        segment = torch.zeros(self.shape, dtype=torch.int64, device=self.device)
        steps: list[dict[str, torch.Tensor]] = []
        for t in range(self.steps_per_env):
            fields, _ = self._act_and_step(acting, noise[:, t])
            steps.append({**fields, "trajectory_in_env": segment})
            segment = segment + fields["last"]
        # The batch ends mid-episode wherever the last step did not end the episode.
        cut = torch.zeros((*self.shape, self.steps_per_env), dtype=torch.bool,
                          device=self.device)
        cut[:, :, -1] = acting[:, None] & self.mid_episode
        return self._to_batch(steps, acting=acting, cut=cut)


class MinibatchSampler:
    """Per-seed shuffled minibatches of a batch's step slots, one epoch at a time.

    ``unit="steps"``: each seed's valid slots are shuffled and cut into `num_minibatches`
    parts of equal size (up to one; what SB3 and CleanRL do; a trajectory's steps scatter over
    minibatches). ``unit="segments"``: each seed's trajectories (episodes or rollout segments)
    are shuffled and minibatch k gets those that start in the k-th share of the shuffled steps,
    so every minibatch holds whole trajectories and trajectory-level reductions see whole
    segments; minibatch sizes then vary and are padded (``mask`` False).
    Each seed shuffles with its own stream (`bench.seeding.CounterStreams`, ``minibatches``):
    a random key per slot, sorted. ``steps`` is tensor code on the device; ``segments`` runs
    on the host.
    """

    def __init__(
        self, seeds: list[int], num_minibatches: int, unit: str,
        device: torch.device | str = "cpu",
    ) -> None:
        self.streams = CounterStreams.for_seeds(seeds, "minibatches", device)
        self.num_minibatches = num_minibatches
        self.unit = unit

    def epoch(
        self, valid: torch.Tensor, trajectory: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Minibatches ``(index [S, K], mask [S, K])`` into the M slots: `mask` is True on the
        minibatch's slots, which are all valid (False only on padding); every valid slot of
        every seed is in exactly one minibatch. Indices within a minibatch are ascending."""
        num_seeds, num_slots = valid.shape
        keys = self.streams.bits((num_slots,))[:, 0]
        if self.unit == "segments":
            return self._segments(keys.cpu().numpy(), valid, trajectory)
        # Invalid slots sort last (keys are below 2^32).
        order = torch.argsort(torch.where(valid, keys, 1 << 32), dim=1, stable=True)
        return self._step_chunks(order, valid.sum(dim=1))

    def _step_chunks(
        self, order: torch.Tensor, counts: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Cut each seed's first ``counts[s]`` shuffled slots into `num_minibatches` parts,
        the first ``counts[s] % K`` of them one longer (numpy's array_split rule)."""
        parts = self.num_minibatches
        num_slots = order.shape[1]
        width = max(1, -(-num_slots // parts))
        base, extra = counts // parts, counts % parts
        offsets = torch.arange(width, device=order.device)
        minibatches = []
        for k in range(parts):
            start = k * base + torch.clamp(extra, max=k)
            size = base + (k < extra)
            mask = offsets < size[:, None]
            position = torch.clamp(start[:, None] + offsets, max=num_slots - 1)
            index = torch.where(mask, torch.gather(order, 1, position), num_slots)
            index = torch.sort(index, dim=1).values
            minibatches.append((torch.where(mask, index, 0), mask))
        return minibatches

    def _segments(
        self, keys: np.ndarray, valid: torch.Tensor, trajectory: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``unit="segments"``: whole trajectories per minibatch (on the host)."""
        num_seeds = valid.shape[0]
        parts: list[list[np.ndarray]] = [[] for _ in range(self.num_minibatches)]
        valid_np, trajectory_np = valid.cpu().numpy(), trajectory.cpu().numpy()
        for s in range(num_seeds):
            chunks = self._segment_chunks(keys[s], valid_np[s], trajectory_np[s])
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
        self, keys: np.ndarray, valid: np.ndarray, trajectory: np.ndarray
    ) -> list[np.ndarray]:
        """Whole trajectories per minibatch: trajectories in a uniformly random order (by the
        random key of each one's first slot), cut where the running step count crosses each
        k/K share of the seed's valid steps."""
        ids, first = np.unique(trajectory[valid], return_index=True)
        if ids.size == 0:
            return [np.zeros(0, dtype=np.int64)] * self.num_minibatches
        shuffled_ids = ids[np.argsort(keys[valid][first], kind="stable")]
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

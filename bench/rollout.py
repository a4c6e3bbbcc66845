"""Rollout storage and batch collection, per seed, on the job's device.

A `Batch` holds, for each of its R slots (grid point and seed, `bench.slots`; row r is slot
``slots[r]``), M step positions laid out sub-env-major in ``num_envs`` blocks of T (position
``m = e * T + t``), so each trajectory's steps are contiguous and ``view(R, num_envs, T)``
recovers time. ``valid`` marks the positions that hold a transition of the batch. A step
batch has a row for every slot and one block per sub-env (every sub-env takes T steps). An
episode batch has rows for the slots whose batch it is only, one block each: the slot's kept
steps, sub-env after sub-env, packed to the front, so where a slot's steps lie depends on its
own episodes only and not on how long another slot's are (which decides M).

Two ways to fill a batch (``algo.batch_unit``):

- `EpisodeCollector` (``episodes``): whole episodes, ``episodes_per_update`` per seed. Slots
  are not in lockstep: a slot's batch is handed out as soon as it is complete (with those of
  the other slots that are complete by then), while the slots still collecting keep their
  steps and go on in the next call;
- `StepCollector` (``steps``): exactly ``steps_per_update`` transitions per seed, every
  acting slot in every batch; an episode still running at the batch end is a cut segment, and
  the environments carry on from there in the next batch.

Episode statistics (`FinishedEpisodes`) are always of whole episodes: an episode that spans
two step batches is recorded once, when it ends.

Collection is tensor code on the device end to end: a step batch keeps each step's tensors as
they are and stacks them once at the end; episode collection copies each step's tensors into
a window of time-major buffers (`_StepWindow`), from which a hand-out reads its slots' rows.
The only transfers to the host are a few per collection (episode statistics, step counts and
batch lengths), plus, for whole episodes, one scalar per step (how many slots have their
batch).
"""

from __future__ import annotations

import math
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
    # long [R]: the slot of each row (ascending). A step batch has a row for every slot; an
    # episode batch only for the slots whose batch it is.
    slots: torch.Tensor
    # bool [S]: the slots whose batch this is (they update on it); other rows hold no step.
    ready: torch.Tensor

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
    correct: np.ndarray | None = None  # token tasks: the task's verdict on each response


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
        # Host: the slots with a batch in progress across calls of `collect` (episode batches).
        self.collecting = np.zeros(self.shape[0], dtype=bool)
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

    def _batch(self, fields: dict[str, torch.Tensor], blocks: int, slots: torch.Tensor,
               ready: torch.Tensor) -> Batch:
        """A `Batch` of fields ``[R, blocks, T, ...]`` of the slots `slots [R]` (flags and
        trajectory ids are cleared where not valid); also brings the step counts to the
        host."""
        self.env_steps = self._env_steps.cpu().numpy()
        valid = fields["valid"]
        for name in ("terminated", "truncated", "last"):
            fields[name] = fields[name] & valid
        fields["trajectory"] = torch.where(valid, fields["trajectory"], 0)
        return Batch(**{name: values.reshape(len(slots), -1, *values.shape[3:])
                        for name, values in fields.items()}, num_blocks=blocks, slots=slots,
                     ready=ready)

    @staticmethod
    def _episodes(ended: torch.Tensor, data: dict[str, torch.Tensor],
                  rows: torch.Tensor | None = None) -> FinishedEpisodes:
        """The episodes that end at the steps ``ended [R, E, T]`` of the slots ``rows [R]``
        (indices; None: all slots), ordered within each seed by the seed's step count, then
        sub-env (one transfer to the host)."""
        row_index, env_index, _ = torch.nonzero(ended, as_tuple=True)
        seed_index = (row_index if rows is None else rows[row_index]).cpu().numpy()
        env_index = env_index.cpu().numpy()
        env_step, episode_return, episode_length, terminated = (
            data[name][ended].cpu().numpy()
            for name in ("episode_env_step", "episode_return", "episode_length", "terminated")
        )
        order = np.lexsort((env_index, env_step, seed_index))
        return FinishedEpisodes(seed_index[order], env_step[order], episode_return[order],
                                episode_length[order], terminated[order])


# The per-step fields that a batch keeps (besides those it derives: valid, trajectory, cut).
BATCH_FIELDS = ("obs", "next_obs", "actions", "log_probs", "rewards", "terminated",
                "truncated")


class _StepWindow:
    """The per-step tensors (``[S, E, ...]`` each) of a run of consecutive steps, kept
    time-major in buffers that grow as needed: step k (counted from the first step ever
    appended) is row ``k % capacity`` while ``start <= k < end``. Appending a step is one copy
    per field; handing out some slots' steps reads just those slots' rows."""

    def __init__(self) -> None:
        self.start = self.end = self._capacity = 0
        self._buffers: dict[str, torch.Tensor] = {}

    def append(self, fields: dict[str, torch.Tensor]) -> None:
        if self.end - self.start == self._capacity:
            self._grow(max(64, 2 * self._capacity), fields)
        row = self.end % self._capacity
        for name, value in fields.items():
            self._buffers[name][row] = value
        self.end += 1

    def _grow(self, capacity: int, like: dict[str, torch.Tensor]) -> None:
        steps = torch.arange(self.start, self.end, device=next(iter(like.values())).device)
        buffers = {}
        for name, value in like.items():
            buffers[name] = value.new_empty((capacity, *value.shape))
            if name in self._buffers:
                buffers[name][steps % capacity] = self._buffers[name][steps % self._capacity]
        self._buffers, self._capacity = buffers, capacity

    def take(self, first: int, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Steps ``first .. end - 1`` of the slots ``rows [R]`` (indices): ``[R, E, T, ...]``
        per field."""
        steps = torch.arange(first, self.end, device=rows.device) % self._capacity
        return {name: buffer[steps[:, None], rows[None, :]].movedim(0, 2)
                for name, buffer in self._buffers.items()}

    def drop_before(self, step: int) -> None:
        """Forget the steps before `step`."""
        self.start = max(self.start, min(step, self.end))


class EpisodeCollector(_Collector):
    """Collects `episodes_per_update` whole episodes per seed with the seed's current policy;
    each slot's batch is handed out as soon as it is complete, not when every slot's is.

    Sub-env e of every seed runs ``quota[e]`` of the episodes (split as evenly as possible).
    An episode is counted when it starts while its sub-env still has quota, so the batch is not
    biased toward short episodes. A sub-env with its quota met keeps stepping only while other
    sub-envs of its seed still run (a seed's sub-envs step together, as in a vector env); the
    episode it starts then is discarded and is reset when the seed starts its next batch.
    ``env_steps`` includes the discarded transitions.

    Slots do not wait for each other: a slot's batch in progress (its steps so far, its episode
    counts) is kept across calls of `collect`, which returns some of the batches that are
    complete (`Batch.slots`, `Batch.ready`; rows for those slots only) once enough are (see
    READY_FRACTION). A slot whose batch is complete stops stepping (its envs and noise stream
    stay where they are) until it is handed out; the others go on where they were in the next
    call: their policy has not changed, so their steps stay on-policy. A slot's steps, episodes
    and batches are therefore exactly those it gets when it trains alone, whatever the schedule.
    """

    # When to hand out, and how: any choice gives the same numbers (a slot's batches are its
    # own), so these are for speed. `collect` steps until at least READY_FRACTION of the slots
    # with a batch in progress have theirs complete (a lower share means less waiting but more,
    # smaller updates); it then hands those batches out in groups, the longest first, a group
    # being the batches at least 1/GROUP_RATIO as long as its longest one, one group per call
    # (the calls after the first return at once). An update's rows are padded to its longest
    # batch, so grouping keeps short batches from paying for long ones, at the cost of one
    # update per group. Measured on a 15-point x 10-seed CartPole pack (REINFORCE, SGD, rates
    # 1e-5..1e-1, 20k steps per slot; one core): 0.35 and 4 took 38 s; (0.25, 2) 49 s,
    # (0.5, 4) 42 s, (0.1, 2) 59 s, (0.25, no grouping) 60 s; the lockstep collector 180-210 s.
    READY_FRACTION = 0.35
    GROUP_RATIO = 4.0
    # per_step's update is a loop of one forward and backward pass per step position of the
    # longest batch it gets, whatever the number of slots in it, so it wants fewer, fuller
    # hand-outs and one group: 1.27x on a 36-slot pack, no gain at 180 slots (measured in
    # docs/performance.md, "Episode batches without lockstep").
    PER_STEP_SCHEDULE = (0.7, math.inf)

    def __init__(
        self,
        envs: SeedEnvs,
        policy: Policy,
        noise: SeedNoise,
        episodes_per_update: int,
        device: torch.device,
        ready_fraction: float | None = None,
        group_ratio: float | None = None,
    ) -> None:
        super().__init__(envs, policy, noise, device)
        num_envs = envs.num_envs
        self.quota = torch.tensor(
            [episodes_per_update // num_envs + (e < episodes_per_update % num_envs)
             for e in range(num_envs)], device=device,
        )
        self.ready_fraction = self.READY_FRACTION if ready_fraction is None else ready_fraction
        if not 0.0 < self.ready_fraction <= 1.0:
            raise ValueError(f"ready_fraction must lie in (0, 1], got {self.ready_fraction}")
        self.group_ratio = self.GROUP_RATIO if group_ratio is None else group_ratio
        if not self.group_ratio >= 1.0:
            raise ValueError(f"group_ratio must be at least 1 (inf: one group), "
                             f"got {self.group_ratio}")
        # Per slot and sub-env, the episodes of the batch in progress that started, completed,
        # and whether the running episode is counted.
        self._started = torch.zeros(self.shape, dtype=torch.int64, device=device)
        self._completed = torch.zeros_like(self._started)
        self._counted = torch.zeros(self.shape, dtype=torch.bool, device=device)
        # The steps of the batches in progress (and which of their transitions are counted,
        # `kept`), from the first step of the oldest such batch on; `_first_step[s]` is the
        # number of the first step of slot s's batch (steps counted since the start).
        self._window = _StepWindow()
        self._first_step = np.zeros(self.shape[0], dtype=np.int64)
        # Counted steps of each slot's batch so far; the complete batches not handed out yet.
        self._batch_steps = torch.zeros(self.shape[0], dtype=torch.int64, device=device)
        self._handing_out = np.zeros(self.shape[0], dtype=bool)

    def collect(self, acting: np.ndarray) -> tuple[Batch, FinishedEpisodes]:
        """Start a batch for every slot where ``acting [S]`` is True that has none in
        progress, and return complete batches: the next group of those of the last hand-out,
        or, when none is left, those complete once the slots with a batch in progress
        (whatever `acting` says) have run until at least `ready_fraction` of them (all, when
        fewer remain) have theirs (see READY_FRACTION)."""
        self._start(np.asarray(acting, dtype=bool) & ~self.collecting)
        if not self.collecting.any():
            raise ValueError("collect() needs at least one acting seed")
        if not self._handing_out.any():
            self._handing_out = self._run()
        lengths = self._batch_steps.cpu().numpy()
        group = self._handing_out & (lengths * self.group_ratio
                                     >= lengths[self._handing_out].max())
        self._handing_out &= ~group
        return self._hand_out(group)

    def _run(self) -> np.ndarray:
        """Step the slots with a batch in progress until enough batches are complete; returns
        the slots whose batch is complete."""
        collecting = torch.as_tensor(self.collecting, device=self.device)
        needed = max(1, math.ceil(self.ready_fraction * int(self.collecting.sum())))
        num_collecting = int(self.collecting.sum())
        while True:
            stepped = collecting & (self._completed < self.quota).any(dim=1)
            # The one transfer per step: how many slots have their batch.
            if num_collecting - int(stepped.sum()) >= needed:
                break
            episode_start = stepped[:, None] & ~self.mid_episode
            self._counted = torch.where(episode_start, self._started < self.quota,
                                        self._counted)
            self._started = self._started + episode_start
            fields, step = self._act_and_step(stepped, self._step_noise(stepped))
            kept = step.is_transition & self._counted
            self._window.append({**fields, "trajectory_in_env": self._started - 1,
                                 "kept": kept})
            self._batch_steps = self._batch_steps + kept.sum(dim=1)
            ended = fields["last"]
            self._completed = self._completed + (ended & self._counted)
            self._counted = self._counted & ~ended
        return self.collecting & ~stepped.cpu().numpy()

    def _start(self, fresh: np.ndarray) -> None:
        """New batches for the slots `fresh [S]`: episodes their sub-envs left unfinished were
        discarded, so those start afresh, and their episode counts start at zero."""
        if not fresh.any():
            return
        fresh_rows = torch.as_tensor(fresh, device=self.device)[:, None]
        stale = self.mid_episode & fresh_rows
        self.envs.reset_envs(stale)
        self.mid_episode &= ~stale
        self.running_return = torch.where(stale, 0.0, self.running_return)
        self.running_length = torch.where(stale, 0, self.running_length)
        self._started = torch.where(fresh_rows, 0, self._started)
        self._completed = torch.where(fresh_rows, 0, self._completed)
        self._counted = self._counted & ~fresh_rows
        self._batch_steps = torch.where(fresh_rows[:, 0], 0, self._batch_steps)
        self._first_step[fresh] = self._window.end
        self.collecting = self.collecting | fresh

    def _hand_out(self, ready: np.ndarray) -> tuple[Batch, FinishedEpisodes]:
        """The batch of the slots `ready [S]` (their counted steps since their batch began),
        and the steps that no batch in progress needs any more dropped."""
        rows = torch.as_tensor(np.flatnonzero(ready), device=self.device)
        first = int(self._first_step[ready].min())
        data = self._window.take(first, rows)  # [R, E, T, ...]
        # A slot's counted transitions that belong to its current batch.
        steps = torch.arange(first, self._window.end, device=self.device)
        own = steps >= torch.as_tensor(self._first_step[ready], device=self.device)[:, None]
        kept = data.pop("kept") & own[:, None, :]
        batch = self._episode_batch(data, kept, rows, torch.as_tensor(ready, device=self.device))
        self.collecting = self.collecting & ~ready
        self._window.drop_before(int(self._first_step[self.collecting].min())
                                 if self.collecting.any() else self._window.end)
        return batch

    def _episode_batch(
        self, data: dict[str, torch.Tensor], kept: torch.Tensor, rows: torch.Tensor,
        ready: torch.Tensor,
    ) -> tuple[Batch, FinishedEpisodes]:
        """The batch of the slots ``rows [R]`` (indices; ``ready [S]`` as a mask) from their
        steps ``data [R, E, T, ...]``: the steps where ``kept [R, E, T]``, packed into one
        block per slot, and the episodes that ended in it."""
        num_rows = len(rows)
        ended = data["last"] & kept
        episodes = self._episodes(ended, data, rows)
        # Trajectory ids run on from sub-env to sub-env within the slot.
        per_env = torch.where(kept, data["trajectory_in_env"] + 1, 0).amax(dim=2)
        offsets = (per_env.cumsum(dim=1) - per_env)[:, :, None]
        fields = {name: data[name] for name in BATCH_FIELDS}
        fields.update(trajectory=data["trajectory_in_env"] + offsets, last=ended,
                      cut=torch.zeros_like(kept))
        # Position of each kept step within its slot; the others go to a spare position past
        # the end, which is dropped.
        flat_kept = kept.reshape(num_rows, -1)
        counts = flat_kept.sum(dim=1, keepdim=True)
        length = int(counts.max()) if counts.numel() else 0
        target = torch.where(flat_kept, flat_kept.cumsum(dim=1) - 1, length)
        for name, values in fields.items():
            values = values.reshape(num_rows, -1, *values.shape[3:])
            index = target.view(*target.shape, *([1] * (values.dim() - 2)))
            packed = values.new_zeros((num_rows, length + 1, *values.shape[2:]))
            packed.scatter_(1, index.expand_as(values), values)
            fields[name] = packed[:, None, :length]
        fields["valid"] = (torch.arange(length, device=self.device) < counts)[:, None]
        return self._batch(fields, 1, rows, ready), episodes


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
        data = {name: torch.stack([step[name] for step in steps], dim=2) for name in steps[0]}
        # Every step of the acting slots belongs to the batch, one block of T per sub-env.
        valid = acting[:, None, None].expand_as(cut)
        ended = data["last"] & valid
        trajectory = (torch.arange(self.shape[1], device=self.device)[None, :, None]
                      * self.steps_per_env + data["trajectory_in_env"])
        fields = {name: data[name] for name in BATCH_FIELDS}
        fields.update(valid=valid, trajectory=trajectory, last=ended | cut, cut=cut & valid)
        every_slot = torch.arange(self.shape[0], device=self.device)
        return (self._batch(fields, self.shape[1], every_slot, acting),
                self._episodes(ended, data))


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

"""What every training loop shares: the per-slot pieces it is built from (optimiser,
reductions, coefficients), and its bookkeeping (episode and update rows, divergence, progress,
tear-down). The algorithm files keep only their pseudocode."""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
import torch

from bench.config import make_reduction
from bench.optim import SlotOptimizer
from bench.progress import ProgressLine
from bench.records import PackRecorder, UpdateRows, record_episodes
from bench.reductions import SlotReductions
from bench.rollout import FinishedEpisodes
from bench.slots import Slots


def slot_optimizer(slots: Slots, params: Iterable[torch.nn.Parameter]) -> SlotOptimizer:
    """The optimiser of `params` with each slot's own hyperparameters and clipping norm."""
    return SlotOptimizer(list(params), slots.values("optim"),
                         slots.values("algo.max_grad_norm"))


def slot_reductions(slots: Slots) -> SlotReductions:
    """Each slot's reduction, from its grid point's config."""
    per_point = [make_reduction(point.config) for point in slots.points]
    return SlotReductions(tuple(per_point[p] for p in slots.point_index))


class Bookkeeping:
    """Per-slot counters and the rows of one training run: episodes as they finish, update
    rows flushed once per collection, divergence, progress lines."""

    def __init__(self, slots: Slots, recorder: PackRecorder, progress: ProgressLine) -> None:
        self.recorder, self.progress = recorder, progress
        self.episodes_done = np.zeros(len(slots), dtype=np.int64)
        self.updates_done = np.zeros(len(slots), dtype=np.int64)
        self.diverged = np.zeros(len(slots), dtype=bool)
        self.update_rows = UpdateRows()
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def episodes(self, finished: FinishedEpisodes) -> None:
        """Rows for the episodes that finished in a collection."""
        record_episodes(self.recorder, finished, self.episodes_done, self.elapsed())
        self.progress.add_returns(finished.episode_return)

    def end_of_collection(self, env_steps: np.ndarray, acting: np.ndarray) -> None:
        """Write the collection's update rows (marking slots that diverged) and maybe print a
        progress line."""
        self.diverged |= self.update_rows.flush(self.recorder, self.updates_done)
        self.progress.update(env_steps, int(acting.sum()), int(self.updates_done.max()))

    def finish(self, envs: object | None, env_steps: np.ndarray) -> np.ndarray:
        """Close the environments (token tasks have none), print the final line; returns the
        diverged slots (bool [S])."""
        if envs is not None:
            envs.close()
        self.progress.update(env_steps, 0, int(self.updates_done.max()), final=True)
        return self.diverged

"""Slots: a process trains a batch of slots, one slot per (grid point, seed).

Seeds were the first batch axis; grid points are the second. Grid points whose configs differ
only in *batchable* values (the seed, the optimiser's scalar hyperparameters, the reduction and
its parameters, the scalar loss and return coefficients) keep every shape and code path the
same, so their slots train as one batched computation: every parameter, rollout and loss
tensor carries a leading slot axis ``S``, and each batchable value is a per-slot tensor.
Everything else (algorithm, environment, backend, num_envs, rollout shape, network,
optimiser type, ...) is the pack key: grid points with different pack keys never share a
process.

A slot's random streams are derived from its seed alone (`bench.seeding`), and its numbers are
the same whatever else shares its process (tested bitwise against a run of its grid point
alone). Packing is how a sweep is executed, not what it stores: each grid point is still
written to its own result file under its own run key (`bench.store`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.store import ANALYSIS_ONLY_PATHS, NON_RESULT_KEYS, drop_path

# Config values that may differ between the slots of one process (dotted paths). The
# reduction's name is batchable too, except that `per_step` (one backward per step) is its own
# code path; `algo.gamma` is not batchable under `algo.normalize_reward` (the environment
# wrapper discounts with it).
BATCHABLE_PATHS = (
    "optim.lr", "optim.betas", "optim.eps", "optim.weight_decay", "optim.momentum",
    "optim.alpha",
    "reduction.name", "reduction.alpha", "reduction.max_length",
    "algo.entropy_coef", "algo.value_coef", "algo.clip_coef", "algo.max_grad_norm",
    "algo.gamma", "algo.gae_lambda", "algo.target_kl",
    # GRPO
    "algo.scale_rewards", "algo.epsilon_low", "algo.epsilon_high", "algo.beta",
)


def get_path(config: Mapping[str, Any], path: str, default: Any = None) -> Any:
    """The value at dotted `path` of a nested mapping (`default` where a key is missing)."""
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def pack_key(config: Mapping[str, Any]) -> str:
    """16 hex digits over what decides shapes and code paths: the resolved config without
    seeds, output settings, analysis-only values and batchable values."""
    shape = copy.deepcopy({k: v for k, v in config.items() if k not in NON_RESULT_KEYS})
    batchable = list(BATCHABLE_PATHS)
    if get_path(config, "algo.normalize_reward", False):
        batchable.remove("algo.gamma")
    for path in (*batchable, *ANALYSIS_ONLY_PATHS):
        drop_path(shape, path)
    shape["per_step"] = get_path(config, "reduction.name") == "per_step"
    text = json.dumps(shape, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Job:
    """One checked grid point: its config, the seeds to train, and where its results go."""

    config: dict[str, Any]  # resolved config as plain containers
    seeds: list[int]
    device: torch.device
    run_key: str
    swept: dict[str, Any]  # extra result columns: dotted config path -> value
    overrides: tuple[str, ...] = ()  # the grid point's Hydra overrides

    @property
    def label(self) -> str:
        """'ppo/cartpole/mean/adam lr=0.00025 <run key>'."""
        config = self.config
        return (f"{config['algo']['name']}/{config['env']['name']}/"
                f"{config['reduction']['name']}/{config['optim']['name']} "
                f"lr={config['optim']['lr']:g} {self.run_key}")


@dataclass(frozen=True)
class Slots:
    """The slots of one process: slot ``i`` trains seed ``seeds[i]`` of grid point
    ``points[point_index[i]]``. Slots of a point are contiguous, in the point's seed order."""

    points: tuple[Job, ...]
    point_index: np.ndarray  # int64 [S]
    seeds: tuple[int, ...]  # [S]
    device: torch.device

    @classmethod
    def of(cls, points: Sequence[Job]) -> Slots:
        """The slots of `points` (checked: one pack key, one device, at least one seed)."""
        if not points:
            raise ValueError("a pack needs at least one grid point")
        keys = {pack_key(point.config) for point in points}
        if len(keys) > 1:
            raise ValueError(f"grid points of one pack must share their pack key; got {keys}")
        devices = {point.device for point in points}
        if len(devices) > 1:
            raise ValueError(f"grid points of one pack must share a device; got {devices}")
        point_index = np.concatenate(
            [np.full(len(point.seeds), p, dtype=np.int64) for p, point in enumerate(points)])
        seeds = tuple(seed for point in points for seed in point.seeds)
        if not seeds:
            raise ValueError("a pack needs at least one seed")
        return cls(tuple(points), point_index, seeds, points[0].device)

    def __len__(self) -> int:
        return len(self.seeds)

    @property
    def config(self) -> dict[str, Any]:
        """The config that fixes shapes and code paths (shared by all points; its batchable
        values are those of the first point and must be read per slot with `values`)."""
        return self.points[0].config

    def values(self, path: str, default: Any = None) -> list[Any]:
        """Each slot's config value at dotted `path`: a list of length S."""
        per_point = [get_path(point.config, path, default) for point in self.points]
        return [per_point[p] for p in self.point_index]

    def tensor(self, path: str, *, none: float = float("inf"),
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Each slot's number at `path` as a ``[S, 1]`` tensor on the device (a null value
        becomes `none`), to broadcast against ``[S, ...]`` per-slot tensors."""
        values = [none if value is None else float(value) for value in self.values(path)]
        return torch.tensor(values, dtype=dtype, device=self.device)[:, None]

    def local_seed_index(self) -> np.ndarray:
        """Index of each slot's seed within its own point's seed list: int64 [S]."""
        index = np.zeros(len(self), dtype=np.int64)
        for p in range(len(self.points)):
            where = np.flatnonzero(self.point_index == p)
            index[where] = np.arange(len(where))
        return index

    def describe(self) -> str:
        """One line per grid point: its label and seeds."""
        return "\n".join(f"  {point.label} seeds {point.seeds}" for point in self.points)

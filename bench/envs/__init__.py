"""Environments for a batch of seeds (S seeds x E sub-environments each).

Two backends with one interface (``obs``, ``step``, ``reset_envs``, tensors on the job's
device), chosen by ``env.backend``:

- ``torch``: classic-control dynamics as batched tensor code on any device
  (`bench.envs.classic_control`, wrapped by `bench.envs.torch_backend`); nothing leaves the
  device;
- ``gymnasium``: any gymnasium id, one ``SyncVectorEnv`` per seed on the host
  (`bench.envs.gym_backend`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from bench.envs.classic_control import CLASSIC_CONTROL, make_classic_control
from bench.envs.gym_backend import (
    EnvSpec,
    Normalization,
    SeedEnvs,
    StepResult,
    describe_env,
    make_env,
)
from bench.envs.torch_backend import TorchSeedEnvs, describe_torch_env

BACKENDS = ("torch", "gymnasium")


def check_backend(env_cfg: Mapping[str, Any]) -> None:
    """Raise ValueError if ``env.backend`` is unknown, cannot run ``env.id``, or (torch) does
    not accept ``env.kwargs``."""
    backend, gym_id = env_cfg["backend"], env_cfg["id"]
    if backend not in BACKENDS:
        raise ValueError(f"env.backend={backend!r} is not valid; valid choices: "
                         f"{', '.join(BACKENDS)}")
    if backend == "torch":
        if gym_id not in CLASSIC_CONTROL:
            raise ValueError(
                f"env.backend=torch does not implement env.id={gym_id!r}; it implements "
                f"{', '.join(CLASSIC_CONTROL)} (use env.backend=gymnasium for other ids)"
            )
        make_classic_control(gym_id, 1, "cpu", dict(env_cfg["kwargs"] or {}))


def describe(env_cfg: Mapping[str, Any]) -> EnvSpec:
    """The `EnvSpec` of the configured environment."""
    if env_cfg["backend"] == "torch":
        return describe_torch_env(env_cfg["id"], env_cfg["max_episode_steps"])
    return describe_env(env_cfg["id"], env_cfg["max_episode_steps"], env_cfg["kwargs"])


def make_seed_envs(
    env_cfg: Mapping[str, Any],
    seeds: Sequence[int],
    num_envs: int,
    device: torch.device,
    normalization: Normalization = Normalization(),
    stream: str = "env",
) -> SeedEnvs | TorchSeedEnvs:
    """S x `num_envs` sub-environments of the configured environment and backend, their
    resets drawn from `stream` (`bench.seeding.STREAMS`)."""
    check_backend(env_cfg)
    spec = describe(env_cfg)
    kwargs = dict(env_cfg["kwargs"] or {})
    if env_cfg["backend"] == "torch":
        return TorchSeedEnvs(spec, seeds, num_envs, kwargs, normalization, device, stream)
    return SeedEnvs(spec, seeds, num_envs, kwargs, normalization, device, stream)


__all__ = [
    "BACKENDS", "EnvSpec", "Normalization", "SeedEnvs", "StepResult", "TorchSeedEnvs",
    "check_backend", "describe", "describe_env", "make_env", "make_seed_envs",
]

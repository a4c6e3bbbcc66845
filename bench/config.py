"""Checking a composed config and turning it into what a job needs (seeds, device, run key).

Every check raises `ConfigError` with one line that names the bad value and the valid
choices; `bench.run` prints it and exits non-zero before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from bench.envs import check_backend
from bench.optim import OPTIMIZERS
from bench.reductions import REDUCTIONS, Reduction
from bench.slots import Job
from bench.store import NON_RESULT_KEYS, run_key

# Algorithm name (the `algo` column) -> the implementation that trains it (bench/algos/).
ALGORITHMS = {"reinforce": "reinforce", "vpg": "reinforce", "a2c": "a2c", "ppo": "ppo"}
SCOPES = ("minibatch", "rollout")
DEVICES = ("auto", "cpu", "cuda")
# Hydra config groups: their choice is an identity column, not a swept column.
GROUPS = ("algo", "env", "reduction", "optim", "experiment")
REINFORCE_CHOICES = {
    "returns": ("total", "reward_to_go"),
    "baseline": ("none", "batch_mean", "value"),
    "batch_unit": ("episodes", "steps"),
    "cut_episode": ("bootstrap", "zero", "drop"),
    "truncation": ("end", "bootstrap"),
}
ACTOR_CRITIC_CHOICES = {
    "minibatch_unit": ("steps", "segments"),
    "normalize_advantages": ("none", "minibatch", "rollout"),
}


class ConfigError(ValueError):
    """A config value is invalid; the message names it and the valid choices."""


def _choice(what: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; valid choices: {', '.join(choices)}")
    return value


def _number(what: str, value: Any, minimum: float, *, integer: bool, inclusive: bool) -> Any:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    ok = ok and (value >= minimum if inclusive else value > minimum)
    if not ok:
        bound = f">= {minimum}" if inclusive else f"> {minimum}"
        noun = "an integer" if integer else "a number"
        raise ConfigError(f"{what} must be {noun} {bound}, got {value!r}")
    return value


def parse_seeds(value: Any) -> list[int]:
    """`seeds` as a list: a count n means 0..n-1; a list must hold distinct integers >= 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigError(f"seeds must be a count > 0 or a list of seeds, got {value!r}")
        return list(range(value))
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0:
        seeds = list(value)
        if all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            if len(set(seeds)) == len(seeds):
                return seeds
            raise ConfigError(f"seeds must be distinct, got {seeds!r}")
    raise ConfigError(
        f"seeds must be a count > 0 or a non-empty list of integers >= 0, got {value!r}"
    )


def resolve_device(value: Any) -> torch.device:
    """`device` as a torch.device: auto picks CUDA when available."""
    _choice("device", value, DEVICES)
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' requested but CUDA is not available; valid here: auto, cpu"
        )
    return torch.device(value)


def check_config(config: Mapping[str, Any]) -> None:
    """Check every value a job uses; raise `ConfigError` on the first bad one."""
    algo, env, optim = config["algo"], config["env"], config["optim"]
    _choice("algo", algo["name"], tuple(ALGORITHMS))
    _choice("optim", optim["name"], OPTIMIZERS)
    _number("total_steps", config["total_steps"], 0, integer=True, inclusive=False)
    _number("threads", config["threads"], 0, integer=True, inclusive=False)
    _number("optim.lr", optim["lr"], 0, integer=False, inclusive=False)
    _choice("env.action", env["action"], ("discrete", "continuous"))
    try:
        check_backend(env)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    _number("env.max_episode_steps", env["max_episode_steps"], 0, integer=True, inclusive=False)
    make_reduction(config)
    _choice("reduction.scope", config["reduction"]["scope"], SCOPES)
    _number("algo.num_envs", algo["num_envs"], 0, integer=True, inclusive=False)
    gamma = algo["gamma"]
    if not (isinstance(gamma, int | float) and 0.0 <= gamma <= 1.0):
        raise ConfigError(f"algo.gamma must be in [0, 1], got {gamma!r}")
    if algo["max_grad_norm"] is not None:
        _number("algo.max_grad_norm", algo["max_grad_norm"], 0, integer=False, inclusive=False)
    _choice("algo.network.activation", algo["network"]["activation"], ("tanh", "relu"))
    if ALGORITHMS[algo["name"]] == "reinforce":
        _check_reinforce(algo)
    else:
        _check_actor_critic(algo, config["reduction"]["scope"])


def _check_reinforce(algo: Mapping[str, Any]) -> None:
    for key, choices in REINFORCE_CHOICES.items():
        _choice(f"algo.{key}", algo[key], choices)
    if algo["batch_unit"] == "episodes":
        _number("algo.episodes_per_update", algo["episodes_per_update"], algo["num_envs"],
                integer=True, inclusive=True)
    else:
        _number("algo.steps_per_update", algo["steps_per_update"], algo["num_envs"],
                integer=True, inclusive=True)
        if algo["steps_per_update"] % algo["num_envs"]:
            raise ConfigError(
                f"algo.steps_per_update ({algo['steps_per_update']}) must be a multiple of "
                f"algo.num_envs ({algo['num_envs']})"
            )
    for key in ("cut_episode", "truncation"):
        if algo[key] == "bootstrap" and algo["baseline"] != "value":
            raise ConfigError(
                f"algo.{key}=bootstrap needs a learned value function (algo.baseline=value), "
                f"got algo.baseline={algo['baseline']!r}"
            )


def _check_actor_critic(algo: Mapping[str, Any], scope: str) -> None:
    for key, choices in ACTOR_CRITIC_CHOICES.items():
        _choice(f"algo.{key}", algo[key], choices)
    for key in ("rollout_steps", "num_minibatches", "update_epochs"):
        _number(f"algo.{key}", algo[key], 0, integer=True, inclusive=False)
    lam = algo["gae_lambda"]
    if not (isinstance(lam, int | float) and 0.0 <= lam <= 1.0):
        raise ConfigError(f"algo.gae_lambda must be in [0, 1], got {lam!r}")
    rollout = algo["num_envs"] * algo["rollout_steps"]
    if algo["num_minibatches"] > rollout:
        raise ConfigError(
            f"algo.num_minibatches ({algo['num_minibatches']}) exceeds the rollout's "
            f"{rollout} steps (num_envs x rollout_steps)"
        )
    if algo["minibatch_unit"] == "steps" and rollout % algo["num_minibatches"]:
        raise ConfigError(
            f"the rollout's {rollout} steps (num_envs x rollout_steps) must split evenly into "
            f"algo.num_minibatches={algo['num_minibatches']} (or use minibatch_unit=segments)"
        )
    if algo["name"] == "ppo":
        _number("algo.clip_coef", algo["clip_coef"], 0, integer=False, inclusive=False)
        if algo["target_kl"] is not None:
            _number("algo.target_kl", algo["target_kl"], 0, integer=False, inclusive=False)


def make_reduction(config: Mapping[str, Any]) -> Reduction:
    """The `Reduction` of a config; constant's T_max defaults to the env's step limit."""
    reduction = config["reduction"]
    name = _choice("reduction", reduction["name"], REDUCTIONS)
    max_length = reduction.get("max_length") or config["env"]["max_episode_steps"]
    try:
        return Reduction(name, alpha=float(reduction.get("alpha", 1.0)), max_length=max_length)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from error


def column_value(value: Any) -> Any:
    """A config value as a parquet cell: scalars as they are, containers as JSON text."""
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    return value


def swept_values(config: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Extra columns for the job's value overrides (group choices and settings excluded).

    optim.lr is the identity column `lr`; any other override ``a.b=v`` becomes column
    ``a.b`` holding the resolved value.
    """
    swept: dict[str, Any] = {}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in GROUPS or key in NON_RESULT_KEYS or key in ("device", "optim.lr"):
            continue
        if key.startswith("hydra"):
            continue
        node: Any = config
        for part in key.split("."):
            node = node[part]
        swept[key] = column_value(node)
    return dict(sorted(swept.items()))


def make_job(config: dict[str, Any], overrides: Sequence[str]) -> Job:
    """Check `config` (resolved, plain containers) and derive the grid point's job from it."""
    check_config(config)
    seeds = parse_seeds(config["seeds"])
    device = resolve_device(config["device"])
    # The run key covers the resolved device, not the request ("auto").
    key = run_key({**config, "device": device.type})
    return Job(config, seeds, device, key, swept_values(config, overrides), tuple(overrides))

"""Checking a composed config and turning it into what a job needs (seeds, device, run key).

One validation layer: `check_config` checks every value of a resolved config against its rule
in `RULES` (known choice, finite number in range, integer, flag, list shape), refuses keys no
job reads, then the checks that involve several values (batch shapes, the environment), before
anything is created. Every check raises `ConfigError` with one line that names the value and
its valid range or choices; `bench.run` prints it and exits with status 2 (a single run) or
records it for its grid point (a multirun).

`check_config` also returns the config normalised, so that equivalent spellings of one value
give one stored config and one run key: a real number given as an integer (``optim.lr=1``)
becomes a float, and `constant`'s ``reduction.max_length`` (T_max) null, its default, becomes
the env's step limit it stands for.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from bench.envs import BACKENDS, check_backend
from bench.optim import OPTIMIZERS
from bench.reductions import REDUCTIONS, Reduction
from bench.slots import Job
from bench.store import NON_RESULT_KEYS, run_key

# Algorithm name (the `algo` column) -> the implementation that trains it (bench/algos/).
ALGORITHMS = {"reinforce": "reinforce", "vpg": "reinforce", "a2c": "a2c", "ppo": "ppo",
              "grpo": "grpo"}
# env.backend of the token tasks (bench/lm/tasks.py), which only algo=grpo trains; the control
# algorithms need one of bench.envs.BACKENDS.
TOKEN_BACKEND = "tokens"
ENV_BACKENDS = (*BACKENDS, TOKEN_BACKEND)
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
    ok = ok and math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
    if not ok:
        bound = f">= {minimum}" if inclusive else f"> {minimum}"
        noun = "an integer" if integer else "a finite number"
        raise ConfigError(f"{what} must be {noun} {bound}, got {value!r}")
    return value


# A rule checks one value (its dotted path, its value) and returns it normalised.
Rule = Callable[[str, Any], Any]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def real(low: float | None = None, high: float | None = None, *, open_low: bool = False,
         open_high: bool = False) -> Rule:
    """A finite number within the bounds, returned as a float."""
    if low is not None and high is not None:
        bounds = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    elif low is not None:
        bounds = f"{'>' if open_low else '>='} {low:g}"
    else:
        bounds = ""

    def check(path: str, value: Any) -> float:
        ok = _is_number(value) and math.isfinite(value)
        if ok and low is not None:
            ok = value > low if open_low else value >= low
        if ok and high is not None:
            ok = value < high if open_high else value <= high
        if not ok:
            raise ConfigError(f"{path} must be a finite number {bounds}, got {value!r}".replace(
                "number , got", "number, got"))
        return float(value)

    return check


def integer(low: int) -> Rule:
    def check(path: str, value: Any) -> int:
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            raise ConfigError(f"{path} must be an integer >= {low}, got {value!r}")
        return value

    return check


def choice(*choices: str) -> Rule:
    def check(path: str, value: Any) -> str:
        return _choice(path, value, choices)

    return check


def flag(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path} must be true or false, got {value!r}")
    return value


def optional(rule: Rule) -> Rule:
    """`rule`, or null."""
    def check(path: str, value: Any) -> Any:
        if value is None:
            return None
        try:
            return rule(path, value)
        except ConfigError as error:
            raise ConfigError(str(error).replace(", got ", " or null, got ", 1)) from None

    return check


def text(path: str, value: Any) -> str:
    if not (isinstance(value, str) and value.strip()):
        raise ConfigError(f"{path} must be a non-empty string, got {value!r}")
    return value


def directory_name(path: str, value: Any) -> str:
    """One directory name: results go to <results_dir>/<name>/ and nowhere else."""
    if not (isinstance(value, str) and value.strip() and value not in (".", "..")
            and "/" not in value and "\\" not in value and "\0" not in value):
        raise ConfigError(f"{path} must be one directory name (not empty, '.' or '..', no '/'), "
                          f"got {value!r}")
    return value


def sizes(path: str, value: Any) -> list[int]:
    if not (isinstance(value, list) and value and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        raise ConfigError(f"{path} must be a non-empty list of integers >= 1 (layer widths), "
                          f"got {value!r}")
    return value


def betas(path: str, value: Any) -> list[float]:
    if not (isinstance(value, list) and len(value) == 2
            and all(_is_number(v) and math.isfinite(v) and 0 <= v < 1 for v in value)):
        raise ConfigError(f"{path} must be two finite numbers in [0, 1), got {value!r}")
    return [float(v) for v in value]


def mapping(path: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path} must be a mapping, got {value!r}")
    return value


def scores(path: str, value: Any) -> Any:
    """env.reference_scores (read by the report only): null or finite numbers by name."""
    if value is None:
        return None
    if not (isinstance(value, dict) and all(
            _is_number(v) and math.isfinite(v) for v in value.values())):
        raise ConfigError(f"{path} must map names (random, solved) to finite numbers, "
                          f"got {value!r}")
    return {k: float(v) for k, v in value.items()}


def seeds_rule(path: str, value: Any) -> Any:
    parse_seeds(value)
    return value


# Every value a job reads, by dotted path. `env.kwargs` and `env.reference_scores` are checked
# whole (their keys are the environment's); `check_config` refuses a key not listed here.
RULES: dict[str, Rule] = {
    "seeds": seeds_rule,
    "total_steps": integer(1),
    "device": choice(*DEVICES),
    "threads": integer(1),
    "results_dir": text,
    "name": directory_name,
    "progress_interval_s": real(0),
    "pack": optional(integer(0)),
    "optim.name": choice(*OPTIMIZERS),
    "optim.lr": real(0, open_low=True),
    "optim.betas": betas,
    "optim.eps": real(0),
    "optim.weight_decay": real(0),
    "optim.momentum": real(0),
    "optim.alpha": real(0, 1),
    "optim.nesterov": flag,
    "reduction.name": choice(*REDUCTIONS),
    "reduction.scope": choice(*SCOPES),
    "reduction.alpha": real(0, 1),
    "reduction.max_length": optional(integer(1)),
    "env.name": text,
    "env.id": text,
    "env.max_episode_steps": integer(1),
    "env.backend": choice(*ENV_BACKENDS),
    "env.action": choice("discrete", "continuous"),
    "env.kwargs": mapping,
    "env.reference_scores": scores,
    "algo.name": choice(*ALGORITHMS),
    "algo.num_envs": integer(1),
    "algo.gamma": real(0, 1),
    "algo.value_coef": real(0),
    "algo.entropy_coef": real(0),
    "algo.max_grad_norm": optional(real(0, open_low=True)),
    "algo.network.hidden_sizes": sizes,
    "algo.network.activation": choice("tanh", "relu"),
    "algo.network.init_log_std": real(),
    # REINFORCE / VPG
    **{f"algo.{key}": choice(*choices) for key, choices in REINFORCE_CHOICES.items()},
    "algo.episodes_per_update": integer(1),
    "algo.steps_per_update": integer(1),
    # A2C / PPO
    "algo.rollout_steps": integer(1),
    "algo.num_minibatches": integer(1),
    "algo.update_epochs": integer(1),
    "algo.gae_lambda": real(0, 1),
    "algo.minibatch_unit": choice(*ACTOR_CRITIC_CHOICES["minibatch_unit"]),
    "algo.anneal_lr": flag,
    "algo.shared_network": flag,
    "algo.normalize_observation": flag,
    "algo.normalize_reward": flag,
    # Gradient diagnostics (bench/diagnostics.py); optional, off when absent
    "diagnostics.every": integer(0),
    "diagnostics.reference_episodes": integer(1),
    "diagnostics.noise_batches": integer(2),
    "diagnostics.length_power_alpha": real(0, 1),
    # PPO
    "algo.clip_coef": real(0, open_low=True),
    "algo.clip_value_loss": flag,
    "algo.target_kl": optional(real(0, open_low=True)),
    # GRPO (bench/algos/grpo.py)
    "algo.prompts_per_update": integer(1),
    "algo.group_size": integer(2),
    "algo.scale_rewards": flag,
    "algo.epsilon_low": real(0, 1),
    "algo.epsilon_high": real(0),
    "algo.beta": real(0),
    "algo.network.d_model": integer(1),
    "algo.network.num_layers": integer(1),
    "algo.network.num_heads": integer(1),
    "algo.warm_start.steps": integer(0),
    "algo.warm_start.batch_size": integer(1),
    "algo.warm_start.lr": real(0, open_low=True),
    "algo.warm_start.error_rate": real(0, 1),
}
# Values whose rule depends on the algorithm family.
FAMILY_RULES: dict[str, dict[str, Rule]] = {
    "reinforce": {"algo.normalize_advantages": flag},
    "actor_critic": {"algo.normalize_advantages": choice(
        *ACTOR_CRITIC_CHOICES["normalize_advantages"])},
    "grpo": {},
}
# Values a job of each kind must have (a key another algorithm reads may be present too: a
# sweep over `algo` sets those with `++`).
REQUIRED = {
    "common": ("seeds", "total_steps", "device", "threads", "results_dir", "name",
               "progress_interval_s", "optim.name", "optim.lr", "reduction.name",
               "reduction.scope", "env.name", "env.id", "env.max_episode_steps", "env.backend",
               "env.action", "env.kwargs", "algo.name", "algo.entropy_coef",
               "algo.max_grad_norm"),
    # The control algorithms (REINFORCE/VPG, A2C, PPO).
    "control": ("algo.num_envs", "algo.gamma", "algo.value_coef", "algo.normalize_advantages",
                "algo.network.hidden_sizes", "algo.network.activation",
                "algo.network.init_log_std"),
    "adam": ("optim.betas", "optim.eps", "optim.weight_decay"),
    "sgd": ("optim.momentum", "optim.nesterov", "optim.weight_decay"),
    "rmsprop": ("optim.alpha", "optim.eps", "optim.momentum", "optim.weight_decay"),
    "reinforce": (*(f"algo.{key}" for key in REINFORCE_CHOICES), "algo.episodes_per_update",
                  "algo.steps_per_update"),
    "actor_critic": ("algo.rollout_steps", "algo.num_minibatches", "algo.update_epochs",
                     "algo.gae_lambda", "algo.minibatch_unit", "algo.anneal_lr",
                     "algo.shared_network", "algo.normalize_observation",
                     "algo.normalize_reward"),
    "ppo": ("algo.clip_coef", "algo.clip_value_loss", "algo.target_kl"),
    "grpo": ("algo.prompts_per_update", "algo.group_size", "algo.update_epochs",
             "algo.num_minibatches", "algo.scale_rewards", "algo.epsilon_low",
             "algo.epsilon_high", "algo.beta", "algo.network.d_model", "algo.network.num_layers",
             "algo.network.num_heads", "algo.warm_start.steps", "algo.warm_start.batch_size",
             "algo.warm_start.lr", "algo.warm_start.error_rate"),
}
# Mappings checked whole by their rule, not key by key.
WHOLE_VALUES = ("env.kwargs", "env.reference_scores")


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


def leaves(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, value) of every value of a nested config; `WHOLE_VALUES` and lists are
    values, not nodes."""
    found = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and path not in WHOLE_VALUES:
            found += leaves(value, path + ".")
        else:
            found.append((path, value))
    return found


def _set_path(config: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value


def _family(config: Mapping[str, Any]) -> str:
    implementation = ALGORITHMS[config["algo"]["name"]]
    return implementation if implementation in ("reinforce", "grpo") else "actor_critic"


def check_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """Every value against its rule; a key no rule names and a missing one are refused.
    Returns a normalised deep copy (see the module docstring)."""
    for group, names in (("algo", ALGORITHMS), ("optim", OPTIMIZERS), ("reduction", REDUCTIONS)):
        node = config.get(group)
        if not isinstance(node, Mapping) or "name" not in node:
            raise ConfigError(f"missing config value {group}.name")
        _choice(group, node["name"], tuple(names))
    family = _family(config)
    rules = {**RULES, **FAMILY_RULES[family]}
    normalized = copy.deepcopy(dict(config))
    present = set()
    for path, value in leaves(config):
        rule = rules.get(path)
        if rule is None:
            raise ConfigError(f"unknown config value {path}={value!r}: no job reads it; known "
                              f"values of {path.rpartition('.')[0] or 'the top level'}: "
                              f"{', '.join(_siblings(path)) or 'none'}")
        _set_path(normalized, path, rule(path, value))
        present.add(path)
    required = [*REQUIRED["common"], *REQUIRED[config["optim"]["name"]], *REQUIRED[family]]
    if family != "grpo":
        required += REQUIRED["control"]
    if config["algo"]["name"] == "ppo":
        required += REQUIRED["ppo"]
    missing = [path for path in required if path not in present]
    if missing:
        raise ConfigError(f"missing config value {missing[0]} (needed by algo="
                          f"{config['algo']['name']} optim={config['optim']['name']})")
    reduction = normalized["reduction"]
    if reduction["name"] == "constant" and reduction.get("max_length") is None:
        reduction["max_length"] = normalized["env"]["max_episode_steps"]
    return normalized


def _siblings(path: str) -> list[str]:
    parent = path.rpartition(".")[0]
    prefix = parent + "." if parent else ""
    return sorted({known[len(prefix):].split(".")[0] for known in RULES
                   if known.startswith(prefix) and known != path})


def check_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check every value a job uses (`check_values`, then the checks that involve several
    values and the environment); raise `ConfigError` on the first bad one. Returns the
    normalised config."""
    config = check_values(config)
    algo, env = config["algo"], config["env"]
    _check_algorithm_and_env(algo["name"], env)
    check_environment(env)
    make_reduction(config)
    family = _family(config)
    if family == "reinforce":
        _check_reinforce(algo)
    elif family == "grpo":
        _check_grpo(algo, config["reduction"]["name"])
    else:
        _check_actor_critic(algo, config["reduction"]["scope"])
    _check_diagnostics(config)
    return config


def _check_algorithm_and_env(algo: str, env: Mapping[str, Any]) -> None:
    """Token tasks are for algo=grpo only, and algo=grpo trains on token tasks only."""
    token_task = env["backend"] == TOKEN_BACKEND
    if algo == "grpo" and not token_task:
        from bench.lm.tasks import TASKS

        raise ConfigError(f"algo=grpo trains on token tasks (env.backend={TOKEN_BACKEND}), got "
                          f"env={env['name']} (env.backend={env['backend']}); valid envs: "
                          f"{', '.join(sorted(TASKS))}")
    if algo != "grpo" and token_task:
        raise ConfigError(f"env={env['name']} is a token task (env.backend={TOKEN_BACKEND}); "
                          f"only algo=grpo trains on it, got algo={algo}")


def _check_grpo(algo: Mapping[str, Any], reduction: str) -> None:
    if reduction == "per_step":
        raise ConfigError(
            "reduction=per_step is not available with algo=grpo: a token's log-probability "
            "needs its whole response's forward pass, so per-token backward passes would "
            "repeat it for every token; valid choices: "
            f"{', '.join(r for r in REDUCTIONS if r != 'per_step')}")
    responses = algo["prompts_per_update"] * algo["group_size"]
    if responses % algo["num_minibatches"]:
        raise ConfigError(
            f"the batch's {responses} responses (prompts_per_update x group_size) must split "
            f"evenly into algo.num_minibatches={algo['num_minibatches']}")
    network = algo["network"]
    if network["d_model"] % network["num_heads"]:
        raise ConfigError(f"algo.network.d_model ({network['d_model']}) must be a multiple of "
                          f"algo.network.num_heads ({network['num_heads']})")


def _check_diagnostics(config: Mapping[str, Any]) -> None:
    """Diagnostics, when on, have every setting, and the probe's own environments can stand
    for the training ones (no running normalisation statistics to share)."""
    node = config.get("diagnostics") or {}
    if not node.get("every"):
        return
    if _family(config) == "grpo":
        raise ConfigError(f"diagnostics.every={node['every']} is not available with algo=grpo "
                          f"(gradient diagnostics probe the control algorithms); set "
                          f"diagnostics.every=0")
    for key in ("reference_episodes", "noise_batches", "length_power_alpha"):
        if key not in node:
            raise ConfigError(f"missing config value diagnostics.{key} (needed when "
                              f"diagnostics.every={node['every']})")
    algo = config["algo"]
    for key in ("normalize_observation", "normalize_reward"):
        if algo.get(key):
            raise ConfigError(
                f"diagnostics.every={node['every']} needs algo.{key}=false: the probe's "
                f"environments would keep normalisation statistics of their own")


def check_environment(env: Mapping[str, Any]) -> None:
    """The backend can run env.id with env.kwargs, and env.action matches its action space."""
    if env["backend"] == TOKEN_BACKEND:
        _check_token_task(env)
        return
    try:
        check_backend(env)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    except TypeError as error:  # the torch backend's dynamics refuse a keyword argument
        raise ConfigError(f"env.kwargs {env['kwargs']!r} not accepted by {env['id']}: "
                          f"{error}") from None
    discrete = _is_discrete(env["backend"], env["id"], env["max_episode_steps"],
                            json.dumps(env["kwargs"] or {}, sort_keys=True))
    if discrete != (env["action"] == "discrete"):
        actual = "discrete" if discrete else "continuous"
        raise ConfigError(f"env.action={env['action']!r} but {env['id']} has {actual} actions; "
                          f"set env.action={actual}")


def _check_token_task(env: Mapping[str, Any]) -> None:
    """env.id names a token task that accepts env.kwargs; its actions are tokens."""
    from bench.lm.tasks import make_task

    try:
        make_task(env["id"], max_response_length=env["max_episode_steps"],
                  **(env["kwargs"] or {}))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"env.id={env['id']!r} with env.kwargs={env['kwargs']!r} and "
                          f"env.max_episode_steps={env['max_episode_steps']}: {error}") from None
    if env["action"] != "discrete":
        raise ConfigError(f"env.action={env['action']!r} but {env['id']} has discrete actions "
                          f"(tokens); set env.action=discrete")


@functools.lru_cache(maxsize=64)
def _is_discrete(backend: str, gym_id: str, max_episode_steps: int, kwargs: str) -> bool:
    """Whether the environment's actions are discrete; for gymnasium, made once to find out
    (an unknown id or an environment that cannot be made is a `ConfigError`)."""
    from bench.envs import describe

    if backend == "gymnasium" and ":" not in gym_id:
        import gymnasium

        if gym_id not in gymnasium.registry:
            close = difflib.get_close_matches(gym_id, list(gymnasium.registry), n=3)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise ConfigError(f"env.id={gym_id!r} is not a registered gymnasium environment"
                              f"{hint} (gymnasium.pprint_registry() lists them)")
    env = {"backend": backend, "id": gym_id, "max_episode_steps": max_episode_steps,
           "kwargs": json.loads(kwargs)}
    try:
        return describe(env).discrete
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever gymnasium raises, say it in one line
        message = str(error).strip().partition("\n")[0]
        raise ConfigError(f"env.id={gym_id!r} with env.kwargs={env['kwargs']!r} cannot be made "
                          f"(env.backend={backend}): {type(error).__name__}: {message}") from None


def _check_reinforce(algo: Mapping[str, Any]) -> None:
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
    if algo["shared_network"] and not algo["network"]["hidden_sizes"]:
        raise ConfigError("algo.shared_network=true needs at least one hidden layer "
                          "(algo.network.hidden_sizes)")


def make_reduction(config: Mapping[str, Any]) -> Reduction:
    """The `Reduction` of a config; constant's T_max defaults to the env's step limit."""
    reduction = config["reduction"]
    name = _choice("reduction", reduction["name"], REDUCTIONS)
    max_length = reduction.get("max_length")
    if max_length is None:
        max_length = config["env"]["max_episode_steps"]
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
    """Check `config` (resolved, plain containers) and derive the grid point's job from its
    normalised form (stored config, run key and swept columns all see the same values)."""
    config = check_config(config)
    seeds = parse_seeds(config["seeds"])
    device = resolve_device(config["device"])
    # The run key covers the resolved device, not the request ("auto").
    key = run_key({**config, "device": device.type})
    return Job(config, seeds, device, key, swept_values(config, overrides), tuple(overrides))

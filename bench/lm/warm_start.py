"""The "base model" of a token task: a short supervised warm start on generated demonstrations,
cached per seed.

GRPO starts from a model that already answers in the task's format and is often right, as an
LLM's RL starts from a pretrained checkpoint. Here that model is made by `warm_start_steps`
steps of Adam on the cross-entropy of demonstrations (`Task.demonstrations`: correct answers,
one digit wrong with probability `error_rate`, so the base model is imperfect and RL has
something to fix). It is both the RL start and the KL reference.

A seed's base model depends on its seed, the task, the network and the warm-start settings
only (its own prompt and demonstration streams, its own initialisation), not on the grid
point: every grid point of a seed starts from the same weights. They are computed once per
seed and cached under ``<results_dir>/<name>/warm_start/<key>.pt`` (the key hashes everything
they depend on, the device type and torch's version included), so a rerun, a resumed sweep
and the other grid points of a seed load them instead of repeating the warm start.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.lm.tasks import Task
from bench.lm.transformer import SlotTransformer, sequence_logprobs
from bench.optim import SlotOptimizer
from bench.seeding import CounterStreams

CACHE_DIRNAME = "warm_start"
# Bumped when the warm start's computation changes, so old cache files are not reused. 2: the
# block sums of SeedLinear's backward round as before 8b7799b again (a361014).
WARM_START_VERSION = 2


def make_model(seeds: Sequence[int], task: Task, network: Mapping[str, Any]) -> SlotTransformer:
    """The untrained transformer of `seeds` for `task` (positions for prompt and response)."""
    return SlotTransformer(
        seeds, task.vocab_size, task.prompt_width + task.max_response_length,
        d_model=network["d_model"], num_layers=network["num_layers"],
        num_heads=network["num_heads"])


def cache_key(seed: int, task_config: Mapping[str, Any], network: Mapping[str, Any],
              warm_start: Mapping[str, Any], device: torch.device) -> str:
    """16 hex digits over what one seed's base model depends on."""
    text = json.dumps({"version": WARM_START_VERSION, "seed": seed, "task": task_config,
                       "network": network, "warm_start": warm_start,
                       "device": device.type, "torch": torch.__version__},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def supervised_loss(model: SlotTransformer, prompts_tokens: torch.Tensor,
                    prompts_mask: torch.Tensor, responses: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """Per-slot mean cross-entropy of the demonstration tokens ``[S, B, T]`` where `mask`
    (``[S]``): teacher forcing, position p predicting token p + 1."""
    logprobs, _ = sequence_logprobs(model, prompts_tokens, prompts_mask, responses, mask)
    tokens = mask.flatten(1).sum(dim=1).clamp(min=1)
    return -logprobs.flatten(1).sum(dim=1) / tokens


def train_base_models(seeds: Sequence[int], task: Task, network: Mapping[str, Any],
                      warm_start: Mapping[str, Any], device: torch.device) -> SlotTransformer:
    """Warm-start one model per seed (all seeds as one batched computation)."""
    model = make_model(seeds, task, network).to(device)
    if warm_start["steps"] == 0:
        return model
    optimizer = SlotOptimizer(
        list(model.parameters()),
        [{"name": "adam", "lr": warm_start["lr"], "betas": [0.9, 0.999], "eps": 1e-8,
          "weight_decay": 0.0}] * len(seeds),
        [1.0] * len(seeds))
    prompt_streams = CounterStreams.for_seeds(seeds, "demonstrations", device)
    for _ in range(warm_start["steps"]):
        prompts = task.sample_prompts(prompt_streams, warm_start["batch_size"])
        responses, mask = task.demonstrations(prompts, prompt_streams, warm_start["error_rate"])
        optimizer.zero_grad()
        loss = supervised_loss(model, prompts.tokens, prompts.mask, responses, mask)
        loss.sum().backward()
        optimizer.step(loss.detach().to(torch.float64))
    return model


def base_models(seeds: Sequence[int], task: Task, task_config: Mapping[str, Any],
                network: Mapping[str, Any], warm_start: Mapping[str, Any],
                device: torch.device, cache_dir: Path) -> SlotTransformer:
    """The base model of every slot (``seeds[s]`` is slot s's seed; a seed may repeat), from
    the cache where it holds them, warm-starting (once per distinct seed) and caching the
    others."""
    model = make_model(seeds, task, network).to(device)
    distinct = list(dict.fromkeys(seeds))
    keys = {seed: cache_key(seed, task_config, network, warm_start, device)
            for seed in distinct}
    states: dict[int, dict[str, torch.Tensor]] = {}
    for seed in distinct:
        path = cache_dir / f"{keys[seed]}.pt"
        if path.is_file():
            try:
                states[seed] = torch.load(path, map_location=device, weights_only=True)
            except Exception:  # noqa: BLE001 - a damaged cache file is recomputed
                pass
    missing = [seed for seed in distinct if seed not in states]
    if missing:
        trained = train_base_models(missing, task, network, warm_start, device)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for row, seed in enumerate(missing):
            states[seed] = {name: value[row].detach().clone()
                            for name, value in trained.state_dict().items()}
            _save_atomically(states[seed], cache_dir / f"{keys[seed]}.pt")
    with torch.no_grad():
        for name, value in model.state_dict().items():
            value.copy_(torch.stack([states[seed][name] for seed in seeds]))
    return model


def _save_atomically(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file,
    and two processes caching the same seed write the same bytes."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, temporary)
    os.replace(temporary, path)

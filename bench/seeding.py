"""Independent random streams per seed.

Every random choice of seed ``s`` (network initialisation, action sampling, environment
seeds) comes from generators derived from ``s`` alone, through numpy's SeedSequence with one
spawn key per purpose. So a seed's streams never depend on which other seeds share its job,
and no randomness crosses the seed axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# One spawn key per purpose; never renumber (it would change every result).
STREAMS = {
    "policy_init": 0, "actions": 1, "env": 2, "value_init": 3, "torso_init": 4, "minibatches": 5,
}


def stream_seed(seed: int, stream: str, words: int = 1) -> np.ndarray:
    """`words` uint32 seed words for `stream` of `seed` (SeedSequence(seed, spawn_key=(k,)))."""
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(STREAMS[stream],))
    return sequence.generate_state(words, dtype=np.uint32)


def torch_generators(seeds: Sequence[int], stream: str) -> list[torch.Generator]:
    """One CPU torch.Generator per seed for `stream`."""
    generators = []
    for seed in seeds:
        low, high = (int(w) for w in stream_seed(seed, stream, words=2))
        generators.append(torch.Generator().manual_seed(low | (high << 32)))
    return generators


def env_reset_seeds(seed: int, num_envs: int) -> list[int]:
    """Seeds for the first reset of each of a seed's `num_envs` sub-environments."""
    return [int(w) for w in stream_seed(seed, "env", words=num_envs)]


class SeedNoise:
    """Per-seed noise for action sampling: row s of every draw comes from seed s's generator."""

    def __init__(self, seeds: Sequence[int], device: torch.device) -> None:
        self.generators = torch_generators(seeds, "actions")
        self.device = device

    def uniform(self, shape: tuple[int, ...], drawing: np.ndarray) -> torch.Tensor:
        """U[0, 1) noise ``[S, *shape]``; only seeds where `drawing` is True advance their
        generator (other rows are 0), so a paused seed's stream does not depend on how long
        the other seeds ran."""
        return self._draw(torch.rand, shape, drawing)

    def normal(self, shape: tuple[int, ...], drawing: np.ndarray) -> torch.Tensor:
        """Standard normal noise ``[S, *shape]``, drawn as in `uniform`."""
        return self._draw(torch.randn, shape, drawing)

    def _draw(self, sampler, shape: tuple[int, ...], drawing: np.ndarray) -> torch.Tensor:
        zeros = torch.zeros(shape)
        draws = [
            sampler(shape, generator=generator) if draw else zeros
            for generator, draw in zip(self.generators, drawing, strict=True)
        ]
        return torch.stack(draws).to(self.device)

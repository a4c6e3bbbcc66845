"""Independent random streams per seed, drawn for all seeds at once on any device.

Every random choice of seed ``s`` (network initialisation, action sampling, environment
resets, minibatch shuffles) comes from keys derived from ``s`` alone, through numpy's
SeedSequence with one spawn key per purpose. So a seed's streams never depend on which other
seeds share its job, and no randomness crosses the seed axis.

Network initialisation (once per job) uses one torch.Generator per seed. The streams drawn at
every step use `CounterStreams`: a counter-based generator (in the manner of Philox, Salmon et
al. 2011, but with a small integer hash) whose k-th draw of a row is a pure function of the
row's key and k. It is a handful of elementwise integer tensor operations for all rows
together, gives the same numbers on every device (uniforms exactly), needs no Python loop over
seeds and no host synchronisation, and a row that does not draw keeps its counter, so a paused
seed's stream does not depend on how long the others ran.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

# One spawn key per purpose; never renumber (it would change every result).
STREAMS = {
    "policy_init": 0, "actions": 1, "env": 2, "value_init": 3, "torso_init": 4, "minibatches": 5,
    # Gradient diagnostics' reference and noise batches (`bench.diagnostics`), never drawn by
    # training (each purpose its own stream: a stream's first rows do not depend on how many
    # it has, so two purposes sharing one would see the same episodes).
    "reference_env": 6, "reference_actions": 7, "noise_env": 8, "noise_actions": 9,
    # Token tasks (`bench.lm`): the prompts a seed trains on, the supervised warm start's
    # demonstrations (and their deliberate errors), and its minibatch order.
    "task_prompts": 10, "demonstrations": 11, "warm_start_minibatches": 12,
}
_MASK32 = 0xFFFFFFFF
# Odd multipliers below 2^31 (the first is lowbias32's, C. Wellons' hash-prospector): a 32-bit
# value times one stays below 2^63, so int64 tensor arithmetic never overflows (signed overflow
# is not defined behaviour in C++).
_MULTIPLIERS = (0x7FEB352D, 0x2C1B3C6D)


def stream_seed(seed: int, stream: str, words: int = 1) -> np.ndarray:
    """`words` uint32 seed words for `stream` of `seed` (SeedSequence(seed, spawn_key=(k,)))."""
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(STREAMS[stream],))
    return sequence.generate_state(words, dtype=np.uint32)


def torch_generators(seeds: Sequence[int], stream: str) -> list[torch.Generator]:
    """One CPU torch.Generator per seed for `stream` (network initialisation)."""
    generators = []
    for seed in seeds:
        low, high = (int(w) for w in stream_seed(seed, stream, words=2))
        generators.append(torch.Generator().manual_seed(low | (high << 32)))
    return generators


def env_reset_seeds(seed: int, num_envs: int, stream: str = "env") -> list[int]:
    """Seeds for the first reset of each of a seed's `num_envs` gymnasium sub-environments."""
    return [int(w) for w in stream_seed(seed, stream, words=num_envs)]


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (two xorshift-multiply rounds, as lowbias32) of int64
    values in [0, 2^32), elementwise. Flipping any input bit flips each output bit with
    probability about 1/2 (tested)."""
    for multiplier in _MULTIPLIERS:
        x = x ^ (x >> 16)
        x = (x * multiplier) & _MASK32
    return x ^ (x >> 16)


class CounterStreams:
    """R independent random streams (rows) on one device.

    Draw k of row r, element j, is ``hash(key[r], k, j)``: rows are independent, and the
    numbers a row gets depend only on its key and how many draws it made.
    """

    def __init__(self, keys: np.ndarray, device: torch.device | str) -> None:
        """`keys`: uint32 ``[R, 2]`` (e.g. from `stream_seed`)."""
        keys = torch.as_tensor(np.asarray(keys, dtype=np.int64), device=device)
        # Both key words folded into one 32-bit row key.
        self.key = mix32(keys[:, 0] ^ mix32(keys[:, 1]))
        self.counter = torch.zeros(len(keys), dtype=torch.int64, device=device)
        self.device = torch.device(device)
        self._element_hashes: dict[int, torch.Tensor] = {}

    @classmethod
    def for_seeds(
        cls, seeds: Sequence[int], stream: str, device: torch.device | str,
        rows_per_seed: int = 1,
    ) -> CounterStreams:
        """Rows ``s * rows_per_seed + i``: `rows_per_seed` streams of each seed's `stream`."""
        keys = [stream_seed(seed, stream, words=2 * rows_per_seed).reshape(rows_per_seed, 2)
                for seed in seeds]
        return cls(np.concatenate(keys), device)

    def bits(self, shape: tuple[int, ...], drawing: torch.Tensor | None = None,
             draws: int = 1) -> torch.Tensor:
        """32-bit random integers ``[R, draws, *shape]`` (int64): `draws` consecutive draws of
        `shape` elements per row. Only rows where ``drawing [R]`` is True (all if None) advance
        their counter; the others' values are to be ignored. `drawing` must be on the
        streams' device."""
        elements = math.prod(shape)
        if elements not in self._element_hashes:
            self._element_hashes[elements] = mix32(
                torch.arange(elements, dtype=torch.int64, device=self.device) ^ 0x5BD1E995)
        counter = self.counter[:, None] + torch.arange(draws, device=self.device)
        row = mix32((counter & _MASK32) ^ self.key[:, None])
        values = mix32(row[:, :, None] ^ self._element_hashes[elements])
        if drawing is None:
            self.counter += draws
        else:
            self.counter += draws * drawing.to(torch.int64)
        return values.view(len(self.counter), draws, *shape)

    def uniform(self, shape: tuple[int, ...], drawing: torch.Tensor | None = None,
                draws: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """U[0, 1) ``[R, draws, *shape]`` on a grid of 2^-24 (exact in float32)."""
        return (self.bits(shape, drawing, draws) >> 8).to(dtype) * 2.0**-24

    def normal(self, shape: tuple[int, ...], drawing: torch.Tensor | None = None,
               draws: int = 1) -> torch.Tensor:
        """Standard normal ``[R, draws, *shape]`` (float32), by Box-Muller from two uniforms."""
        pairs = self.bits((2, *shape), drawing, draws) >> 8
        radius_uniform = (pairs[:, :, 0].to(torch.float32) + 1.0) * 2.0**-24  # (0, 1]
        angle_uniform = pairs[:, :, 1].to(torch.float32) * 2.0**-24
        return torch.sqrt(-2.0 * torch.log(radius_uniform)) * torch.cos(
            2.0 * math.pi * angle_uniform)


class SeedNoise:
    """Per-seed noise for action sampling: row s of every draw comes from seed s's stream.

    ``draws > 1`` draws the noise of that many consecutive steps at once, and `step` hands out
    one step at a time from such a block; either way the numbers are the same as drawing them
    one step at a time.
    """

    # Steps of noise that `step` computes at once (one hash evaluation for all of them).
    BLOCK = 32

    def __init__(self, seeds: Sequence[int], device: torch.device | str,
                 stream: str = "actions") -> None:
        self.streams = CounterStreams.for_seeds(seeds, stream, device)
        self._rows = torch.arange(len(seeds), device=self.streams.device)
        self._block: torch.Tensor | None = None
        self._block_kind: tuple | None = None
        self._taken = torch.zeros(len(seeds), dtype=torch.int64, device=self.streams.device)
        self._steps_in_block = 0

    def uniform(self, shape: tuple[int, ...], drawing: torch.Tensor | np.ndarray,
                draws: int = 1) -> torch.Tensor:
        """U[0, 1) noise ``[S, draws, *shape]``; only seeds where `drawing [S]` is True
        advance their stream (the other rows are to be ignored)."""
        self._settle()
        return self.streams.uniform(shape, self._on_device(drawing), draws)

    def normal(self, shape: tuple[int, ...], drawing: torch.Tensor | np.ndarray,
               draws: int = 1) -> torch.Tensor:
        """Standard normal noise ``[S, draws, *shape]``, drawn as in `uniform`."""
        self._settle()
        return self.streams.normal(shape, self._on_device(drawing), draws)

    def step(self, kind: str, shape: tuple[int, ...], drawing: torch.Tensor) -> torch.Tensor:
        """One draw of `kind` (``uniform`` or ``normal``) noise ``[S, *shape]``, as
        ``uniform(shape, drawing)[:, 0]`` would give it, taken from a precomputed block of
        `BLOCK` draws per seed (seeds where ``drawing [S]``, on the device, is False take
        none). No host synchronisation: the block is refilled every `BLOCK` calls."""
        if self._block_kind != (kind, shape) or self._steps_in_block == self.BLOCK:
            self._settle()
            start = self.streams.counter.clone()
            sampler = self.streams.uniform if kind == "uniform" else self.streams.normal
            self._block = sampler(shape, None, self.BLOCK)  # peeks: the counter is reset
            self.streams.counter = start
            self._block_kind = (kind, shape)
        noise = self._block[self._rows, self._taken]
        self._taken = self._taken + drawing
        self._steps_in_block += 1
        return noise

    def _settle(self) -> None:
        """Advance the streams past the draws `step` handed out; start a new block."""
        self.streams.counter = self.streams.counter + self._taken
        self._taken = torch.zeros_like(self._taken)
        self._block_kind, self._steps_in_block = None, 0

    def _on_device(self, drawing: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(drawing, torch.Tensor) and drawing.device == self.streams.device:
            return drawing
        return torch.as_tensor(drawing, device=self.streams.device)

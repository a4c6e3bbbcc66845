"""Small helpers that turn per-seed tensors into result rows (shared by the algorithms)."""

from __future__ import annotations

import numpy as np
import torch


def seed_rows(values: torch.Tensor, seed_index: np.ndarray) -> np.ndarray:
    """Per-seed values ``[S]`` of the recorded seeds (`seed_index`), as float64 numpy."""
    return values.detach().cpu().numpy().astype(np.float64)[seed_index]


def running_index(seed_index: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-seed running index of new items (in order), advancing `counts [S]` in place."""
    index = np.empty(len(seed_index), dtype=np.int64)
    for position, seed in enumerate(seed_index):
        index[position] = counts[seed]
        counts[seed] += 1
    return index

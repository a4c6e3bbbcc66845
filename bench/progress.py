"""A periodic one-line progress report for a job (env steps, seeds, recent mean return)."""

from __future__ import annotations

import sys
import time

import numpy as np


class ProgressLine:
    """Prints at most every `interval_s` seconds, and once at the end (`interval_s` 0: end only)."""

    def __init__(self, label: str, total_steps: int, num_seeds: int, interval_s: float) -> None:
        self.label, self.total_steps, self.num_seeds = label, total_steps, num_seeds
        self.interval_s = interval_s
        self.start = self.last = time.perf_counter()
        self.recent_returns: list[float] = []

    def add_returns(self, returns: np.ndarray) -> None:
        self.recent_returns = (self.recent_returns + list(map(float, returns)))[-100:]

    def update(
        self, env_steps: np.ndarray, active_seeds: int, updates: int, *, final: bool = False
    ) -> None:
        now = time.perf_counter()
        if not final and (self.interval_s <= 0 or now - self.last < self.interval_s):
            return
        self.last = now
        elapsed = now - self.start
        mean_return = np.mean(self.recent_returns) if self.recent_returns else float("nan")
        steps = int(env_steps.sum())
        print(
            f"[{self.label}] {'done' if final else 'step'} "
            f"{int(env_steps.min())}/{self.total_steps}"
            f" (slowest seed) | seeds acting {active_seeds}/{self.num_seeds} | updates {updates}"
            f" | mean return (last 100 ep) {mean_return:.1f} | {steps / max(elapsed, 1e-9):,.0f}"
            f" env-steps/s | {elapsed:.0f}s",
            file=sys.stderr,
            flush=True,
        )

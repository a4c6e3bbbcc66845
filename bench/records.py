"""Turning one collection or one gradient step into result rows (shared by the algorithms),
and handing each slot's rows to its grid point's recorder."""

from __future__ import annotations

import numpy as np
import torch

from bench.advantages import masked_mean
from bench.reductions import trajectory_lengths
from bench.rollout import FinishedEpisodes
from bench.slots import Slots
from bench.store import RunRecorder


class PackRecorder:
    """The rows of a process's slots, kept by grid point: one `RunRecorder` per point, whose
    file holds that point's seeds only. Rows come in with slot indices (into `Slots`)."""

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self.recorders = [
            RunRecorder(point.run_key, point.seeds, identity_columns(point.config), point.swept)
            for point in slots.points
        ]
        self._local = slots.local_seed_index()

    def add_episodes(self, slot_index: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        self._dispatch("add_episodes", slot_index, columns)

    def add_updates(self, slot_index: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        self._dispatch("add_updates", slot_index, columns)

    def add_diagnostics(self, slot_index: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        self._dispatch("add_diagnostics", slot_index, columns)

    def _dispatch(self, method: str, slot_index: np.ndarray,
                  columns: dict[str, np.ndarray]) -> None:
        points = self.slots.point_index[slot_index]
        for p in np.unique(points):
            rows = points == p
            getattr(self.recorders[p], method)(
                self._local[slot_index[rows]], {k: v[rows] for k, v in columns.items()})


def identity_columns(config: dict) -> dict:
    """The identity columns of a grid point's rows (besides run key and seed)."""
    return {
        "algo": config["algo"]["name"],
        "env": config["env"]["name"],
        "reduction": config["reduction"]["name"],
        "optim": config["optim"]["name"],
        "lr": float(config["optim"]["lr"]),
    }


def running_index(seed_index: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-seed running index of new items (in order), advancing `counts [S]` in place."""
    index = np.empty(len(seed_index), dtype=np.int64)
    for position, seed in enumerate(seed_index):
        index[position] = counts[seed]
        counts[seed] += 1
    return index


def approx_kl(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """KL(old || new) per seed from per-step log-probabilities ``[S, M]``: the k3 estimator
    mean((r - 1) - log r), r = pi_new / pi_old, over valid steps (float64 ``[S]``)."""
    log_ratio = log_probs - old_log_probs
    return masked_mean(log_ratio.exp() - 1 - log_ratio, valid).to(torch.float64)


def record_episodes(
    recorder: PackRecorder, finished: FinishedEpisodes, episodes_done: np.ndarray,
    wall_time: float,
) -> None:
    """One episode row per finished episode; advances the per-seed `episodes_done` counts."""
    recorder.add_episodes(finished.seed_index, {
        "episode": running_index(finished.seed_index, episodes_done),
        "env_step": finished.env_step,
        "episode_return": finished.episode_return,
        "episode_length": finished.episode_length,
        "terminated": finished.terminated,
        "wall_time": np.full(len(finished.seed_index), wall_time),
        **({} if finished.correct is None else {"correct": finished.correct}),
    })


# Per-step loss terms whose unweighted mean over the minibatch is an update column (a term an
# algorithm does not have gives a null column).
TERM_COLUMNS = {"policy_loss": "policy_loss", "value_loss": "value_loss", "entropy": "entropy",
                "clipped": "clip_fraction", "kl_reference": "kl_reference"}
# Per-slot statistics of the batch a gradient step trains on, given by the algorithms that
# have them (GRPO: `bench.schema.TOKEN_UPDATE_COLUMNS`); null elsewhere.
BATCH_COLUMNS = ("accuracy", "response_length", "response_length_correct",
                 "response_length_incorrect")
# Per-seed values of a gradient step, stacked in this order on the device.
_STEP_VALUES = ("stepped", "loss", *TERM_COLUMNS.values(), *BATCH_COLUMNS, "approx_kl",
                "grad_norm", "learning_rate", "batch_steps", "batch_trajectories", "diverged")


class UpdateRows:
    """Update rows of gradient steps, kept on the device as they are taken and written to the
    recorder in one transfer (`flush`), so a gradient step never waits for the host."""

    def __init__(self) -> None:
        self._pending: list[tuple[torch.Tensor, np.ndarray, float]] = []

    def add(
        self,
        stepped: torch.Tensor,
        loss: torch.Tensor,
        terms: dict[str, torch.Tensor],
        valid: torch.Tensor,
        trajectory: torch.Tensor,
        kl: torch.Tensor,
        grad_norm: torch.Tensor,
        newly_diverged: torch.Tensor,
        learning_rate: torch.Tensor,
        env_steps: np.ndarray,
        wall_time: float,
        slots: torch.Tensor | None = None,
        batch_columns: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """One gradient step on the steps `valid` ``[S, K]``: a row for each slot where
        ``stepped [S]``, with its ``learning_rate [S]``. Per-step terms are averaged over valid
        steps (unweighted). With ``slots [R]`` (indices), `loss`, `terms`, `valid`,
        `trajectory` and `kl` hold those slots' rows only (``[R, ...]``), and `stepped` must be
        False for every other slot. `batch_columns` (`BATCH_COLUMNS`, ``[S]`` each, NaN for
        null) are the statistics of the batch the step trains on."""
        nan = torch.full_like(grad_norm, float("nan"))
        per_row = {
            "loss": loss, "approx_kl": kl,
            "batch_steps": valid.sum(dim=1),
            "batch_trajectories": (trajectory_lengths(valid, trajectory) > 0).sum(dim=1),
        }
        for term, column in TERM_COLUMNS.items():
            if term in terms:
                per_row[column] = masked_mean(terms[term], valid)
        if slots is not None:
            per_row = {name: grad_norm.new_zeros(grad_norm.shape).index_copy_(
                0, slots, value.detach().to(grad_norm.dtype))
                for name, value in per_row.items()}
        values = {"stepped": stepped, "grad_norm": grad_norm, "learning_rate": learning_rate,
                  "diverged": newly_diverged, **per_row}
        values.update(batch_columns or {})
        for column in (*TERM_COLUMNS.values(), *BATCH_COLUMNS):
            values.setdefault(column, nan)
        stacked = torch.stack([values[name].detach().to(torch.float64)
                               for name in _STEP_VALUES])
        self._pending.append((stacked, env_steps.copy(), wall_time))

    def flush(self, recorder: PackRecorder, updates_done: np.ndarray) -> np.ndarray:
        """Write the pending rows (advancing the per-slot `updates_done`); returns the slots
        that diverged in them (bool ``[S]``)."""
        if not self._pending:
            return np.zeros(len(updates_done), dtype=bool)
        table = torch.stack([values for values, *_ in self._pending]).cpu().numpy()
        diverged = np.zeros(len(updates_done), dtype=bool)
        for step_values, (_, env_steps, wall_time) in zip(
            table, self._pending, strict=True
        ):
            row = dict(zip(_STEP_VALUES, step_values, strict=True))
            seed_index = np.flatnonzero(row["stepped"])
            newly_diverged = row["diverged"][seed_index] > 0
            diverged[seed_index[newly_diverged]] = True
            recorder.add_updates(seed_index, {
                "update": updates_done[seed_index],
                "env_step": env_steps[seed_index],
                **{name: row[name][seed_index] for name in
                   ("loss", *TERM_COLUMNS.values(), *BATCH_COLUMNS, "approx_kl", "grad_norm",
                    "learning_rate")},
                "batch_steps": row["batch_steps"][seed_index].astype(np.int64),
                "batch_trajectories": row["batch_trajectories"][seed_index].astype(np.int64),
                "diverged": newly_diverged,
                "wall_time": np.full(len(seed_index), wall_time),
            })
            updates_done[seed_index] += 1
        self._pending.clear()
        return diverged

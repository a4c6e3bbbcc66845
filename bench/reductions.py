"""Loss reductions as per-step weights, and the one call that backpropagates a reduced loss.

Every reduction is a weight per valid step; the loss of seed s is ``sum_{i,t} w[i,t] * l[i,t]``
(DESIGN.md, "Reductions are weights"). Tensors are laid out ``[S, M]``: S slots (one per grid point
and seed, `bench.slots`), M step positions per slot; ``valid[s, m]`` marks positions that hold a
real step and ``trajectory[s, m]`` numbers the trajectory (episode or segment) a step belongs
to, within its slot (``0 <= id < M``). Each slot has its own reduction (`SlotReductions`), and
the weights of a slot depend only on its reduction, mask and trajectory ids.

| name           | w[i,t]                 |
|----------------|------------------------|
| sum            | 1                      |
| mean           | 1 / sum_i T_i          |
| traj_mean      | 1 / N                  |
| traj_step_mean | 1 / (N * T_i)          |
| constant       | 1 / (N * T_max)        |
| length_power   | T_i^-alpha / N         |
| per_step       | 1, one backward per step |
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from bench.schema import REDUCTIONS

__all__ = [
    "REDUCTIONS", "Reduction", "SlotReductions", "backward", "slot_sum", "step_weights",
    "trajectory_lengths",
]


@dataclass(frozen=True)
class Reduction:
    """One slot's reduction choice: its name and the parameters some rows of the table need."""

    name: str
    alpha: float = 1.0  # length_power's exponent
    max_length: int | None = None  # constant's T_max

    def __post_init__(self) -> None:
        if self.name not in REDUCTIONS:
            raise ValueError(
                f"unknown reduction {self.name!r}; valid choices: {', '.join(REDUCTIONS)}"
            )
        if self.name == "constant" and (self.max_length is None or self.max_length <= 0):
            raise ValueError(
                f"reduction 'constant' needs a positive max_length (T_max), got {self.max_length!r}"
            )


@dataclass(frozen=True)
class SlotReductions:
    """The reduction of each of S slots. Slots of one process may use different reductions,
    except `per_step`, whose loop of backward passes is a code path of its own: either every
    slot is `per_step` or none is."""

    per_slot: tuple[Reduction, ...]
    # Per-slot tensors that every call of `step_weights` would otherwise rebuild.
    _cache: dict = field(default_factory=dict, compare=False, repr=False)
    # For the reductions of some slots of another `SlotReductions` (`take`): that one and the
    # slots' indices in it, whose rows of its tables are this one's tables.
    _source: tuple[SlotReductions, torch.Tensor] | None = field(
        default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        per_step = {reduction.name == "per_step" for reduction in self.per_slot}
        if len(per_step) > 1:
            raise ValueError("per_step slots cannot share a process with other reductions")

    def names(self) -> list[str]:
        """The reductions' names present, in sorted order."""
        return sorted({reduction.name for reduction in self.per_slot})

    def take(self, index: torch.Tensor) -> SlotReductions:
        """The reductions of the slots ``index [R]`` (in that order), with this one's tables
        (their rows): the tables are built once however many subsets are taken."""
        per_slot = tuple(self.per_slot[i] for i in index.tolist())
        return SlotReductions(per_slot, _source=(self, index))

    def _from_source(self, table: str, *args: object) -> torch.Tensor:
        """This subset's rows of its source's `table` (see `take`)."""
        source, index = self._source
        values = getattr(source, table)(*args)
        return values.index_select(0, index.to(values.device))

    def rows(self, name: str, device: torch.device) -> torch.Tensor:
        """Bool ``[S, 1]``: the slots whose reduction is `name`."""
        if self._source is not None:
            return self._from_source("rows", name, device)
        key = ("rows", name, device)
        if key not in self._cache:
            self._cache[key] = torch.tensor(
                [r.name == name for r in self.per_slot], device=device)[:, None]
        return self._cache[key]

    def max_lengths(self, device: torch.device) -> torch.Tensor:
        """Each slot's T_max (constant), float64 ``[S, 1]`` (1 where unused)."""
        if self._source is not None:
            return self._from_source("max_lengths", device)
        key = ("max_length", device)
        if key not in self._cache:
            self._cache[key] = torch.tensor(
                [float(r.max_length or 1) for r in self.per_slot], dtype=torch.float64,
                device=device)[:, None]
        return self._cache[key]

    def length_powers(self, longest: int, device: torch.device) -> torch.Tensor:
        """``T^-alpha`` of each slot for T = 0..(at least) longest, float64 ``[S, L + 1]``,
        computed on the host with math.pow: a vectorised pow of a tensor rounds differently in
        different positions of the tensor, which would make a slot depend on its neighbours.
        Grown (doubling) as longer trajectories come."""
        if self._source is not None:
            return self._from_source("length_powers", longest, device)
        key = ("length_power", device)
        table = self._cache.get(key)
        if table is None or table.shape[1] <= longest:
            size = max(longest + 1, 2 * (table.shape[1] if table is not None else 256))
            self._cache[key] = torch.tensor(
                [[math.pow(max(length, 1), -r.alpha) for length in range(size)]
                 for r in self.per_slot], dtype=torch.float64, device=device)
        return self._cache[key]

    @classmethod
    def of(cls, reduction: Reduction | Sequence[Reduction], num_slots: int) -> SlotReductions:
        """`reduction` for every slot, or one reduction per slot."""
        if isinstance(reduction, SlotReductions):
            return reduction
        if isinstance(reduction, Reduction):
            return cls((reduction,) * num_slots)
        if len(reduction) != num_slots:
            raise ValueError(f"{len(reduction)} reductions for {num_slots} slots")
        return cls(tuple(reduction))

    @property
    def per_step(self) -> bool:
        return bool(self.per_slot) and self.per_slot[0].name == "per_step"


# Sums over step positions are taken in blocks of this many positions, the block sums added
# in order (`slot_sum`), so that a slot's sum does not depend on how far other slots pad M.
SUM_BLOCK = 64


def slot_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over the step axis ``[S, M] -> [S]``, the same bit for bit however many trailing or
    interleaved zero positions M holds (a slot's rows are padded to the longest slot of its
    process): blocks of `SUM_BLOCK` positions are summed, then the block sums in sequence
    (a cumulative sum), so zero blocks add exact zeros."""
    num_slots, width = values.shape
    padding = -width % SUM_BLOCK
    if padding:
        values = torch.nn.functional.pad(values, (0, padding))
    blocks = values.view(num_slots, -1, SUM_BLOCK).sum(dim=2)
    return blocks.cumsum(dim=1)[:, -1]


def trajectory_lengths(valid: torch.Tensor, trajectory: torch.Tensor) -> torch.Tensor:
    """Number of valid steps of each trajectory id, per slot: ``[S, max id + 1]`` (unused ids
    are 0). Ids may exceed the position count, e.g. in a minibatch gathered from a rollout."""
    num_ids = max(int(trajectory.max()) + 1, 1) if trajectory.numel() else 1
    counts = torch.zeros((valid.shape[0], num_ids), dtype=torch.float64, device=valid.device)
    return counts.scatter_add_(1, trajectory, valid.to(torch.float64))


def step_weights(
    reduction: Reduction | Sequence[Reduction] | SlotReductions,
    valid: torch.Tensor,
    trajectory: torch.Tensor,
) -> torch.Tensor:
    """Per-step weights ``w[s, m]`` (float64, 0 on invalid positions) of each slot's reduction
    (one `Reduction` for all slots, or one per slot).

    valid: bool ``[S, M]``; trajectory: int64 ``[S, M]`` trajectory id of each position
    (ignored where not valid). A slot with no valid step gets all-zero weights.
    """
    reductions = SlotReductions.of(reduction, valid.shape[0])
    device = valid.device
    valid_f = valid.to(torch.float64)
    lengths_by_id = trajectory_lengths(valid, trajectory)  # [S, ids] indexed by trajectory id
    num_trajectories = (lengths_by_id > 0).sum(dim=1, keepdim=True).clamp(min=1)  # N, [S, 1]
    total_steps = valid_f.sum(dim=1, keepdim=True).clamp(min=1)  # sum_i T_i (exact), [S, 1]
    own_length = torch.gather(lengths_by_id, 1, trajectory).clamp(min=1)  # T_i of each step

    weights = torch.zeros_like(valid_f)
    for name in reductions.names():
        if name in ("sum", "per_step"):
            named = valid_f
        elif name == "mean":
            named = valid_f / total_steps
        elif name == "traj_mean":
            named = valid_f / num_trajectories
        elif name == "traj_step_mean":
            named = valid_f / (num_trajectories * own_length)
        elif name == "constant":
            named = valid_f / (num_trajectories * reductions.max_lengths(device))
        elif name == "length_power":
            table = reductions.length_powers(valid.shape[1], device)  # T_i <= M
            named = valid_f * torch.gather(table, 1, own_length.long()) / num_trajectories
        else:  # unreachable: Reduction validates its name
            raise ValueError(f"unknown reduction {name!r}")
        weights = torch.where(reductions.rows(name, device), named, weights)
    return weights


# A loss function takes a batch (a dict of per-step tensors ``[S, K, ...]``) and returns its
# per-step terms ``[S, K]``; its "loss" entry is the total per-step loss to reduce.
LossFn = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def backward(
    reduction: Reduction | Sequence[Reduction] | SlotReductions,
    loss_fn: LossFn,
    batch: dict[str, torch.Tensor],
    weights: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Backpropagate each slot's reduced loss ``sum_m w[s, m] * loss[s, m]``; gradients
    accumulate.

    `batch` holds per-step tensors ``[S, M, ...]``; ``loss_fn(batch)`` returns per-step terms.
    Slots never share parameters, so one backward of the sum over slots gives every slot
    exactly its own gradient.

    For ``per_step`` this is a real loop: the batch is sliced one step position at a time and
    each slice gets its own forward and backward pass, the gradients accumulating in ``.grad``
    as in the VPG write-up's ``for`` loop. Positions invalid for every slot are skipped.

    Returns the reduced loss per slot ``[S]`` (float64) and the detached per-step terms
    ``[S, M]`` (zero on positions that were skipped).
    """
    reductions = SlotReductions.of(reduction, weights.shape[0])
    weights = weights.detach()
    if not reductions.per_step:
        terms = loss_fn(batch)
        weighted = weights.to(terms["loss"].dtype) * terms["loss"]
        weighted.sum().backward()
        reduced = slot_sum(weighted.detach().to(torch.float64))
        return reduced, {k: v.detach() for k, v in terms.items()}

    num_slots, num_positions = weights.shape
    used_positions = (weights != 0).any(dim=0).nonzero().flatten().tolist()
    reduced = torch.zeros(num_slots, dtype=torch.float64, device=weights.device)
    collected: dict[str, torch.Tensor] = {}
    for m in used_positions:
        terms = loss_fn({name: values[:, m : m + 1] for name, values in batch.items()})
        step_loss = (weights[:, m : m + 1].to(terms["loss"].dtype) * terms["loss"]).sum(dim=1)
        step_loss.sum().backward()
        reduced += step_loss.detach().to(torch.float64)
        for key, value in terms.items():
            if key not in collected:
                collected[key] = torch.zeros(
                    (num_slots, num_positions), dtype=value.dtype, device=value.device
                )
            collected[key][:, m] = value.detach()[:, 0]
    return reduced, collected

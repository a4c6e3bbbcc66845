"""Loss reductions as per-step weights, and the one call that backpropagates a reduced loss.

Every reduction is a weight per valid step; the loss of seed s is ``sum_{i,t} w[i,t] * l[i,t]``
(DESIGN.md, "Reductions are weights"). Tensors are laid out ``[S, M]``: S seeds, M step slots
per seed; ``valid[s, m]`` marks slots that hold a real step and ``trajectory[s, m]`` numbers the
trajectory (episode or segment) a step belongs to, within its seed (``0 <= id < M``). Weights
of one seed depend only on that seed's mask and trajectory ids.

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

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.schema import REDUCTIONS

__all__ = ["REDUCTIONS", "Reduction", "backward", "step_weights", "trajectory_lengths"]


@dataclass(frozen=True)
class Reduction:
    """A reduction choice: its name and the parameters some rows of the table need."""

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


def trajectory_lengths(valid: torch.Tensor, trajectory: torch.Tensor) -> torch.Tensor:
    """Number of valid steps of each trajectory id, per seed: ``[S, max id + 1]`` (unused ids
    are 0). Ids may exceed the slot count, e.g. in a minibatch gathered from a rollout."""
    num_ids = max(int(trajectory.max()) + 1, 1) if trajectory.numel() else 1
    counts = torch.zeros((valid.shape[0], num_ids), dtype=torch.float64, device=valid.device)
    return counts.scatter_add_(1, trajectory, valid.to(torch.float64))


def step_weights(
    reduction: Reduction, valid: torch.Tensor, trajectory: torch.Tensor
) -> torch.Tensor:
    """Per-step weights ``w[s, m]`` of `reduction` (float64, 0 on invalid slots), per seed.

    valid: bool ``[S, M]``; trajectory: int64 ``[S, M]`` trajectory id of each slot (ignored
    where not valid). A seed with no valid step gets all-zero weights.
    """
    valid_f = valid.to(torch.float64)
    lengths_by_id = trajectory_lengths(valid, trajectory)  # [S, ids] indexed by trajectory id
    num_trajectories = (lengths_by_id > 0).sum(dim=1, keepdim=True).clamp(min=1)  # N, [S, 1]
    total_steps = valid_f.sum(dim=1, keepdim=True).clamp(min=1)  # sum_i T_i, [S, 1]
    own_length = torch.gather(lengths_by_id, 1, trajectory).clamp(min=1)  # T_i of each step

    name = reduction.name
    if name in ("sum", "per_step"):
        weights = valid_f
    elif name == "mean":
        weights = valid_f / total_steps
    elif name == "traj_mean":
        weights = valid_f / num_trajectories
    elif name == "traj_step_mean":
        weights = valid_f / (num_trajectories * own_length)
    elif name == "constant":
        weights = valid_f / (num_trajectories * float(reduction.max_length))
    elif name == "length_power":
        weights = valid_f * own_length.pow(-reduction.alpha) / num_trajectories
    else:  # unreachable: Reduction validates its name
        raise ValueError(f"unknown reduction {name!r}")
    return weights


StepLossFn = Callable[[slice], dict[str, torch.Tensor]]


def backward(
    reduction: Reduction,
    step_losses: StepLossFn,
    weights: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Backpropagate each seed's reduced loss ``sum_m w[s, m] * loss[s, m]``; gradients accumulate.

    step_losses(slots) returns per-step terms ``[S, len(slots)]`` for the step slots `slots`
    (a slice of the M axis); its ``"loss"`` entry is the total per-step loss to reduce, other
    entries are terms kept for logging. Seeds never share parameters, so one backward of the
    sum over seeds gives every seed exactly its own gradient.

    For ``per_step`` this is a real loop: one forward and one backward per step slot, the
    gradients accumulating in ``.grad`` as in the VPG write-up's ``for`` loop. Slots invalid
    for every seed are skipped.

    Returns the reduced loss per seed ``[S]`` (float64) and the detached per-step terms
    ``[S, M]`` (zero on slots that were skipped).
    """
    weights = weights.detach()
    if reduction.name != "per_step":
        terms = step_losses(slice(None))
        reduced = (weights.to(terms["loss"].dtype) * terms["loss"]).sum(dim=1)
        reduced.sum().backward()
        return reduced.detach().to(torch.float64), {k: v.detach() for k, v in terms.items()}

    num_slots = weights.shape[1]
    used_slots = (weights != 0).any(dim=0).nonzero().flatten().tolist()
    reduced = torch.zeros(weights.shape[0], dtype=torch.float64, device=weights.device)
    collected: dict[str, torch.Tensor] = {}
    for m in used_slots:
        terms = step_losses(slice(m, m + 1))
        step_loss = (weights[:, m : m + 1].to(terms["loss"].dtype) * terms["loss"]).sum(dim=1)
        step_loss.sum().backward()
        reduced += step_loss.detach().to(torch.float64)
        for key, value in terms.items():
            if key not in collected:
                collected[key] = torch.zeros(
                    (weights.shape[0], num_slots), dtype=value.dtype, device=value.device
                )
            collected[key][:, m] = value.detach()[:, 0]
    return reduced, collected

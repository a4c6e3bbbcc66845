"""Optimiser over seed-batched parameters: per-seed gradient norms, clipping and divergence guard.

Adam, SGD and RMSprop act elementwise, so one torch optimiser over ``[S, ...]`` parameters
steps S independent agents at once. What must not mix seeds is done here per seed: the
gradient norm, its clipping, and the NaN/inf check that freezes a diverged seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

OPTIMIZERS = ("adam", "sgd", "rmsprop")


def build_torch_optimizer(
    params: Iterable[torch.nn.Parameter], optim_cfg: Mapping[str, Any]
) -> torch.optim.Optimizer:
    """The torch optimiser named by ``optim_cfg["name"]`` with the config's hyperparameters."""
    name = optim_cfg["name"]
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(
            params, lr=optim_cfg["lr"], betas=tuple(optim_cfg["betas"]), eps=optim_cfg["eps"],
            weight_decay=optim_cfg["weight_decay"],
        )
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=optim_cfg["lr"], momentum=optim_cfg["momentum"],
            nesterov=optim_cfg["nesterov"], weight_decay=optim_cfg["weight_decay"],
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=optim_cfg["lr"], alpha=optim_cfg["alpha"], eps=optim_cfg["eps"],
            momentum=optim_cfg["momentum"], weight_decay=optim_cfg["weight_decay"],
        )
    raise ValueError(f"unknown optim {name!r}; valid choices: {', '.join(OPTIMIZERS)}")


def per_seed_grad_norm(params: Iterable[torch.nn.Parameter], num_seeds: int) -> torch.Tensor:
    """L2 norm of each seed's gradient over all parameters: ``[S]`` (float64)."""
    squared = torch.zeros(num_seeds, dtype=torch.float64)
    for param in params:
        if param.grad is not None:
            grad = param.grad.reshape(num_seeds, -1).to(torch.float64)
            squared = squared.to(grad.device) + grad.pow(2).sum(dim=1)
    return squared.sqrt()


def clip_per_seed(
    params: Iterable[torch.nn.Parameter], grad_norm: torch.Tensor, max_norm: float
) -> None:
    """Scale each seed's gradient to norm at most `max_norm` (torch's clip_grad_norm_ rule)."""
    scale = (max_norm / (grad_norm + 1e-6)).clamp(max=1.0)
    for param in params:
        if param.grad is not None:
            shape = (-1,) + (1,) * (param.grad.dim() - 1)
            param.grad.mul_(scale.to(param.grad).view(shape))


def nonfinite_per_seed(params: Iterable[torch.nn.Parameter], num_seeds: int) -> torch.Tensor:
    """Whether any parameter of each seed is NaN or inf: bool ``[S]``."""
    bad = torch.zeros(num_seeds, dtype=torch.bool)
    for param in params:
        bad = bad.to(param.device) | ~torch.isfinite(param.detach().reshape(num_seeds, -1)).all(1)
    return bad


class SeedOptimizer:
    """Steps S seeds' parameters (leading axis S); a diverged seed is frozen where it was."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        optim_cfg: Mapping[str, Any],
        num_seeds: int,
        max_grad_norm: float | None,
    ) -> None:
        self.params = list(params)
        self.num_seeds = num_seeds
        self.max_grad_norm = max_grad_norm
        self.optimizer = build_torch_optimizer(self.params, optim_cfg)
        self.diverged = torch.zeros(num_seeds, dtype=torch.bool)

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=False)

    def set_learning_rate(self, learning_rate: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate

    def step(
        self, reduced_loss: torch.Tensor, skip: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip and apply the accumulated gradients of the seeds that have not diverged.

        A seed whose loss or gradient is NaN/inf, or whose parameters would become so, is
        marked diverged; its parameters stay at their last finite values for good. Seeds where
        ``skip [S]`` is True (e.g. PPO's per-seed early stop) are not stepped: their parameters
        and per-parameter optimiser state (moments, momentum) are kept as they were; the step
        counter that Adam shares over its tensors still advances.
        Returns the per-seed gradient norm before clipping ``[S]`` and the seeds that
        diverged at this step (bool ``[S]``).
        """
        grad_norm = per_seed_grad_norm(self.params, self.num_seeds)
        newly_diverged = ~torch.isfinite(reduced_loss.cpu()) | ~torch.isfinite(grad_norm.cpu())
        if skip is not None:
            newly_diverged &= ~skip.cpu()
        if self.max_grad_norm is not None:
            clip_per_seed(self.params, grad_norm, self.max_grad_norm)
        before = [
            {name: tensor.clone() for name, tensor in self._seed_tensors(param).items()}
            for param in self.params
        ]
        self.optimizer.step()
        newly_diverged |= nonfinite_per_seed(self.params, self.num_seeds).cpu()
        if skip is not None:
            newly_diverged &= ~skip.cpu()
        newly_diverged &= ~self.diverged
        self.diverged |= newly_diverged
        frozen = self.diverged | (skip.cpu() if skip is not None else False)
        if frozen.any():
            frozen = frozen.to(self.params[0].device)
            with torch.no_grad():
                for param, saved in zip(self.params, before, strict=True):
                    for name, current in self._seed_tensors(param).items():
                        # State created by this step starts from zero (Adam/RMSprop moments).
                        current[frozen] = saved[name][frozen] if name in saved else 0.0
        return grad_norm, newly_diverged

    def _seed_tensors(self, param: torch.nn.Parameter) -> dict[str, torch.Tensor]:
        """The parameter and its optimiser state tensors that carry the seed axis (live
        tensors, by name); `step` saves clones of them to restore frozen seeds."""
        state = self.optimizer.state.get(param, {})
        tensors = {"param": param.data}
        for name, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == self.num_seeds:
                tensors[name] = value
        return tensors

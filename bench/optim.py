"""Optimiser over slot-batched parameters, with every hyperparameter per slot.

A *slot* is one agent on the leading axis S of every parameter (``[S, ...]`` tensors, see
`bench.networks`). The slots of one job may come from different grid points of a sweep, so
each slot has its own learning rate, optimiser hyperparameters and clipping norm; only the
optimiser type (sgd | adam | rmsprop) is shared. What must not mix slots is per slot too: the
gradient norm, its clipping, the step counter (Adam's bias correction) and the NaN/inf check
that freezes a diverged slot.

Why flat buffers: at these network sizes a step costs little but per-call overhead, and
torch.optim makes several calls per parameter tensor. Here the update runs on one ``[S, P]``
copy of the parameters (P: parameter elements per slot) and of each state tensor: each
parameter's ``.grad`` is a view of one ``[S, P]`` gradient buffer, into which backward
accumulates in place (no gathering copy; zeroing is one op), then the norm, the clipping,
the divergence checks and the whole update are a handful of ``[S, P]`` ops, with per-slot
hyperparameters as ``[S, 1]`` columns, and the new values are copied back into the
parameters (one multi-tensor copy). The parameters themselves stay ordinary contiguous
tensors: as strided views of a shared buffer, batched matrix products take other code paths
for other S (a slot's forward pass would then depend on what shares its process).

Why row blocks: on CPU the update's dozen elementwise passes over ``[S, P]`` buffers of
megabytes are bound by memory traffic, so they run block by block of rows
(`CPU_BLOCK_ELEMENTS` elements, a megabyte per buffer), each block's whole chain while it
sits in the core's caches (one Adam step of a 64x64 actor-critic at S=120: 13.9 -> 12.1 ms
with blocks of 2^16 elements, on busy cores; blocks of 2^18 then took 5.0-5.7 ms where 2^16
took 6.6-7.1 ms, and 2.3-2.6 against 3.4-3.6 ms at S=60, both measured side by side with a
two-job sweep on the other core, 2026-12-04; no gain at S=10, one or two blocks). An
elementwise op's result for an element does not depend on which other elements it runs with,
so the blocks change no bit; on other devices the buffers are one block (each op is one
kernel launch).

Why only plain elementwise ops (add, sub, mul, div, sqrt; no lerp, addcmul, addcdiv, pow): a
slot's update must be bitwise the same whatever else shares its job. A plain op is rounded
once, as IEEE requires, on every code path, while a fused one may round differently in a
kernel's vectorised body and in its scalar tail, whose positions depend on S (and on the
thread split). The only reductions are per row of an ``[S, P]`` buffer (tested to be
independent of S). The update rules are torch.optim's single-tensor ones up to that rounding;
the tests compare each slot with torch.optim run on that slot alone.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

# Parameters' `.grad` are strided views of `flat_grads` on purpose (the module docstring);
# backward accumulates into them in place all the same (autograd's "in-place addition" case).
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout")

OPTIMIZERS = ("adam", "sgd", "rmsprop")

# Elements of a row block of the CPU update (see the module docstring): 2^18 float32 values,
# 1 MB per buffer, measured faster than 2^16 at S = 60-120 and the same at S = 10.
CPU_BLOCK_ELEMENTS = 1 << 18

# Per optimiser, the hyperparameters of a slot's `optim` config that must be >= 0, as
# torch.optim checks them (Adam's betas must lie in [0, 1), checked apart).
NON_NEGATIVE = {
    "adam": ("lr", "eps", "weight_decay"),
    "sgd": ("lr", "momentum", "weight_decay"),
    "rmsprop": ("lr", "alpha", "eps", "momentum", "weight_decay"),
}


def check_optim_configs(optim_cfgs: Sequence[Mapping[str, Any]]) -> str:
    """The optimiser name that all slots' configs share; ValueError for mixed names, an
    unknown name or a value torch.optim would refuse."""
    names = sorted({str(cfg["name"]) for cfg in optim_cfgs})
    if len(names) != 1:
        raise ValueError(f"all slots of one optimiser must share its name; found {names}")
    name = names[0]
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optim {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
    for slot, cfg in enumerate(optim_cfgs):
        for key in NON_NEGATIVE[name]:
            if not float(cfg[key]) >= 0.0:
                raise ValueError(f"slot {slot}: optim.{key} must be >= 0, got {cfg[key]!r}")
        if name == "adam" and not all(0.0 <= float(beta) < 1.0 for beta in cfg["betas"]):
            raise ValueError(f"slot {slot}: optim.betas must lie in [0, 1), got {cfg['betas']!r}")
        if name == "sgd" and cfg["nesterov"] and not float(cfg["momentum"]) > 0.0:
            raise ValueError(f"slot {slot}: nesterov momentum needs optim.momentum > 0")
    return name


class SlotOptimizer:
    """SGD, Adam or RMSprop over S slots' parameters (leading axis S), every hyperparameter
    per slot; a diverged slot is frozen where it was.

    ``optim_cfgs[s]`` is slot s's `optim` config node (conf/optim/*.yaml: adam has lr, betas,
    eps, weight_decay; sgd lr, momentum, nesterov, weight_decay; rmsprop lr, alpha, eps,
    momentum, weight_decay; weight decay is an L2 term added to the gradient, as in
    torch.optim) and ``max_grad_norm[s]`` its clipping norm (None: no clipping).

    Construction copies the parameters into the flat buffer `flat_params` ``[S, P]``, which
    is the master copy from then on: build the optimiser once the network is on its device
    (``net.to(device)``) and change the parameters only through `step`. Gradients are read
    from `flat_grads` ``[S, P]``, of which each parameter's ``.grad`` is a view (backward
    accumulates into it in place); a ``.grad`` that was replaced or set to None is copied in
    (None counts as zero) and the view put back at the next step.

    Per slot, on the parameters' device: `diverged` (bool ``[S]``), `base_learning_rate` (the
    configured lr) and `learning_rate` (the current one), both float64 ``[S]``, and
    `step_count`. A slot that is skipped or diverged takes no step at all: its parameters,
    optimiser state and step counter stay as they were, so its trajectory is the one
    torch.optim gives on that slot alone when ``step()`` is not called for it.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        optim_cfgs: Sequence[Mapping[str, Any]],
        max_grad_norm: Sequence[float | None],
    ) -> None:
        self.params = list(params)
        if not self.params or self.params[0].dim() == 0:
            raise ValueError("SlotOptimizer needs parameters with a leading slot axis")
        first = self.params[0]
        self.num_slots, self._device, self._dtype = first.shape[0], first.device, first.dtype
        for param in self.params:
            if (param.dim() == 0 or param.shape[0] != self.num_slots
                    or param.device != first.device or param.dtype != first.dtype):
                raise ValueError(
                    f"every parameter must be [{self.num_slots}, ...] on {first.device} as "
                    f"{first.dtype}; got {tuple(param.shape)} on {param.device} as {param.dtype}"
                )
        if len({id(param) for param in self.params}) != len(self.params):
            raise ValueError("a parameter appears more than once")
        if len(optim_cfgs) != self.num_slots or len(max_grad_norm) != self.num_slots:
            raise ValueError(
                f"{self.num_slots} slots but {len(optim_cfgs)} optim configs and "
                f"{len(max_grad_norm)} max grad norms"
            )
        self.name = check_optim_configs(optim_cfgs)
        self._update: Callable[[slice, torch.Tensor], None] = getattr(self, f"_{self.name}")
        # On CPU a host-side flag costs nothing: only the frozen slots' rows are saved and put
        # back, when there are any. Elsewhere reading it would wait for the device, so every step
        # snapshots the state and selects per slot instead, with no host synchronisation.
        self._sync_free = self._device.type != "cpu"
        self._init_hyperparameters(optim_cfgs, max_grad_norm)
        self._flatten()
        self.diverged = torch.zeros(self.num_slots, dtype=torch.bool, device=self._device)
        self.base_learning_rate = self._float64([cfg["lr"] for cfg in optim_cfgs])
        self.set_learning_rate(self.base_learning_rate)

    def _float64(self, values: Sequence[Any]) -> torch.Tensor:
        """Config values (one per slot, or rows of them) as a float64 tensor."""
        values = [[float(v) for v in row] if isinstance(row, list) else float(row)
                  for row in values]
        return torch.tensor(values, dtype=torch.float64, device=self._device)

    def _column(self, values: Sequence[Any]) -> torch.Tensor:
        """Per-slot values as an ``[S, 1]`` column in the parameters' dtype, rounded once from
        float64 (as torch.optim's kernels round its Python-float hyperparameters)."""
        return self._float64(values).to(self._dtype).unsqueeze(1)

    def _init_hyperparameters(
        self, cfgs: Sequence[Mapping[str, Any]], max_grad_norm: Sequence[float | None]
    ) -> None:
        """The per-slot hyperparameter columns, which optional terms any slot needs (weight
        decay, momentum, nesterov), the clipping norms and the per-slot counters."""
        column, hyper = self._column, {}
        self._weight_decay = any(float(cfg["weight_decay"]) != 0.0 for cfg in cfgs)
        if self._weight_decay:
            hyper["weight_decay"] = column([cfg["weight_decay"] for cfg in cfgs])
        self._momentum = self.name != "adam" and any(float(cfg["momentum"]) != 0 for cfg in cfgs)
        if self._momentum:
            hyper["momentum"] = column([cfg["momentum"] for cfg in cfgs])
        self._nesterov = self.name == "sgd" and any(bool(cfg["nesterov"]) for cfg in cfgs)
        if self._nesterov:  # direction = grad * a + buffer * b: (1, momentum) or (0, 1)
            hyper["nesterov_grad"] = column([float(bool(cfg["nesterov"])) for cfg in cfgs])
            hyper["nesterov_buffer"] = column(
                [cfg["momentum"] if cfg["nesterov"] else 1.0 for cfg in cfgs])
        if self.name == "adam":
            betas = [(float(cfg["betas"][0]), float(cfg["betas"][1])) for cfg in cfgs]
            hyper["one_minus_beta1"] = column([1.0 - beta1 for beta1, _ in betas])
            hyper["beta2"] = column([beta2 for _, beta2 in betas])
            hyper["one_minus_beta2"] = column([1.0 - beta2 for _, beta2 in betas])
            self._eps64 = self._float64([cfg["eps"] for cfg in cfgs])
        if self.name == "rmsprop":
            hyper["alpha"] = column([cfg["alpha"] for cfg in cfgs])
            hyper["one_minus_alpha"] = column([1.0 - float(cfg["alpha"]) for cfg in cfgs])
            hyper["eps"] = column([cfg["eps"] for cfg in cfgs])
        self._hyper: dict[str, torch.Tensor] = hyper
        self._max_norm = None
        if any(norm is not None for norm in max_grad_norm):  # no max norm: scale 1
            self._max_norm = self._float64([math.inf if n is None else n for n in max_grad_norm])

        # Counters per slot (float64, saved and restored with the state): the steps taken and,
        # for Adam, the bias corrections c2 = 1 - beta2^t and c1 = 1 - beta1^t by the recurrence
        # c <- beta c + (1 - beta) (torch.pow may round differently in the vectorised body of
        # its kernel and in the scalar tail).
        if self.name == "adam":
            self._counter_decay = self._float64([[1.0, b2, b1] for b1, b2 in betas])
            self._counter_increment = self._float64([[1.0, 1.0 - b2, 1.0 - b1] for b1, b2 in betas])
            self._counters = torch.zeros(self.num_slots, 3, dtype=torch.float64,
                                         device=self._device)
            self._c2, self._c1 = self._counters[:, 1:2], self._counters[:, 2:3]
            # Adam's coefficients of each step, [S, 2]: (lr sqrt(c2) / c1, eps sqrt(c2)), in
            # float64 and in the parameters' dtype (views of tensors updated in place).
            self._root_c2 = torch.empty_like(self._c2)
            self._coefficients64 = torch.empty(self.num_slots, 2, dtype=torch.float64,
                                               device=self._device)
            self._step_size64 = self._coefficients64[:, :1]
            self._coefficients = torch.empty_like(self._coefficients64, dtype=self._dtype)
            self._step_size, self._eps_hat = self._coefficients.split(1, dim=1)
        else:
            self._counter_increment = torch.ones(1, dtype=torch.float64, device=self._device)
            self._counters = torch.zeros(self.num_slots, 1, dtype=torch.float64,
                                         device=self._device)

    def _flatten(self) -> None:
        """Copy the parameters into the flat buffers that the update runs on."""
        # Row 0 of `_buffers` holds the parameters, the others the optimiser state (Adam: the
        # moments; SGD: momentum; RMSprop: square average, momentum), so that one op saves or
        # restores every state of a set of slots.
        num_state = {"adam": 2, "sgd": int(self._momentum), "rmsprop": 1 + int(self._momentum)}
        sizes = [param[0].numel() for param in self.params]
        shape, like = (self.num_slots, sum(sizes)), {"dtype": self._dtype, "device": self._device}
        self._buffers = torch.zeros(1 + num_state[self.name], *shape, **like)
        self.flat_params, *self._state = self._buffers.unbind(0)
        self.flat_grads = torch.zeros(shape, **like)
        scratch = (["work", "clipped"] + ["decayed"] * self._weight_decay
                   + ["nesterov"] * self._nesterov)
        self._scratch = dict(zip(scratch, torch.empty(len(scratch), *shape, **like), strict=True))
        # Each parameter's column block of `flat_params` and of `flat_grads`, shaped like the
        # parameter; the gradient views are the parameters' `.grad`.
        self._param_views = [view.view(param.shape) for view, param in zip(
            self.flat_params.split(sizes, dim=1), self.params, strict=True)]
        self._grad_views = [view.view(param.shape) for view, param in zip(
            self.flat_grads.split(sizes, dim=1), self.params, strict=True)]
        with torch.no_grad():
            torch._foreach_copy_(self._param_views, [param.detach() for param in self.params])
        for param, grad in zip(self.params, self._grad_views, strict=True):
            param.grad = grad
        rows = self.num_slots
        if self._device.type == "cpu":
            rows = max(1, CPU_BLOCK_ELEMENTS // max(1, shape[1]))
        self._row_blocks = [slice(start, min(start + rows, self.num_slots))
                            for start in range(0, self.num_slots, rows)]

    @property
    def learning_rate(self) -> torch.Tensor:
        """The current learning rate of each slot: float64 ``[S]``."""
        return self._learning_rate

    @property
    def step_count(self) -> torch.Tensor:
        """The number of steps each slot has taken: int64 ``[S]``."""
        return self._counters[:, 0].to(torch.int64)

    def set_learning_rate(self, learning_rate: torch.Tensor) -> None:
        """Set each slot's learning rate, ``[S]`` (annealing passes base_learning_rate * frac)."""
        learning_rate = torch.as_tensor(learning_rate, dtype=torch.float64, device=self._device)
        if learning_rate.shape != (self.num_slots,):
            raise ValueError(
                f"learning rate must be [{self.num_slots}], got {tuple(learning_rate.shape)}")
        self._learning_rate = learning_rate.clone()
        if self.name == "adam":  # the step size, computed at each step, includes the lr
            self._lr_eps = torch.stack([self._learning_rate, self._eps64], dim=1)
        else:
            self._hyper["lr"] = self._learning_rate.to(self._dtype).unsqueeze(1)

    def gradients(self) -> torch.Tensor:
        """The parameters' accumulated gradients as one flat ``[S, P]`` tensor (a copy; columns
        in the order of `params`)."""
        self._gather_grads()
        return self.flat_grads.clone()

    def columns(self, params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
        """Bool ``[P]``: the flat columns that hold `params` (some of this optimiser's)."""
        wanted = {id(param) for param in params}
        return torch.cat([torch.full((param[0].numel(),), id(param) in wanted,
                                     dtype=torch.bool, device=self._device)
                          for param in self.params])

    def trial_step(self, grads: torch.Tensor) -> torch.Tensor:
        """The parameter change ``[S, P]`` that one step on the flat gradients ``grads [S, P]``
        would make for every slot, clipped as `step` clips, from the current optimiser state,
        which is then put back bit for bit: nothing changes (the would-be steps of gradient
        diagnostics). Divergence is not checked."""
        saved_buffers, saved_counters = self._buffers.clone(), self._counters.clone()
        before = self.flat_params.clone()
        grads = grads.to(self._dtype).contiguous()  # the row norm as `step` sums it
        scale = None
        if self._max_norm is not None:
            scale = self._clip_scale(torch.linalg.vector_norm(grads, dim=1, dtype=torch.float64))
        self._apply(grads, scale)
        change = self.flat_params - before
        self._buffers.copy_(saved_buffers)
        self._counters.copy_(saved_counters)
        return change

    def zero_grad(self) -> None:
        """Zero the parameters' gradients in place (never None, so backward accumulates): one
        op on `flat_grads`, with each ``.grad`` put back to its view if it was replaced."""
        self.flat_grads.zero_()
        for param, grad in zip(self.params, self._grad_views, strict=True):
            if param.grad is not grad:
                param.grad = grad

    def step(
        self, reduced_loss: torch.Tensor, skip: torch.Tensor | None = None,
        slots: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip and apply the accumulated gradients of the slots that have not diverged.

        A slot whose loss ``reduced_loss [S]`` or gradient is NaN/inf is marked diverged and
        its parameters and optimiser state stay where they are for good; one whose parameters
        become NaN/inf in this step (a finite gradient that overflows them) is marked diverged
        too, with the parameters it got. Slots where ``skip [S]`` is True (e.g. PPO's per-slot
        early stop; on the parameters' device) take no step: parameters, optimiser state and
        step counter unchanged. With ``slots [R]`` (indices), `reduced_loss` holds those slots'
        losses only (``[R]``) and every other slot must be skipped.
        Gradients are clipped per slot to its max norm by torch's clip_grad_norm_ rule.
        Returns the per-slot gradient L2 norm over all parameters before clipping (float64
        ``[S]``) and the slots that diverged at this step (bool ``[S]``), on the parameters'
        device.
        """
        if slots is not None:
            reduced_loss = reduced_loss.new_zeros(self.num_slots).index_copy_(
                0, slots, reduced_loss)
        self._gather_grads()
        grads = self.flat_grads
        stepping = ~self.diverged if skip is None else ~(self.diverged | skip)
        # float64: the norm of finite float32 gradients is finite, and so is its sum with a
        # finite float32 loss (one finiteness check for both).
        grad_norm = torch.linalg.vector_norm(grads, dim=1, dtype=torch.float64)
        finite = (reduced_loss.detach() + grad_norm).abs() < math.inf
        moving = stepping & finite
        scale = None if self._max_norm is None else self._clip_scale(grad_norm)

        saved = self._save(moving)
        self._apply(grads, scale)
        self._restore(moving, saved)
        with torch.no_grad():
            torch._foreach_copy_([param.data for param in self.params], self._param_views)

        # A per-slot sum is finite exactly when its terms are, unless it overflows, which counts
        # as divergence too.
        params_finite = self.flat_params.sum(dim=1).abs_() < math.inf
        newly_diverged = stepping & ~(finite & params_finite)
        self.diverged |= newly_diverged
        return grad_norm, newly_diverged

    def _gather_grads(self) -> None:
        """Make `flat_grads` hold the parameters' gradients: nothing to do for a ``.grad`` that
        is still its view; a replaced one is copied in (None: zeros) and the view put back."""
        for param, view in zip(self.params, self._grad_views, strict=True):
            grad = param.grad
            if grad is view:
                continue
            if grad is None:
                view.zero_()
            else:
                view.copy_(grad)
            param.grad = view

    def _clip_scale(self, grad_norm: torch.Tensor) -> torch.Tensor:
        """Each slot's clipping factor ``[S, 1]`` in the parameters' dtype, by torch's
        clip_grad_norm_ rule: min(1, max_norm / (norm + 1e-6)), computed in float64."""
        scale = (self._max_norm / (grad_norm + 1e-6)).clamp_(max=1.0)
        return scale.to(self._dtype).unsqueeze(1)

    def _apply(self, grads: torch.Tensor, scale: torch.Tensor | None) -> None:
        """Advance the counters and update every slot from `grads` ``[S, P]`` (left as they
        are), clipped by `scale` ``[S, 1]`` (None: no clipping), row block by row block."""
        if self.name == "adam":
            self._counters.mul_(self._counter_decay).add_(self._counter_increment)
            self._adam_coefficients()
        else:
            self._counters.add_(self._counter_increment)
        clipped = self._scratch["clipped"]
        for rows in self._row_blocks:
            block = grads[rows]
            if scale is not None:
                block = torch.mul(block, scale[rows], out=clipped[rows])
            self._update(rows, self._decayed(rows, block))

    def _save(self, moving: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """What the update must not change for the slots that are not `moving`: all slots'
        state (sync-free), or the frozen slots' indices and rows, or None (all slots move)."""
        if self._sync_free:
            return self._buffers.clone(), self._counters.clone()
        if bool(moving.all()):
            return None
        frozen = torch.nonzero(~moving).flatten()
        return frozen, self._buffers.index_select(1, frozen), self._counters.index_select(0, frozen)

    def _restore(self, moving: torch.Tensor, saved: tuple[torch.Tensor, ...] | None) -> None:
        """Put back the state of the slots that are not `moving` (see `_save`)."""
        if self._sync_free:
            buffers, counters = saved
            torch.where(moving.view(1, -1, 1), self._buffers, buffers, out=self._buffers)
            torch.where(moving.view(-1, 1), self._counters, counters, out=self._counters)
        elif saved is not None:
            frozen, buffers, counters = saved
            self._buffers.index_copy_(1, frozen, buffers)
            self._counters.index_copy_(0, frozen, counters)

    def _decayed(self, rows: slice, grads: torch.Tensor) -> torch.Tensor:
        """The gradient of the slots `rows` with weight decay: grad + weight_decay * param
        (L2, as torch.optim)."""
        if not self._weight_decay:
            return grads
        decayed = self._scratch["decayed"][rows]
        torch.mul(self.flat_params[rows], self._hyper["weight_decay"][rows], out=decayed)
        return decayed.add_(grads)

    def _sgd(self, rows: slice, grads: torch.Tensor) -> None:
        """torch.optim.SGD, dampening 0, on the slots `rows`: buf = momentum buf + g (buf starts
        at 0, so its first value is g, as torch's); param -= lr d with d = g + momentum buf
        (nesterov), buf (momentum) or g."""
        hyper, work = self._hyper, self._scratch["work"][rows]
        direction = grads
        if self._momentum:
            direction = self._state[0][rows].mul_(hyper["momentum"][rows]).add_(grads)
            if self._nesterov:
                nesterov = torch.mul(grads, hyper["nesterov_grad"][rows],
                                     out=self._scratch["nesterov"][rows])
                direction = torch.mul(direction, hyper["nesterov_buffer"][rows],
                                      out=work).add_(nesterov)
        torch.mul(direction, hyper["lr"][rows], out=work)
        self.flat_params[rows].sub_(work)

    def _adam_coefficients(self) -> None:
        """Each slot's step size lr sqrt(c2) / c1 and eps sqrt(c2) of this step, from its bias
        corrections (in float64, then rounded once to the parameters' dtype)."""
        torch.sqrt(self._c2, out=self._root_c2)
        torch.mul(self._lr_eps, self._root_c2, out=self._coefficients64)
        self._step_size64.div_(self._c1)
        self._coefficients.copy_(self._coefficients64)

    def _adam(self, rows: slice, grads: torch.Tensor) -> None:
        """torch.optim.Adam on the slots `rows`: m += (1 - beta1)(g - m); v = beta2 v +
        (1 - beta2) g^2; param -= lr / c1 * m / (sqrt(v) / sqrt(c2) + eps) with the slot's own
        bias corrections c1 = 1 - beta1^t, c2 = 1 - beta2^t, computed as (lr sqrt(c2) / c1) m /
        (sqrt(v) + eps sqrt(c2)) (Kingma and Ba's efficient form: one op fewer), with the
        coefficients of `_adam_coefficients`."""
        hyper, work = self._hyper, self._scratch["work"][rows]
        first, second = (state[rows] for state in self._state)
        torch.sub(grads, first, out=work)
        first.add_(work.mul_(hyper["one_minus_beta1"][rows]))
        second.mul_(hyper["beta2"][rows])
        torch.mul(grads, grads, out=work)
        second.add_(work.mul_(hyper["one_minus_beta2"][rows]))
        torch.sqrt(second, out=work)
        torch.div(first, work.add_(self._eps_hat[rows]), out=work)
        self.flat_params[rows].sub_(work.mul_(self._step_size[rows]))

    def _rmsprop(self, rows: slice, grads: torch.Tensor) -> None:
        """torch.optim.RMSprop, not centered, on the slots `rows`: sq = alpha sq +
        (1 - alpha) g^2; u = g / (sqrt(sq) + eps); param -= lr buf with buf = momentum buf + u
        (momentum; buf starts at 0), or param -= lr u."""
        hyper, work = self._hyper, self._scratch["work"][rows]
        square_avg = self._state[0][rows].mul_(hyper["alpha"][rows])
        torch.mul(grads, grads, out=work)
        square_avg.add_(work.mul_(hyper["one_minus_alpha"][rows]))
        torch.sqrt(square_avg, out=work)
        torch.div(grads, work.add_(hyper["eps"][rows]), out=work)
        if self._momentum:
            buffer = self._state[1][rows].mul_(hyper["momentum"][rows]).add_(work)
            torch.mul(buffer, hyper["lr"][rows], out=work)
        else:
            work.mul_(hyper["lr"][rows])
        self.flat_params[rows].sub_(work)

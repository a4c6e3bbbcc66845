"""Seed-batched networks: every parameter has a leading seed axis ``S``.

Inputs are ``[S, B, features]``; seed s's slice of a layer only ever sees seed s's inputs
(batched matmul), so S independent networks train as one computation. Initialisation is
orthogonal as in CleanRL (gain sqrt(2) for hidden layers, 0.01 for the policy output, 1 for the
value output), drawn per seed from that seed's own generator.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from bench.seeding import torch_generators

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


# Rows of a layer's input that the weight gradient sums in one block (see `_SlotAffine`).
GRAD_BLOCK = 64


class _SlotAffine(torch.autograd.Function):
    """``y[s] = x[s] @ weight[s] + bias[s]`` with a weight gradient that a slot's rows decide
    alone, bit for bit.

    The weight gradient sums over the M rows of the input, and a matrix product's summation
    order depends on M; M is padded to the longest slot of the process (e.g. REINFORCE's
    episode batches), so a slot's gradient would depend on what shares its process. Here the
    rows are summed in blocks of `GRAD_BLOCK` (one batched product over all blocks), then the
    block sums in sequence: padding rows, whose output gradient is exactly zero, add exact
    zeros. A one-column output is computed as an elementwise product and a row sum, because a
    single-slot batched product of a vector takes a different (differently rounded) path.
    """

    @staticmethod
    def affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The forward computation (differentiable as it stands where its weight gradient,
        a sum over one row, is exact: see `SeedLinear.forward`)."""
        if weight.shape[2] == 1:
            return (x * weight.transpose(1, 2)).sum(dim=2, keepdim=True) + bias
        return torch.baddbmm(bias, x, weight)

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return _SlotAffine.affine(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        num_slots, rows, features = x.shape
        if rows == 1:  # per_step's slices, stepwise updates: an outer product, exact anyway
            padding, blocks = 0, 1
        else:
            padding = -rows % GRAD_BLOCK
            if num_slots * (rows + padding) == GRAD_BLOCK:
                padding += GRAD_BLOCK  # a batch of one product takes a path of its own
            blocks = (rows + padding) // GRAD_BLOCK
        if padding:
            x = torch.nn.functional.pad(x, (0, 0, 0, padding))
            grad = torch.nn.functional.pad(grad, (0, 0, 0, padding))
        x_blocks = x.reshape(num_slots * blocks, -1, features)
        grad_blocks = grad.reshape(num_slots * blocks, -1, grad.shape[2])
        grad_weight = torch.bmm(x_blocks.transpose(1, 2), grad_blocks)
        grad_bias = grad_blocks.sum(dim=1, keepdim=True)
        if blocks > 1:  # block sums added in sequence
            grad_weight = _in_sequence(grad_weight.view(num_slots, blocks, features, -1))
            grad_bias = _in_sequence(grad_bias.view(num_slots, blocks, 1, -1))
        return grad_x, grad_weight, grad_bias


def _in_sequence(blocks: torch.Tensor) -> torch.Tensor:
    """``blocks [S, K, ...]`` summed over K first to last, bit for bit what
    ``cumsum(dim=1)[:, -1]`` gives (the results before this function existed), without a
    cumulative sum along a strided axis, which is slow on CPU. There torch's cumsum adds
    float32 in float64 (its accumulate type) and rounds at the end, so this does the same;
    elsewhere (CUDA's scan has its own order) it is cumsum itself."""
    if blocks.device.type != "cpu":
        return blocks.cumsum(dim=1)[:, -1]
    accumulate = {torch.float32: torch.float64, torch.float16: torch.float32,
                  torch.bfloat16: torch.float32}.get(blocks.dtype, blocks.dtype)
    total = blocks[:, 0].to(accumulate)
    for k in range(1, blocks.shape[1]):
        total = total + blocks[:, k]
    return total.to(blocks.dtype)


class SeedLinear(nn.Module):
    """S independent affine maps: ``y[s] = x[s] @ weight[s] + bias[s]``."""

    def __init__(self, num_seeds: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_seeds, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(num_seeds, 1, out_features))

    def init_orthogonal(self, generators: Sequence[torch.Generator], gain: float) -> None:
        """Orthogonal weights (as nn.Linear's [out, in] matrix, transposed), zero bias."""
        with torch.no_grad():
            for s, generator in enumerate(generators):
                matrix = torch.empty(self.weight.shape[2], self.weight.shape[1])
                nn.init.orthogonal_(matrix, gain=gain, generator=generator)
                self.weight[s].copy_(matrix.T)
            self.bias.zero_()

    def forward(self, x: torch.Tensor, slots: torch.Tensor | None = None) -> torch.Tensor:
        """``x [S, B, in]``, or with ``slots [R]`` (indices) the inputs of those slots only,
        ``[R, B, in]``."""
        weight, bias = _rows(self.weight, slots), _rows(self.bias, slots)
        # The custom backward only matters for a weight gradient summed over several rows;
        # acting (no gradient) and one-row batches (per_step, stepwise updates) skip its
        # per-call overhead with the same forward computation.
        if x.shape[1] == 1 or not torch.is_grad_enabled():
            return _SlotAffine.affine(x, weight, bias)
        return _SlotAffine.apply(x, weight, bias)


class SeedMLP(nn.Module):
    """Seed-batched MLP: hidden SeedLinear layers with an activation, then a linear output
    (followed by the activation too when `output_activation`, for a shared torso)."""

    def __init__(
        self,
        seeds: Sequence[int],
        in_features: int,
        hidden_sizes: Sequence[int],
        out_features: int,
        activation: str,
        output_gain: float,
        stream: str,
        output_activation: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; valid choices: {', '.join(ACTIVATIONS)}"
            )
        sizes = [in_features, *hidden_sizes, out_features]
        layers: list[nn.Module] = []
        generators = torch_generators(seeds, stream)
        for index, (size_in, size_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layer = SeedLinear(len(seeds), size_in, size_out)
            is_output = index == len(sizes) - 2
            layer.init_orthogonal(generators, gain=output_gain if is_output else math.sqrt(2))
            layers.append(layer)
            if not is_output or output_activation:
                layers.append(ACTIVATIONS[activation]())
        self.layers = nn.Sequential(*layers)
        # Set by `only_slots`: the slots whose rows inputs hold (indices), or None (all).
        self.slots: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.slots is None:
            return self.layers(x)
        for layer in self.layers:
            x = layer(x, self.slots) if isinstance(layer, SeedLinear) else layer(x)
        return x


@contextmanager
def only_slots(slots: torch.Tensor, *modules: nn.Module | None) -> Iterator[None]:
    """Within the block, `modules` (and their submodules) compute the slots ``slots [R]``
    (ascending indices) only: inputs and outputs are ``[R, ...]``, row r being slot
    ``slots[r]``, and the parameters of the other slots get no gradient (exact zeros).

    What a slot's rows compute does not depend on which other slots are there (as for the
    slots of a pack), so this only saves the work of slots that have nothing to compute, e.g.
    those that do not update now. All the slots: nothing changes.
    """
    subsets = [m for module in modules if module is not None for m in module.modules()
               if isinstance(m, (SeedMLP, Policy))]
    num_slots = next(p for m in modules if m is not None for p in m.parameters()).shape[0]
    index = None if len(slots) == num_slots else slots
    for module in subsets:
        module.slots = index
    try:
        yield
    finally:
        for module in subsets:
            module.slots = None


def _rows(param: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
    """A per-slot parameter's rows of `slots` (all if None)."""
    return param if slots is None else param.index_select(0, slots)


class Policy(nn.Module):
    """Seed-batched stochastic policy.

    Discrete: categorical over logits. Continuous: diagonal Gaussian with a state-independent
    log standard deviation per seed. Log-probabilities and entropies are summed over action
    dimensions, so every method returns ``[S, B]``.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        obs_dim: int,
        action_dim: int,
        discrete: bool,
        hidden_sizes: Sequence[int],
        activation: str,
        init_log_std: float,
    ) -> None:
        super().__init__()
        self.discrete = discrete
        self.body = SeedMLP(
            seeds, obs_dim, hidden_sizes, action_dim, activation, output_gain=0.01,
            stream="policy_init",
        )
        if not discrete:
            self.log_std = nn.Parameter(torch.full((len(seeds), 1, action_dim), init_log_std))
        self.slots: torch.Tensor | None = None  # see `only_slots`

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        """The action distribution at ``obs [S, B, obs_dim]`` (batch shape ``[S, B]``)."""
        out = self.body(obs)
        if self.discrete:
            return torch.distributions.Categorical(logits=out, validate_args=False)
        std = _rows(self.log_std, self.slots).exp().expand_as(out)
        normal = torch.distributions.Normal(out, std, validate_args=False)
        return torch.distributions.Independent(normal, 1, validate_args=False)

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions at ``obs [S, B, obs_dim]`` from per-seed noise, and their log-probabilities.

        Discrete: `noise` is U[0,1) ``[S, B]`` and the action is its inverse-CDF index.
        Continuous: `noise` is N(0,1) ``[S, B, action_dim]``; the action is mean + std * noise,
        unclipped (clip only when sending it to the environment). Computed without
        torch.distributions, whose construction dominates the cost at these batch sizes; the
        formulas are those of `distribution` (a test checks they agree).
        """
        out = self.body(obs)
        if self.discrete:
            log_probs = torch.log_softmax(out, dim=-1)
            cdf = log_probs.exp().cumsum(dim=-1)
            actions = (noise.unsqueeze(-1) >= cdf).sum(dim=-1).clamp(max=cdf.shape[-1] - 1)
            return actions, log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        log_std = _rows(self.log_std, self.slots).expand_as(out)
        actions = out + log_std.exp() * noise
        log_density = -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        return actions, log_density.sum(dim=-1)


class ValueFunction(nn.Module):
    """Seed-batched state-value function V(s): ``[S, B, obs_dim] -> [S, B]``."""

    def __init__(
        self, seeds: Sequence[int], obs_dim: int, hidden_sizes: Sequence[int], activation: str
    ) -> None:
        super().__init__()
        self.body = SeedMLP(
            seeds, obs_dim, hidden_sizes, 1, activation, output_gain=1.0, stream="value_init"
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.body(obs).squeeze(-1)


class ActorCritic(nn.Module):
    """Seed-batched policy and value function for actor-critic methods.

    ``shared=False``: two separate MLPs (CleanRL's PPO). ``shared=True``: one torso of
    `hidden_sizes` whose features feed a linear policy head and a linear value head (the A2C
    paper's and SB3's default for images; here optional for the MLP).
    """

    def __init__(
        self,
        seeds: Sequence[int],
        obs_dim: int,
        action_dim: int,
        discrete: bool,
        hidden_sizes: Sequence[int],
        activation: str,
        init_log_std: float,
        shared: bool,
    ) -> None:
        super().__init__()
        if shared:
            features = hidden_sizes[-1]
            self.torso: nn.Module = SeedMLP(
                seeds, obs_dim, hidden_sizes[:-1], features, activation, output_gain=math.sqrt(2),
                stream="torso_init", output_activation=True,
            )
            self.policy = Policy(seeds, features, action_dim, discrete, [], activation,
                                 init_log_std)
            self.value = ValueFunction(seeds, features, [], activation)
        else:
            self.torso = nn.Identity()
            self.policy = Policy(seeds, obs_dim, action_dim, discrete, hidden_sizes, activation,
                                 init_log_std)
            self.value = ValueFunction(seeds, obs_dim, hidden_sizes, activation)

    def sample(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions and their log-probabilities from per-seed noise (see `Policy.sample`)."""
        return self.policy.sample(self.torso(obs), noise)

    def forward(
        self, obs: torch.Tensor
    ) -> tuple[torch.distributions.Distribution, torch.Tensor]:
        """The action distribution and V(s) at ``obs [S, B, obs_dim]`` (one torso pass)."""
        features = self.torso(obs)
        return self.policy.distribution(features), self.value(features)

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        """The action distribution alone at ``obs [S, B, obs_dim]``."""
        return self.policy.distribution(self.torso(obs))

    def values(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s) at ``obs [S, B, obs_dim]``: ``[S, B]``."""
        return self.value(self.torso(obs))

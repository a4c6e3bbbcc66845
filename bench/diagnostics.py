"""Gradient diagnostics: does a reduction change the direction of an update (bias), its size
(an effective step size) or its noise? Off by default (``diagnostics.every: 0``).

Every `every`-th batch a slot trains on (REINFORCE: each batch, i.e. each update; A2C/PPO: a
rollout, measured before its first epoch, so PPO's gradients are its first epoch's, where the
ratio is 1), for every slot that trains on it:

    1. freeze:     the slot's policy as it is before the update's step
    2. reference:  M = `reference_episodes` whole episodes under that policy from the probe's
                   own environments and random streams (never used for learning), and the
                   reference gradient g* = (1/M) sum_i sum_t grad l_t, the textbook estimator
                   (traj_mean over whole episodes)
    3. probes:     on the training batch, the gradient g_r that each of the seven reductions r
                   would give, whichever one trains (per_step through its own loop)
    4. measures:   cos(g_r, g*), |g_r| / |g*|, and the cosine between the parameter steps the
                   slot's optimiser would take on g_r and on g* (from a copy of its state)
    5. noise:      B = `noise_batches` independent training-sized batches: per r, the mean
                   pairwise cosine of its B gradients and the trace of their covariance
                   (per_step's are sum's: see NOISE_SOURCE)

l_t = -log pi(a_t|s_t) A_t is the policy-gradient term alone (entropy and value terms are not
part of it), differentiated with respect to the parameters the policy depends on; A_t is the
algorithm's advantage (its returns, baseline or GAE, and its advantage normalisation, here
over the whole batch) computed on each batch as training computes it.

Training draws nothing from the probe: its environments and action noise are streams of their
own (`bench.seeding.STREAMS`), gradients go through ``.grad`` (which training zeroes before it
backpropagates) and the optimiser's would-be steps put its state back bit for bit, so the
training rows are the same whether diagnostics are on or off (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from bench import reductions
from bench.envs import make_seed_envs
from bench.loop import slot_reductions
from bench.networks import only_slots
from bench.optim import SlotOptimizer
from bench.reductions import REDUCTIONS, Reduction, SlotReductions, trajectory_lengths
from bench.rollout import Batch, EpisodeCollector, StepCollector
from bench.seeding import SeedNoise
from bench.slots import Slots

# The reductions every probe measures, in the table's order.
PROBE_REDUCTIONS = REDUCTIONS
# Where per_step's noise measures come from: its gradient is sum's in exact arithmetic (its loop
# is run on the training batch, where the rows show the two agree), and running the loop on B
# more batches would cost B x M backward passes for rounding alone.
NOISE_SOURCE = {name: "sum" if name == "per_step" else name for name in PROBE_REDUCTIONS}
# Sub-environments per slot of the probe's episode collections (any number gives whole,
# independent episodes; more of them step together). 64 = the default M: the reference batch
# is one round of episodes. A2C on Acrobot, 4000 steps, 10 seeds, both at once on 2 cores:
# 25 s with 64, 41 s with 16.
MAX_PROBE_ENVS = 64

# A batch prepared the algorithm's way for its rows `batch.slots` (called within `only_slots`
# of those rows): the batch it trains on (e.g. without dropped cut segments) and its
# advantages ``[R, M]``.
Advantages = Callable[[Batch], tuple[Batch, torch.Tensor]]


@dataclass(frozen=True)
class DiagnosticsSettings:
    """The `diagnostics` config node (conf/config.yaml)."""

    every: int  # probe every this many batches of a slot (0: off)
    reference_episodes: int  # M
    noise_batches: int  # B
    length_power_alpha: float  # alpha of the length_power probe (unless that slot trains it)

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> DiagnosticsSettings | None:
        """The settings of a resolved config, or None when diagnostics are off."""
        node = config.get("diagnostics") or {}
        if not node.get("every"):
            return None
        return cls(int(node["every"]), int(node["reference_episodes"]),
                   int(node["noise_batches"]), float(node["length_power_alpha"]))


@dataclass(frozen=True)
class BatchShape:
    """How training fills a batch: `episodes` whole episodes, or `steps_per_env` steps of
    each of `num_envs` sub-environments."""

    episodes: int | None = None
    num_envs: int | None = None
    steps_per_env: int | None = None


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of ``[R, P]`` tensors (float64 ``[R]``; NaN where a row is zero)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1))


def mean_pairwise_cosine(gradients: torch.Tensor) -> torch.Tensor:
    """Mean cosine over the B(B-1) ordered pairs of B gradients ``[B, R, P]`` per row: 1 when
    all point one way, about 0 when their directions are noise (float64 ``[R]``)."""
    unit = gradients.to(torch.float64)
    unit = unit / unit.norm(dim=2, keepdim=True)
    gram = torch.einsum("brp,crp->rbc", unit, unit)
    count = gradients.shape[0]
    return (gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=1)) / (
        count * (count - 1))


def covariance_trace(gradients: torch.Tensor) -> torch.Tensor:
    """Trace of the covariance of B gradients ``[B, R, P]`` per row, unbiased:
    sum_b |g_b - mean g|^2 / (B - 1) (float64 ``[R]``)."""
    values = gradients.to(torch.float64)
    return (values - values.mean(dim=0)).pow(2).sum(dim=(0, 2)) / (values.shape[0] - 1)


def length_spread(valid: torch.Tensor, trajectory: torch.Tensor) -> torch.Tensor:
    """Standard deviation (population) of the trajectory lengths T_i of each row (float64
    ``[R]``)."""
    lengths = trajectory_lengths(valid, trajectory)
    present = lengths > 0
    count = present.sum(dim=1).clamp(min=1)
    mean = lengths.sum(dim=1) / count
    squares = torch.where(present, (lengths - mean[:, None]).pow(2), 0.0).sum(dim=1)
    return (squares / count).sqrt()


def take_rows(batch: Batch, rows: torch.Tensor) -> Batch:
    """The batch's rows ``rows [K]`` (positions in the batch, ascending) alone."""
    fields = {name: getattr(batch, name).index_select(0, rows) for name in (
        "obs", "next_obs", "actions", "log_probs", "rewards", "valid", "trajectory", "last",
        "terminated", "truncated", "cut")}
    slots = batch.slots.index_select(0, rows)
    ready = torch.zeros_like(batch.ready).index_fill_(0, slots, True)
    return Batch(**fields, num_blocks=batch.num_blocks, slots=slots, ready=ready)


def select_steps(batch: Batch, keep: torch.Tensor) -> Batch:
    """A one-block batch of the steps where ``keep [R, M]``, packed to the front of each row in
    their order (trajectory ids and flags kept)."""
    counts = keep.sum(dim=1, keepdim=True)
    length = max(int(counts.max()), 1)
    target = torch.where(keep, keep.cumsum(dim=1) - 1, length)
    fields = {}
    for name in ("obs", "next_obs", "actions", "log_probs", "rewards", "trajectory", "last",
                 "terminated", "truncated", "cut"):
        values = getattr(batch, name)
        index = target.view(*target.shape, *([1] * (values.dim() - 2))).expand_as(values)
        packed = values.new_zeros((values.shape[0], length + 1, *values.shape[2:]))
        fields[name] = packed.scatter_(1, index, values)[:, :length]
    fields["valid"] = torch.arange(length, device=keep.device) < counts
    return Batch(**fields, num_blocks=1, slots=batch.slots, ready=batch.ready)


def split_blocks(batch: Batch, parts: int) -> list[Batch]:
    """A step batch of ``parts * E`` sub-env blocks cut into `parts` batches of E blocks."""
    width = batch.valid.shape[1] // parts
    out = []
    for part in range(parts):
        window = slice(part * width, (part + 1) * width)
        fields = {name: getattr(batch, name)[:, window] for name in (
            "obs", "next_obs", "actions", "log_probs", "rewards", "valid", "trajectory", "last",
            "terminated", "truncated", "cut")}
        out.append(Batch(**fields, num_blocks=batch.num_blocks // parts, slots=batch.slots,
                         ready=batch.ready))
    return out


class ReductionGradients:
    """Gradients of the policy-gradient term under given reductions, as training computes
    them: weights from `reductions.step_weights`, backpropagation by `reductions.backward`
    (per_step's loop included), read from the optimiser's parameters, policy columns only."""

    def __init__(
        self,
        optimizer: SlotOptimizer,
        distribution: Callable[[torch.Tensor], torch.distributions.Distribution],
        modules: Sequence[torch.nn.Module | None],
        policy_params: Sequence[torch.nn.Parameter],
    ) -> None:
        self.optimizer, self.distribution, self.modules = optimizer, distribution, modules
        self.columns = optimizer.columns(policy_params)  # bool [P]

    def __call__(self, batch: Batch, advantages: torch.Tensor,
                 per_reduction: Mapping[str, SlotReductions]) -> dict[str, torch.Tensor]:
        """For each entry (a name and the reductions of the batch's rows), the gradient of
        sum_t w_t l_t on `batch` with ``advantages [R, M]``: ``[R, P_policy]`` float32. The
        parameters' ``.grad`` is left zero."""
        rows = batch.slots
        steps = {"obs": batch.obs, "actions": batch.actions, "advantages": advantages.detach()}
        gradients = {}
        with only_slots(rows, *self.modules):
            for name, reduction in per_reduction.items():
                weights = reductions.step_weights(reduction, batch.valid, batch.trajectory)
                self.optimizer.zero_grad()
                reductions.backward(reduction, self.policy_gradient_terms, steps, weights)
                gradients[name] = self.optimizer.gradients()[rows][:, self.columns]
        self.optimizer.zero_grad()
        return gradients

    def policy_gradient_terms(self, steps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """l_t = -log pi(a_t|s_t) A_t (the per-step loss that `reductions.backward` reduces)."""
        log_probs = self.distribution(steps["obs"]).log_prob(steps["actions"])
        return {"loss": -log_probs * steps["advantages"]}


class GradientProbe:
    """Measures, on the batches a pack's slots train on, the gradient of every reduction
    against a reference gradient (see the module docstring) and writes diagnostics rows."""

    def __init__(
        self,
        slots: Slots,
        settings: DiagnosticsSettings,
        recorder: Any,
        optimizer: SlotOptimizer,
        *,
        sampler: torch.nn.Module,
        distribution: Callable[[torch.Tensor], torch.distributions.Distribution],
        modules: Sequence[torch.nn.Module | None],
        policy_params: Sequence[torch.nn.Parameter],
        advantages: Advantages,
        batch_shape: BatchShape,
    ) -> None:
        """`sampler` acts (``.sample(obs, noise)``), `distribution` gives pi(.|s) with
        gradients, `modules` are the networks that `only_slots` restricts, `policy_params`
        the optimiser's parameters the policy depends on, `advantages` the algorithm's."""
        self.slots, self.settings, self.recorder, self.optimizer = (
            slots, settings, recorder, optimizer)
        self.modules, self.advantages, self.batch_shape = modules, advantages, batch_shape
        self.gradients = ReductionGradients(optimizer, distribution, modules, policy_params)
        self.columns = self.gradients.columns
        seeds, device, env = list(slots.seeds), slots.device, slots.config["env"]
        self.device = device
        self.batches_seen = np.zeros(len(slots), dtype=np.int64)
        # Each probe reduction for each slot: the slot's own parameters where it trains that
        # reduction, else constant's T_max = the env's step limit and `length_power_alpha`.
        trained = slot_reductions(slots).per_slot
        self.probe_reductions = {
            name: tuple(own if own.name == name else Reduction(
                name, alpha=settings.length_power_alpha,
                max_length=int(env["max_episode_steps"])) for own in trained)
            for name in PROBE_REDUCTIONS}
        reference_envs = min(settings.reference_episodes, MAX_PROBE_ENVS)
        self.reference = EpisodeCollector(
            make_seed_envs(env, seeds, reference_envs, device, stream="reference_env"),
            sampler, SeedNoise(seeds, device, "reference_actions"),
            settings.reference_episodes, device, ready_fraction=1.0)
        parts = settings.noise_batches
        noise_actions = SeedNoise(seeds, device, "noise_actions")
        if batch_shape.episodes is not None:
            noise_envs = min(parts * batch_shape.episodes, MAX_PROBE_ENVS)
            self.noise: EpisodeCollector | StepCollector = EpisodeCollector(
                make_seed_envs(env, seeds, noise_envs, device, stream="noise_env"), sampler,
                noise_actions, parts * batch_shape.episodes, device, ready_fraction=1.0)
        else:
            envs = make_seed_envs(env, seeds, parts * batch_shape.num_envs, device,
                                  stream="noise_env")
            self.noise = StepCollector(envs, sampler, noise_actions,
                                       parts * batch_shape.num_envs * batch_shape.steps_per_env,
                                       device)

    def measure(self, batch: Batch, env_steps: np.ndarray, updates_done: np.ndarray) -> None:
        """Probe the slots of `batch` (those that train on it, `batch.ready`) that are due,
        before their update; `env_steps` and `updates_done` are the loop's per-slot counts."""
        ready = batch.ready.cpu().numpy()
        due = ready & (self.batches_seen % self.settings.every == 0)
        self.batches_seen += ready
        if not due.any():
            return
        row_slots = batch.slots.cpu().numpy()
        probed_rows = torch.as_tensor(np.flatnonzero(due[row_slots]), device=self.device)
        training = take_rows(batch, probed_rows)
        rows = training.slots  # [R] slot indices, ascending
        index = rows.cpu().numpy()

        with only_slots(rows, *self.modules):
            training, advantages = self.advantages(training)  # the steps it trains on
        reference = self._reference_gradients(due)[rows]
        probes = self.gradients(training, advantages, self._per_reduction(rows, PROBE_REDUCTIONS))
        noise_names = sorted(set(NOISE_SOURCE.values()))
        noise = [self._gradients(part, noise_names) for part in self._noise_batches(due)]
        reference_step = self._would_step(reference, rows)

        columns: dict[str, list[np.ndarray]] = {}

        def add(**values: Any) -> None:
            for name, value in values.items():
                columns.setdefault(name, []).append(np.asarray(value))

        lengths = trajectory_lengths(training.valid, training.trajectory)
        batch_steps = training.valid.sum(dim=1).cpu().numpy()
        batch_trajectories = (lengths > 0).sum(dim=1).cpu().numpy()
        spread = length_spread(training.valid, training.trajectory).cpu().numpy()
        learning_rate = self.optimizer.learning_rate[rows].cpu().numpy()
        reference_norm = reference.to(torch.float64).norm(dim=1)
        for name in PROBE_REDUCTIONS:
            gradient = probes[name]
            stacked = torch.stack([part[NOISE_SOURCE[name]] for part in noise])
            add(
                slot=index,
                probe_reduction=np.full(len(index), name, dtype=object),
                update=updates_done[index],
                env_step=env_steps[index],
                learning_rate=learning_rate,
                batch_steps=batch_steps,
                batch_trajectories=batch_trajectories,
                batch_length_std=spread,
                grad_cosine=cosine(gradient, reference).cpu().numpy(),
                grad_norm_ratio=(gradient.to(torch.float64).norm(dim=1)
                                 / reference_norm).cpu().numpy(),
                reference_norm=reference_norm.cpu().numpy(),
                step_cosine=cosine(self._would_step(gradient, rows),
                                   reference_step).cpu().numpy(),
                noise_cosine=mean_pairwise_cosine(stacked).cpu().numpy(),
                noise_trace=covariance_trace(stacked).cpu().numpy(),
            )
        merged = {name: np.concatenate(values) for name, values in columns.items()}
        slot_index = merged.pop("slot")
        self.recorder.add_diagnostics(slot_index, merged)

    def _gradients(self, batch: Batch, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Each named probe reduction's gradient on `batch` (prepared the algorithm's way for
        its rows' slots): ``[R, P_policy]`` each."""
        with only_slots(batch.slots, *self.modules):
            batch, advantages = self.advantages(batch)
        return self.gradients(batch, advantages, self._per_reduction(batch.slots, names))

    def _per_reduction(self, rows: torch.Tensor, names: Sequence[str]
                       ) -> dict[str, SlotReductions]:
        """The named probe reductions of the slots ``rows [R]``."""
        return {name: SlotReductions(tuple(self.probe_reductions[name][i] for i in rows.tolist()))
                for name in names}

    def _reference_gradients(self, due: np.ndarray) -> torch.Tensor:
        """g* of every slot ``[S, P_policy]`` (rows of slots not `due` are zero): traj_mean
        over M fresh whole episodes of each due slot."""
        reference = torch.zeros((len(self.slots), int(self.columns.sum())),
                                device=self.device)
        remaining, starting = due.copy(), due
        while remaining.any():
            batch, _ = self.reference.collect(starting)
            starting = np.zeros_like(due)
            if len(batch.slots):
                gradient = self._gradients(batch, ["traj_mean"])["traj_mean"]
                reference[batch.slots] = gradient
                remaining[batch.slots.cpu().numpy()] = False
        return reference

    def _noise_batches(self, due: np.ndarray) -> list[Batch]:
        """B independent training-sized batches of the due slots (rows for those only)."""
        parts = self.settings.noise_batches
        if isinstance(self.noise, StepCollector):
            batch, _ = self.noise.collect(due)
            rows = torch.as_tensor(np.flatnonzero(due), device=self.device)
            return split_blocks(take_rows(batch, rows), parts)
        groups: list[Batch] = []
        remaining, starting = due.copy(), due
        while remaining.any():
            batch, _ = self.noise.collect(starting)
            starting = np.zeros_like(due)
            if len(batch.slots):
                groups.append(batch)
                remaining[batch.slots.cpu().numpy()] = False
        # One batch of all due rows, then its B parts of `episodes` consecutive episodes.
        whole = _concat_rows(groups)
        episode_group = torch.div(whole.trajectory, self.batch_shape.episodes,
                                  rounding_mode="floor")
        return [select_steps(whole, whole.valid & (episode_group == part))
                for part in range(parts)]

    def _would_step(self, gradient: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The optimiser's would-be parameter change on the policy gradient ``[R, P_policy]``
        of the slots `rows` (their policy columns, ``[R, P_policy]``)."""
        full = torch.zeros_like(self.optimizer.flat_params)
        full[rows.unsqueeze(1), self.columns.nonzero().flatten()] = gradient.to(full.dtype)
        return self.optimizer.trial_step(full)[rows][:, self.columns]


def _concat_rows(batches: Sequence[Batch]) -> Batch:
    """One-block episode batches of disjoint rows as one batch, rows in slot order."""
    if len(batches) == 1:
        return batches[0]
    width = max(b.valid.shape[1] for b in batches)

    def pad(values: torch.Tensor) -> torch.Tensor:
        extra = width - values.shape[1]
        if not extra:
            return values
        return torch.cat([values, values.new_zeros((values.shape[0], extra,
                                                    *values.shape[2:]))], dim=1)

    slots = torch.cat([b.slots for b in batches])
    order = torch.argsort(slots)
    fields = {name: torch.cat([pad(getattr(b, name)) for b in batches]).index_select(0, order)
              for name in ("obs", "next_obs", "actions", "log_probs", "rewards", "valid",
                           "trajectory", "last", "terminated", "truncated", "cut")}
    ready = batches[0].ready.clone()
    for b in batches[1:]:
        ready |= b.ready
    return replace(batches[0], **fields, slots=slots.index_select(0, order), ready=ready)


def make_probe(slots: Slots, recorder: Any, optimizer: SlotOptimizer,
               **parts: Any) -> GradientProbe | None:
    """The probe of a pack when its config turns diagnostics on (`GradientProbe`'s keyword
    arguments), else None."""
    settings = DiagnosticsSettings.of(slots.config)
    if settings is None:
        return None
    return GradientProbe(slots, settings, recorder, optimizer, **parts)

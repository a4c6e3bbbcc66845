"""SlotOptimizer: flat-buffer views, each slot against torch.optim on that slot alone, bitwise
independence from the other slots, skipping, divergence, and the sync-free path."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from host_sync import ForbidHostSync

from bench.networks import ActorCritic
from bench.optim import SlotOptimizer

# Per optimiser case, the config of each of 4 slots: every hyperparameter differs per slot.
CASES = {
    "sgd": [{"name": "sgd", "lr": lr, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}
            for lr in (0.1, 0.03, 0.2, 0.05)],
    "sgd_momentum": [
        {"name": "sgd", "lr": lr, "momentum": momentum, "nesterov": False, "weight_decay": wd}
        for lr, momentum, wd in ((0.1, 0.9, 0.0), (0.03, 0.0, 0.01), (0.2, 0.5, 0.0),
                                 (0.05, 0.99, 0.1))
    ],
    "sgd_nesterov": [
        {"name": "sgd", "lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": wd}
        for lr, momentum, nesterov, wd in ((0.1, 0.9, True, 0.0), (0.03, 0.5, False, 0.01),
                                           (0.2, 0.0, False, 0.0), (0.05, 0.8, True, 0.1))
    ],
    "adam": [
        {"name": "adam", "lr": lr, "betas": betas, "eps": eps, "weight_decay": wd}
        for lr, betas, eps, wd in ((1e-3, [0.9, 0.999], 1e-8, 0.0), (3e-2, [0.5, 0.9], 1e-5, 0.01),
                                   (1e-2, [0.0, 0.99], 1e-3, 0.0),
                                   (2.5e-4, [0.95, 0.9999], 1e-8, 0.1))
    ],
    "rmsprop": [
        {"name": "rmsprop", "lr": lr, "alpha": alpha, "eps": eps, "momentum": momentum,
         "weight_decay": wd}
        for lr, alpha, eps, momentum, wd in ((7e-4, 0.99, 1e-5, 0.0, 0.0),
                                             (1e-2, 0.9, 1e-8, 0.9, 0.0),
                                             (1e-3, 0.5, 1e-3, 0.5, 0.01),
                                             (3e-3, 0.999, 1e-5, 0.0, 0.0))
    ],
    "rmsprop_plain": [
        {"name": "rmsprop", "lr": lr, "alpha": alpha, "eps": 1e-5, "momentum": 0.0,
         "weight_decay": 0.0}
        for lr, alpha in ((7e-4, 0.99), (1e-2, 0.9), (1e-3, 0.5), (3e-3, 0.999))
    ],
}
MAX_NORMS = [0.5, None, 2.0, 1.0]
SHAPES = [(3, 5), (1, 5), (4,)]  # per-slot shapes: a weight, a bias, a log-std


def slot_parameters(num_slots: int, seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(num_slots, *shape, generator=generator))
            for shape in SHAPES]


def torch_optimizer(params: list[torch.Tensor], cfg: dict) -> torch.optim.Optimizer:
    """torch.optim's single-tensor implementation with a slot's config."""
    options = {key: value for key, value in cfg.items() if key != "name"}
    if cfg["name"] == "adam":
        options["betas"] = tuple(options["betas"])
    optimizer = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam,
                 "rmsprop": torch.optim.RMSprop}[cfg["name"]]
    return optimizer(params, **options, foreach=False)


def set_grads(optimizer: SlotOptimizer, params: list[torch.nn.Parameter],
              grads: list[torch.Tensor]) -> None:
    optimizer.zero_grad()
    for param, grad in zip(params, grads, strict=True):
        param.grad.copy_(grad)


@pytest.mark.parametrize("case", list(CASES))
def test_each_slot_matches_torch_optim_on_that_slot_alone(case: str) -> None:
    cfgs, num_slots, steps = CASES[case], 4, 6
    params = slot_parameters(num_slots)
    singles = [[p[s].detach().clone().requires_grad_() for p in params] for s in range(num_slots)]
    optimizer = SlotOptimizer(params, cfgs, MAX_NORMS)
    references = [torch_optimizer(single, cfg) for single, cfg in zip(singles, cfgs, strict=True)]
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        # Gradient norms around the max norms: some slots are clipped, some not.
        grads = [torch.randn(p.shape, generator=generator) * 0.7 for p in params]
        skip = torch.zeros(num_slots, dtype=torch.bool)
        if step == 2:
            skip[2] = True
        if step == 3:  # per-slot annealing, as the training loops do
            fraction = torch.tensor([0.5, 0.25, 1.0, 0.75], dtype=torch.float64)
            optimizer.set_learning_rate(optimizer.base_learning_rate * fraction)
            for reference, cfg, frac in zip(references, cfgs, fraction.tolist(), strict=True):
                reference.param_groups[0]["lr"] = cfg["lr"] * frac
        set_grads(optimizer, params, grads)
        grad_norm, diverged = optimizer.step(torch.zeros(num_slots), skip=skip)
        assert not diverged.any()
        for s, (single, reference) in enumerate(zip(singles, references, strict=True)):
            for tensor, grad in zip(single, grads, strict=True):
                tensor.grad = grad[s].clone()
            expected_norm = torch.linalg.vector_norm(
                torch.cat([g[s].flatten() for g in grads]).double())
            torch.testing.assert_close(grad_norm[s], expected_norm, rtol=1e-12, atol=0)
            if skip[s]:
                continue
            if MAX_NORMS[s] is not None:
                torch.nn.utils.clip_grad_norm_(single, MAX_NORMS[s], foreach=False)
            reference.step()
        for s, (single, reference) in enumerate(zip(singles, references, strict=True)):
            for param, tensor in zip(params, single, strict=True):
                torch.testing.assert_close(param[s], tensor, rtol=1e-6, atol=1e-7)
            assert_state_matches(optimizer, s, reference, single)
    assert optimizer.step_count.tolist() == [steps, steps, steps - 1, steps]
    torch.testing.assert_close(
        optimizer.learning_rate, torch.tensor([cfg["lr"] for cfg in cfgs], dtype=torch.float64)
        * torch.tensor([0.5, 0.25, 1.0, 0.75], dtype=torch.float64), rtol=0, atol=0)


def assert_state_matches(optimizer: SlotOptimizer, slot: int, reference: torch.optim.Optimizer,
                         single: list[torch.Tensor]) -> None:
    """The slot's moments / buffers are torch.optim's state of that slot (where torch has it)."""
    names = {"adam": ("exp_avg", "exp_avg_sq"), "sgd": ("momentum_buffer",),
             "rmsprop": ("square_avg", "momentum_buffer")}[optimizer.name]
    for index, name in enumerate(names[: len(optimizer._state)]):
        flat = optimizer._state[index][slot]
        offsets = torch.tensor([0] + [t.numel() for t in single]).cumsum(0).tolist()
        for tensor, start, stop in zip(single, offsets[:-1], offsets[1:], strict=True):
            value = reference.state[tensor].get(name)
            if value is not None:
                # float32 state after several steps of differently ordered (and, on AVX512
                # machines, differently fused) operations: a few tens of ulps apart.
                torch.testing.assert_close(flat[start:stop].view(tensor.shape), value,
                                           rtol=1e-5, atol=1e-6)


@contextmanager
def threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# Large enough per slot to run the kernels' vectorised bodies and, with S=7 and 2 threads, to
# split the rows of a buffer between threads at places that depend on S.
BIG_SHAPES = [(100, 61), (1, 61), (5,)]


@pytest.mark.parametrize("case", ["sgd", "sgd_nesterov", "adam", "rmsprop"])
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("rows_per_block", [None, 2])
def test_a_slot_steps_bitwise_the_same_whatever_the_other_slots(
    case: str, num_threads: int, sync_free: bool, rows_per_block: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slot data alone (S=1) and as row 3 of S=7 (other rows random, other hyperparameters,
    other clipping, one of them diverging), with clipping, skips and an lr change; the CPU
    update in its default row blocks (S=7 is one block here) and in blocks of 2 rows (the
    slot the second row of the second block, the last block a single row)."""
    if rows_per_block is not None:
        per_slot = sum(math.prod(shape) for shape in BIG_SHAPES)
        monkeypatch.setattr("bench.optim.CPU_BLOCK_ELEMENTS", rows_per_block * per_slot)
    target, others = CASES[case][0], CASES[case][1:]
    cfgs7 = [others[s % 3] for s in range(3)] + [target] + [others[s % 3] for s in range(3)]
    max_norms7 = [1.0, None, 0.3, 0.5, 2.0, None, 0.1]
    generator = torch.Generator().manual_seed(2)
    rows = [torch.randn(7, *shape, generator=generator) for shape in BIG_SHAPES]
    alone = [torch.nn.Parameter(r[3:4].clone()) for r in rows]
    packed = [torch.nn.Parameter(r.clone()) for r in rows]
    with threads(num_threads):
        opt1 = SlotOptimizer(alone, [target], [0.5])
        opt7 = SlotOptimizer(packed, cfgs7, max_norms7)
        assert len(opt7._row_blocks) == (1 if rows_per_block is None else 4)
        opt7._sync_free = sync_free
        for step in range(6):
            grads = [torch.randn(r.shape, generator=generator) * 0.01 * (1 + 30 * (step % 2))
                     for r in rows]
            if step == 1:
                for grad in grads:
                    grad[5] = float("nan")  # slot 5 diverges
            skip7 = torch.zeros(7, dtype=torch.bool)
            skip7[[0, 6]] = step == 3
            skip7[3] = step == 2
            if step == 4:
                fraction = torch.linspace(0.1, 1.0, 7, dtype=torch.float64)
                fraction[3] = 0.3
                opt1.set_learning_rate(opt1.base_learning_rate * 0.3)
                opt7.set_learning_rate(opt7.base_learning_rate * fraction)
            set_grads(opt1, alone, [g[3:4] for g in grads])
            set_grads(opt7, packed, grads)
            loss = torch.randn(7, generator=generator)
            norm1, new1 = opt1.step(loss[3:4], skip=skip7[3:4])
            norm7, new7 = opt7.step(loss, skip=skip7)
            assert torch.equal(norm1[0], norm7[3])
            assert new1[0] == new7[3] and not new1[0]
            assert new7[5] == (step == 1)
            assert torch.equal(opt1.flat_params[0], opt7.flat_params[3])
            # (opt7 may hold a state opt1 does not need, e.g. momentum for other slots)
            for state1, state7 in zip(opt1._state, opt7._state, strict=False):
                assert torch.equal(state1[0], state7[3])
            assert torch.equal(opt1._counters[0], opt7._counters[3])
    for param1, param7 in zip(alone, packed, strict=True):
        assert torch.equal(param1[0], param7[3])


def actor_critic(num_slots: int, shared: bool) -> ActorCritic:
    return ActorCritic(seeds=list(range(num_slots)), obs_dim=4, action_dim=2, discrete=False,
                       hidden_sizes=[8, 8], activation="tanh", init_log_std=0.0, shared=shared)


@pytest.mark.parametrize("shared", [False, True])
def test_parameters_stay_contiguous_and_every_step_reaches_the_modules(shared: bool) -> None:
    net = actor_critic(3, shared).to("cpu")  # on its device before the optimiser, as the loops
    reference = copy.deepcopy(net)
    optimizer = SlotOptimizer(net.parameters(), CASES["adam"][:3], [0.5, None, 1.0])
    obs = torch.randn(3, 5, 4)
    for a, b in zip(net.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b) and a.is_contiguous()
    views = [param.grad for param in net.parameters()]
    for _ in range(2):  # gradients accumulate in place over backward passes
        for model in (net, reference):
            distribution, value = model(obs)
            (distribution.log_prob(distribution.mean + 0.3).sum() + value.pow(2).sum()).backward()
    for param, view, expected in zip(net.parameters(), views, reference.parameters(),
                                     strict=True):
        assert param.grad is view  # autograd accumulated into the gradient, did not replace it
        torch.testing.assert_close(param.grad, expected.grad, rtol=1e-6, atol=1e-7)
    # ... and the gradients are views of the optimiser's flat buffer: nothing to gather
    expected_flat = torch.cat([p.grad.reshape(3, -1) for p in reference.parameters()], dim=1)
    torch.testing.assert_close(optimizer.flat_grads, expected_flat, rtol=1e-6, atol=1e-7)
    optimizer.step(torch.zeros(3))
    flat_params = torch.cat([p.detach().reshape(3, -1) for p in net.parameters()], dim=1)
    assert torch.equal(flat_params, optimizer.flat_params)  # the modules see the update
    optimizer.zero_grad()
    assert not any(param.grad.any() for param in net.parameters())
    assert all(param.grad is view for param, view in zip(net.parameters(), views, strict=True))
    assert all(param.is_contiguous() for param in net.parameters())


def test_grads_replaced_or_set_to_none_are_copied_back() -> None:
    params = slot_parameters(2)
    optimizer = SlotOptimizer(params, CASES["sgd"][:2], [None, None])
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    twin_optimizer = SlotOptimizer(twins, CASES["sgd"][:2], [None, None])
    grads = [torch.randn(p.shape) for p in params]
    params[0].grad = grads[0].clone()  # replaced by a new tensor
    params[1].grad = None  # as Module.zero_grad() does
    params[2].grad.copy_(grads[2])
    set_grads(twin_optimizer, twins, [grads[0], torch.zeros_like(grads[1]), grads[2]])
    optimizer.step(torch.zeros(2))
    twin_optimizer.step(torch.zeros(2))
    assert torch.equal(optimizer.flat_params, twin_optimizer.flat_params)


def test_a_diverged_slot_keeps_its_parameters_state_and_step_count_for_good() -> None:
    params = slot_parameters(3)
    optimizer = SlotOptimizer(params, CASES["adam"][:3], [0.5, 0.5, None])
    set_grads(optimizer, params, [torch.randn(p.shape) for p in params])
    optimizer.step(torch.zeros(3))
    before = optimizer._buffers.clone(), optimizer._counters.clone()
    for step in range(3):
        grads = [torch.randn(p.shape) for p in params]
        if step == 0:
            grads[1][2, 0] = float("inf")  # slot 2: a non-finite gradient
        set_grads(optimizer, params, grads)
        loss = torch.tensor([0.0, float("nan") if step == 0 else 0.0, 0.0])  # slot 1: the loss
        _, diverged = optimizer.step(loss)
        assert diverged.tolist() == ([False, True, True] if step == 0 else [False] * 3)
    assert optimizer.diverged.tolist() == [False, True, True]
    assert torch.equal(optimizer._buffers[:, 1:], before[0][:, 1:])
    assert torch.equal(optimizer._counters[1:], before[1][1:])
    assert not torch.equal(optimizer._buffers[:, 0], before[0][:, 0])
    assert optimizer.step_count.tolist() == [4, 1, 1]


def test_parameters_that_overflow_mark_the_slot_diverged_and_are_kept() -> None:
    params = slot_parameters(2)
    cfgs = [dict(CASES["sgd"][0], lr=lr) for lr in (0.1, 1e38)]
    optimizer = SlotOptimizer(params, cfgs, [None, None])
    set_grads(optimizer, params, [torch.full(p.shape, 10.0) for p in params])
    _, diverged = optimizer.step(torch.zeros(2))
    assert diverged.tolist() == [False, True]
    assert torch.isinf(optimizer.flat_params[1]).all()
    kept = optimizer.flat_params.clone()
    _, diverged = optimizer.step(torch.zeros(2))
    assert not diverged.any()
    assert torch.equal(optimizer.flat_params[1], kept[1])
    assert not torch.equal(optimizer.flat_params[0], kept[0])


def test_the_sync_free_step_makes_no_host_synchronisation() -> None:
    params = slot_parameters(3)
    optimizer = SlotOptimizer(params, CASES["adam"][:3], [0.5, None, 1.0])
    optimizer._sync_free = True  # the path taken off the CPU
    set_grads(optimizer, params, [torch.randn(p.shape) for p in params])
    with ForbidHostSync():
        optimizer.zero_grad()
        optimizer.step(torch.zeros(3), skip=torch.tensor([False, True, False]))
    assert optimizer.step_count.tolist() == [1, 0, 1]


def test_bad_configs_are_refused_with_what_was_found() -> None:
    params = slot_parameters(2)
    with pytest.raises(ValueError, match=r"\['adam', 'sgd'\]"):
        SlotOptimizer(params, [CASES["adam"][0], CASES["sgd"][0]], [None, None])
    with pytest.raises(ValueError, match="2 slots but 3 optim configs"):
        SlotOptimizer(params, CASES["sgd"][:3], [None, None, None])
    with pytest.raises(ValueError, match="unknown optim 'lion'"):
        SlotOptimizer(params, [{"name": "lion"}] * 2, [None, None])
    with pytest.raises(ValueError, match="nesterov"):
        SlotOptimizer(params, [dict(CASES["sgd"][0], nesterov=True)] * 2, [None, None])
    with pytest.raises(ValueError, match="betas"):
        SlotOptimizer(params, [dict(CASES["adam"][0], betas=[0.9, 1.0])] * 2, [None, None])
    optimizer = SlotOptimizer(params, CASES["sgd"][:2], [None, None])
    with pytest.raises(ValueError, match=r"learning rate must be \[2\]"):
        optimizer.set_learning_rate(torch.ones(3, dtype=torch.float64))

"""Every row of DESIGN's reduction table, proved against its formula on ragged random data."""

from __future__ import annotations

import pytest
import torch

from bench import reductions
from bench.reductions import REDUCTIONS, Reduction

NUM_SEEDS, FEATURES = 3, 5


def ragged_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """valid/trajectory ``[S, M]`` with a different number of ragged trajectories per seed.

    Slots are padded at the end of each seed's row; trajectory ids are deliberately not
    consecutive (as with several sub-envs) to check weights use membership, not order.
    """
    lengths_per_seed = [[1, 7, 3], [12, 2, 2, 5], [4]]
    num_slots = max(sum(lengths) for lengths in lengths_per_seed) + 3
    valid = torch.zeros(NUM_SEEDS, num_slots, dtype=torch.bool)
    trajectory = torch.zeros(NUM_SEEDS, num_slots, dtype=torch.long)
    for s, lengths in enumerate(lengths_per_seed):
        ids = torch.randperm(num_slots, generator=generator)[: len(lengths)]
        position = 0
        for trajectory_id, length in zip(ids.tolist(), lengths, strict=True):
            valid[s, position : position + length] = True
            trajectory[s, position : position + length] = trajectory_id
            position += length
    return valid, trajectory, lengths_per_seed


def expected_weight(name: str, lengths: list[int], length: int, alpha: float, t_max: int) -> float:
    """The table's formula for one step of a trajectory of `length` in a seed's batch."""
    n, total = len(lengths), sum(lengths)
    return {
        "sum": 1.0,
        "per_step": 1.0,
        "mean": 1.0 / total,
        "traj_mean": 1.0 / n,
        "traj_step_mean": 1.0 / (n * length),
        "constant": 1.0 / (n * t_max),
        "length_power": length ** (-alpha) / n,
    }[name]


@pytest.mark.parametrize("name", REDUCTIONS)
def test_weights_equal_their_formula(name: str) -> None:
    valid, trajectory, lengths_per_seed = ragged_batch(torch.Generator().manual_seed(0))
    reduction = Reduction(name, alpha=0.7, max_length=500)
    weights = reductions.step_weights(reduction, valid, trajectory)
    for s, lengths in enumerate(lengths_per_seed):
        position = 0
        for length in lengths:
            expected = expected_weight(name, lengths, length, alpha=0.7, t_max=500)
            got = weights[s, position : position + length]
            torch.testing.assert_close(got, torch.full_like(got, expected))
            position += length
        assert torch.all(weights[s, position:] == 0), "padding slots must weigh nothing"


def test_length_power_interpolates_traj_mean_and_traj_step_mean() -> None:
    valid, trajectory, _ = ragged_batch(torch.Generator().manual_seed(1))
    for alpha, other in ((0.0, "traj_mean"), (1.0, "traj_step_mean")):
        power = reductions.step_weights(Reduction("length_power", alpha=alpha), valid, trajectory)
        torch.testing.assert_close(
            power, reductions.step_weights(Reduction(other), valid, trajectory)
        )


def test_seed_without_steps_gets_zero_weights() -> None:
    valid = torch.zeros(2, 4, dtype=torch.bool)
    valid[0, :2] = True
    trajectory = torch.zeros(2, 4, dtype=torch.long)
    for name in REDUCTIONS:
        weights = reductions.step_weights(Reduction(name, max_length=10), valid, trajectory)
        assert torch.all(weights[1] == 0) and torch.all(torch.isfinite(weights))


class TinyModel(torch.nn.Module):
    """Seed-batched per-step loss: l[s, m] = (x[s, m] . theta[s])^2 + x[s, m] . theta[s]."""

    def __init__(self, inputs: torch.Tensor) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(
            torch.linspace(-1, 1, NUM_SEEDS * FEATURES).view(NUM_SEEDS, FEATURES)
        )
        self.inputs = inputs

    def step_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        projection = (batch["inputs"] * self.theta[:, None, :]).sum(-1)
        return {"loss": projection.pow(2) + projection}


def gradient(name: str, inputs: torch.Tensor, valid: torch.Tensor, trajectory: torch.Tensor):
    model = TinyModel(inputs)
    reduction = Reduction(name, alpha=0.5, max_length=50)
    weights = reductions.step_weights(reduction, valid, trajectory)
    reduced, _ = reductions.backward(reduction, model.step_losses, {"inputs": inputs}, weights)
    return model.theta.grad.clone(), reduced


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    valid, trajectory, _ = ragged_batch(generator)
    inputs = torch.randn(NUM_SEEDS, valid.shape[1], FEATURES, generator=generator)
    return inputs, valid, trajectory


def test_per_step_loop_gradient_equals_sum_gradient(data) -> None:
    sum_grad, sum_loss = gradient("sum", *data)
    loop_grad, loop_loss = gradient("per_step", *data)
    torch.testing.assert_close(loop_grad, sum_grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loop_loss, sum_loss, rtol=1e-5, atol=1e-6)


def test_per_step_really_loops_backward(data, monkeypatch) -> None:
    inputs, valid, trajectory = data
    calls = []
    original = torch.Tensor.backward
    monkeypatch.setattr(
        torch.Tensor, "backward", lambda self, *a, **k: (calls.append(1), original(self, *a, **k))
    )
    gradient("per_step", inputs, valid, trajectory)
    slots_used = int(valid.any(dim=0).sum())
    assert len(calls) == slots_used > 1


def test_mean_is_sum_over_total_steps_and_traj_mean_is_sum_over_n(data) -> None:
    inputs, valid, trajectory = data
    sum_grad, _ = gradient("sum", *data)
    total_steps = valid.sum(dim=1).to(sum_grad.dtype)
    num_trajectories = torch.tensor([3.0, 4.0, 1.0])
    mean_grad, _ = gradient("mean", *data)
    traj_grad, _ = gradient("traj_mean", *data)
    torch.testing.assert_close(mean_grad, sum_grad / total_steps[:, None])
    torch.testing.assert_close(traj_grad, sum_grad / num_trajectories[:, None])


@pytest.mark.parametrize("name", REDUCTIONS)
def test_seeds_do_not_leak(name: str, data) -> None:
    inputs, valid, trajectory = data
    before, _ = gradient(name, inputs, valid, trajectory)
    changed = inputs.clone()
    changed[1] = changed[1] * 3.0 + 1.0
    after, _ = gradient(name, changed, valid, trajectory)
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]], rtol=0, atol=0)
    assert not torch.allclose(after[1], before[1])


def test_each_slot_gets_its_own_reductions_weights() -> None:
    """One reduction per slot: each row equals that reduction's weights computed alone."""
    valid, trajectory, _ = ragged_batch(torch.Generator().manual_seed(4))
    per_slot = [Reduction("length_power", alpha=0.3), Reduction("mean"),
                Reduction("constant", max_length=7)]
    mixed = reductions.step_weights(per_slot, valid, trajectory)
    for s, reduction in enumerate(per_slot):
        alone = reductions.step_weights(reduction, valid[s : s + 1], trajectory[s : s + 1])
        assert torch.equal(mixed[s : s + 1], alone)
    with pytest.raises(ValueError, match="per_step"):
        reductions.SlotReductions((Reduction("per_step"), Reduction("sum")))


def test_slot_sum_does_not_depend_on_padding() -> None:
    """Zeros appended to a row (another slot's longer batch) leave its sum bit for bit."""
    values = torch.randn(3, 135, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = reductions.slot_sum(values)
    for width in (136, 200, 640):
        padded = torch.nn.functional.pad(values, (0, width - 135))
        assert torch.equal(reductions.slot_sum(padded), expected)
    torch.testing.assert_close(expected, values.sum(dim=1))


def test_unknown_reduction_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown reduction 'median'.*traj_step_mean"):
        Reduction("median")
    with pytest.raises(ValueError, match="max_length"):
        Reduction("constant", max_length=None)

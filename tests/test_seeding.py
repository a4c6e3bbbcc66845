"""Counter-based per-seed random streams: independence from the job, pausing, batching,
and the quality of the numbers (fixed keys, so these checks are deterministic)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from bench.seeding import CounterStreams, SeedNoise, mix32


def test_a_seeds_noise_does_not_depend_on_the_other_seeds_of_the_job() -> None:
    alone = SeedNoise([7], "cpu").uniform((3,), torch.tensor([True]), draws=5)
    together = SeedNoise([1, 7, 2], "cpu").uniform((3,), torch.ones(3, dtype=torch.bool),
                                                   draws=5)
    torch.testing.assert_close(alone[0], together[1], rtol=0, atol=0)


def test_a_paused_seed_keeps_its_stream_where_it_was() -> None:
    noise = SeedNoise([0, 1], "cpu")
    first = noise.uniform((2,), torch.tensor([True, False]))
    second = noise.uniform((2,), torch.tensor([True, True]))
    fresh = SeedNoise([0, 1], "cpu").uniform((2,), torch.ones(2, dtype=torch.bool), draws=2)
    torch.testing.assert_close(second[1, 0], fresh[1, 0], rtol=0, atol=0)  # seed 1 paused once
    torch.testing.assert_close(first[0, 0], fresh[0, 0], rtol=0, atol=0)
    torch.testing.assert_close(second[0, 0], fresh[0, 1], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_drawing_many_steps_at_once_gives_the_step_by_step_numbers(kind: str) -> None:
    drawing = torch.ones(4, dtype=torch.bool)
    batched = getattr(SeedNoise(range(4), "cpu"), kind)((3, 2), drawing, draws=6)
    one_by_one = SeedNoise(range(4), "cpu")
    stepwise = torch.cat([getattr(one_by_one, kind)((3, 2), drawing) for _ in range(6)], dim=1)
    torch.testing.assert_close(batched, stepwise, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_noise_handed_out_step_by_step_from_blocks_is_the_same(kind: str) -> None:
    """`SeedNoise.step` (blocks of draws, seeds pausing, across refills, mixed with direct
    draws) gives each seed the numbers of its stream in order, as direct draws do."""
    rng = np.random.default_rng(0)
    patterns = [torch.as_tensor(rng.random(3) < 0.6) for _ in range(3 * SeedNoise.BLOCK + 5)]
    blocked, direct = SeedNoise([4, 5, 6], "cpu"), SeedNoise([4, 5, 6], "cpu")
    for index, drawing in enumerate(patterns):
        if index == 40:  # a direct multi-step draw in between
            torch.testing.assert_close(getattr(blocked, kind)((2,), drawing, draws=3),
                                       getattr(direct, kind)((2,), drawing, draws=3))
        got = blocked.step(kind, (2,), drawing)
        want = getattr(direct, kind)((2,), drawing)[:, 0]
        torch.testing.assert_close(got[drawing], want[drawing], rtol=0, atol=0)


def test_uniforms_are_uniform_and_independent_across_draws_and_seeds() -> None:
    u = SeedNoise(range(64), "cpu").uniform((4,), torch.ones(64, dtype=torch.bool),
                                            draws=1000).double()
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert scipy.stats.kstest(u.flatten().numpy(), "uniform").pvalue > 0.01
    per_seed = u.reshape(64, -1).numpy()
    assert abs(np.corrcoef(per_seed[:, :-1].ravel(), per_seed[:, 1:].ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(per_seed[:-1].ravel(), per_seed[1:].ravel())[0, 1]) < 0.01
    # Consecutive draws of one element: 16 x 16 cells of pairs are equally likely.
    cells = (u[:, :-1, 0] * 16).long() * 16 + (u[:, 1:, 0] * 16).long()
    counts = torch.bincount(cells.flatten(), minlength=256).numpy()
    assert scipy.stats.chisquare(counts).pvalue > 0.01


def test_normals_are_standard_normal() -> None:
    z = SeedNoise(range(32), "cpu").normal((2,), torch.ones(32, dtype=torch.bool), draws=2000)
    assert scipy.stats.kstest(z.flatten().double().numpy(), "norm").pvalue > 0.01
    assert torch.isfinite(z).all()


def test_the_hash_is_a_bijection_with_full_avalanche() -> None:
    inputs = torch.arange(1 << 20, dtype=torch.int64)
    assert torch.unique(mix32(inputs)).numel() == inputs.numel()
    x = torch.randint(0, 2**32, (20000,), dtype=torch.int64,
                      generator=torch.Generator().manual_seed(0))
    for bit in (0, 7, 16, 31):
        flipped = mix32(x) ^ mix32(x ^ (1 << bit))
        mean_flips = sum(((flipped >> k) & 1).sum().item() for k in range(32)) / len(x)
        assert abs(mean_flips - 16) < 0.2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_uniforms_are_the_same_on_cuda() -> None:
    cpu = CounterStreams.for_seeds(range(5), "env", "cpu", rows_per_seed=2).uniform((3,))
    cuda = CounterStreams.for_seeds(range(5), "env", "cuda", rows_per_seed=2).uniform((3,))
    torch.testing.assert_close(cpu, cuda.cpu(), rtol=0, atol=0)

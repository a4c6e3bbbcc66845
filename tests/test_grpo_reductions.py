"""The suite's reductions against the loss aggregations of TRL's GRPOTrainer (``loss_type``)
and verl (``loss_agg_mode``), each formula written out here from those projects' code, on
random per-token losses; and GRPO's group-relative advantages on a hand-made group.

A batch of GRPO responses is laid out as the reductions expect: per slot, the B responses'
tokens flattened to M = B * T positions, ``valid`` = the completion mask, and the trajectory id
of a token = the index of its response.
"""

from __future__ import annotations

import pytest
import torch

from bench.advantages import group_advantages
from bench.reductions import Reduction, step_weights

SLOTS, RESPONSES, MAX_COMPLETION_LENGTH = 3, 8, 12


def random_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses ``[S, B, T]`` (float64) and a completion mask with lengths 1..T."""
    generator = torch.Generator().manual_seed(seed)
    losses = torch.randn(SLOTS, RESPONSES, MAX_COMPLETION_LENGTH, generator=generator,
                         dtype=torch.float64)
    lengths = torch.randint(1, MAX_COMPLETION_LENGTH + 1, (SLOTS, RESPONSES), generator=generator)
    mask = torch.arange(MAX_COMPLETION_LENGTH) < lengths[..., None]
    return losses, mask


def suite_loss(reduction: Reduction, losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each slot's reduced loss ``sum_m w[s, m] * l[s, m]`` ``[S]``, as `bench.reductions`
    weighs the flattened responses."""
    trajectory = torch.arange(RESPONSES).repeat_interleave(MAX_COMPLETION_LENGTH)
    trajectory = trajectory.expand(SLOTS, -1).contiguous()
    weights = step_weights(reduction, mask.flatten(1), trajectory)
    return (weights * losses.flatten(1)).sum(dim=1)


# Per slot (one slot = one trainer's batch): TRL's formulas for one process without gradient
# accumulation (there dapo's num_items_in_batch is the batch's completion-token count), and
# verl's agg_loss. ``loss``: [B, T] per-token losses, ``mask``: [B, T] completion mask.
def trl_grpo(loss, mask):
    return ((loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def trl_bnpo(loss, mask):
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def trl_dr_grpo(loss, mask):
    return (loss * mask).sum() / (loss.size(0) * MAX_COMPLETION_LENGTH)


def trl_dapo(loss, mask):
    num_items_in_batch = mask.sum()
    return (loss * mask).sum() / num_items_in_batch


def verl_token_mean(loss, mask):
    return (loss * mask).sum() / mask.sum()


def verl_seq_mean_token_sum(loss, mask):
    return (loss * mask).sum(-1).mean()


def verl_seq_mean_token_mean(loss, mask):
    return ((loss * mask).sum(-1) / mask.sum(-1)).mean()


def per_token_sum(loss, mask):
    return (loss * mask).sum()


MATCHES = [
    ("trl grpo", trl_grpo, Reduction("traj_step_mean")),
    ("trl bnpo", trl_bnpo, Reduction("mean")),
    ("trl dapo", trl_dapo, Reduction("mean")),
    ("trl dr_grpo", trl_dr_grpo, Reduction("constant", max_length=MAX_COMPLETION_LENGTH)),
    ("verl token-mean", verl_token_mean, Reduction("mean")),
    ("verl seq-mean-token-sum", verl_seq_mean_token_sum, Reduction("traj_mean")),
    ("verl seq-mean-token-mean", verl_seq_mean_token_mean, Reduction("traj_step_mean")),
    ("sum of token losses", per_token_sum, Reduction("sum")),
]


@pytest.mark.parametrize(("name", "formula", "reduction"), MATCHES, ids=[m[0] for m in MATCHES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reduction_equals_the_projects_formula(name, formula, reduction, seed) -> None:
    losses, mask = random_batch(seed)
    expected = torch.stack([formula(losses[s], mask[s].to(losses.dtype)) for s in range(SLOTS)])
    torch.testing.assert_close(suite_loss(reduction, losses, mask), expected, rtol=1e-12,
                               atol=1e-12)


def test_formulas_differ_where_lengths_differ() -> None:
    """The matches above are not vacuous: on unequal lengths the aggregations disagree."""
    losses, mask = random_batch(0)
    values = {name: suite_loss(reduction, losses, mask)[0].item()
              for name, _, reduction in MATCHES}
    distinct = {round(v, 9) for v in values.values()}
    assert len(distinct) == 5  # sum, mean, traj_mean, traj_step_mean, constant


def test_length_power_is_between_seq_mean_token_sum_and_token_mean() -> None:
    """length_power (alpha) weighs a response's tokens by T_i^-alpha / N: alpha 0 is verl's
    seq-mean-token-sum and alpha 1 its seq-mean-token-mean."""
    losses, mask = random_batch(1)
    m = mask.to(losses.dtype)
    for alpha, formula in ((0.0, verl_seq_mean_token_sum), (1.0, verl_seq_mean_token_mean)):
        expected = torch.stack([formula(losses[s], m[s]) for s in range(SLOTS)])
        torch.testing.assert_close(
            suite_loss(Reduction("length_power", alpha=alpha), losses, mask), expected,
            rtol=1e-12, atol=1e-12)


def test_group_advantages_on_a_hand_made_group() -> None:
    rewards = torch.tensor([[[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]])  # [S=1, P=2, G=4]
    centred = torch.tensor([[[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]])
    torch.testing.assert_close(group_advantages(rewards, scale_by_std=False), centred)
    std = torch.tensor(1 / 3).sqrt()  # unbiased std of (1, 0, 0, 1)
    scaled = centred.clone()
    scaled[0, 0] /= std + 1e-4
    torch.testing.assert_close(group_advantages(rewards, scale_by_std=True), scaled)
    # A group that agrees gets zero advantage either way (no signal, no NaN).
    assert torch.equal(group_advantages(rewards, scale_by_std=True)[0, 1], torch.zeros(4))


def test_verl_seq_mean_token_sum_norm_is_constant_times_the_batch_size() -> None:
    """verl's Dr. GRPO mode divides the token sum by the mask's width T_max alone: `constant`
    (which also divides by N) times the fixed number of responses, a constant factor that
    Adam's update does not see and SGD's learning rate absorbs."""
    losses, mask = random_batch(2)
    m = mask.to(losses.dtype)
    expected = torch.stack([(losses[s] * m[s]).sum(-1).sum() / m.shape[-1]
                            for s in range(SLOTS)])
    constant = Reduction("constant", max_length=MAX_COMPLETION_LENGTH)
    torch.testing.assert_close(RESPONSES * suite_loss(constant, losses, mask), expected,
                               rtol=1e-12, atol=1e-12)

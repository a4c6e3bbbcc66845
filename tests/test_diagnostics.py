"""Gradient diagnostics (bench/diagnostics.py): tests with known truth, and through
`python -m bench.run`: the reference estimator against an analytic policy gradient, the
measures on hand-made gradients, the optimiser's would-be step, sum = per_step, mean's norm
ratio = N / sum T_i times traj_mean's, and training rows bit-identical with diagnostics on."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from bench import schema
from bench.config import ConfigError, check_config
from bench.diagnostics import (
    ReductionGradients,
    covariance_trace,
    length_spread,
    mean_pairwise_cosine,
)
from bench.networks import Policy
from bench.optim import SlotOptimizer
from bench.reductions import Reduction, SlotReductions
from bench.rollout import Batch
from bench.store import run_key
from tests.test_run import bench_run, data_files
from tests.test_slot_optim import CASES, MAX_NORMS, set_grads, slot_parameters

ADAM = {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
REWARDS = torch.tensor([1.0, 0.0, 0.5])  # a three-armed bandit with deterministic payoffs


def bandit_batch(policy: Policy, episodes: int, seed: int) -> tuple[Batch, torch.Tensor]:
    """`episodes` one-step episodes of the bandit under `policy` (one slot; the observation is
    the constant 1), and their advantages A = r (no baseline)."""
    obs = torch.ones(1, episodes, 1)
    with torch.no_grad():
        probs = policy.distribution(obs).probs[0, 0]
    actions = torch.multinomial(probs, episodes, replacement=True,
                                generator=torch.Generator().manual_seed(seed))[None]
    flags = torch.ones(1, episodes, dtype=torch.bool)
    batch = Batch(obs=obs, next_obs=obs, actions=actions, log_probs=torch.zeros(1, episodes),
                  rewards=REWARDS[actions], valid=flags, trajectory=torch.arange(episodes)[None],
                  last=flags, terminated=flags, truncated=~flags, cut=~flags, num_blocks=1,
                  slots=torch.tensor([0]), ready=torch.tensor([True]))
    return batch, REWARDS[actions]


def test_reference_estimator_converges_to_the_analytic_bandit_policy_gradient() -> None:
    policy = Policy([0], 1, 3, True, [], "tanh", 0.0)
    with torch.no_grad():  # a policy that is not uniform, so every arm's gradient differs
        for param, values in zip(policy.parameters(), ([[[0.5, -0.3, 0.2]]], [[0.1, 0.4, -0.6]]),
                                 strict=True):
            param.copy_(torch.tensor(values).view_as(param))
    params = list(policy.parameters())
    optimizer = SlotOptimizer(params, [ADAM], [None])
    gradients = ReductionGradients(optimizer, policy.distribution, (policy,), params)
    # Analytic: the loss is -J, J = sum_a pi(a) r_a with pi = softmax(W 1 + b).
    logits = policy.body(torch.ones(1, 1, 1))[0, 0]
    analytic = torch.autograd.grad(-(torch.softmax(logits, dim=0) * REWARDS).sum(), params)
    analytic = torch.cat([g.reshape(-1) for g in analytic])

    errors = {}
    for episodes in (1_000, 100_000):
        batch, advantages = bandit_batch(policy, episodes, seed=episodes)
        estimate = gradients(batch, advantages, {
            "traj_mean": SlotReductions.of(Reduction("traj_mean"), 1)})["traj_mean"][0]
        errors[episodes] = float((estimate - analytic).norm() / analytic.norm())
    assert errors[100_000] < 0.03
    assert errors[100_000] < errors[1_000]
    assert all(param.grad.abs().sum() == 0 for param in params)  # .grad left zero


def test_sum_and_per_step_give_the_same_gradient_and_mean_is_traj_mean_rescaled() -> None:
    policy = Policy([0, 1], 1, 3, True, [8], "tanh", 0.0)
    params = list(policy.parameters())
    gradients = ReductionGradients(SlotOptimizer(params, [ADAM, ADAM], [None, None]),
                                   policy.distribution, (policy,), params)
    batch, advantages = bandit_batch(Policy([0], 1, 3, True, [8], "tanh", 0.0), 12, seed=3)
    # Two slots, the second with trajectories of lengths 5, 4 and 3.
    fields = {name: torch.cat([value, value]) for name, value in vars(batch).items()
              if isinstance(value, torch.Tensor) and value.dim() >= 2}
    fields["trajectory"] = torch.stack([torch.arange(12),
                                        torch.tensor([0] * 5 + [1] * 4 + [2] * 3)])
    fields["obs"] = torch.randn(2, 12, 1, generator=torch.Generator().manual_seed(1))
    batch = Batch(**fields, num_blocks=1, slots=torch.tensor([0, 1]),
                  ready=torch.tensor([True, True]))
    advantages = torch.cat([advantages, advantages])
    result = gradients(batch, advantages, {name: SlotReductions.of(Reduction(name), 2) for name
                                           in ("sum", "per_step", "mean", "traj_mean")})
    torch.testing.assert_close(result["per_step"], result["sum"], rtol=1e-5, atol=1e-6)
    steps, trajectories = torch.tensor([[12.0], [12.0]]), torch.tensor([[12.0], [3.0]])
    torch.testing.assert_close(result["mean"], result["traj_mean"] * trajectories / steps)


def test_noise_measures_on_hand_made_gradients() -> None:
    same = torch.tensor([[[1.0, 2.0]], [[2.0, 4.0]], [[0.5, 1.0]]])  # [B=3, R=1, P=2]
    assert mean_pairwise_cosine(same).item() == pytest.approx(1.0)
    opposite = torch.tensor([[[1.0, 0.0]], [[-1.0, 0.0]]])
    assert mean_pairwise_cosine(opposite).item() == pytest.approx(-1.0)
    orthogonal = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]]])
    assert mean_pairwise_cosine(orthogonal).item() == pytest.approx(0.0)
    values = torch.randn(5, 2, 4, generator=torch.Generator().manual_seed(0))
    expected = values.to(torch.float64).var(dim=0, unbiased=True).sum(dim=1)
    torch.testing.assert_close(covariance_trace(values), expected)
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    trajectory = torch.tensor([[0, 0, 0, 0, 1, 1], [0, 1, 2, 3, 0, 0]])
    torch.testing.assert_close(length_spread(valid, trajectory),
                               torch.tensor([1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("case", ["sgd_nesterov", "adam", "rmsprop"])
def test_trial_step_is_the_step_and_changes_nothing(case: str) -> None:
    params, twins = slot_parameters(4), slot_parameters(4)
    optimizer = SlotOptimizer(params, CASES[case], MAX_NORMS)
    twin = SlotOptimizer(twins, CASES[case], MAX_NORMS)
    generator = torch.Generator().manual_seed(5)
    for _ in range(3):  # some optimiser state first
        grads = [torch.randn(p.shape, generator=generator) for p in params]
        for opt, ps in ((optimizer, params), (twin, twins)):
            set_grads(opt, ps, grads)
            opt.step(torch.zeros(4))
    grads = [torch.randn(p.shape, generator=generator) for p in params]
    set_grads(optimizer, params, grads)
    change = optimizer.trial_step(optimizer.gradients())
    # Nothing moved: the next real step of both optimisers is the same bit for bit.
    before = twin.flat_params.clone()
    for opt, ps in ((optimizer, params), (twin, twins)):
        set_grads(opt, ps, grads)
        opt.step(torch.zeros(4))
    assert torch.equal(optimizer.flat_params, twin.flat_params)
    torch.testing.assert_close(change, twin.flat_params - before, rtol=1e-6, atol=1e-7)


def test_diagnostics_settings_are_checked_and_off_keeps_the_run_key(tmp_path) -> None:
    result = bench_run(tmp_path, "diagnostics.every=-1", check=False)
    assert result.returncode == 2
    assert "diagnostics.every must be an integer >= 0, got -1" in result.stderr
    result = bench_run(tmp_path, "algo=ppo", "diagnostics.every=2",
                       "algo.normalize_observation=true", check=False)
    assert result.returncode == 2
    assert "needs algo.normalize_observation=false" in result.stderr
    config = {"seeds": 1, "device": "cpu", "algo": {"name": "ppo"}}
    assert run_key({**config, "diagnostics": {"every": 0, "noise_batches": 8}}) == run_key(config)
    assert run_key({**config, "diagnostics": {"every": 5}}) != run_key(config)
    with pytest.raises(ConfigError, match="unknown config value diagnostics.often"):
        check_config({"algo": {"name": "ppo"}, "optim": {"name": "adam"},
                      "reduction": {"name": "mean"}, "diagnostics": {"often": 1}})


def rows(results_dir, name: str) -> pd.DataFrame:
    frame = pd.concat(pd.read_parquet(path) for path in data_files(results_dir, name))
    return frame.sort_values(["kind", "seed", "env_step", "episode", "update"], kind="stable")


@pytest.mark.parametrize("algo, overrides", [
    ("reinforce", ["env=cartpole", "optim=sgd", "optim.lr=0.01", "total_steps=1500",
                   "algo.episodes_per_update=4"]),
    ("vpg", ["env=pendulum", "total_steps=1600", "algo.steps_per_update=400"]),
    ("a2c", ["env=acrobot", "total_steps=800"]),
    ("ppo", ["env=cartpole", "total_steps=1024", "algo.num_minibatches=2",
             "algo.update_epochs=2"]),
])
def test_diagnostics_leave_training_rows_bit_identical_and_rows_hold_the_identities(
    tmp_path, algo: str, overrides: list[str],
) -> None:
    common = [f"algo={algo}", "reduction=mean", "seeds=2", "progress_interval_s=0", *overrides]
    bench_run(tmp_path, *common, "name=off")
    bench_run(tmp_path, *common, "name=on", "diagnostics.every=2",
              "diagnostics.reference_episodes=8", "diagnostics.noise_batches=3")
    off, on = rows(tmp_path, "off"), rows(tmp_path, "on")
    training = on[on.kind != schema.KIND_DIAGNOSTICS]
    deterministic = [c for c in off.columns if c not in (*schema.NONDETERMINISTIC_COLUMNS,
                                                          "run_key", *schema.DIAGNOSTICS_COLUMNS)]
    # (diagnostics rows leave some training columns null: compare in the training dtypes)
    training = training[deterministic].astype(off[deterministic].dtypes.to_dict())
    pd.testing.assert_frame_equal(training.reset_index(drop=True),
                                  off[deterministic].reset_index(drop=True), check_exact=True)

    probes = on[on.kind == schema.KIND_DIAGNOSTICS]
    assert set(probes.probe_reduction) == set(schema.REDUCTIONS)
    assert len(probes) % len(schema.REDUCTIONS) == 0 and len(probes) >= 2 * 7
    by = probes.set_index(["seed", "update", "probe_reduction"])
    table = {name: by.xs(name, level="probe_reduction") for name in schema.REDUCTIONS}
    # per_step's loop and sum: one gradient up to rounding.
    for column in ("grad_cosine", "grad_norm_ratio", "step_cosine"):
        np.testing.assert_allclose(table["per_step"][column], table["sum"][column], rtol=1e-4)
    # mean = traj_mean * N / sum T_i on every batch: same direction, norm in that ratio.
    mean, traj_mean = table["mean"], table["traj_mean"]
    np.testing.assert_allclose(mean.grad_cosine, traj_mean.grad_cosine, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mean.grad_norm_ratio / traj_mean.grad_norm_ratio,
                               mean.batch_trajectories / mean.batch_steps, rtol=1e-4)
    assert (probes.grad_cosine.abs() <= 1 + 1e-6).all()
    assert (probes.reference_norm > 0).all() and (probes.noise_trace > 0).all()
    assert probes.noise_cosine.between(-1 - 1e-6, 1 + 1e-6).all()
    assert not math.isnan(probes.batch_length_std.max())

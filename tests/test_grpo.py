"""algo=grpo end to end and in parts: its per-token loss against TRL's formula, masking after
END, the batch statistics on a hand-made batch, the cached base model, slot independence
(a grid point alone and packed with others give the same rows), and the entry point's output
and bad-input messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from bench import schema
from bench.algos.grpo import batch_statistics, token_layout, token_losses
from bench.lm.tasks import make_task
from bench.lm.transformer import SlotTransformer
from bench.lm.warm_start import base_models, train_base_models

REPO = Path(__file__).resolve().parent.parent
# A GRPO run of seconds: 2 prompts x 4 responses per batch, 3 batches, a 3-step warm start.
TINY = ["algo=grpo", "env=reverse", "total_steps=24", "algo.prompts_per_update=2",
        "algo.group_size=4", "algo.warm_start.steps=3", "algo.warm_start.batch_size=8",
        "algo.network.d_model=16", "algo.network.num_heads=2", "progress_interval_s=0"]
NETWORK = {"d_model": 16, "num_layers": 1, "num_heads": 2}
WARM_START = {"steps": 4, "batch_size": 8, "lr": 3e-3, "error_rate": 0.3}


def bench_run(results_dir: Path, *overrides: str, multirun: bool = False,
              check: bool = True) -> subprocess.CompletedProcess:
    flags = ["--multirun"] if multirun else []
    command = [sys.executable, "-m", "bench.run", *flags, f"results_dir={results_dir}",
               *overrides]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return result


def random_batch(seed: int, slots: int = 2, responses: int = 4, width: int = 6) -> dict:
    """A batch as `token_losses` takes it, with random tokens, masks and log-probabilities."""
    generator = torch.Generator().manual_seed(seed)
    task = make_task("copy", min_length=2, max_length=3, max_response_length=width)
    prompts = torch.randint(0, 10, (slots, responses, task.prompt_width), generator=generator)
    lengths = torch.randint(1, width + 1, (slots, responses), generator=generator)
    mask = torch.arange(width) < lengths[..., None]
    return {
        "prompt_tokens": prompts, "prompt_mask": torch.ones_like(prompts, dtype=torch.bool),
        "responses": torch.randint(0, 15, (slots, responses, width), generator=generator),
        "response_mask": mask,
        "old_logprobs": torch.where(mask, -torch.rand(slots, responses, width,
                                                      generator=generator) * 3, 0.0),
        "ref_logprobs": torch.where(mask, -torch.rand(slots, responses, width,
                                                      generator=generator) * 3, 0.0),
        "advantages": torch.randn(slots, responses, generator=generator),
    }


def coefficients(slots: int, low: float = 0.2, high: float = 0.28, beta: float = 0.04,
                 entropy: float = 0.01) -> dict[str, torch.Tensor]:
    return {name: torch.full((slots, 1, 1), value) for name, value in (
        ("epsilon_low", low), ("epsilon_high", high), ("beta", beta), ("entropy_coef", entropy))}


def test_token_loss_is_trls_per_token_loss() -> None:
    """TRL GRPOTrainer's per-token loss, written out here: coef_1 = exp(logp - old),
    coef_2 = clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high), loss = -min(coef_1 A, coef_2 A)
    + beta (exp(ref - logp) - (ref - logp) - 1); the entropy bonus is the suite's addition."""
    batch = random_batch(0)
    policy = SlotTransformer([0, 1], 15, 16, d_model=16, num_layers=1, num_heads=2)
    terms = token_losses(batch, policy=policy, coef=coefficients(2))
    from bench.lm.transformer import sequence_logprobs

    with torch.no_grad():
        logp, entropy = sequence_logprobs(policy, batch["prompt_tokens"], batch["prompt_mask"],
                                          batch["responses"], batch["response_mask"])
    advantages = batch["advantages"].unsqueeze(-1)
    coef_1 = torch.exp(logp - batch["old_logprobs"])
    coef_2 = torch.clamp(coef_1, 1 - 0.2, 1 + 0.28)
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    delta = batch["ref_logprobs"] - logp
    per_token_loss = per_token_loss + 0.04 * (torch.exp(delta) - delta - 1) - 0.01 * entropy
    mask = batch["response_mask"]
    expected = torch.where(mask, per_token_loss, 0.0).flatten(1)
    torch.testing.assert_close(terms["loss"].detach(), expected)
    is_low_clipped = (coef_1 < 1 - 0.2) & (advantages < 0)
    is_high_clipped = (coef_1 > 1 + 0.28) & (advantages > 0)
    torch.testing.assert_close(terms["clipped"], ((is_low_clipped | is_high_clipped) & mask)
                               .float().flatten(1))


def test_no_gradient_from_tokens_after_end() -> None:
    """Changing what comes after END (tokens, old and reference log-probabilities) changes
    neither the loss nor any gradient."""
    batch = random_batch(1)
    policy = SlotTransformer([0, 1], 15, 16, d_model=16, num_layers=1, num_heads=2)
    gradients = []
    for variant in range(2):
        changed = dict(batch)
        after_end = ~batch["response_mask"]
        generator = torch.Generator().manual_seed(variant)
        changed["responses"] = torch.where(
            after_end, torch.randint(0, 15, batch["responses"].shape, generator=generator),
            batch["responses"])
        for name in ("old_logprobs", "ref_logprobs"):
            changed[name] = torch.where(after_end, -50.0 * (variant + 1), batch[name])
        policy.zero_grad()
        terms = token_losses(changed, policy=policy, coef=coefficients(2))
        terms["loss"].sum().backward()
        gradients.append([p.grad.clone() for p in policy.parameters()])
        assert torch.equal(terms["loss"][~token_layout(batch["response_mask"])[0]],
                           torch.zeros(int((~batch["response_mask"]).sum())))
    for first, second in zip(*gradients, strict=True):
        assert torch.equal(first, second)


def test_batch_statistics_on_a_hand_made_batch() -> None:
    correct = torch.tensor([[True, False, True, False], [False, False, False, False]])
    lengths = torch.tensor([[2, 5, 4, 7], [3, 3, 6, 4]])
    statistics = batch_statistics(correct, lengths)
    assert statistics["accuracy"].tolist() == [0.5, 0.0]
    assert statistics["response_length"].tolist() == [4.5, 4.0]
    assert statistics["response_length_correct"][0].item() == 3.0
    assert np.isnan(statistics["response_length_correct"][1].item())
    assert statistics["response_length_incorrect"].tolist() == [6.0, 4.0]


def test_token_layout_numbers_each_response() -> None:
    mask = torch.tensor([[[True, True, False], [True, False, False]]])
    valid, trajectory = token_layout(mask)
    assert valid.tolist() == [[True, True, False, True, False, False]]
    assert trajectory.tolist() == [[0, 0, 0, 1, 1, 1]]


def test_base_model_per_seed_is_independent_and_cached(tmp_path: Path) -> None:
    """A seed's base model is the same alone and with other seeds, and the cache gives it back
    bit for bit (the second call trains nothing: the cache files are not rewritten)."""
    task = make_task("reverse", min_length=2, max_length=3)
    env = {"id": "reverse", "kwargs": {"min_length": 2, "max_length": 3}}
    device = torch.device("cpu")
    alone = train_base_models([3], task, NETWORK, WARM_START, device)
    together = base_models([5, 3, 3], task, env, NETWORK, WARM_START, device, tmp_path)
    for name, value in alone.state_dict().items():
        assert torch.equal(together.state_dict()[name][1], value[0]), name
        assert torch.equal(together.state_dict()[name][2], value[0]), name
    files = {path: path.stat().st_mtime_ns for path in tmp_path.glob("*.pt")}
    assert len(files) == 2  # one per distinct seed
    again = base_models([3], task, env, NETWORK, WARM_START, device, tmp_path)
    for name, value in alone.state_dict().items():
        assert torch.equal(again.state_dict()[name][0], value[0]), name
    assert {path: path.stat().st_mtime_ns for path in tmp_path.glob("*.pt")} == files
    untrained = SlotTransformer([3], task.vocab_size, task.prompt_width + task.max_response_length,
                                **NETWORK)
    assert not torch.equal(untrained.state_dict()["unembed.weight"],
                           alone.state_dict()["unembed.weight"])


def test_grpo_run_writes_responses_and_updates(tmp_path: Path) -> None:
    bench_run(tmp_path, *TINY, "seeds=2", "reduction=traj_step_mean")
    (path,) = sorted((tmp_path / "default" / "data").glob("*.parquet"))
    metadata = pq.read_schema(path).metadata
    assert metadata[schema.SCHEMA_VERSION_KEY.encode()] == str(schema.SCHEMA_VERSION).encode()
    frame = pd.read_parquet(path)
    episodes = frame[frame["kind"] == schema.KIND_EPISODE]
    updates = frame[frame["kind"] == schema.KIND_UPDATE]
    # 3 batches of 8 responses per seed; 2 epochs x 2 minibatches per batch.
    assert episodes.groupby("seed").size().tolist() == [24, 24]
    assert updates.groupby("seed").size().tolist() == [12, 12]
    assert set(episodes["episode_return"]) <= {0.0, 1.0}
    assert (episodes["correct"] == (episodes["episode_return"] == 1.0)).all()
    assert episodes["episode_length"].between(1, 12).all()
    assert sorted(episodes["env_step"].unique()) == [8, 16, 24]
    # Each batch's accuracy is that of its 8 episode rows, on each of its 4 update rows.
    for (seed, env_step), rows in episodes.groupby(["seed", "env_step"]):
        batch_rows = updates[(updates["seed"] == seed) & (updates["env_step"] == env_step)]
        assert len(batch_rows) == 4
        assert np.allclose(batch_rows["accuracy"], rows["correct"].mean())
        assert np.allclose(batch_rows["response_length"], rows["episode_length"].mean())
    assert updates["kl_reference"].notna().all() and updates["approx_kl"].isna().all()
    assert updates["clip_fraction"].between(0, 1).all()
    assert len(list((tmp_path / "default" / "warm_start").glob("*.pt"))) == 2


def test_every_token_env_config_trains(tmp_path: Path) -> None:
    """Each conf/env file with backend tokens trains under algo=grpo from its own settings."""
    envs = sorted(path.stem for path in (REPO / "conf" / "env").glob("*.yaml")
                  if yaml.safe_load(path.read_text()).get("backend") == "tokens")
    assert envs == ["copy", "modular_sum", "reverse"]
    tiny = [o for o in TINY if not o.startswith("env=")]
    bench_run(tmp_path, *tiny, f"env={','.join(envs)}", "seeds=1", multirun=True)
    frame = pd.concat(pd.read_parquet(p) for p in (tmp_path / "default" / "data").glob("*.parquet"))
    assert sorted(frame["env"].unique()) == envs
    assert frame[frame["kind"] == schema.KIND_UPDATE].groupby("env")["env_step"].max().eq(24).all()


def test_a_grid_point_alone_and_packed_gives_the_same_rows(tmp_path: Path) -> None:
    """Slot independence for GRPO: traj_step_mean with std scaling, trained alone, and packed
    with constant and mean without it and another lr, writes the same rows bit for bit."""
    alone, packed = tmp_path / "alone", tmp_path / "packed"
    bench_run(alone, *TINY, "seeds=2", "reduction=traj_step_mean", "algo.scale_rewards=true")
    bench_run(packed, *TINY, "seeds=[1,0,2]", "reduction=traj_step_mean,constant,mean",
              "algo.scale_rewards=true,false", "optim.lr=3e-4,1e-3", multirun=True)
    (alone_file,) = sorted((alone / "default" / "data").glob("*.parquet"))
    alone_frame = pd.read_parquet(alone_file).drop(columns=["wall_time", "algo.scale_rewards"])
    frames = [pd.read_parquet(path) for path in (packed / "default" / "data").glob("*.parquet")]
    assert len(frames) == 12
    key = alone_frame["run_key"].iloc[0]
    same = pd.concat(frames)
    same = same[same["run_key"] == key].drop(columns=["wall_time", "algo.scale_rewards"])
    same = same[same["seed"].isin([0, 1])].sort_values(["kind", "seed", "episode", "update"])
    expected = alone_frame.sort_values(["kind", "seed", "episode", "update"])
    pd.testing.assert_frame_equal(same.reset_index(drop=True), expected.reset_index(drop=True),
                                  check_like=True)


@pytest.mark.parametrize(("overrides", "fragment"), [
    (["algo=grpo", "env=cartpole"], "algo=grpo trains on token tasks"),
    (["algo=ppo", "env=reverse"], "only algo=grpo trains on it"),
    (["algo=grpo", "env=reverse", "reduction=per_step"], "reduction=per_step is not available"),
    (["algo=grpo", "env=reverse", "algo.num_minibatches=3"], "must split evenly"),
    (["algo=grpo", "env=reverse", "env.max_episode_steps=3"], "max_response_length=3"),
    (["algo=grpo", "env=reverse", "algo.epsilon_low=1.5"], "algo.epsilon_low must be"),
    (["algo=grpo", "env=reverse", "diagnostics.every=2"], "not available with algo=grpo"),
])
def test_bad_grpo_input_is_one_clear_error(tmp_path: Path, overrides: list[str],
                                           fragment: str) -> None:
    result = bench_run(tmp_path, *overrides, "seeds=1", check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], lines
    assert not (tmp_path / "default").exists()



def test_report_of_a_grpo_sweep_has_its_response_lengths(tmp_path: Path) -> None:
    """`python -m analysis.report` on GRPO runs: the response-length section, its figures and
    tables, and final lengths equal to the episode rows' of the final window (the last 10% of
    the 24 responses: the last batch)."""
    bench_run(tmp_path, *TINY, "seeds=3", "reduction=traj_step_mean,constant",
              "algo.scale_rewards=true,false", multirun=True)
    experiment = tmp_path / "default"
    result = subprocess.run([sys.executable, "-m", "analysis.report", str(experiment)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = experiment / "report"
    index = (report / "index.md").read_text()
    assert "## Response lengths (token tasks)" in index
    for kind in ("correct", "incorrect"):
        assert len(list(report.glob(f"response_length_{kind}-*.png"))) == 2
    table = pd.read_csv(report / "significance-final_length_incorrect.csv")
    assert set(table["reduction"]) == {"traj_step_mean", "constant"}
    assert len(table) == 4  # 2 reductions x 2 scale_rewards families
    lengths = pd.read_csv(report / "per_seed_lengths.csv")
    frame = pd.concat(pd.read_parquet(path) for path in (experiment / "data").glob("*.parquet"))
    last = frame[(frame["kind"] == schema.KIND_EPISODE) & (frame["env_step"] == 24)]
    assert len(lengths) == 12
    for row in lengths.itertuples():
        rows = last[(last["run_key"] == row.run_key) & (last["seed"] == row.seed)]
        assert np.isclose(row.final_length, rows["episode_length"].mean())
        incorrect = rows[~rows["correct"].astype(bool)]["episode_length"]
        if len(incorrect):
            assert np.isclose(row.final_length_incorrect, incorrect.mean())
        else:
            assert np.isnan(row.final_length_incorrect)
        assert np.isclose(row.final_return, rows["episode_return"].mean())

"""The report on a synthetic sweep: tables recomputable from their CSVs, best-lr selection,
missing cells, reference scores, aggregates and the self-contained HTML page."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import yaml
from statsmodels.stats.multitest import multipletests
from test_analysis import REPO_ROOT, run_report, write_result_file

from analysis import intervals
from analysis.load import load_dataset
from analysis.references import ReferenceScores, reference_scores

TOTAL_STEPS = 200
LEVELS = {"sum": 300.0, "mean": 150.0, "traj_mean": 160.0}
LRS = (0.001, 0.01)
SEEDS = [0, 1, 2, 3, 4, 5]


def noisy_episodes(seeds: list[int], level: float, rng: np.random.Generator) -> list[tuple]:
    """Episodes every 20 steps, returns rising to about ``level`` with seed noise."""
    return [
        (seed, step, level * step / TOTAL_STEPS + rng.normal(0, 40))
        for seed in seeds
        for step in range(20, TOTAL_STEPS + 1, 20)
    ]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep over env x reduction x lr, one cell short of seeds, one expected cell missing,
    acrobot's reference scores in its files' configs, cartpole's from conf/env; its report."""
    experiment = tmp_path_factory.mktemp("sweep") / "synthetic"
    rng = np.random.default_rng(0)
    for env in ("cartpole", "acrobot"):
        for reduction, level in LEVELS.items():
            for lr in LRS:
                seeds = SEEDS[:3] if (env, reduction, lr) == ("acrobot", "sum", 0.01) else SEEDS
                offset = -500.0 if env == "acrobot" else 0.0
                config = {"total_steps": TOTAL_STEPS, "optim": {"lr": lr}}
                if env == "acrobot":
                    config["env"] = {"reference_scores": {"random": -500.0, "solved": -100.0}}
                write_result_file(
                    experiment / "data",
                    f"{env}-{reduction}-{lr}",
                    seeds,
                    [
                        (s, t, r + offset)
                        for s, t, r in noisy_episodes(seeds, level * (1 + lr), rng)
                    ],
                    algo="reinforce",
                    env=env,
                    reduction=reduction,
                    lr=lr,
                    total_steps=TOTAL_STEPS,
                    config=config,
                )
    multirun = {
        "hydra": {
            "sweeper": {"params": {"env": "cartpole,acrobot", "reduction": "sum,mean"}},
            "overrides": {
                "task": [
                    "reduction=sum,mean,traj_mean,constant",
                    "optim.lr=0.001,0.01",
                    "seeds=6",
                    "+experiment=synthetic",
                ]
            },
        }
    }
    hydra_dir = experiment / "hydra" / "2026-01-01_00-00-00"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "multirun.yaml").write_text(yaml.safe_dump(multirun))

    result = run_report(str(experiment), "--resamples", "300")

    assert result.returncode == 0, result.stderr
    return experiment / "report"


def test_per_seed_values_reproduce_the_tables_p_values(report_dir: Path) -> None:
    """Every p-value recomputed from the per-seed values with an independent implementation
    (scipy's exact permutation test of the rank sum), Holm over the comparisons marked as
    tests, and the mark."""
    for name in ("significance-final_return", "significance-auc", "best_lr-final_return"):
        table = pd.read_csv(report_dir / f"{name}.csv")
        values = pd.read_csv(report_dir / f"{name}-values.csv")
        family_columns = ["algo", "env", "optim"] + (["lr"] if name.startswith("sig") else [])
        for family_key, family in table.groupby(family_columns):
            used = values.merge(
                pd.DataFrame([dict(zip(family_columns, family_key, strict=True))]),
                on=family_columns,
            )
            reference = used.loc[used["reduction"] == "mean", "value"].to_numpy()
            compared = family[family["role"] == "compared"]
            rank, welch = [], []
            for reduction in compared["reduction"]:
                sample = used.loc[used["reduction"] == reduction, "value"].to_numpy()
                if min(sample.size, reference.size) < 2:  # the stated rule: not a test
                    rank.append(np.nan)
                    welch.append(np.nan)
                    continue
                ranks = scipy.stats.rankdata(np.concatenate([sample, reference]))
                rank.append(scipy.stats.permutation_test(
                    (ranks[: sample.size], ranks[sample.size:]),
                    lambda a, b, axis: np.sum(a, axis=axis), permutation_type="independent",
                    n_resamples=np.inf,
                ).pvalue)
                welch.append(scipy.stats.ttest_ind(sample, reference, equal_var=False).pvalue)
            np.testing.assert_allclose(compared["p_rank"], rank, rtol=1e-9)
            np.testing.assert_allclose(compared["p_welch"], welch, rtol=1e-10)
            tested = compared["tested"].to_numpy(dtype=bool)
            assert not np.isnan(np.array(rank)[tested]).any()
            holm = np.full(len(rank), np.nan)
            holm[tested] = multipletests(np.array(rank)[tested], method="holm")[1]
            np.testing.assert_allclose(compared.loc[tested, "p_rank_holm"], holm[tested],
                                       rtol=1e-10)
            assert (compared["family_size"] == tested.sum()).all()
            assert (compared["significant"] == (compared["p_rank_holm"] < 0.05)).all()
            assert (family["n"].to_numpy() > 0).all()


def test_best_lr_selects_on_even_seeds_and_tests_on_odd_seeds(report_dir: Path) -> None:
    per_seed = pd.read_csv(report_dir / "per_seed_metrics.csv")
    table = pd.read_csv(report_dir / "best_lr-final_return.csv")
    values = pd.read_csv(report_dir / "best_lr-final_return-values.csv")

    assert (values["seed"] % 2 == 1).all()
    for row in table.itertuples():
        even = per_seed[
            (per_seed["env"] == row.env)
            & (per_seed["reduction"] == row.reduction)
            & (per_seed["seed"] % 2 == 0)
        ]
        selection = even.groupby("lr")["auc"].mean()
        assert row.lr == selection.idxmax()
        assert row.selection_score == pytest.approx(selection.max())
        used = values[(values["env"] == row.env) & (values["reduction"] == row.reduction)]
        assert set(used["lr"]) == {row.lr}
        assert row.n == len(used)


def test_index_lists_missing_cells_short_cells_and_references(report_dir: Path) -> None:
    index = (report_dir / "index.md").read_text()

    completeness = index.split("## Completeness")[1].split("## Data")[0]
    # constant was swept but never ran: 2 envs x 2 lrs missing.
    assert "4 cell(s) of the sweep grid have no data" in completeness
    assert completeness.count("| constant |") == 4
    assert "1 cell(s) have fewer seeds than the most seeded (6)" in completeness
    assert "conf/env/cartpole.yaml" in index  # fallback for files without reference_scores
    assert "results metadata" in index
    assert "Holm" in index and "even-numbered seeds" in index
    methods = index.split("## Methods")[1].split("\n## ")[0]
    assert "exact Wilcoxon-Mann-Whitney" in methods and "coverage" in methods
    for name in ("significance-final_return", "best_lr-auc", "significance-steps_to_threshold"):
        tex = (report_dir / f"{name}.tex").read_text()
        assert "\\toprule" in tex and "\\bottomrule" in tex and "\\caption{" in tex
        assert f"[{name}.csv]({name}.csv)" in index
    for figure in (
        "convergence-optim=adam",
        "lr_sensitivity-final_return",
        "aggregate",
        "performance_profile",
    ):
        assert list(report_dir.glob(f"{figure}*.png")) and list(report_dir.glob(f"{figure}*.pdf"))


def test_html_is_self_contained(report_dir: Path) -> None:
    page = (report_dir / "index.html").read_text()

    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert "<table>" in page and "<h2>Completeness</h2>" in page


def test_aggregate_uses_normalised_scores_with_stratified_intervals(report_dir: Path) -> None:
    per_seed = pd.read_csv(report_dir / "per_seed_metrics.csv")
    aggregate = pd.read_csv(report_dir / "aggregate.csv")
    cartpole = yaml.safe_load((REPO_ROOT / "conf/env/cartpole.yaml").read_text())[
        "reference_scores"
    ]
    references = {
        "cartpole": (cartpole["random"], cartpole["solved"]),
        "acrobot": (-500.0, -100.0),
    }
    cell = per_seed[(per_seed["reduction"] == "sum") & (per_seed["lr"] == 0.001)]
    scores = [
        (value - references[env][0]) / (references[env][1] - references[env][0])
        for env, value in zip(cell["env"], cell["final_return"], strict=True)
    ]
    row = aggregate[(aggregate["reduction"] == "sum") & (aggregate["lr"] == 0.001)].iloc[0]

    assert row["n_runs"] == 12 and row["n_envs"] == 2
    assert row["iqm"] == pytest.approx(intervals.iqm(np.array(scores)))
    assert row["iqm_ci_low"] <= row["iqm"] <= row["iqm_ci_high"]


def test_reference_scores_prefer_results_metadata(tmp_path: Path) -> None:
    data = tmp_path / "data"
    in_metadata = {"env": {"reference_scores": {"random": 1.0, "solved": 2.0}}, "total_steps": 100}
    write_result_file(data, "a", [0], [(0, 10, 1.0)], env="cartpole", config=in_metadata)
    write_result_file(data, "b", [0], [(0, 10, 1.0)], env="nowhere")
    env_dir = tmp_path / "conf"
    env_dir.mkdir()
    (env_dir / "cartpole.yaml").write_text("reference_scores: {random: 5, solved: 9}\n")

    references = reference_scores(load_dataset(tmp_path).runs, env_config_dir=env_dir)

    assert references == {"cartpole": ReferenceScores(1.0, 2.0, "results metadata")}
    assert references["cartpole"].normalize(1.5) == pytest.approx(0.5)
    assert references["cartpole"].threshold(0.5) == pytest.approx(1.5)


def test_every_env_config_has_reference_scores() -> None:
    for path in sorted((REPO_ROOT / "conf/env").glob("*.yaml")):
        scores = yaml.safe_load(path.read_text())["reference_scores"]
        assert scores["solved"] > scores["random"], path


def test_report_is_swapped_in_whole_and_bad_reference_is_one_line(
    report_dir: Path, tmp_path: Path
) -> None:
    """A mistyped --reference is refused before any work, naming the valid choices; a report
    of an experiment without the reference reduction is written (no crash), replacing the
    previous report whole: no file of the old report survives beside the new one."""
    bad = run_report(str(report_dir.parent), "--reference", "nosuch")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "nosuch" in bad.stderr and "traj_step_mean" in bad.stderr

    experiment = tmp_path / "only-sum"
    seeds = [0, 1, 2]
    write_result_file(experiment / "data", "a", seeds, noisy_episodes(seeds, 100.0,
                      np.random.default_rng(1)), reduction="sum", total_steps=TOTAL_STEPS)
    stale = experiment / "report" / "significance-old_metric.csv"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")

    result = run_report(str(experiment), "--resamples", "200")

    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    table = pd.read_csv(experiment / "report" / "significance-final_return.csv")
    assert (table["role"] == "no reference").all()
    assert not list(experiment.glob(".report*"))

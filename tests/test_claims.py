"""Claims as data: the claim files, the verdict rule, and the report's Claims section on a
synthetic experiment whose truth is known."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_analysis import REPO_ROOT, run_report, write_result_file

from analysis import claims, findings, verify
from analysis.settings import ReportSettings

SEEDS = list(range(12))  # best lr tests the 6 odd seeds: separation p = 2 / C(12, 6)
TOTAL_STEPS = 200


def test_every_claim_file_loads_and_names_a_seed_text() -> None:
    loaded = claims.load_claims()
    repo = claims.CLAIMS_DIR.parents[1]
    experiments = {
        yaml.safe_load(p.read_text()).get("name") for p in (repo / "conf/experiment").glob("*.yaml")
    }

    assert len(loaded) >= 4
    assert len({c.id for c in loaded}) == len(loaded)
    for claim in loaded:
        assert claim.prediction in claims.PREDICTIONS and claim.metrics and claim.conditions
        if claim.source.endswith(".txt"):
            assert (repo / claim.source).resolve().is_file(), claim.source  # ../shared beside it
        else:  # a citation of a published text: authors and year at least
            assert re.search(r"\w+ et al\.,? (19|20)\d\d|\w+,? (19|20)\d\d", claim.source), \
                claim.source
        assert claim.experiment in experiments, claim.experiment


def test_a_bad_claim_file_is_one_clear_error(tmp_path: Path) -> None:
    good = (claims.CLAIMS_DIR / "001_sum_or_loop_never_mean.yaml").read_text()
    (tmp_path / "a.yaml").write_text(good.replace("prediction: greater", "prediction: bigger"))
    with pytest.raises(claims.ClaimError, match="prediction 'bigger'; valid"):
        claims.load_claims(tmp_path)
    (tmp_path / "a.yaml").write_text(good + "colour: red\n")
    with pytest.raises(claims.ClaimError, match=r"unknown field\(s\) \['colour'\]"):
        claims.load_claims(tmp_path)


@pytest.mark.parametrize(
    ("row", "prediction", "expected"),
    [
        ({"identical": True}, "greater", "identical by construction"),
        ({"tested": False}, "greater", "not testable"),
        ({"tested": True, "significant": True, "prob_improvement": 0.9}, "greater", "supported"),
        ({"tested": True, "significant": True, "prob_improvement": 0.1}, "greater",
         "contradicted"),
        ({"tested": True, "significant": False, "prob_improvement": 0.9}, "greater",
         "no difference shown"),
        ({"tested": True, "significant": True, "prob_improvement": 0.1}, "less", "supported"),
        ({"tested": True, "significant": True, "prob_improvement": 0.1}, "differs", "supported"),
        ({"tested": True, "significant": False, "prob_improvement": 0.5, "poi_ci_low": 0.45},
         "not_less", "supported"),
        ({"tested": True, "significant": False, "prob_improvement": 0.5, "poi_ci_low": 0.2},
         "not_less", "no difference shown"),
        ({"tested": True, "significant": True, "prob_improvement": 0.2, "poi_ci_low": 0.05},
         "not_less", "contradicted"),
    ],
)
def test_verdict_rule(row: dict, prediction: str, expected: str) -> None:
    assert claims.verdict(row, prediction, margin=0.1) == expected


def test_lower_is_better_metrics_use_the_sooner_probability() -> None:
    row = {"tested": True, "significant": True, "prob_sooner": 0.9}
    assert claims.verdict(row, "greater", 0.1, lower_is_better=True) == "supported"


def rising(seeds: list[int], level: float, rng: np.random.Generator) -> list[tuple]:
    return [(s, t, level * t / TOTAL_STEPS + rng.normal(0, 5)) for s in seeds
            for t in range(20, TOTAL_STEPS + 1, 20)]


def test_report_leads_with_the_claims_verdicts(tmp_path: Path) -> None:
    """seed_claims_003's claim on synthetic data: under SGD sum and per_step learn far better
    than mean at every lr (supported), under Adam every reduction's runs are the same
    episodes (identical by construction)."""
    experiment = tmp_path / "seed_claims_003"
    rng = np.random.default_rng(0)
    for lr in (0.01, 0.1):
        adam = rising(SEEDS, 100.0, rng)
        for reduction in ("sum", "per_step", "mean"):
            level = 20.0 if reduction == "mean" else 200.0
            for optim, episodes in (("sgd", rising(SEEDS, level, rng)), ("adam", adam)):
                write_result_file(
                    experiment / "data", f"{reduction}-{optim}-{lr}", SEEDS, episodes,
                    algo="reinforce", env="cartpole", reduction=reduction, optim=optim, lr=lr,
                    total_steps=TOTAL_STEPS,
                )

    result = run_report(str(experiment), "--resamples", "200")

    assert result.returncode == 0, result.stderr
    report = experiment / "report"
    index = (report / "index.md").read_text()
    sections = [line for line in index.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Claims" and sections[-1] == "## Cells"
    verdicts = pd.read_csv(report / "claims.csv")
    mine = verdicts[verdicts["claim"] == "sum_or_loop_never_mean"]
    sgd = mine[mine["condition"].str.contains("optim=sgd")]
    adam = mine[mine["condition"].str.contains("optim=adam")]
    assert set(sgd["verdict"]) == {"supported (all 2)", "supported"}
    assert set(adam.loc[adam["view"] == "matched_lr", "verdict"]) == {
        "identical by construction (all 2)"
    }
    assert (report / "claim-sum_or_loop_never_mean.png").stat().st_size > 0
    detail = pd.read_csv(report / "claim-sum_or_loop_never_mean.csv")
    assert {"p_rank_holm", "mde_poi", "prob_improvement", "poi_ci_low", "verdict"} <= set(
        detail.columns
    )

    # The compact evidence of the study: what it holds and where it came from.
    evidence = tmp_path / "evidence"
    exported = subprocess.run(
        [sys.executable, "-m", "analysis.evidence", str(experiment), str(evidence),
         "--command", "make sweep EXP=seed_claims_003"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    assert pd.read_csv(evidence / "claims.csv").equals(verdicts)
    curves = pd.read_csv(evidence / "curves.csv")
    assert len(curves) == len(pd.read_csv(report / "per_seed_metrics.csv")) * 20
    readme = (evidence / "README.md").read_text()
    assert "make sweep EXP=seed_claims_003" in readme and "abc1234" in readme
    assert (evidence / "claim-sum_or_loop_never_mean.png").is_file()


def test_readme_findings_are_generated_from_the_committed_evidence() -> None:
    """README's "What we found" is exactly what `analysis.findings` renders from findings/
    (run `make findings` after committing new evidence)."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split(findings.START, 1)[1].split(findings.END, 1)[0]
    assert section == "\n" + findings.render()


def test_findings_section_replacement(tmp_path: Path) -> None:
    study = tmp_path / "study"
    study.mkdir()
    pd.DataFrame([{"claim": "c", "condition": "env=x", "view": "matched_lr",
                   "comparison": "sum vs mean", "prediction": "greater", "metric": "auc",
                   "verdict": "supported"}]).to_csv(study / "claims.csv", index=False)
    text = f"intro\n{findings.START}\nstale table\n{findings.END}\nrest\n"

    replaced = findings.replace_section(text, findings.render(tmp_path))

    assert replaced.startswith("intro\n") and replaced.endswith(f"{findings.END}\nrest\n")
    assert "stale table" not in replaced
    row = "| c | env=x | matched_lr | sum vs mean | \u2014 | supported | findings/study |"
    assert row in replaced  # no seeds column in that claims.csv: a dash
    with pytest.raises(ValueError, match="markers"):
        findings.replace_section("no markers", "x")


def test_verify_reproduces_the_committed_evidence() -> None:
    """`make verify`'s check on a small slice (2 seeds of one cell pair): on the machine the
    evidence was made on, the seeds of the committed seed_claims_003 study are reproduced bit
    for bit in a different pack; elsewhere verify lists every difference and says that the CPU
    differs (the evidence's CPU is not recorded, or another one)."""
    evidence = REPO_ROOT / "findings" / "seed_claims_003"
    slice_args = ["--experiment", "seed_claims_003", "env=cartpole", "optim=sgd",
                  "optim.lr=0.01", "reduction=sum,mean", "seeds=[3,8]"]
    command = [sys.executable, "-m", "analysis.verify"]

    good = subprocess.run([*command, str(evidence), *slice_args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)

    if "4 of 4 seeds match" in good.stdout:
        assert good.returncode == 0, good.stdout + good.stderr
        return
    assert "differences:" in good.stdout
    assert "another CPU (or one the evidence does not record)" in good.stdout, (
        "verify differs on the evidence's own CPU:\n" + good.stdout)
    # Two seeds a side: no test can reject, and the claims' comparisons are not testable.
    assert "in distribution (exact rank-sum test per cell and metric" in good.stdout
    assert "the slice agrees with the evidence in distribution and in every verdict" in (
        good.stdout)
    assert good.returncode == 0, good.stdout + good.stderr


def test_verify_of_evidence_from_another_cpu_passes_on_distributions(tmp_path: Path) -> None:
    """`analysis.verify` end to end against evidence that says another CPU made it and whose
    stream digests differ (as another CPU's would): bit-identity fails, the fallback checks
    run and pass (the values themselves are this machine's or the committed ones)."""
    evidence = tmp_path / "seed_claims_003"
    evidence.mkdir()
    per_seed = pd.read_csv(REPO_ROOT / "findings" / "seed_claims_003" / "per_seed_metrics.csv")
    per_seed["stream"] = per_seed["stream"].str[::-1]  # other digests, still one per run
    per_seed.to_csv(evidence / "per_seed_metrics.csv", index=False)
    (evidence / "machine.json").write_text('{"cpu": ["Another CPU (torch AVX2)"]}')

    result = subprocess.run(
        [sys.executable, "-m", "analysis.verify", str(evidence), "--experiment",
         "seed_claims_003", "env=cartpole", "optim=sgd", "optim.lr=0.01", "reduction=sum,mean",
         "seeds=[3,8]"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)

    assert "0 of 4 seeds match" in result.stdout, result.stdout + result.stderr
    assert "another CPU (or one the evidence does not record)" in result.stdout
    assert "in distribution (exact rank-sum test per cell and metric" in result.stdout
    assert "claims' verdicts on the slice:" in result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_verify_on_another_cpu_checks_distributions_and_verdicts() -> None:
    """On another CPU `make verify` falls back on what must still hold: each cell's seeds
    agree with the evidence's in distribution, and the claims' verdicts on the slice are the
    evidence's. A fresh slice equal to the evidence passes both; one whose `sum` seeds at
    lr 1e-2 learned far more (where the evidence has `sum` worse than `mean`: as if another
    CPU changed the finding) fails both, naming the cell and the verdict that moved."""
    evidence = pd.read_csv(REPO_ROOT / "findings" / "seed_claims_003" / "per_seed_metrics.csv")
    cells = ["algo", "env", "reduction", "optim", "lr", "algo.baseline",
             "algo.episodes_per_update"]
    fresh = evidence[(evidence["env"] == "cartpole") & (evidence["optim"] == "sgd")
                     & evidence["lr"].isin([1e-4, 1e-2])
                     & evidence["reduction"].isin(["sum", "mean"])].copy()

    same_distribution = verify.distribution_check(fresh, evidence, cells)
    same_verdicts = verify.verdict_check("seed_claims_003", fresh, evidence, cells,
                                         ReportSettings(n_resamples=200))

    assert len(same_distribution) == 8 and not same_distribution["differs"].any()
    assert len(same_verdicts) == 3 and same_verdicts["same"].all()  # 2 rates + best lr

    better = fresh.copy()
    raised = (better["reduction"] == "sum") & (better["lr"] == 1e-2)
    better.loc[raised, ["auc", "final_return"]] += 1e4
    moved_distribution = verify.distribution_check(better, evidence, cells)
    moved_verdicts = verify.verdict_check("seed_claims_003", better, evidence, cells,
                                          ReportSettings(n_resamples=200))

    differs = moved_distribution[moved_distribution["differs"]]
    assert set(differs["reduction"]) == {"sum"} and set(differs["lr"]) == {"0.01"}
    moved = moved_verdicts[~moved_verdicts["same"]]
    assert "lr=0.01" in set(moved["grid_point"]) and set(moved["verdict_fresh"]) == {"supported"}


def test_verify_compare_lists_every_difference() -> None:
    """An edited value, a changed digest and a seed the evidence lacks are each a mismatch."""
    evidence = pd.DataFrame({"env": ["x"] * 3, "seed": [0, 1, 2], "stream": ["a", "b", "c"],
                             "final_return": [1.0, 2.0, np.nan], "auc": [0.5, 0.25, -np.inf]})
    fresh = evidence.copy()
    fresh.loc[0, "auc"] = 0.5000001
    fresh.loc[1, "stream"] = "B"
    fresh = pd.concat([fresh, evidence.iloc[[2]].assign(seed=9)], ignore_index=True)

    result = verify.compare(fresh, evidence, ["env"])

    assert result["match"].tolist() == [False, False, True, False]


def test_citation_names_the_suite_version_and_readme_the_evidence_commits() -> None:
    """CITATION.cff carries pyproject's version (one value, checked here, since the file format
    cannot refer to it); README's generated section lists each evidence folder's commits."""
    citation = (REPO_ROOT / "CITATION.cff").read_text()
    assert f"\nversion: {findings.suite_version()}\n" in citation
    section = findings.render()
    for folder, commits in findings.evidence_commits().items():
        assert commits != "not recorded"
        assert f"- `{folder}`: made at commit {commits}" in section


def schedule_seeds(rng: np.random.Generator) -> pd.DataFrame:
    """Per-seed AUCs of a stepwise schedule (1 env x 1 step) and two rollout schedules whose
    env count changes with their length (8 x 5 for a2c, 4 x 128 for ppo), at one lr."""
    rows = []
    for algo, envs, steps in (("a2c", 8, 5), ("ppo", 4, 128)):
        for num_envs, rollout_steps, level in ((1, 1, 10.0), (envs, steps, 100.0)):
            rows += [{"algo": algo, "env": "cartpole", "reduction": "mean", "optim": "adam",
                      "lr": lr, "algo.num_envs": num_envs, "algo.rollout_steps": rollout_steps,
                      "run_key": f"{algo}-{rollout_steps}-{lr}", "seed": seed,
                      "stream": f"{algo}-{rollout_steps}-{lr}-{seed}",
                      "auc": level * (1 + lr) + rng.normal(0, 1), "final_return": level}
                     for seed in SEEDS for lr in (1e-3, 3e-3)]
    return pd.DataFrame(rows)


def test_varies_with_lets_a_claim_compare_schedules_that_change_two_columns() -> None:
    """rollout_beats_stepwise compares rollout_steps 1 with 5 (a2c) and 128 (ppo), whose
    num_envs differ too: without varies_with the two never share a family."""
    claim = next(c for c in claims.load_claims() if c.id == "rollout_beats_stepwise")
    per_seed = schedule_seeds(np.random.default_rng(0)).assign(
        **{"algo.num_minibatches": 1, "algo.update_epochs": 1})
    cells = ["algo", "env", "reduction", "optim", "lr", "algo.num_envs", "algo.rollout_steps"]
    settings = ReportSettings(n_resamples=200)

    result = claims.evaluate(claim, per_seed, cells, settings)

    auc = result.comparisons[result.comparisons["metric"] == "auc"]
    matched, best = (auc[auc["view"] == view] for view in ("matched_lr", "best_lr"))
    assert sorted(matched["treatment"]) == ["128", "128", "5", "5"]  # at each of 2 lrs
    assert sorted(best["treatment"]) == ["128", "5"]  # each side at its own best lr
    assert set(auc["verdict"]) == {"supported"}
    summary = result.summary.set_index("view")
    assert set(summary["verdict"]) == {"supported (all 2)", "supported"}
    assert set(summary.loc["matched_lr", "seeds"]) == {"12 vs 12"}
    assert set(summary.loc["best_lr", "seeds"]) == {"6 vs 6"}  # the odd (test) seeds
    without = claims.evaluate(replace(claim, varies_with=()), per_seed, cells, settings)
    assert without.comparisons.empty
    assert "differ in ['algo.num_envs'] as well" in without.missing
    stepwise_only = per_seed[per_seed["algo.rollout_steps"] == 1]
    assert "no cell has a treatment value" in claims.evaluate(
        claim, stepwise_only, cells, settings).missing

    # Two env counts at one rollout length in one family would pool two configurations.
    pooled = pd.concat([per_seed, per_seed[per_seed["algo.rollout_steps"] == 5].assign(
        **{"algo.num_envs": 16, "run_key": "a2c-16"})])
    with pytest.raises(claims.ClaimError, match=r"varies_with \['algo.num_envs'\] takes several"):
        claims.evaluate(claim, pooled, cells, settings)

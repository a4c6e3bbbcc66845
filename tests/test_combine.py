"""A study run in parts (`analysis.combine`): the union of the parts' evidence is judged exactly
as one run of all their seeds, and parts that cannot be one study are refused before anything
is written."""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_analysis import REPO_ROOT, run_report, write_result_file

from analysis import combine

SEEDS = list(range(12))
TOTAL_STEPS = 200
RESAMPLES = ["--resamples", "200"]


def episodes(seed: int, level: float, stream: int) -> list[tuple]:
    """A seed's rising episodes, the same whichever run holds the seed (``stream`` seeds
    their noise, so cells that share it are bit-identical runs)."""
    rng = np.random.default_rng([stream, seed])
    return [(seed, t, level * t / TOTAL_STEPS + rng.normal(0, 5))
            for t in range(20, TOTAL_STEPS + 1, 20)]


def write_study(experiment: Path, seeds: list[int]) -> None:
    """seed_claims_003's grid in small: under SGD sum and per_step far above mean, under Adam
    the three reductions' runs identical; one file per cell with the given seeds."""
    for lr in (0.01, 0.1):
        for reduction in ("sum", "per_step", "mean"):
            for optim in ("sgd", "adam"):
                level = 100.0 if optim == "adam" else 20.0 if reduction == "mean" else 200.0
                name = f"{optim}-{lr}" if optim == "adam" else f"{reduction}-{optim}-{lr}"
                stream = zlib.crc32(name.encode())
                rows = [e for s in seeds for e in episodes(s, level, stream)]
                write_result_file(
                    experiment / "data", f"key-{reduction}-{optim}-{lr}", seeds, rows,
                    algo="reinforce", env="cartpole", reduction=reduction, optim=optim, lr=lr,
                    total_steps=TOTAL_STEPS,
                )


def export(experiment: Path, destination: Path, command: str) -> None:
    """`make report`, then `analysis.evidence`, as a study's part is exported."""
    reported = run_report(str(experiment), *RESAMPLES)
    assert reported.returncode == 0, reported.stderr
    exported = subprocess.run(
        [sys.executable, "-m", "analysis.evidence", str(experiment), str(destination),
         "--command", command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr


def run_combine(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "analysis.combine", *args, *RESAMPLES],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The whole study's report, and the evidence of two seed ranges run apart."""
    root = tmp_path_factory.mktemp("combine")
    write_study(root / "whole" / "seed_claims_003", SEEDS)
    reported = run_report(str(root / "whole" / "seed_claims_003"), *RESAMPLES)
    assert reported.returncode == 0, reported.stderr
    folders = {"whole": root / "whole" / "seed_claims_003" / "report"}
    for name, seeds in (("seeds_00-05", SEEDS[:6]), ("seeds_06-11", SEEDS[6:])):
        experiment = root / name / "seed_claims_003"
        write_study(experiment, seeds)
        export(experiment, root / "exports" / name, f"make sweep SEEDS={seeds}")
        folders[name] = root / "exports" / name
    return folders


def test_the_union_of_parts_is_judged_as_one_run(parts: dict[str, Path], tmp_path: Path) -> None:
    destination = tmp_path / "findings" / "seed_claims_003"

    result = run_combine(str(destination), "--part", str(parts["seeds_00-05"]),
                         "--part", f"late={parts['seeds_06-11']}")

    assert result.returncode == 0, result.stderr
    whole = parts["whole"]
    for name in ("claims.csv", "summary.csv", "significance-auc.csv", "best_lr-auc.csv",
                 "claim-sum_or_loop_never_mean.csv"):
        assert (destination / name).read_bytes() == (whole / name).read_bytes(), name
    combined = pd.read_csv(destination / "per_seed_metrics.csv")
    alone = pd.read_csv(whole / "per_seed_metrics.csv")
    order = ["reduction", "optim", "lr", "seed"]
    pd.testing.assert_frame_equal(combined.sort_values(order).reset_index(drop=True),
                                  alone.sort_values(order).reset_index(drop=True))
    verdicts = pd.read_csv(destination / "claims.csv")
    assert set(verdicts["seeds"]) >= {"12 vs 12", "6 vs 6"}  # matched lr; best lr's odd seeds
    assert sorted(p.name for p in (destination / "parts").iterdir()) == ["late", "seeds_00-05"]
    readme = (destination / "README.md").read_text()
    assert "combined from 2 parts" in readme and "- git commits: `abc1234`" in readme
    assert "seeds 0\u20135" in readme and "make sweep SEEDS=[6, 7, 8, 9, 10, 11]" in readme
    report = (destination / "report.md").read_text()
    assert report.index("## Claims") < report.index("## Convergence")
    assert (destination / "claim-sum_or_loop_never_mean.png").stat().st_size > 0
    assert list(destination.glob("convergence-*.png")) and not list(destination.glob("*.pdf"))

    # Re-judged from its own parts/ (no --part): the same verdicts.
    again = run_combine(str(destination))
    assert again.returncode == 0, again.stderr
    assert pd.read_csv(destination / "claims.csv").equals(verdicts)


def broken_part(source: Path, target: Path, edit: str) -> Path:
    """A copy of a part's evidence with one defect."""
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.is_file():
            (target / file.name).write_bytes(file.read_bytes())
    per_seed = pd.read_csv(target / "per_seed_metrics.csv")
    if edit == "extra column":
        per_seed.insert(5, "algo.gamma", 0.9)
    elif edit == "other run key":
        per_seed.loc[per_seed["reduction"] == "sum", "run_key"] += "-changed"
    elif edit == "no curves":
        (target / "curves.csv").unlink()
    per_seed.to_csv(target / "per_seed_metrics.csv", index=False)
    return target


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("overlap", "seed 0 of run key key-mean-adam-0.01 is in parts"),
        ("extra column", "has cell columns"),
        ("other run key", "the parts ran different configurations under one cell's label"),
        ("no curves", "lacks ['curves.csv']"),
        ("experiment", "no claim in conf/claims is judged on experiment 'seed_claims_999'"),
        ("name", "part name 'bad name'"),
    ],
)
def test_parts_that_cannot_be_one_study_are_refused_before_any_write(
        parts: dict[str, Path], tmp_path: Path, edit: str, message: str) -> None:
    destination = tmp_path / "seed_claims_003"
    destination.mkdir()
    (destination / "claims.csv").write_text("kept\n")
    first = str(parts["seeds_00-05"])
    if edit == "overlap":
        args = ["--part", f"a={first}", "--part", f"b={first}"]
    elif edit == "experiment":
        args = ["--part", first, "--experiment", "seed_claims_999"]
    elif edit == "name":
        args = ["--part", f"bad name={first}"]
    else:
        broken = broken_part(parts["seeds_06-11"], tmp_path / "broken", edit)
        args = ["--part", first, "--part", str(broken)]

    result = run_combine(str(destination), *args)

    assert result.returncode == combine.EXIT_USAGE, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert [p.name for p in destination.iterdir()] == ["claims.csv"]
    assert (destination / "claims.csv").read_text() == "kept\n"
    assert not list(tmp_path.glob(".seed_claims_003.*"))


def test_a_study_folder_without_parts_needs_them_named(tmp_path: Path) -> None:
    with pytest.raises(combine.CombineError, match="has no parts/ folder"):
        combine.part_sources(tmp_path, [])


COMBINED = sorted(p.parent for p in (REPO_ROOT / "findings").glob(f"*/{combine.PARTS_DIRNAME}"))


@pytest.mark.parametrize("study", COMBINED, ids=[p.name for p in COMBINED])
def test_committed_combined_studies_hold_the_union_of_their_parts(study: Path) -> None:
    """A committed study made by `analysis.combine`: its per-seed metrics are its parts'
    together, seed for seed, and its README names every part."""
    parts = sorted((study / combine.PARTS_DIRNAME).iterdir())
    union = pd.concat([pd.read_csv(p / "per_seed_metrics.csv") for p in parts])
    committed = pd.read_csv(study / "per_seed_metrics.csv")
    order = [c for c in committed.columns if c not in combine.PER_SEED_COLUMNS] + ["seed"]
    pd.testing.assert_frame_equal(
        committed.sort_values(order).reset_index(drop=True),
        union.sort_values(order).reset_index(drop=True))
    readme = (study / "README.md").read_text()
    assert all(f"`{combine.PARTS_DIRNAME}/{p.name}`" in readme for p in parts)


@pytest.mark.slow
@pytest.mark.parametrize("study", COMBINED, ids=[p.name for p in COMBINED])
def test_committed_verdicts_are_what_their_parts_give(study: Path, tmp_path: Path) -> None:
    """Re-judged from its committed parts, a study gives its committed verdicts (a claim file
    or a test changed without re-judging the evidence shows here)."""
    destination = tmp_path / study.name
    parts = [f"{p.name}={p}" for p in sorted((study / combine.PARTS_DIRNAME).iterdir())]

    result = subprocess.run(
        [sys.executable, "-m", "analysis.combine", str(destination),
         *[arg for part in parts for arg in ("--part", part)]],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)

    assert result.returncode == 0, result.stderr
    for name in ("claims.csv", "summary.csv"):
        assert (destination / name).read_bytes() == (study / name).read_bytes(), name

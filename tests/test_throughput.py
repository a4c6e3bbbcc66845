"""`make bench`'s script, run as users run it, on a tiny grid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_bench_measures_each_configuration_and_writes_json(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--results-dir", str(tmp_path),
         "--algos", "ppo", "--seeds", "1", "2", "--threads", "1", "--steps-per-seed", "512",
         "--no-packed", "--no-gradient-step"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (output,) = (tmp_path / "bench").glob("*.json")
    report = json.loads(output.read_text())
    rows = report["rows"]
    assert {(row["backend"], row["seeds"]) for row in rows} == {
        ("gymnasium", 1), ("gymnasium", 2), ("torch", 1), ("torch", 2)}
    for row in rows:
        assert row["env_steps"] == row["seeds"] * 512  # one PPO rollout of 4 x 128 per seed
        assert row["env_steps_per_s"] == pytest.approx(row["env_steps"] / row["seconds"])
        assert row["peak_rss_mib"] > 50 and "env.backend=" + row["backend"] in row["command"]
    baseline = next(r for r in rows if r["backend"] == "gymnasium" and r["seeds"] == 1)
    assert baseline["ratio_to_s1_gymnasium"] == 1.0
    assert report["git_commit"] and report["versions"]["torch"]
    assert "ratio_to_s1_gymnasium" in result.stdout


def test_bench_measures_a_packed_job_of_600_slots(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--results-dir", str(tmp_path),
         "--algos", "a2c", "--no-matrix", "--no-gradient-step", "--steps-per-seed", "40"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (output,) = (tmp_path / "bench").glob("*.json")
    (row,) = json.loads(output.read_text())["packed"]
    assert (row["algo"], row["slots"], row["grid_points"]) == ("a2c", 600, 30)
    assert row["env_steps"] == 600 * 40  # one A2C rollout of 8 x 5 per slot
    assert row["peak_rss_mib"] > 50 and "Packed jobs" in result.stdout


def test_bench_refuses_bad_arguments(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--results-dir", str(tmp_path),
         "--algos", "dqn"], cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "'dqn'" in result.stderr and "ppo" in result.stderr
    assert not (tmp_path / "bench").exists()

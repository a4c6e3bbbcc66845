"""Sweeps through `python -m bench.run --multirun`: presets, launchers (joblib, basic,
submitit_local, SLURM through a fake sbatch), resume after a kill, failure isolation, summary."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from bench import schema, sweep
from bench.config import make_job

REPO = Path(__file__).resolve().parent.parent
PRESETS = sorted(path.stem for path in (REPO / "conf" / "experiment").glob("*.yaml"))
TINY = ["seeds=2", "total_steps=600", "algo.episodes_per_update=2", "progress_interval_s=0"]


def multirun(*overrides: str, cwd: Path = REPO, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "bench.run", "--multirun", *overrides]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=env)


def data_files(experiment_dir: Path) -> list[Path]:
    return sorted((experiment_dir / "data").glob("*.parquet"))


def run_seed_pairs(experiment_dir: Path) -> list[tuple[str, int]]:
    """(run key, seed) of every seed of every result file."""
    pairs = []
    for path in data_files(experiment_dir):
        metadata = pq.read_schema(path).metadata
        key = metadata[schema.RUN_KEY_KEY.encode()].decode()
        pairs += [(key, seed) for seed in json.loads(metadata[schema.SEEDS_KEY.encode()])]
    return pairs


def summary_counts(stderr: str) -> tuple[int, int, int, int, int]:
    """(finished, planned, done, skipped, failed) from the sweep's summary line."""
    match = re.search(r"\[sweep\] \w+: (\d+)/(\d+) grid points finished in \S+: (\d+) done, "
                      r"(\d+) skipped \(already complete\), (\d+) failed", stderr)
    assert match, stderr[-3000:]
    return tuple(int(group) for group in match.groups())


def test_killed_sweep_resumes_with_exactly_the_missing_jobs(tmp_path):
    """SIGKILL a real joblib sweep of 6 jobs once its first result exists; the re-run trains
    only the missing jobs, skips the complete ones, and the dataset holds every job once.
    Run from an empty directory: everything lands under its results/."""
    overrides = ["name=resume", "reduction=mean,sum,traj_mean", "optim=adam,sgd",
                 "seeds=2", "total_steps=1500", "progress_interval_s=0",
                 "hydra.launcher.n_jobs=2"]
    experiment = tmp_path / "results" / "resume"
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.run", "--multirun", *overrides], cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not data_files(experiment) and process.poll() is None:
        assert time.monotonic() < deadline, "no result file appeared"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    complete = data_files(experiment)
    assert 1 <= len(complete) < 6
    # What a job killed mid-write leaves: a temporary file, stale (removed at the next start)
    # or possibly still being written (left alone); readers ignore both.
    stale = experiment / "data" / ".0123456789abcdef-01234567.parquet.tmp-1"
    young = experiment / "data" / ".fedcba9876543210-01234567.parquet.tmp-2"
    for path in (stale, young):
        path.write_bytes(b"half a parquet file")
    os.utime(stale, (time.time() - 2 * sweep.STALE_TEMPORARY_AGE_S,) * 2)

    rerun = multirun(*overrides, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    skipped = re.findall(r"^skip .* already complete in (\S+)$", rerun.stderr, re.MULTILINE)
    assert sorted(tmp_path / path for path in skipped) == complete
    assert summary_counts(rerun.stderr) == (6, 6, 6 - len(complete), len(complete), 0)
    assert re.search(r"\[sweep\] job [12]/2 (done|skipped) in .* \| 6/6 grid points finished",
                     rerun.stderr)
    assert not stale.exists() and young.exists()
    assert f"removed {stale.relative_to(tmp_path)}," in rerun.stderr
    files = data_files(experiment)
    assert set(complete) <= set(files) and len(files) == 6
    pairs = run_seed_pairs(experiment)
    assert len(pairs) == len(set(pairs)) == 12
    frame = pd.read_parquet(experiment / "data")
    first_updates = frame[(frame.kind == "update") & (frame["update"] == 0)]
    assert first_updates.groupby(["run_key", "seed"]).size().eq(1).all()
    assert len(first_updates) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_a_failing_job_is_recorded_and_the_others_go_on(tmp_path):
    """Bad config values (ConfigError: refused before the run key exists) and a results
    directory that cannot be written (found before any training, once the run key exists)
    fail their grid points only: the grid point packed with them trains, each failure is
    recorded in its experiment with its overrides, run key and traceback, and the sweep ends
    with a summary and exit status 1."""
    blocker = tmp_path / "blocked" / "data"
    blocker.parent.mkdir()
    blocker.write_text("a file where the data directory should be")
    result = multirun(f"results_dir={tmp_path}", "hydra/launcher=basic",
                      "algo.gamma=7,0.99", "name=ok,blocked", *TINY)
    assert result.returncode == 1, result.stderr[-3000:]
    assert summary_counts(result.stderr) == (4, 4, 1, 0, 3)
    assert len(data_files(tmp_path / "ok")) == 1
    records = {path.parent.parent.name + "/" + record["error_type"]: record
               for path in sorted(tmp_path.glob("*/failures/*.json"))
               for record in [json.loads(path.read_text())]}
    assert sorted(records) == ["blocked/ConfigError", "blocked/ResultsDirError",
                               "ok/ConfigError"]
    late = records["blocked/ResultsDirError"]
    assert {"algo.gamma=0.99", "name=blocked"} <= set(late["overrides"])
    assert late["run_key"] and "ensure_writable" in late["traceback"]
    assert "-m bench.run" in late["rerun"] and "name=blocked" in late["rerun"]
    assert f"cannot write results to {blocker}" in late["error"]
    assert all(records[k]["run_key"] is None for k in records if k.endswith("ConfigError"))
    assert re.search(r"^error: grid point algo.gamma=7 .*failed: ConfigError", result.stderr,
                     re.MULTILINE)
    assert "[sweep] FAILED grid point 4 algo.gamma=0.99 " in result.stderr
    # One job (the packing sweeper packed all four): one trained, three failed.
    assert re.search(r"\[sweep\] job 1/1 FAILED in \S+ \(1 done, 3 failed\)", result.stderr)
    assert "algo.gamma must be a finite number in [0, 1], got 7" in result.stderr
    (summary,) = (tmp_path / "default" / "hydra").glob(f"*/{sweep.SUMMARY_FILE}")
    assert json.loads(summary.read_text())["counts"] == {
        "done": 1, "skipped": 0, "failed": 3, "without_outcome": 0}


def test_a_failure_record_goes_when_its_rerun_command_succeeds(tmp_path):
    """A grid point that fails once its run key exists (its results directory cannot be
    created) is recorded; once the cause is gone, the record's `rerun` command (a single run)
    succeeds and removes it."""
    blocker = tmp_path / "blocked" / "data"
    blocker.parent.mkdir()
    blocker.write_text("a file where the data directory should be")
    result = multirun(f"results_dir={tmp_path}", "name=ok,blocked", *TINY)
    assert result.returncode == 1 and summary_counts(result.stderr)[2:] == (1, 0, 1)
    (path,) = (tmp_path / "blocked" / "failures").glob("*.json")
    record = json.loads(path.read_text())
    assert record["run_key"] and record["error_type"] == "ResultsDirError"
    blocker.unlink()
    rerun = subprocess.run(record["rerun"], shell=True, cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert len(data_files(tmp_path / "blocked")) == 1 and not path.exists()


def test_diverged_seeds_are_in_the_summary(tmp_path):
    result = multirun(f"results_dir={tmp_path}", "hydra/launcher=basic", "env=pendulum",
                      "optim=sgd", "optim.lr=1e30,1e-3", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[sweep] diverged: 2 seeds in 1 of 2 grid points" in result.stderr
    assert re.search(r"\[sweep\]   grid point 1 env=pendulum optim=sgd optim.lr=1e\+30 .*"
                     r"\(run [0-9a-f]{16}\): seeds \[0, 1\]", result.stderr)


def test_submitit_local_launcher(tmp_path):
    result = multirun("+experiment=smoke", f"results_dir={tmp_path}",
                      "hydra/launcher=submitit_local", "total_steps=600",
                      "hydra.sweeper.max_slots=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary_counts(result.stderr) == (2, 2, 2, 0, 0)
    assert len(data_files(tmp_path / "smoke")) == 2
    logs = "".join(p.read_text() for p in (tmp_path / "smoke" / "hydra").rglob("*_log.err"))
    assert re.search(r"\[sweep\] job [12]/2 started: reduction=mean .*: 1 grid point, 2 slots",
                     logs)


FAKE_SBATCH = """\
#!/bin/bash
# Keeps the batch script, then runs its array tasks in the background as SLURM would.
cp "$1" "$(dirname "$0")/submitted.sh"
last=$(sed -n 's/^#SBATCH --array=0-\\([0-9]*\\)%.*/\\1/p' "$1")
(
  sleep 1
  for task in $(seq 0 "${last:-0}"); do
    SLURM_JOB_ID=$((5000 + task)) SLURM_ARRAY_JOB_ID=4242 SLURM_ARRAY_TASK_ID=$task \\
    SLURM_NTASKS=1 SLURM_JOB_NUM_NODES=1 SLURM_NODEID=0 SLURM_PROCID=0 SLURM_LOCALID=0 \\
    SLURM_JOB_NODELIST=localhost bash "$1"
  done
) </dev/null >/dev/null 2>&1 &
echo "Submitted batch job 4242"
"""
FAKE_SRUN = """\
#!/bin/bash
# Drops srun's options and runs the command.
while [[ "$1" == --* ]]; do
  case "$1" in --output|--error) shift 2 ;; *) shift ;; esac
done
exec "$@"
"""
FAKE_SACCT = '#!/bin/bash\necho "JobID|State|NodeList"\n'


def test_slurm_launcher_through_a_fake_sbatch(tmp_path):
    """conf/hydra/launcher/slurm.yaml through Hydra's submitit SLURM launcher, with sbatch,
    srun and sacct replaced by scripts that run the job array locally."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"sbatch": FAKE_SBATCH, "srun": FAKE_SRUN, "sacct": FAKE_SACCT}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = multirun("+experiment=smoke", f"results_dir={tmp_path}", "total_steps=600",
                      "hydra/launcher=slurm", "hydra.launcher.partition=cpu",
                      "hydra.sweeper.max_slots=2", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary_counts(result.stderr) == (2, 2, 2, 0, 0)
    script = (bin_dir / "submitted.sh").read_text()
    for flag in ("--array=0-1%2", "--cpus-per-task=1", "--mem=4GB", "--time=720",
                 "--partition=cpu", "--job-name=bench-smoke"):
        assert f"#SBATCH {flag}\n" in script
    assert len(data_files(tmp_path / "smoke")) == 2


def preset_config(preset: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"+experiment={preset}"], return_hydra_config=True)


# Preset -> (results name, grid points).
EXPECTED = {
    "smoke": ("smoke", 2),
    "quick": ("quick", 3 * 2 * 7 * 2),
    "paper": ("paper", 3 * 6 * 7 * 3 * 5),
    "seed_claims_000_001": ("seed_claims_000_001", 2 * 2 * 3 * 2 * 5),
    "seed_claims_002_batched": ("seed_claims_002", 2 * 2 * 2 * 2 * 2 * 3),
    "seed_claims_002_stepwise": ("seed_claims_002", 2 * 2 * 2 * 3),
    "seed_claims_003": ("seed_claims_003", 2 * 3 * 2 * 9),
    "llm_length_bias": ("llm_length_bias", 5 * 2 * 2),
    **{f"gradients_{algo}": ("gradients", 3 * 2) for algo in ("reinforce", "vpg", "a2c", "ppo")},
}


def test_every_preset_is_listed_here():
    assert PRESETS == sorted(EXPECTED)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_grid_and_its_jobs_are_valid(preset):
    """Each preset names its results and sweeps the expected grid; every combination of its
    algorithm settings (whose checks depend on each other), with every value of the other
    swept keys, is a valid job."""
    config = preset_config(preset)
    assert (config.name, sweep.planned_points(config)) == EXPECTED[preset]
    params = {str(k): str(v).split(",") for k, v in config.hydra.sweeper.params.items()}
    algo_keys = [k for k in params if k == "algo" or k.startswith("algo.")]
    other_keys = [k for k in params if k not in algo_keys]
    algo_grid = itertools.product(*(params[k] for k in algo_keys))
    rows = max((len(params[k]) for k in other_keys), default=1)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for algo_values in algo_grid:
            for row in range(rows):
                overrides = [f"{k}={v}" for k, v in zip(algo_keys, algo_values, strict=True)]
                overrides += [f"{k}={params[k][row % len(params[k])]}" for k in other_keys]
                job = compose("config", overrides=[f"+experiment={preset}", *overrides])
                make_job(OmegaConf.to_container(job, resolve=True), overrides)


def test_make_sweep_runs_every_preset_of_a_family():
    """`make sweep EXP=seed_claims` runs each conf/experiment/seed_claims_*.yaml; SEEDS,
    LAUNCHER and PARTITION become Hydra overrides."""
    def dry_run(*variables: str) -> str:
        result = subprocess.run(["make", "-n", "sweep", *variables], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    family = dry_run("EXP=seed_claims", "SEEDS=3", "JOBS=4")
    claims = " ".join(p for p in PRESETS if p.startswith("seed_claims_"))
    assert f"for preset in {claims};" in family
    assert "hydra/launcher=joblib hydra.launcher.n_jobs=4 seeds=3" in family
    slurm = dry_run("EXP=paper", "LAUNCHER=slurm", "PARTITION=cpu")
    assert "for preset in paper;" in slurm
    assert "hydra/launcher=slurm hydra.launcher.partition=cpu" in slurm
    assert "n_jobs" not in slurm


def test_stale_temporaries_are_removed_and_young_ones_kept(tmp_path):
    data = tmp_path / "x" / "data"
    data.mkdir(parents=True)
    stale, young = data / ".a-b.parquet.tmp-1", data / ".c-d.parquet.tmp-2"
    complete = data / "a-b.parquet"
    for path in (stale, young, complete):
        path.write_bytes(b"")
    os.utime(stale, (time.time() - 2 * sweep.STALE_TEMPORARY_AGE_S,) * 2)
    assert sweep.remove_stale_temporaries(tmp_path, "x") == [stale]
    assert set(data.iterdir()) == {complete, young}


def test_a_failure_record_is_per_job_and_cleared_when_the_job_completes(tmp_path):
    overrides = ["env=cartpole", "reduction=mean", f"results_dir={tmp_path}", "seeds=3"]
    try:
        raise RuntimeError("boom")
    except RuntimeError as error:
        path = sweep.record_failure(tmp_path, "x", overrides, error, "k", None)
    record = json.loads(path.read_text())
    assert record["error"] == "boom" and "RuntimeError: boom" in record["traceback"]
    # The same job with other output settings or seeds is the same job...
    same = ["reduction=mean", "env=cartpole", "seeds=5", "results_dir=elsewhere"]
    assert sweep.failure_path(tmp_path, "x", same) == path
    assert sweep.failure_path(tmp_path, "x", ["env=acrobot", "reduction=mean"]) != path
    sweep.clear_failure(tmp_path, "x", same)
    assert not path.exists()


def test_job_labels_and_durations():
    assert sweep.job_label(["+experiment=quick", "results_dir=r", "env=cartpole",
                            "seeds=3", "optim.lr=0.1"]) == "env=cartpole optim.lr=0.1"
    assert sweep.format_duration(1234.4) == "20m34s"
    assert sweep.format_duration(5000) == "1h23m20s"


def test_single_run_config_error_still_exits_2_without_writing(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", f"results_dir={tmp_path}", "algo.gamma=7"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: algo.gamma must be a finite number in [0, 1], got 7"]
    assert list(tmp_path.iterdir()) == []  # no Hydra directory, no data, no failure record

"""Fault injection through the entry points users use (`python -m bench.run`, single and
multirun, and `python -m analysis.report`): bad input, unwritable directories, overlapping seed
sets, damaged files, concurrent identical jobs and sweeps, a job killed while it holds its lock.
What each asserts: one line on stderr naming the bad value and exit status 2, nothing written
or corrupted, exactly one row set per (run key, seed), nothing trained twice.

Jobs are tiny (1-2 seeds, 300 env steps); bad values are refused before training, most of them
checked in-process through the same function the command line calls (`check_command_line`),
a few through real subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from analysis.load import DuplicateSeedsWarning, SkippedFileWarning, load_dataset
from bench import schema, store
from bench.config import make_job
from bench.run import check_command_line

REPO = Path(__file__).resolve().parent.parent
TINY = ["total_steps=300", "algo.episodes_per_update=2", "progress_interval_s=0"]


def command(results_dir: Path, *overrides: str, multirun: bool = False) -> list[str]:
    flags = ["--multirun"] if multirun else []
    return [sys.executable, "-m", "bench.run", *flags, f"results_dir={results_dir}", *overrides]


def bench_run(results_dir: Path, *overrides: str, multirun: bool = False,
              ) -> subprocess.CompletedProcess:
    return subprocess.run(command(results_dir, *overrides, multirun=multirun), cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def start(results_dir: Path, log: Path, *overrides: str, multirun: bool = False,
          ) -> subprocess.Popen:
    """A `bench.run` process in the background, its stderr going to `log`."""
    return subprocess.Popen(command(results_dir, *overrides, multirun=multirun), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"),
                            start_new_session=True)


def report(experiment: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis.report", str(experiment),
                           "--resamples", "100"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MPLBACKEND": "Agg"})


def data_files(experiment: Path) -> list[Path]:
    return sorted((experiment / "data").glob("*.parquet"))


def file_pairs(experiment: Path) -> list[tuple[str, int]]:
    """(run key, seed) of every seed every result file lists."""
    pairs = []
    for path in data_files(experiment):
        metadata = pq.read_schema(path).metadata
        key = metadata[schema.RUN_KEY_KEY.encode()].decode()
        pairs += [(key, seed) for seed in json.loads(metadata[schema.SEEDS_KEY.encode()])]
    return pairs


def first_updates_per_seed(experiment: Path) -> dict[int, int]:
    """Rows of update 0 per seed as plain `pd.read_parquet` sees the data directory."""
    frame = pd.read_parquet(experiment / "data")
    first = frame[(frame.kind == "update") & (frame["update"] == 0)]
    return first.groupby("seed").size().to_dict()


def job_of(results_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        config = compose("config", overrides=[f"results_dir={results_dir}", *overrides])
    return make_job(OmegaConf.to_container(config, resolve=True), list(overrides))


def wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def make_unwritable(path: Path) -> None:
    """Make a directory refuse new files, as root too (chattr +i) or as a user (chmod)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(
                ["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("root without chattr +i: cannot make a directory unwritable")
    else:
        path.chmod(0o555)


def make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    else:
        path.chmod(0o755)


# --- bad values: one line naming the value and its valid range, exit 2, nothing created ---

BAD_VALUES = [
    (["optim.lr=inf"], "optim.lr must be a finite number > 0, got inf"),
    (["optim.lr=0"], "optim.lr must be a finite number > 0, got 0"),
    (["reduction=length_power", "reduction.alpha=nan"],
     "reduction.alpha must be a finite number in [0, 1], got nan"),
    (["reduction=length_power", "reduction.alpha=-1"],
     "reduction.alpha must be a finite number in [0, 1], got -1"),
    (["algo.entropy_coef=nan"], "algo.entropy_coef must be a finite number >= 0, got nan"),
    (["algo.value_coef=nan"], "algo.value_coef must be a finite number >= 0, got nan"),
    (["algo.network.hidden_sizes=[0]"],
     "algo.network.hidden_sizes must be a non-empty list of integers >= 1"),
    (["network.hidden_sizes=[0]"], "Could not override 'network.hidden_sizes'"),
    (["optim.eps=-1"], "optim.eps must be a finite number >= 0, got -1"),
    (["optim.betas=[0.9,1.0]"], "optim.betas must be two finite numbers in [0, 1)"),
    (["optim=sgd", "optim.nesterov=1"], "optim.nesterov must be true or false, got 1"),
    (["reduction=constant", "reduction.max_length=0"],
     "reduction.max_length must be an integer >= 1 or null, got 0"),
    (["env.backend=gymnasium", "env.id=Nope-v0"],
     "env.id='Nope-v0' is not a registered gymnasium environment"),
    (["env.backend=gymnasium", "+env.kwargs.bogus=1"], "cannot be made"),
    (["env.action=continuous"], "CartPole-v1 has discrete actions"),
    (["algo=ppo", "algo.target_kl=-1"], "algo.target_kl must be a finite number > 0 or null"),
    (["algo.gamma=nan"], "algo.gamma must be a finite number in [0, 1], got nan"),
    (["+algo.foo=1"], "unknown config value algo.foo=1"),
    (["~optim.eps"], "missing config value optim.eps"),
    (["name=../../elsewhere"], "name must be one directory name"),
    (["name=.."], "name must be one directory name"),
    (["algo=foo"], "Could not find 'algo/foo'; Available options in 'algo': a2c, grpo, ppo,"),
    (["seeds=[1,"], "cannot parse override 'seeds=[1,'"),
    (["reduction=mean,sum"], "Ambiguous value for argument 'reduction=mean,sum'"),
]


@pytest.mark.parametrize("overrides, message", BAD_VALUES, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else "")
def test_every_bad_value_is_one_line_before_anything_is_created(tmp_path, capsys, overrides,
                                                                message):
    """What `python -m bench.run` does first (its `cli`), in-process."""
    results = tmp_path / "r"
    with pytest.raises(SystemExit) as exit_info:
        check_command_line([f"results_dir={results}", *overrides])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overrides, message", [
    (["optim.lr=inf"], "error: optim.lr must be a finite number > 0, got inf"),
    (["env.backend=gymnasium", "env.id=Nope-v0"],
     "error: env.id='Nope-v0' is not a registered gymnasium environment"),
    (["name=../../elsewhere"], "error: name must be one directory name"),
    (["algo=foo"], "error: In 'config': Could not find 'algo/foo'"),
], ids=["lr=inf", "unknown-gymnasium-id", "name-escapes", "hydra-unknown-group"])
def test_bad_values_through_the_command_line(tmp_path, overrides, message):
    results = tmp_path / "a" / "r"
    result = bench_run(results, *TINY, *overrides)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(message), line
    assert list(tmp_path.iterdir()) == []  # no Hydra directory, no data, nothing elsewhere


def test_a_sweep_with_a_bad_shared_or_grid_value_is_refused_whole(tmp_path):
    """A bad value every grid point shares (here the output name) and a grid point Hydra
    cannot compose refuse the sweep in one line, exit 2, before any directory exists."""
    escaping = bench_run(tmp_path / "r", "name=../../x", "reduction=mean,sum", *TINY,
                         multirun=True)
    assert escaping.returncode == 2
    assert escaping.stderr.strip().splitlines() == [
        "error: name must be one directory name (not empty, '.' or '..', no '/'), "
        "got '../../x'"]
    unknown = bench_run(tmp_path / "r", "reduction=mean,nosuch", *TINY, multirun=True)
    assert unknown.returncode == 2
    assert re.search(r"^error: grid point 2 \(reduction=nosuch [^)]*\): In 'config': Could "
                     r"not find 'reduction/nosuch'; Available options in 'reduction': ",
                     unknown.stderr, re.MULTILINE), unknown.stderr
    assert list(tmp_path.iterdir()) == []


def test_equivalent_spellings_are_one_run_and_the_stored_config_says_what_ran(tmp_path):
    """constant's T_max: null (the default) and the env's step limit spelled out are one run
    key, and the stored config holds the value used; an integer spelling of a real value
    (optim.lr=1) is the float spelling's run."""
    default = job_of(tmp_path, "reduction=constant")
    explicit = job_of(tmp_path, "reduction=constant", "reduction.max_length=500")
    assert default.run_key == explicit.run_key and default.config["reduction"]["max_length"] == 500
    assert job_of(tmp_path, "optim.lr=1").run_key == job_of(tmp_path, "optim.lr=1.0").run_key
    assert job_of(tmp_path, "reduction=constant", "reduction.max_length=200").run_key != \
        default.run_key

    first = bench_run(tmp_path, "seeds=1", "reduction=constant", *TINY)
    assert first.returncode == 0, first.stderr[-2000:]
    second = bench_run(tmp_path, "seeds=1", "reduction=constant", "reduction.max_length=500",
                       *TINY)
    assert second.returncode == 0 and "already complete" in second.stderr, second.stderr
    (path,) = data_files(tmp_path / "default")
    stored = pq.read_schema(path).metadata[schema.CONFIG_KEY.encode()].decode()
    assert "max_length: 500" in stored


# --- unwritable directories: one line, before any training ---

def test_an_unwritable_data_dir_is_refused_before_training(tmp_path):
    data = tmp_path / "default" / "data"
    make_unwritable(data)
    try:
        single = bench_run(tmp_path, "seeds=1", *TINY)
        sweep = bench_run(tmp_path, "seeds=1", "reduction=mean,sum", *TINY, multirun=True)
    finally:
        make_writable(data)
    for result in (single, sweep):
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().splitlines() == [
            f"error: cannot write results to {data}: "
            + ("Operation not permitted" if os.geteuid() == 0 else "Permission denied")]
    assert list(data.iterdir()) == []


def test_an_unwritable_results_dir_is_one_line(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    result = bench_run(blocker, "seeds=1", *TINY)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot write results to {blocker}/default/data: ")


def test_an_unwritable_report_dir_is_one_line(tmp_path):
    assert bench_run(tmp_path, "seeds=1", *TINY).returncode == 0
    experiment = tmp_path / "default"
    make_unwritable(experiment)
    try:
        result = report(experiment)
    finally:
        make_writable(experiment)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if "error" in line]
    assert line.startswith("analysis.report: error: cannot write the report") and \
        "Traceback" not in result.stderr
    assert not (experiment / "report").exists()


# --- overlapping seed sets: each (run key, seed) once ---

def test_overlapping_seed_sets_started_together_train_each_seed_once(tmp_path):
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    jobs = [start(tmp_path, logs[0], "seeds=2", *TINY),
            start(tmp_path, logs[1], "seeds=[0,1,9]", *TINY)]
    assert [job.wait(timeout=300) for job in jobs] == [0, 0], [p.read_text() for p in logs]
    experiment = tmp_path / "default"
    pairs = file_pairs(experiment)
    assert sorted(seed for _, seed in pairs) == [0, 1, 9]  # no file repeats a seed
    assert first_updates_per_seed(experiment) == {0: 1, 1: 1, 9: 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedFileWarning)
        dataset = load_dataset(experiment)
    assert sorted(dataset.updates.seed.unique()) == [0, 1, 9] and not dataset.duplicates


def test_merged_results_with_overlapping_seeds_count_each_seed_once(tmp_path):
    """Two results dirs trained apart (seeds [0,1,5] and [0,1,9]) copied into one: the loader
    and the report take seeds 0 and 1 from the first file by name, 5 and 9 from their own,
    and say which seeds they left out of which file."""
    for part, seeds in (("a", "seeds=[0,1,5]"), ("b", "seeds=[0,1,9]")):
        assert bench_run(tmp_path / part, seeds, *TINY).returncode == 0
    merged = tmp_path / "merged" / "default" / "data"
    merged.mkdir(parents=True)
    for path in [*data_files(tmp_path / "a" / "default"), *data_files(tmp_path / "b" / "default")]:
        shutil.copy(path, merged)
    files = data_files(merged.parent)
    assert len(files) == 2
    assert sorted(first_updates_per_seed(merged.parent).values()) == [1, 1, 2, 2]  # plain read
    with pytest.warns(DuplicateSeedsWarning, match="seeds 0, 1 left out, already loaded from"):
        dataset = load_dataset(merged.parent)
    first_updates = dataset.updates[dataset.updates["update"] == 0]
    assert first_updates.groupby("seed").size().to_dict() == {0: 1, 1: 1, 5: 1, 9: 1}
    (duplicate,) = dataset.duplicates
    assert duplicate.seeds == [0, 1] and (duplicate.loaded_from, duplicate.path) == tuple(files)
    assert sorted(s for seeds in dataset.runs["seeds"] for s in seeds) == [0, 1, 5, 9]
    assert dataset.skipped == []
    result = report(merged.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "seeds 0, 1 left out" in result.stderr
    per_seed = pd.read_csv(merged.parent / "report" / "per_seed_metrics.csv")
    assert sorted(per_seed.seed) == [0, 1, 5, 9]


# --- damaged files: retrained by resume, reported by the loader ---

def damage_values(path: Path) -> None:
    """Change one number in the rows and keep the footer's metadata (its digest included): the
    file still decodes, as damaged data pages that happen to decode would."""
    table = pq.read_table(path)
    frame = table.to_pandas()
    frame.loc[frame["episode_return"].first_valid_index(), "episode_return"] += 1.0
    import pyarrow as pa

    changed = pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False)
    pq.write_table(changed.replace_schema_metadata(table.schema.metadata), path)


def smash_data_pages(path: Path) -> None:
    """Overwrite bytes in the middle of the data pages, leaving the footer intact."""
    data = bytearray(path.read_bytes())
    footer = struct.unpack("<I", data[-8:-4])[0]
    middle = (4 + len(data) - 8 - footer) // 2
    data[middle - 32:middle + 32] = bytes(64)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [damage_values, smash_data_pages],
                         ids=["values-changed", "pages-smashed"])
def test_a_damaged_file_is_reported_and_retrained(tmp_path, damage):
    overrides = ["seeds=2", *TINY]
    assert bench_run(tmp_path, *overrides).returncode == 0
    experiment = tmp_path / "default"
    (path,) = data_files(experiment)
    original = pq.read_table(path)
    damage(path)
    pq.read_schema(path)  # the footer still reads

    refused = report(experiment)
    assert refused.returncode == 2
    (line,) = [line for line in refused.stderr.splitlines() if "error" in line]
    assert line.startswith("analysis.report: error: no valid results files") and \
        ("content check failed" in line or "not a readable parquet file" in line), line

    rerun = bench_run(tmp_path, *overrides)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"warning: {path} is not counted as complete" in rerun.stderr
    assert re.search(r"^wrote .* \(seeds \[0, 1\]", rerun.stderr, re.MULTILINE)
    assert data_files(experiment) == [path]  # the retrained file replaced the damaged one
    deterministic = [c for c in original.column_names if c not in
                     schema.NONDETERMINISTIC_COLUMNS]
    assert pq.read_table(path).select(deterministic).equals(original.select(deterministic))
    assert load_dataset(experiment).skipped == []


def test_files_without_a_digest_are_trusted_as_before(tmp_path):
    """A file written before content digests existed resumes as complete and loads."""
    assert bench_run(tmp_path, "seeds=1", *TINY).returncode == 0
    experiment = tmp_path / "default"
    (path,) = data_files(experiment)
    table = pq.read_table(path)
    metadata = dict(table.schema.metadata)
    del metadata[schema.CONTENT_DIGEST_KEY.encode()]
    pq.write_table(table.replace_schema_metadata(metadata), path)
    assert store.completed_seeds(tmp_path, "default", table["run_key"][0].as_py()) == {0: path}
    assert load_dataset(experiment).skipped == []


# --- concurrent identical jobs and sweeps: trained once ---

def test_identical_jobs_started_together_train_once(tmp_path):
    """While a run's lock is held (as by a first job), two identical jobs wait; once it is
    released one trains and the other finds the seeds complete. Each has its own Hydra
    directory."""
    overrides = ["seeds=2", *TINY]
    job = job_of(tmp_path, *overrides)
    lock = store.RunLock(store.data_dir(tmp_path, "default"), job.run_key)
    assert lock.acquire(blocking=False)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    try:
        processes = [start(tmp_path, log, *overrides) for log in logs]
        wait_for(lambda: all("waiting for" in log.read_text() for log in logs),
                 "both jobs to wait for the lock")
        assert f"pid {os.getpid()}" in logs[0].read_text()
    finally:
        lock.release()
    assert [process.wait(timeout=300) for process in processes] == [0, 0]
    stderr = "".join(log.read_text() for log in logs)
    assert len(re.findall(r"^wrote ", stderr, re.MULTILINE)) == 1
    assert len(re.findall(r"^skip .* already complete", stderr, re.MULTILINE)) == 1
    assert sorted(seed for _, seed in file_pairs(tmp_path / "default")) == [0, 1]
    assert len(list((tmp_path / "default" / "hydra").iterdir())) == 2


def test_identical_sweeps_started_together_train_each_grid_point_once(tmp_path):
    overrides = ["seeds=1", "reduction=mean,sum,traj_mean", "hydra.sweeper.max_slots=1",
                 "hydra.launcher.n_jobs=1", *TINY]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    sweeps = [start(tmp_path, log, *overrides, multirun=True) for log in logs]
    assert [s.wait(timeout=300) for s in sweeps] == [0, 0], logs[0].read_text()[-2000:]
    stderr = "".join(log.read_text() for log in logs)
    assert len(re.findall(r"^wrote ", stderr, re.MULTILINE)) == 3
    assert len(re.findall(r"^skip ", stderr, re.MULTILINE)) == 3
    pairs = file_pairs(tmp_path / "default")
    assert len(pairs) == len(set(pairs)) == 3
    summaries = sorted((tmp_path / "default" / "hydra").glob("*/summary.json"))
    assert len(summaries) == 2  # one Hydra directory and summary per sweep


# --- a job killed while it holds its lock: the lock is not stale ---

def test_a_job_killed_while_training_leaves_no_lock_and_no_file(tmp_path):
    overrides = ["seeds=2", "total_steps=200000", "progress_interval_s=0"]
    job = job_of(tmp_path, *overrides)
    lock = store.RunLock(store.data_dir(tmp_path, "default"), job.run_key)
    process = start(tmp_path, tmp_path / "a.log", *overrides)
    wait_for(lambda: lock.path.exists() and f"pid {process.pid} " in lock.path.read_text(),
             "the job to take its lock")
    assert not lock.acquire(blocking=False)  # held while it trains
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert lock.acquire(blocking=False)  # released by the kernel: a rerun does not wait
    lock.release()
    assert data_files(tmp_path / "default") == []


@pytest.mark.slow
def test_a_packed_sweep_killed_at_random_moments_ends_with_each_seed_once(tmp_path):
    """kill -9 a packed sweep (2 packs of 2 grid points, 2 workers) at random moments, three
    times, then let it finish: every (run key, seed) has exactly one row set."""
    import random

    overrides = ["name=kill", "optim=adam,sgd", "reduction=mean,sum", "seeds=2",
                 "total_steps=3000", "progress_interval_s=0", "hydra.launcher.n_jobs=2"]
    experiment = tmp_path / "kill"
    generator = random.Random(12)
    for attempt in range(3):
        process = start(tmp_path, tmp_path / f"{attempt}.log", *overrides, multirun=True)
        time.sleep(generator.uniform(3.0, 15.0))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    final = bench_run(tmp_path, *overrides, multirun=True)
    assert final.returncode == 0, final.stderr[-3000:]
    pairs = file_pairs(experiment)
    assert len(pairs) == len(set(pairs)) == 8
    frame = pd.read_parquet(experiment / "data")
    first = frame[(frame.kind == "update") & (frame["update"] == 0)]
    assert first.groupby(["run_key", "seed"]).size().eq(1).all() and len(first) == 8
    dataset = load_dataset(experiment)
    assert dataset.skipped == [] and dataset.duplicates == []

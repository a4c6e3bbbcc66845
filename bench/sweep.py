"""Sweep bookkeeping for Hydra multiruns: outcomes, failure records, progress and summary.

A job of a multirun is one process that trains a pack of grid points (`bench.run`; the
packing sweeper, `hydra_plugins.bench_packing`, forms the packs; with Hydra's basic sweeper
every job is one grid point). Outcomes are kept per grid point (`JobOutcome`) and gathered per
job (`PackOutcome`); progress lines and the summary count grid points and seeds.

How Hydra 1.3 treats a job that raises: `hydra.core.utils.run_job` (used by the basic, joblib
and submitit launchers alike) catches the exception and marks the job FAILED; once the whole
batch has run, the basic sweeper reads every job's return value, re-raises the first failure
and the process exits 1, so `on_multirun_end` callbacks never run, no summary is printed and
later batches (`hydra.sweeper.max_batch_size`) never start. So `bench.run` catches a job's
exception itself, records it with `record_failure` and returns failed `JobOutcome`s: Hydra
sees a completed job. `SweepCallback` (a Hydra callback, `hydra.callbacks.sweep` in
conf/config.yaml) then does the sweep's bookkeeping:

- `on_multirun_start` (main process): removes stale temporary result files and writes
  `<sweep dir>/sweep.json` with the number of grid points of the sweep (the packing sweeper
  writes it itself, with the number of jobs and seeds, once every grid point has composed and
  its packs are formed: a sweep it refuses creates no directory);
- `on_job_start` / `on_job_end` (in the process that runs the job: the main process, a joblib
  worker or a submitit job): a progress line each, and the job's outcome as `outcome.json` in
  its Hydra output directory, so outcomes reach the main process through the file system
  whichever launcher ran the job. Submitit jobs print to their own log files, so for those
  launchers a thread of the main process prints the count of finished jobs as it changes;
- `on_multirun_end` (main process): the summary (done, skipped as already complete, failed,
  diverged seeds), also written to `<sweep dir>/summary.json`, and exit status 1 if any job
  failed or left no outcome.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from bench import store

DONE, SKIPPED, FAILED = "done", "skipped", "failed"
OUTCOME_FILE = "outcome.json"
MANIFEST_FILE = "sweep.json"
# The packing sweeper's pack files, <sweep dir>/packs/<n>.json: the grid points of job n.
PACKS_DIR = "packs"
SUMMARY_FILE = "summary.json"
FAILURES_DIR = "failures"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
PACKING_SWEEPER = "hydra_plugins.bench_packing.packing_sweeper.PackingSweeper"
# Launchers whose jobs print to their own log files rather than to the sweep's terminal.
DETACHED_LAUNCHERS = (
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
)
# Seconds between checks for newly finished jobs of a detached launcher.
WATCH_INTERVAL_S = 10.0
# `store.write_atomically` writes a temporary dot-file and renames it into place; one that is
# left behind (a job killed mid-write) is ignored by readers, and removed once it is older than
# this, which no write in progress can be.
STALE_TEMPORARY_AGE_S = 3600.0
# Diverged and failed jobs listed in the printed summary (all of them are in summary.json).
MAX_LISTED = 20
# Overrides that say where results go or how fast a job runs, and the preset that every job of
# a sweep shares: left out of the labels of progress lines.
NOT_LABEL_KEYS = (*store.NON_RESULT_KEYS, "experiment")


@dataclass
class JobOutcome:
    """What became of one grid point of a sweep (part of its job's `PackOutcome`)."""

    status: str  # DONE (trained and wrote a file), SKIPPED (already complete) or FAILED
    overrides: list[str]
    run_key: str | None = None  # None when the config was rejected before the key existed
    seeds: list[int] = field(default_factory=list)  # seeds trained, or found complete
    diverged_seeds: list[int] = field(default_factory=list)
    path: str | None = None  # the file written (DONE)
    error: str | None = None  # "<exception type>: <message>" (FAILED)
    failure_record: str | None = None  # results/<name>/failures/<id>.json (FAILED)
    grid_index: int | None = None  # 1-based position of the grid point in the sweep's grid



@dataclass
class PackOutcome:
    """What one job (process) of a sweep did: one outcome per grid point it held; returned by
    the task function, stored as outcome.json."""

    overrides: list[str]  # the job's own overrides
    points: list[JobOutcome]

    @property
    def status(self) -> str:
        """FAILED if any grid point failed, else DONE if any trained, else SKIPPED."""
        statuses = {point.status for point in self.points}
        return next((s for s in (FAILED, DONE) if s in statuses), SKIPPED)

    @classmethod
    def from_file(cls, path: Path) -> PackOutcome:
        content = json.loads(path.read_text())
        return cls(content["overrides"], [JobOutcome(**point) for point in content["points"]])


def write_json(path: Path, content: Any) -> None:
    """Write `content` as JSON via a temporary file and a rename, so that readers never see
    half a file (jobs read each other's outcome files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = store.temporary_path(path)
    temporary.write_text(json.dumps(content, indent=1))
    os.replace(temporary, path)


def override_key(override: str) -> str:
    """'+experiment=quick' -> 'experiment', 'algo.gamma=0.9' -> 'algo.gamma'."""
    return override.split("=", 1)[0].lstrip("+~")


def job_label(overrides: Iterable[str]) -> str:
    """The overrides that tell the jobs of a sweep apart, e.g. 'env=cartpole reduction=mean'."""
    label = " ".join(o for o in overrides if override_key(o) not in NOT_LABEL_KEYS)
    return label or "(defaults)"


def failure_path(results_dir: str | Path, name: str, overrides: Sequence[str]) -> Path:
    """Where the failure of the job with these overrides is recorded: one file per job
    identity (its overrides without output settings and seeds), so a re-run replaces it."""
    identity = sorted(o for o in overrides if override_key(o) not in store.NON_RESULT_KEYS)
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:12]
    return Path(results_dir) / name / FAILURES_DIR / f"{digest}.json"


def record_failure(
    results_dir: str | Path,
    name: str,
    overrides: Sequence[str],
    error: BaseException,
    run_key: str | None,
    job_dir: str | None,
) -> Path:
    """Write the failure of one job (overrides, run key, error, traceback, the command that
    re-runs it alone) to `failure_path`; returns the path."""
    path = failure_path(results_dir, name, overrides)
    write_json(path, {
        "overrides": list(overrides),
        "run_key": run_key,
        "error_type": type(error).__name__,
        "error": str(error),
        "traceback": "".join(traceback.format_exception(error)),
        "rerun": shlex.join([sys.executable, "-m", "bench.run", *overrides]),
        "job_dir": job_dir,
        "host": socket.gethostname(),
        "time": store.utc_now(),
    })
    return path


def clear_failure(results_dir: str | Path, name: str, overrides: Sequence[str]) -> None:
    """Remove the failure record of a job that has now completed (or was complete)."""
    failure_path(results_dir, name, overrides).unlink(missing_ok=True)


def remove_stale_temporaries(
    results_dir: str | Path, name: str, max_age_s: float = STALE_TEMPORARY_AGE_S
) -> list[Path]:
    """Delete temporary result files older than `max_age_s` (left by killed jobs); younger
    ones may belong to a job writing right now and are left alone. Returns those deleted."""
    now = time.time()
    removed = []
    for path in store.data_dir(results_dir, name).glob(store.TEMPORARY_GLOB):
        try:
            if now - path.stat().st_mtime > max_age_s:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # removed meanwhile by a concurrent sweep
            continue
    return removed


def planned_points(config: DictConfig) -> int | None:
    """How many grid points the multirun covers: the size of the grid (`hydra.sweeper.params`
    updated by the command line) for the basic and the packing sweeper; None for others."""
    if config.hydra.sweeper.get("_target_") not in (BASIC_SWEEPER, PACKING_SWEEPER):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    arguments += list(config.hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(arguments)
    return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))


def read_manifest(config: DictConfig) -> dict[str, Any]:
    """The sweep's `sweep.json` (empty if `on_multirun_start` did not run)."""
    path = Path(config.hydra.sweep.dir) / MANIFEST_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def read_outcomes(sweep_dir: Path) -> dict[int, PackOutcome]:
    """The job outcomes stored so far in a sweep directory, by job number (its subdirectory)."""
    outcomes = {
        int(path.parent.name): PackOutcome.from_file(path)
        for path in sweep_dir.glob(f"*/{OUTCOME_FILE}")
        if path.parent.name.isdigit()
    }
    return dict(sorted(outcomes.items()))


def grid_points(outcomes: Iterable[PackOutcome]) -> list[JobOutcome]:
    """The grid-point outcomes of job outcomes, in job order."""
    return [point for outcome in outcomes for point in outcome.points]


def count_statuses(points: Iterable[JobOutcome]) -> dict[str, int]:
    """{DONE: n, SKIPPED: n, FAILED: n} over grid points."""
    statuses = [point.status for point in points]
    return {status: statuses.count(status) for status in (DONE, SKIPPED, FAILED)}


def finished_line(outcomes: dict[int, PackOutcome], total: int | None) -> str:
    """'5/28 grid points finished: 3 done, 1 skipped, 1 failed'."""
    points = grid_points(outcomes.values())
    counts = count_statuses(points)
    return (f"{len(points)}/{total or '?'} grid points finished: {counts[DONE]} done, "
            f"{counts[SKIPPED]} skipped, {counts[FAILED]} failed")


def format_duration(seconds: float) -> str:
    """1234.5 -> '20m35s'; 5000 -> '1h23m20s'."""
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def first_line(text: str | None) -> str:
    """The first line of an error message (pyarrow's, for one, run over many lines)."""
    return (text or "").partition("\n")[0]


def one_line(error: BaseException) -> str:
    """A Hydra or OmegaConf error message as one line: the lists Hydra prints one item a line
    become comma-separated, the config search path and documentation links are left out."""
    lines: list[str] = []
    for raw in str(error).splitlines():
        line = raw.strip()
        if line.startswith("Config search path") or line.startswith("provider="):
            break
        if not line or line.startswith("See https://hydra.cc"):
            continue
        if raw.startswith("\t") and lines and lines[-1].endswith(":"):
            lines[-1] += " " + line
        elif raw.startswith("\t") and lines:
            lines[-1] += ", " + line
        else:
            lines.append(line)
    return "; ".join(lines).replace(".; ", "; ") or type(error).__name__


def count_of(number: int, noun: str, plural: str | None = None) -> str:
    """'1 job', '3 jobs'; '1 process', '2 processes' (with `plural`)."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def say(message: str) -> None:
    print(f"[sweep] {message}", file=sys.stderr, flush=True)


def say_listed(lines: Sequence[str]) -> None:
    """Print at most `MAX_LISTED` lines, then how many more the summary file holds."""
    for line in lines[:MAX_LISTED]:
        say(line)
    if len(lines) > MAX_LISTED:
        say(f"  ... and {len(lines) - MAX_LISTED} more in {SUMMARY_FILE}")


def returned_outcome(job_return: JobReturn) -> PackOutcome:
    """The `PackOutcome` the task function returned; one failed grid point if it returned
    none (or raised, which `bench.run` never lets happen)."""
    if job_return.status == JobStatus.COMPLETED and isinstance(
        job_return.return_value, PackOutcome
    ):
        return job_return.return_value
    overrides = list(job_return.overrides or [])
    return PackOutcome(overrides, [JobOutcome(
        FAILED, overrides, error="the job returned no outcome; see its Hydra log")])


class FinishedJobsWatcher(threading.Thread):
    """Prints the number of finished jobs whenever it changes, checking every `interval_s`;
    for launchers whose jobs do not print to this terminal."""

    def __init__(self, sweep_dir: Path, total: int | None, interval_s: float) -> None:
        super().__init__(name="finished-jobs-watcher", daemon=True)
        self.sweep_dir, self.total, self.interval_s = sweep_dir, total, interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        reported = 0
        while not self.stopped.wait(self.interval_s):
            outcomes = read_outcomes(self.sweep_dir)
            if len(outcomes) != reported:
                reported = len(outcomes)
                say(finished_line(outcomes, self.total))

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def pack_file(config: DictConfig) -> Path | None:
    """The pack file of a packed job (`pack=<n>`), None for a job of one grid point."""
    if config.get("pack") is None:
        return None
    return Path(config.hydra.sweep.dir) / PACKS_DIR / f"{config.pack}.json"


class SweepCallback(Callback):
    """Hydra callback: stale-file cleanup, per-job progress, outcome files, the sweep summary
    and a non-zero exit when a grid point failed (see the module docstring)."""

    def __init__(self) -> None:
        self.job_started = time.monotonic()
        self.watcher: FinishedJobsWatcher | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Launchers pickle callbacks into the jobs; the watcher thread stays here."""
        return {**self.__dict__, "watcher": None}

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.remove_stale_temporaries(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.remove_stale_temporaries(config)
        sweep_dir = Path(config.hydra.sweep.dir)
        points = planned_points(config)
        if config.hydra.sweeper.get("_target_") != PACKING_SWEEPER:
            # (The packing sweeper writes it, and says where, once every grid point has
            # composed, so that a sweep it refuses leaves no Hydra directory behind.)
            write_json(sweep_dir / MANIFEST_FILE,
                       {"name": config.name, "points": points, "started": time.time()})
            say(f"{config.name}: {points if points is not None else 'an unknown number of'} "
                f"grid points; Hydra output in {sweep_dir}")
        if config.hydra.launcher.get("_target_") in DETACHED_LAUNCHERS:
            self.watcher = FinishedJobsWatcher(sweep_dir, points, WATCH_INTERVAL_S)
            self.watcher.start()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        self.job_started = time.monotonic()
        label = job_label(config.hydra.overrides.task)
        path = pack_file(config)
        if path is None:
            say(f"job {self.job_number(config)} started: {label}")
            return
        points = json.loads(path.read_text())
        seeds = sum(len(point["seeds"]) for point in points)
        say(f"job {self.job_number(config)} started: {label}: "
            f"{count_of(len(points), 'grid point')}, {count_of(seeds, 'slot')}")
        shared = set(config.hydra.overrides.task)
        for point in points if len(points) > 1 else []:
            say(f"  {job_label(o for o in point['overrides'] if o not in shared)}")

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        outcome = returned_outcome(job_return)
        write_json(Path(config.hydra.runtime.output_dir) / OUTCOME_FILE,
                   dataclasses.asdict(outcome))
        outcomes = read_outcomes(Path(config.hydra.sweep.dir))
        status = outcome.status.upper() if outcome.status == FAILED else outcome.status
        counts = count_statuses(outcome.points)
        own = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
        say(f"job {self.job_number(config)} {status} in "
            f"{format_duration(time.monotonic() - self.job_started)} ({own}) | "
            f"{finished_line(outcomes, read_manifest(config).get('points'))}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        sweep_dir = Path(config.hydra.sweep.dir)
        manifest = read_manifest(config)
        outcomes = read_outcomes(sweep_dir)
        points = grid_points(outcomes.values())
        counts = count_statuses(points)
        planned = manifest.get("points") or len(points)
        missing = max(planned - len(points), 0)
        seeds = sum(len(point.seeds) for point in points)
        elapsed = format_duration(time.time() - manifest.get("started", time.time()))
        say(
            f"{config.name}: {len(points)}/{planned} grid points finished in {elapsed}: "
            f"{counts[DONE]} done, {counts[SKIPPED]} skipped (already complete), "
            f"{counts[FAILED]} failed" + (f", {missing} without an outcome" if missing else "")
            + f" | {count_of(seeds, 'seed')} in {count_of(len(outcomes), 'process', 'processes')}"
        )
        numbered = [(point.grid_index or n, point) for n, point in enumerate(points, start=1)]
        diverged = [(n, point) for n, point in numbered if point.diverged_seeds]
        if diverged:
            count = sum(len(point.diverged_seeds) for _, point in diverged)
            say(f"diverged: {count} seeds in {len(diverged)} of {len(points)} grid points")
        say_listed([f"  grid point {n} {job_label(point.overrides)} (run {point.run_key}): "
                    f"seeds {point.diverged_seeds}" for n, point in diverged])
        say_listed([f"FAILED grid point {n} {job_label(point.overrides)}: "
                    f"{first_line(point.error)} -> {point.failure_record}"
                    for n, point in numbered if point.status == FAILED])
        write_json(sweep_dir / SUMMARY_FILE, {
            **manifest,
            "finished": time.time(),
            "counts": {**counts, "without_outcome": missing},
            "seeds": seeds,
            "processes": len(outcomes),
            "outcomes": {n + 1: dataclasses.asdict(o) for n, o in outcomes.items()},
        })
        say(f"summary: {sweep_dir / SUMMARY_FILE}")
        if counts[FAILED] or missing:
            sys.exit(1)

    @staticmethod
    def remove_stale_temporaries(config: DictConfig) -> None:
        for path in remove_stale_temporaries(config.results_dir, config.name):
            say(f"removed {path}, a temporary file left by an interrupted write")

    @staticmethod
    def job_number(config: DictConfig) -> str:
        """'3/28': the job's 1-based number in the sweep and the number of jobs."""
        manifest = read_manifest(config)
        return f"{config.hydra.job.num + 1}/{manifest.get('jobs') or manifest.get('points') or '?'}"

"""The Hydra entry point: one process trains a pack of grid points (their seeds are its slots)
and writes one file per grid point.

    python -m bench.run algo=reinforce env=cartpole reduction=mean optim=adam seeds=4
    python -m bench.run --multirun +experiment=smoke      # a sweep (conf/experiment/)

A single run is a pack of one grid point. In a multirun, the packing sweeper
(`hydra_plugins.bench_packing`) groups the grid points that can share a process and launches
one job per pack with `pack=<n>`; that job reads its grid points from the sweep's pack file.
Seeds already complete for a grid point (same run key, an intact file: `bench.store`) are
skipped; only the missing ones train, under the run key's lock (`store.RunLock`), so a second
process given the same run waits for the first and then trains only what is still missing.

Bad input stops before anything is created: `cli` (the ``python -m bench.run`` entry point)
composes the command line's config and checks every value (`bench.config`), the output names
and that the results directory is writable before Hydra makes its output directory, and
prints one ``error:`` line with exit status 2 on a bad value, on an override Hydra cannot parse
or compose, or on a results directory that cannot be written. In a multirun it checks what
the sweep shares (the overrides that are not swept); a grid point that then fails (a bad
swept value included) is recorded under `<results_dir>/<name>/failures/` and the other grid
points go on (`bench.sweep`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bench import store, sweep
from bench.algos import trainer
from bench.allocator import keep_freed_memory
from bench.config import ALGORITHMS, ConfigError, directory_name, make_job, text
from bench.progress import ProgressLine
from bench.records import PackRecorder
from bench.slots import Job, Slots
from bench.sweep import JobOutcome, PackOutcome


def job_overrides() -> list[str]:
    """The command-line/sweep overrides of this job ([] outside a Hydra app)."""
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def run_job(config: dict[str, Any], overrides: list[str]) -> JobOutcome:
    """Check, train and write one grid point (`ConfigError` on a bad value)."""
    (outcome,) = train_pack([make_job(config, overrides)])
    return outcome


def train_pack(points: list[Job]) -> list[JobOutcome]:
    """Train the seeds of checked grid points that are not complete yet, as the slots of one
    process, and write each grid point's new seeds to one file; one outcome per point.

    Before any compute, every point's data directory must be writable (`ResultsDirError`).
    Each run key is locked (`store.RunLock`) from the check of its complete seeds until its
    file is written: points whose lock another process holds wait for it and are then checked
    again, so what that process finished is skipped. Grid points with one run key (equivalent
    spellings of one value) are one run: the first trains the union of their seeds, the others
    are skipped as that run."""
    torch.set_num_threads(points[0].config["threads"])
    keep_freed_memory()  # a third less wall time for large packs (bench/allocator.py)
    for point in points:
        store.ensure_writable(point_data_dir(point))
    outcomes: dict[int, JobOutcome] = {}
    runs: dict[tuple[Path, str], int] = {}  # (data dir, run key) -> index of its first point
    merged: dict[int, Job] = {}
    for p, point in enumerate(points):
        first = runs.setdefault((point_data_dir(point), point.run_key), p)
        if first == p:
            merged[p] = point
            continue
        seeds = [*merged[first].seeds, *(s for s in point.seeds if s not in merged[first].seeds)]
        merged[first] = dataclasses.replace(merged[first], seeds=seeds)
        print(f"{sweep.job_label(point.overrides)}: the same run ({point.run_key}) as "
              f"{sweep.job_label(points[first].overrides)}; trained once", file=sys.stderr)
    locks = {p: store.RunLock(point_data_dir(point), point.run_key) for p, point in merged.items()}
    pending = list(merged)
    try:
        while pending:
            ready = [p for p in pending if locks[p].acquire(blocking=False)]
            if not ready:
                p = pending[0]
                print(f"waiting for {merged[p].label}: its run is being trained by "
                      f"{locks[p].holder()} ({locks[p].path})", file=sys.stderr, flush=True)
                locks[p].acquire(blocking=True)
                ready = [p] + [q for q in pending[1:] if locks[q].acquire(blocking=False)]
            pending = [p for p in pending if p not in ready]
            outcomes.update(train_locked({p: merged[p] for p in ready}))
            for p in ready:
                locks[p].release()
    finally:
        for lock in locks.values():
            lock.release()
    for p, point in enumerate(points):
        if p not in outcomes:
            outcomes[p] = JobOutcome(sweep.SKIPPED, list(point.overrides), point.run_key,
                                     point.seeds)
    return [outcomes[p] for p in range(len(points))]


def point_data_dir(point: Job) -> Path:
    return store.data_dir(point.config["results_dir"], point.config["name"])


def train_locked(points: dict[int, Job]) -> dict[int, JobOutcome]:
    """Train the missing seeds of grid points whose run keys this process has locked."""
    outcomes: dict[int, JobOutcome] = {}
    todo: list[tuple[int, Job]] = []
    for p, point in points.items():
        results_dir, name = point.config["results_dir"], point.config["name"]
        done = store.completed_seeds(results_dir, name, point.run_key)
        missing = [seed for seed in point.seeds if seed not in done]
        if not missing:
            files = sorted({str(done[seed]) for seed in point.seeds})
            print(f"skip {point.label}: seeds {point.seeds} already complete in "
                  f"{', '.join(files)}", file=sys.stderr)
            outcomes[p] = JobOutcome(sweep.SKIPPED, list(point.overrides), point.run_key,
                                     point.seeds)
            continue
        if len(missing) < len(point.seeds):
            print(f"{point.label}: seeds {sorted(set(point.seeds) - set(missing))} already "
                  f"complete; training {missing}", file=sys.stderr)
        todo.append((p, dataclasses.replace(point, seeds=missing)))
    if todo:
        trained = [point for _, point in todo]
        for (p, _), outcome in zip(todo, train_slots(Slots.of(trained)), strict=True):
            outcomes[p] = outcome
    return outcomes


def train_slots(slots: Slots) -> list[JobOutcome]:
    """Train the slots of checked grid points (their seeds all missing) in one process."""
    config = slots.config
    label = (f"{config['algo']['name']}/{config['env']['name']}/{config['optim']['name']} "
             f"pack of {len(slots.points)} grid points, {len(slots)} slots")
    print(f"{label}:\n{slots.describe()}", file=sys.stderr, flush=True)
    started_at = store.utc_now()
    recorder = PackRecorder(slots)
    progress = ProgressLine(label, config["total_steps"], len(slots),
                            config["progress_interval_s"])
    diverged = trainer(ALGORITHMS[config["algo"]["name"]])(slots, recorder, progress)

    outcomes = []
    for p, (point, point_recorder) in enumerate(zip(slots.points, recorder.recorders,
                                                    strict=True)):
        point_diverged = [int(seed) for seed, bad in zip(
            np.asarray(slots.seeds)[slots.point_index == p], diverged[slots.point_index == p],
            strict=True) if bad]
        path = store.result_path(point.config["results_dir"], point.config["name"],
                                 point.run_key, point.seeds)
        metadata = store.provenance(
            point.run_key, point.seeds, OmegaConf.to_yaml(OmegaConf.create(point.config)),
            point.overrides, list(point.swept), device_description(point.device), started_at,
            point_diverged,
        )
        store.write_atomically(point_recorder.table(), path, metadata)
        print(f"wrote {path} (seeds {point.seeds}, diverged {point_diverged or 'none'})",
              file=sys.stderr)
        outcomes.append(JobOutcome(sweep.DONE, list(point.overrides), point.run_key,
                                   point.seeds, point_diverged, str(path)))
    return outcomes


def pack_points(cfg: DictConfig) -> list[tuple[int, list[str], dict[str, Any]]]:
    """The grid points of this multirun job, (grid index, overrides, resolved config) each:
    those of its pack file (`pack=<n>`, written by the packing sweeper) or, without one, the
    job itself (Hydra's basic sweeper: job n is grid point n)."""
    if cfg.get("pack") is None:
        return [(HydraConfig.get().job.num + 1, job_overrides(),
                 OmegaConf.to_container(cfg, resolve=True))]
    path = Path(HydraConfig.get().sweep.dir) / sweep.PACKS_DIR / f"{cfg.pack}.json"
    return [(point["grid_index"], point["overrides"], point["config"])
            for point in json.loads(path.read_text())]


def run_sweep_job(cfg: DictConfig) -> PackOutcome:
    """One job of a multirun: a pack of grid points. Never raises an `Exception`: a grid point
    that fails (a bad config value or a results directory it cannot write included) is
    recorded under its `<results_dir>/<name>/failures/`, reported on stderr and returned, so
    that Hydra goes on with the other jobs and the sweep ends with a summary. A failure while
    training fails every grid point of the pack."""
    output_dir = HydraConfig.get().runtime.output_dir

    def location(config: dict[str, Any]) -> tuple[Any, Any]:
        """Where a grid point's failure record goes: its own experiment, or the job's where its
        results_dir or name is itself the bad value."""
        own = config.get("results_dir"), config.get("name")
        return own if output_location_ok(*own) else (cfg.results_dir, cfg.name)

    def failed(config: dict[str, Any], overrides: list[str], key: str | None,
               error: Exception) -> JobOutcome:
        message = f"{type(error).__name__}: {error}"
        record = write_failure_record(*location(config), overrides, error, key, output_dir)
        where = f"traceback in {record}" if record else "no failure record written"
        print(f"error: grid point {sweep.job_label(overrides)} failed: {message} ({where})",
              file=sys.stderr, flush=True)
        return JobOutcome(sweep.FAILED, overrides, key, error=message,
                          failure_record=str(record) if record else None)

    outcomes: dict[int, JobOutcome] = {}
    checked: list[tuple[int, Job]] = []
    points = pack_points(cfg)
    for index, (_, overrides, config) in enumerate(points):
        point: Job | None = None
        try:
            point = make_job(config, overrides)
            store.ensure_writable(point_data_dir(point))
            checked.append((index, point))
        except Exception as error:  # noqa: BLE001 - one bad grid point must not stop the rest
            outcomes[index] = failed(config, overrides, point.run_key if point else None, error)
    if checked:
        try:
            trained = train_pack([point for _, point in checked])
        except Exception as error:  # noqa: BLE001 - any failure must not stop the sweep
            trained = [failed(point.config, list(point.overrides), point.run_key, error)
                       for _, point in checked]
        for (index, _), outcome in zip(checked, trained, strict=True):
            outcomes[index] = outcome
    for index, outcome in outcomes.items():
        outcome.grid_index = points[index][0]
        results_dir, name = location(points[index][2])
        if outcome.status != sweep.FAILED and output_location_ok(results_dir, name):
            sweep.clear_failure(results_dir, name, outcome.overrides)
    return PackOutcome(job_overrides(), [outcomes[i] for i in sorted(outcomes)])


def output_location_ok(results_dir: Any, name: Any) -> bool:
    """Whether <results_dir>/<name>/ is a place this job may write (name one directory)."""
    try:
        text("results_dir", results_dir)
        directory_name("name", name)
    except ConfigError:
        return False
    return True


def write_failure_record(results_dir: Any, name: Any, overrides: list[str], error: Exception,
                         key: str | None, output_dir: str | None) -> Path | None:
    """`sweep.record_failure`, or None where it cannot be written: a `name` that would put
    it outside `results_dir`, or a results directory that cannot be written."""
    if not output_location_ok(results_dir, name):
        return None
    try:
        return sweep.record_failure(results_dir, name, overrides, error, key, output_dir)
    except OSError:
        return None


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.current_device()} {torch.cuda.get_device_name()}"
    return f"cpu ({torch.get_num_threads()} torch threads)"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> PackOutcome | None:
    """A single run exits with status 2 on a bad config value or a results directory it cannot
    write (`cli` has normally refused both already); a multirun job returns its outcome (Hydra
    hands it to `bench.sweep.SweepCallback`). Either, when it succeeds, clears the grid point's
    failure record of an earlier sweep (the record's `rerun` command is a single run)."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return run_sweep_job(cfg)
    overrides = job_overrides()
    try:
        run_job(OmegaConf.to_container(cfg, resolve=True), overrides)
    except (ConfigError, store.ResultsDirError) as error:
        fail(str(error))
    sweep.clear_failure(cfg.results_dir, cfg.name, overrides)
    return None


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
EXIT_USAGE = 2
# Hydra flags after which the command line is Hydra's business (help, config printing, another
# config); with these `cli` checks nothing itself.
HYDRA_ONLY_FLAGS = ("help", "hydra_help", "version", "cfg", "package", "shell_completion",
                    "config_path", "config_name", "config_dir", "experimental_rerun")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def check_command_line(argv: Sequence[str]) -> None:
    """Refuse a bad command line before Hydra creates anything: one ``error:`` line and exit
    status 2 for an override Hydra cannot parse or compose, a bad config value (a single run:
    every value; a multirun: the output names, since each grid point's values are checked by
    its job), or a results directory that cannot be written."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        args = get_args_parser().parse_args(list(argv))
    except SystemExit:  # Hydra will print its own usage error
        return
    if any(getattr(args, flag, None) for flag in HYDRA_ONLY_FLAGS):
        return
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(args.overrides)
    except HydraException:
        for override in args.overrides:
            try:
                parser.parse_overrides([override])
            except HydraException as error:
                prefix = f"Error parsing override '{override}'; "
                fail(f"cannot parse override {override!r}: "
                     f"{sweep.one_line(error).removeprefix(prefix)}")
        raise
    # A multirun's config without its sweeps is the config Hydra composes first; each grid
    # point is composed by the sweeper (which refuses a bad one the same way).
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=fixed if args.multirun else list(args.overrides))
        config = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as error:
        fail(sweep.one_line(error))
    try:
        if not args.multirun:
            point = make_job(config, [o.input_line for o in parsed if not o.is_hydra_override()])
            store.check_writable(point_data_dir(point))
        elif not swept & {"results_dir", "name"}:
            text("results_dir", config["results_dir"])
            directory_name("name", config["name"])
            store.check_writable(store.data_dir(config["results_dir"], config["name"]))
    except (ConfigError, store.ResultsDirError) as error:
        fail(str(error))


def cli() -> None:
    """``python -m bench.run``: check the command line (`check_command_line`), then run Hydra."""
    check_command_line(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()

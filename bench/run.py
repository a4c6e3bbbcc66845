"""The Hydra entry point: one process trains a pack of grid points (their seeds are its slots)
and writes one file per grid point.

    python -m bench.run algo=reinforce env=cartpole reduction=mean optim=adam seeds=4
    python -m bench.run --multirun +experiment=smoke      # a sweep (conf/experiment/)

A single run is a pack of one grid point. In a multirun, the packing sweeper
(`hydra_plugins.bench_packing`) groups the grid points that can share a process and launches
one job per pack with `pack=<n>`; that job reads its grid points from the sweep's pack file.
Seeds already complete for a grid point (same run key) are skipped; only the missing ones
train. A single run with a bad value stops with one error line and exit status 2 before
anything is written. In a multirun, a grid point that fails (a bad value included) is recorded
under `<results_dir>/<name>/failures/` and the other grid points go on (`bench.sweep`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bench import store, sweep
from bench.algos import trainer
from bench.config import ALGORITHMS, ConfigError, make_job
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
    process, and write each grid point's new seeds to one file; one outcome per point."""
    config = points[0].config
    torch.set_num_threads(config["threads"])
    outcomes: dict[int, JobOutcome] = {}
    todo: list[tuple[int, Job]] = []
    for p, point in enumerate(points):
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
    return [outcomes[p] for p in range(len(points))]


def train_slots(slots: Slots) -> list[JobOutcome]:
    """Train the slots of checked grid points (their seeds all missing) in one process."""
    config = slots.config
    for point in slots.points:
        store.ensure_writable(store.data_dir(point.config["results_dir"], point.config["name"]))
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
    that fails (a bad config value included) is recorded under `<results_dir>/<name>/failures/`,
    reported on stderr and returned, so that Hydra goes on with the other jobs and the sweep
    ends with a summary. A failure while training fails every grid point of the pack."""
    results_dir, name = cfg.results_dir, cfg.name
    output_dir = HydraConfig.get().runtime.output_dir

    def failed(overrides: list[str], key: str | None, error: Exception) -> JobOutcome:
        record = sweep.record_failure(results_dir, name, overrides, error, key, output_dir)
        message = f"{type(error).__name__}: {error}"
        print(f"error: grid point {sweep.job_label(overrides)} failed: {message} (traceback "
              f"in {record})", file=sys.stderr, flush=True)
        return JobOutcome(sweep.FAILED, overrides, key, error=message,
                          failure_record=str(record))

    outcomes: dict[int, JobOutcome] = {}
    checked: list[tuple[int, Job]] = []
    points = pack_points(cfg)
    for index, (_, overrides, config) in enumerate(points):
        try:
            checked.append((index, make_job(config, overrides)))
        except Exception as error:  # noqa: BLE001 - one bad grid point must not stop the rest
            outcomes[index] = failed(overrides, None, error)
    if checked:
        try:
            trained = train_pack([point for _, point in checked])
        except Exception as error:  # noqa: BLE001 - any failure must not stop the sweep
            trained = [failed(list(point.overrides), point.run_key, error)
                       for _, point in checked]
        for (index, _), outcome in zip(checked, trained, strict=True):
            outcomes[index] = outcome
    for index, outcome in outcomes.items():
        outcome.grid_index = points[index][0]
        if outcome.status != sweep.FAILED:
            sweep.clear_failure(results_dir, name, outcome.overrides)
    return PackOutcome(job_overrides(), [outcomes[i] for i in sorted(outcomes)])


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.current_device()} {torch.cuda.get_device_name()}"
    return f"cpu ({torch.get_num_threads()} torch threads)"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> PackOutcome | None:
    """A single run exits with status 2 on a bad config value; a multirun job returns its
    outcome (Hydra hands it to `bench.sweep.SweepCallback`). Either, when it succeeds, clears
    the grid point's failure record of an earlier sweep (the record's `rerun` command is a
    single run)."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return run_sweep_job(cfg)
    overrides = job_overrides()
    try:
        run_job(OmegaConf.to_container(cfg, resolve=True), overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    sweep.clear_failure(cfg.results_dir, cfg.name, overrides)
    return None


if __name__ == "__main__":
    main()

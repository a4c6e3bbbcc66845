"""The Hydra entry point: one job trains the seeds of one configuration and writes one file.

    python -m bench.run algo=reinforce env=cartpole reduction=mean optim=adam seeds=4
    python -m bench.run --multirun +experiment=smoke      # a sweep (conf/experiment/)

Seeds already complete for this configuration (same run key) are skipped; only the missing
ones train. A single run with a bad value stops with one error line and exit status 2 before
anything is written. In a multirun, a job that raises (a bad value included) is recorded under
`<results_dir>/<name>/failures/` and the other jobs go on (`bench.sweep`).
"""

from __future__ import annotations

import sys
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bench import store, sweep
from bench.algos import trainer
from bench.config import ALGORITHMS, ConfigError, Job, make_job
from bench.progress import ProgressLine
from bench.sweep import JobOutcome


def job_overrides() -> list[str]:
    """The command-line/sweep overrides of this job ([] outside a Hydra app)."""
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def run_job(config: dict[str, Any], overrides: list[str]) -> JobOutcome:
    """Check, train and write one job (`ConfigError` on a bad value)."""
    return train_job(make_job(config, overrides), overrides)


def train_job(job: Job, overrides: list[str]) -> JobOutcome:
    """Train the seeds of a checked job that are not complete yet and write them to one file."""
    config = job.config
    torch.set_num_threads(config["threads"])
    results_dir, name = config["results_dir"], config["name"]
    done = store.completed_seeds(results_dir, name, job.run_key)
    missing = [seed for seed in job.seeds if seed not in done]
    label = f"{config['algo']['name']}/{config['env']['name']}/" \
        f"{config['reduction']['name']}/{config['optim']['name']} {job.run_key}"
    if not missing:
        files = sorted({str(done[seed]) for seed in job.seeds})
        print(f"skip {label}: seeds {job.seeds} already complete in {', '.join(files)}",
              file=sys.stderr)
        return JobOutcome(sweep.SKIPPED, overrides, job.run_key, job.seeds)
    if len(missing) < len(job.seeds):
        print(f"{label}: seeds {sorted(set(job.seeds) - set(missing))} already complete; "
              f"training {missing}", file=sys.stderr)
        job = Job(job.config, missing, job.device, job.run_key, job.swept)

    started_at = store.utc_now()
    identity = {
        "algo": config["algo"]["name"],
        "env": config["env"]["name"],
        "reduction": config["reduction"]["name"],
        "optim": config["optim"]["name"],
        "lr": float(config["optim"]["lr"]),
    }
    recorder = store.RunRecorder(job.run_key, job.seeds, identity, job.swept)
    progress = ProgressLine(label, config["total_steps"], len(job.seeds),
                            config["progress_interval_s"])
    diverged = trainer(ALGORITHMS[config["algo"]["name"]])(job, recorder, progress)

    path = store.result_path(results_dir, name, job.run_key, job.seeds)
    metadata = store.provenance(
        job.run_key, job.seeds, OmegaConf.to_yaml(OmegaConf.create(job.config)), overrides,
        list(job.swept), device_description(job.device), started_at, diverged,
    )
    store.write_atomically(recorder.table(), path, metadata)
    print(f"wrote {path} (seeds {job.seeds}, diverged {diverged or 'none'})", file=sys.stderr)
    return JobOutcome(sweep.DONE, overrides, job.run_key, job.seeds, list(diverged), str(path))


def run_sweep_job(cfg: DictConfig, overrides: list[str]) -> JobOutcome:
    """One job of a multirun. Never raises an `Exception`: a failure (a bad config value
    included) is recorded under `<results_dir>/<name>/failures/`, reported on stderr and
    returned, so that Hydra goes on with the other jobs and the sweep ends with a summary."""
    results_dir, name = cfg.results_dir, cfg.name
    job: Job | None = None
    try:
        job = make_job(OmegaConf.to_container(cfg, resolve=True), overrides)
        outcome = train_job(job, overrides)
    except Exception as error:  # noqa: BLE001 - any failure of one job must not stop the sweep
        key = job.run_key if job else None
        record = sweep.record_failure(results_dir, name, overrides, error, key,
                                      HydraConfig.get().runtime.output_dir)
        message = f"{type(error).__name__}: {error}"
        print(f"error: job {sweep.job_label(overrides)} failed: {message} (traceback in "
              f"{record})", file=sys.stderr, flush=True)
        return JobOutcome(sweep.FAILED, overrides, key, error=message, failure_record=str(record))
    sweep.clear_failure(results_dir, name, overrides)
    return outcome


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.current_device()} {torch.cuda.get_device_name()}"
    return f"cpu ({torch.get_num_threads()} torch threads)"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> JobOutcome | None:
    """A single run exits with status 2 on a bad config value; a multirun job returns its
    outcome (Hydra hands it to `bench.sweep.SweepCallback`). Either, when it succeeds, clears
    the job's failure record of an earlier sweep (the record's `rerun` command is a single run)."""
    overrides = job_overrides()
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return run_sweep_job(cfg, overrides)
    try:
        run_job(OmegaConf.to_container(cfg, resolve=True), overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    sweep.clear_failure(cfg.results_dir, cfg.name, overrides)
    return None


if __name__ == "__main__":
    main()

"""The Hydra entry point: one job trains the seeds of one configuration and writes one file.

    python -m bench.run algo=reinforce env=cartpole reduction=mean optim=adam seeds=4

Seeds already complete for this configuration (same run key) are skipped; only the missing
ones train. A bad value stops the job with one error line before anything is written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from bench import store
from bench.algos import trainer
from bench.config import ALGORITHMS, ConfigError, Job, make_job
from bench.progress import ProgressLine


def job_overrides() -> list[str]:
    """The command-line/sweep overrides of this job ([] outside a Hydra app)."""
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def run_job(config: dict[str, Any], overrides: list[str]) -> Path | None:
    """Check, train and write one job; returns the written file, or None when skipped."""
    job = make_job(config, overrides)
    torch.set_num_threads(config["threads"])
    results_dir, name = config["results_dir"], config["name"]
    done = store.completed_seeds(results_dir, name, job.run_key)
    missing = [seed for seed in job.seeds if seed not in done]
    label = f"{job.config['algo']['name']}/{job.config['env']['name']}/" \
        f"{job.config['reduction']['name']}/{job.config['optim']['name']} {job.run_key}"
    if not missing:
        files = sorted({str(done[seed]) for seed in job.seeds})
        print(f"skip {label}: seeds {job.seeds} already complete in {', '.join(files)}",
              file=sys.stderr)
        return None
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
    return path


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.current_device()} {torch.cuda.get_device_name()}"
    return f"cpu ({torch.get_num_threads()} torch threads)"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    config = OmegaConf.to_container(cfg, resolve=True)
    try:
        run_job(config, job_overrides())
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

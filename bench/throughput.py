"""`make bench`: training throughput of real jobs, measured in one run.

Each configuration (algorithm x environment backend x seeds per job x torch threads) runs as
its own ``python -m bench.run`` process (so peak memory is its own) into a temporary results
directory, with the algorithm's default hyperparameters. Throughput comes from the job's own
records: env steps summed over seeds, divided by the wall time of the job's last update row
(process start-up and imports excluded; the first, slower steps included). Prints a table
with each row's ratio to the S=1 gymnasium row of the same algorithm (1 thread), measured in
this run, and writes ``<results_dir>/bench/<host>-<date>.json``.

    python -m bench.throughput                                   # the full CPU matrix
    python -m bench.throughput --algos ppo --seeds 1 256 --backends torch --threads 2
    python -m bench.throughput --device cuda --seeds 1 1024 4096 --backends torch
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from bench.store import git_commit, package_versions

ALGOS = ("reinforce", "a2c", "ppo")
BACKENDS = ("gymnasium", "torch")
# Env steps per seed of a measured job, by seeds per job: sized for a few seconds each on a
# 2-core CPU; the aggregate work grows with S so that fixed costs do not dominate.
STEPS_PER_SEED = {1: 20_000, 8: 8_000, 32: 4_000}
DEFAULT_STEPS_PER_SEED = 2_048
# Larger batches of seeds than the S = 1, 8, 32 grid run on the torch backend only
# (the gymnasium backend steps one seed's envs at a time on the host).
TORCH_ONLY_SEEDS = 64
# Largest S measured per algorithm: A2C and PPO reach their CPU rate by 256 seeds; REINFORCE,
# which acts on one observation per seed, still gains up to 1024.
MAX_SEEDS = {"reinforce": 1024, "a2c": 256, "ppo": 256}


def steps_per_seed(seeds: int) -> int:
    return STEPS_PER_SEED.get(seeds, DEFAULT_STEPS_PER_SEED)


def measure(algo: str, env: str, backend: str, seeds: int, threads: int, device: str,
            total_steps: int) -> dict:
    """Run one job of `total_steps` env steps per seed and return its throughput figures."""
    with tempfile.TemporaryDirectory() as results_dir:
        command = [
            sys.executable, "-m", "bench.run", f"algo={algo}", f"env={env}",
            f"env.backend={backend}", "reduction=mean", f"seeds={seeds}", f"threads={threads}",
            f"total_steps={total_steps}", f"results_dir={results_dir}",
            "progress_interval_s=0", f"device={device}",
        ]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stderr = process.stderr.read().decode()
        _, status, usage = os.wait4(process.pid, 0)
        process.stderr.close()
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
        frame = pd.read_parquet(Path(results_dir) / "default" / "data")
    updates = frame[frame.kind == "update"]
    env_steps = int(updates.groupby("seed").env_step.max().sum())
    seconds = float(updates.wall_time.max())
    return {
        "algo": algo, "env": env, "backend": backend, "device": device, "seeds": seeds,
        "threads": threads, "env_steps": env_steps, "seconds": seconds,
        "env_steps_per_s": env_steps / seconds,
        "seconds_per_100k_steps_per_seed": seconds / (env_steps / seeds) * 1e5,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "command": " ".join(command[1:]).replace(f"results_dir={results_dir} ", ""),
    }


def with_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Add each row's env-steps/s ratio to its algorithm's S=1 gymnasium 1-thread row."""
    baseline = table[(table.backend == "gymnasium") & (table.seeds == 1) & (table.threads == 1)]
    reference = dict(zip(baseline.algo, baseline.env_steps_per_s, strict=True))
    table = table.copy()
    table["ratio_to_s1_gymnasium"] = table.env_steps_per_s / table.algo.map(reference)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--env", default="cartpole")
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 8, 32, 256, 1024],
                        help=f"seeds per job; above {TORCH_ONLY_SEEDS - 1}: torch backend only")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps-per-seed", type=int, default=None,
                        help="env steps per seed of every job (default: by S, see "
                             "STEPS_PER_SEED)")
    args = parser.parse_args()
    if min(args.seeds) < 1 or min(args.threads) < 1 or (args.steps_per_seed or 1) < 1:
        parser.error(f"--seeds, --threads and --steps-per-seed must be positive, got "
                     f"{args.seeds}, {args.threads}, {args.steps_per_seed}")

    rows = []
    for algo in args.algos:
        for backend in args.backends:
            for seeds in args.seeds:
                if backend == "gymnasium" and seeds >= TORCH_ONLY_SEEDS:
                    continue
                if seeds > MAX_SEEDS[algo]:
                    continue
                for threads in args.threads:
                    row = measure(algo, args.env, backend, seeds, threads, args.device,
                                  args.steps_per_seed or steps_per_seed(seeds))
                    rows.append(row)
                    print(f"{algo:9s} {backend:9s} S={seeds:<5d} threads={threads} "
                          f"{row['env_steps_per_s']:>10,.0f} env-steps/s", file=sys.stderr,
                          flush=True)
    table = with_ratios(pd.DataFrame(rows))
    columns = ["algo", "backend", "device", "seeds", "threads", "env_steps_per_s",
               "seconds_per_100k_steps_per_seed", "peak_rss_mib", "ratio_to_s1_gymnasium"]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:,.2f}"))

    now = datetime.now(UTC)
    output = Path(args.results_dir) / "bench" / f"{socket.gethostname()}-{now:%Y%m%d-%H%M%S}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "host": socket.gethostname(), "cpus": os.cpu_count(), "processor": platform.processor(),
        "date": now.isoformat(), "git_commit": git_commit(), "versions": package_versions(),
        "arguments": vars(args), "rows": table.to_dict(orient="records"),
    }, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()

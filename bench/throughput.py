"""`make bench`: training throughput of real jobs, measured in one run.

Each configuration (algorithm x environment backend x seeds per job x torch threads) runs as
its own ``python -m bench.run`` process (so peak memory is its own) into a temporary results
directory, with the algorithm's default hyperparameters. Throughput comes from the job's own
records: env steps summed over seeds, divided by the wall time of the job's last update row
(process start-up and imports excluded; the first, slower steps included). Prints a table
with each row's ratio to the S=1 gymnasium row of the same algorithm (1 thread), measured in
this run, and writes ``<results_dir>/bench/<host>-<date>.json``.

Two more tables: packed jobs (``--packed``, a grid of 6 reductions x 5 learning rates x 20
seeds = 600 slots trained by one process of a packed multirun, per algorithm: env-steps/s over
all slots and peak memory) and the cost of one PPO gradient step at Stable-Baselines3's
settings (``--gradient-step``: 1 env x 2048 steps, 32 minibatches, S = 10 seeds; measured as
the difference in wall time between 10 epochs and 1 epoch over the same rollouts, divided by
the difference in gradient steps, so that collection cancels out).

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


# The packed grid: every reduction but per_step (its own loop, its own process) x 5 rates.
PACKED_GRID = ["reduction=sum,mean,traj_mean,traj_step_mean,constant,length_power",
               "optim.lr=1e-4,3e-4,1e-3,3e-3,1e-2", "seeds=20"]
PACKED_SLOTS = 6 * 5 * 20
PACKED_STEPS_PER_SLOT = {"reinforce": 2_000, "a2c": 1_000, "ppo": 1_024}
# Stable-Baselines3's PPO defaults (the issue's MuJoCo-style setting), on CartPole.
SB3_PPO = ["algo=ppo", "algo.num_envs=1", "algo.rollout_steps=2048",
           "algo.num_minibatches=32", "optim.lr=3e-4", "algo.anneal_lr=false", "seeds=10",
           "total_steps=4096"]


def run_bench_job(arguments: list[str], results_dir: str) -> tuple[pd.DataFrame, float]:
    """Run ``python -m bench.run <arguments>`` into `results_dir`; its rows and peak RSS
    (MiB)."""
    command = [sys.executable, "-m", "bench.run", *arguments, f"results_dir={results_dir}",
               "progress_interval_s=0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = process.stderr.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
    return pd.read_parquet(Path(results_dir) / "default" / "data"), usage.ru_maxrss / 1024


def measure(algo: str, env: str, backend: str, seeds: int, threads: int, device: str,
            total_steps: int) -> dict:
    """Run one job of `total_steps` env steps per seed and return its throughput figures."""
    arguments = [f"algo={algo}", f"env={env}", f"env.backend={backend}", "reduction=mean",
                 f"seeds={seeds}", f"threads={threads}", f"total_steps={total_steps}",
                 f"device={device}"]
    with tempfile.TemporaryDirectory() as results_dir:
        frame, peak = run_bench_job(arguments, results_dir)
    updates = frame[frame.kind == "update"]
    env_steps = int(updates.groupby("seed").env_step.max().sum())
    seconds = float(updates.wall_time.max())
    return {
        "algo": algo, "env": env, "backend": backend, "device": device, "seeds": seeds,
        "threads": threads, "env_steps": env_steps, "seconds": seconds,
        "env_steps_per_s": env_steps / seconds,
        "seconds_per_100k_steps_per_seed": seconds / (env_steps / seeds) * 1e5,
        "peak_rss_mib": peak, "command": "-m bench.run " + " ".join(arguments),
    }


def measure_packed(algo: str, env: str, device: str, steps_per_slot: int) -> dict:
    """One process training `PACKED_SLOTS` slots of a packed multirun (Hydra's basic launcher
    runs the job in the sweep's own process, so the peak memory is the job's)."""
    arguments = ["--multirun", f"algo={algo}", f"env={env}", f"device={device}",
                 f"total_steps={steps_per_slot}", *PACKED_GRID, "hydra/launcher=basic",
                 f"hydra.sweeper.max_slots={PACKED_SLOTS}"]
    with tempfile.TemporaryDirectory() as results_dir:
        frame, peak = run_bench_job(arguments, results_dir)
    updates = frame[frame.kind == "update"]
    env_steps = int(updates.groupby(["run_key", "seed"]).env_step.max().sum())
    seconds = float(updates.wall_time.max())
    return {"algo": algo, "env": env, "device": device, "slots": PACKED_SLOTS,
            "grid_points": int(updates.run_key.nunique()), "env_steps": env_steps,
            "seconds": seconds, "env_steps_per_s": env_steps / seconds,
            "peak_rss_mib": peak, "command": "python -m bench.run " + " ".join(arguments)}


def measure_gradient_step(env: str, device: str) -> dict:
    """Milliseconds per PPO gradient step at SB3's settings with S = 10 (see the module
    docstring): the same rollouts with 10 epochs and with 1."""
    seconds, steps = {}, {}
    for epochs in (1, 10):
        with tempfile.TemporaryDirectory() as results_dir:
            frame, _ = run_bench_job([*SB3_PPO, f"algo.update_epochs={epochs}", f"env={env}",
                                      f"device={device}"], results_dir)
        updates = frame[frame.kind == "update"]
        seconds[epochs] = float(updates.wall_time.max())
        steps[epochs] = int(updates.groupby("seed").size().max())
    per_step = (seconds[10] - seconds[1]) / (steps[10] - steps[1])
    return {"env": env, "device": device, "seeds": 10, "gradient_steps": steps[10],
            "ms_per_gradient_step": 1e3 * per_step,
            "seconds_10_epochs": seconds[10], "seconds_1_epoch": seconds[1],
            "command": "python -m bench.run " + " ".join(SB3_PPO) + " algo.update_epochs=10"}


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
    parser.add_argument("--packed", action=argparse.BooleanOptionalAction, default=True,
                        help=f"measure packed jobs of {PACKED_SLOTS} slots per algorithm")
    parser.add_argument("--gradient-step", action=argparse.BooleanOptionalAction,
                        default=True, help="measure a PPO gradient step at SB3's settings")
    parser.add_argument("--matrix", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the algorithm x backend x seeds x threads matrix")
    args = parser.parse_args()
    if min(args.seeds) < 1 or min(args.threads) < 1 or (args.steps_per_seed or 1) < 1:
        parser.error(f"--seeds, --threads and --steps-per-seed must be positive, got "
                     f"{args.seeds}, {args.threads}, {args.steps_per_seed}")

    rows = []
    for algo in args.algos if args.matrix else []:
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
    def show(frame: pd.DataFrame, columns: list[str]) -> None:
        print(frame[columns].to_string(index=False, float_format=lambda v: f"{v:,.2f}"))

    table = with_ratios(pd.DataFrame(rows)) if rows else pd.DataFrame()
    if rows:
        show(table, ["algo", "backend", "device", "seeds", "threads", "env_steps_per_s",
                     "seconds_per_100k_steps_per_seed", "peak_rss_mib",
                     "ratio_to_s1_gymnasium"])
    packed = []
    for algo in args.algos if args.packed else []:
        packed.append(measure_packed(algo, args.env, args.device,
                                     args.steps_per_seed or PACKED_STEPS_PER_SLOT[algo]))
        print(f"packed {algo:9s} {PACKED_SLOTS} slots {packed[-1]['env_steps_per_s']:>10,.0f} "
              f"env-steps/s", file=sys.stderr, flush=True)
    if packed:
        print(f"\nPacked jobs ({' '.join(PACKED_GRID)}: {PACKED_SLOTS} slots in one process)")
        show(pd.DataFrame(packed), ["algo", "device", "slots", "grid_points", "env_steps",
                                    "seconds", "env_steps_per_s", "peak_rss_mib"])
    gradient = [measure_gradient_step(args.env, args.device)] if args.gradient_step else []
    if gradient:
        print("\nPPO gradient step at SB3's settings (1 x 2048 steps, 32 minibatches of 64, "
              "S = 10)")
        show(pd.DataFrame(gradient), ["env", "device", "seeds", "gradient_steps",
                                      "ms_per_gradient_step", "seconds_10_epochs",
                                      "seconds_1_epoch"])

    now = datetime.now(UTC)
    output = Path(args.results_dir) / "bench" / f"{socket.gethostname()}-{now:%Y%m%d-%H%M%S}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "host": socket.gethostname(), "cpus": os.cpu_count(), "processor": platform.processor(),
        "date": now.isoformat(), "git_commit": git_commit(), "versions": package_versions(),
        "arguments": vars(args), "rows": table.to_dict(orient="records"),
        "packed": packed, "gradient_step": gradient,
    }, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()

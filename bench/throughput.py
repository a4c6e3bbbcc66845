"""`make bench`: training throughput of real jobs, measured in one run.

Each configuration runs as its own `python -m bench.run` process (so peak memory is its own)
into a temporary results directory. Throughput is taken from the job's own records: the sum
over seeds of env steps divided by the wall time of the job's last update (start-up and
import time excluded). Prints a table with each row's ratio to the first row (S=1, 1 thread)
and writes ``<results_dir>/bench/<host>-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from bench.store import git_commit, package_versions

# (seeds, threads, total_steps per seed): sized for roughly ten seconds each on 2 CPU cores.
CONFIGURATIONS = [(1, 1, 20000), (8, 1, 8000), (32, 1, 3000), (32, 2, 3000)]


def measure(algo: str, env: str, seeds: int, threads: int, total_steps: int) -> dict:
    """Run one job and return its throughput figures."""
    with tempfile.TemporaryDirectory() as results_dir:
        command = [
            sys.executable, "-m", "bench.run", f"algo={algo}", f"env={env}", "reduction=mean",
            f"seeds={seeds}", f"threads={threads}", f"total_steps={total_steps}",
            f"results_dir={results_dir}", "progress_interval_s=0", "device=cpu",
        ]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        stderr = process.stderr.read().decode()
        process.stderr.close()
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
        frame = pd.read_parquet(Path(results_dir) / "default" / "data")
    updates = frame[frame.kind == "update"]
    env_steps = int(updates.groupby("seed").env_step.max().sum())
    seconds = float(updates.wall_time.max())
    return {
        "algo": algo, "env": env, "backend": "gymnasium", "seeds": seeds, "threads": threads,
        "env_steps": env_steps, "seconds": seconds,
        "env_steps_per_s": env_steps / seconds,
        "seconds_per_100k_steps_per_seed": seconds / (env_steps / seeds) * 1e5,
        "peak_rss_mib": usage.ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--env", default="cartpole")
    args = parser.parse_args()

    rows = []
    for seeds, threads, total_steps in CONFIGURATIONS:
        rows.append(measure("reinforce", args.env, seeds, threads, total_steps))
        print(f"measured reinforce S={seeds} threads={threads}", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    table["ratio_to_first_row"] = table.env_steps_per_s / table.env_steps_per_s.iloc[0]
    print(table.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))

    now = datetime.now(UTC)
    output = Path(args.results_dir) / "bench" / f"{socket.gethostname()}-{now:%Y%m%d-%H%M%S}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "host": socket.gethostname(), "cpus": os.cpu_count(), "date": now.isoformat(),
        "git_commit": git_commit(), "versions": package_versions(), "rows": rows,
    }, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()

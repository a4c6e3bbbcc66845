"""Compact, committable evidence of a study: ``python -m analysis.evidence results/<name> DEST``.

From an experiment's data and its written report (``make report`` first), writes to ``DEST``
(a few MB, small enough for git):

- ``per_seed_metrics.csv`` and ``summary.csv`` (the report's, every cell and seed), and for
  token tasks ``per_seed_lengths.csv`` (final response lengths per seed);
- ``curves.csv``: every seed's return curve down-sampled to `CURVE_POINTS` grid points (the
  report's rule, `analysis.metrics.returns_on_grid`), long format;
- the claims: ``claims.csv`` (the verdict table), ``claim-<id>.csv`` (every comparison) and
  ``claim-<id>.png``; the report's ``index.md`` as ``report.md`` and its convergence,
  lr-sensitivity and response-length PNGs (`KEPT_FIGURES`);
- ``README.md``: what made it: the command line, the git commits, devices and hosts recorded
  in the result files, the number of files, cells and seeds, and the time span of the runs.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import metrics
from analysis.cells import run_total_steps
from analysis.cli import ArgumentParser
from analysis.formatting import value_counts_text
from analysis.load import SUMMARY_UPDATE_COLUMNS, Dataset, DatasetError, cell_columns, load_dataset

CURVE_POINTS = 20
REPORT_FILES = ("per_seed_metrics.csv", "summary.csv", "claims.csv",
                "per_seed_lengths.csv")  # the last: token tasks only
# Figures kept besides the claims' (the aggregate figures, megabytes each for a large grid,
# stay in the regenerable report).
KEPT_FIGURES = ("convergence-", "lr_sensitivity-", "response_length_")
EXIT_USAGE = 2


def downsampled_curves(dataset: Dataset, points: int = CURVE_POINTS) -> pd.DataFrame:
    """Every seed's return curve on ``points`` evenly spaced env steps up to its run's length:
    one row per (cell, seed, grid point) with the cell columns, ``run_key``, ``seed``,
    ``env_step`` and ``episode_return`` (NaN before the seed's first episode)."""
    cells = cell_columns(dataset)
    lengths = run_total_steps(dataset)
    parts = []
    for run_key, episodes in dataset.episodes.groupby("run_key", sort=True):
        length = float(lengths[run_key])
        grid = np.linspace(length / points, length, points)
        curves = metrics.returns_on_grid(episodes, grid).stack(future_stack=True)
        frame = curves.rename("episode_return").reset_index()
        run = dataset.runs[dataset.runs["run_key"] == run_key].iloc[0]
        parts.append(frame.assign(**{c: run[c] for c in cells}))
    curves = pd.concat(parts, ignore_index=True)
    return curves[[*cells, "run_key", "seed", "env_step", "episode_return"]]


def write_evidence(experiment_dir: Path, destination: Path, command: str) -> list[Path]:
    """The evidence files of ``experiment_dir`` into ``destination`` (created); returns them.
    Needs the experiment's report (``<experiment_dir>/report``)."""
    report = experiment_dir / "report"
    if not (report / "per_seed_metrics.csv").is_file():
        raise DatasetError(f"{report} has no per_seed_metrics.csv: run `python -m "
                           f"analysis.report {experiment_dir}` first")
    destination.mkdir(parents=True, exist_ok=True)
    written = []
    for name in REPORT_FILES:
        if (report / name).is_file():
            written.append(Path(shutil.copy2(report / name, destination / name)))
    for path in sorted(report.glob("claim-*")):
        if path.suffix in (".csv", ".png"):
            written.append(Path(shutil.copy2(path, destination / path.name)))
    for path in sorted(report.glob("*.png")):
        if path.name.startswith(KEPT_FIGURES):
            written.append(Path(shutil.copy2(path, destination / path.name)))
    written.append(Path(shutil.copy2(report / "index.md", destination / "report.md")))
    dataset = load_dataset(experiment_dir, update_columns=SUMMARY_UPDATE_COLUMNS)
    curves = downsampled_curves(dataset)
    curves.to_csv(destination / "curves.csv", index=False, float_format="%.6g")
    written.append(destination / "curves.csv")
    readme = destination / "README.md"
    readme.write_text(provenance_text(dataset, command))
    machine = destination / MACHINE_FILE
    machine.write_text(json.dumps(machine_record(dataset), indent=2) + "\n")
    return [*written, readme, machine]


# What `make verify` reads to tell whether bit-identity is to be expected on another machine.
MACHINE_FILE = "machine.json"


MACHINE_FIELDS = ("device", "cpu", "host")


def machine_record(dataset: Dataset) -> dict[str, list[str]]:
    """The devices, CPUs (model and torch kernel set; "not recorded" for files written before
    the CPU was) and hosts the results were made on."""
    runs = dataset.runs
    return {column: sorted({str(v) if v is not None else "not recorded" for v in runs[column]})
            for column in MACHINE_FIELDS}


# Lines of the README that `provenance_text` writes, read back by `analysis.findings` and
# `analysis.combine`.
COMMITS_LINE, CPUS_LINE = "- git commits: ", "- CPUs: "


def provenance_field(readme: str, prefix: str) -> str:
    """The rest of the first README line starting with ``prefix`` (e.g. `COMMITS_LINE`),
    ``"not recorded"`` when there is none."""
    line = next((line for line in readme.splitlines() if line.startswith(prefix)), "")
    return line[len(prefix):].strip() or "not recorded"


def provenance_command(readme: str) -> str:
    """The command the README says made the results (its first indented line)."""
    line = next((line for line in readme.splitlines() if line.startswith("    ")), "")
    return line.strip() or "not recorded"


def provenance_commits(readme: str) -> list[str]:
    """The git commits the README's `COMMITS_LINE` names (its backquoted values)."""
    return re.findall(r"`([^`]+)`", provenance_field(readme, COMMITS_LINE))


def provenance_text(dataset: Dataset, command: str) -> str:
    """The evidence folder's README: what made it and what is in it."""
    experiment_dir = Path(dataset.experiment_dir)
    runs = dataset.runs
    per_seed = pd.read_csv(experiment_dir / "report" / "per_seed_metrics.csv")
    cells = per_seed.drop_duplicates(cell_columns(dataset))
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return "\n".join([
        f"# Evidence: {experiment_dir.resolve().name}",
        "",
        f"Exported {generated} by `python -m analysis.evidence {experiment_dir} ...` from the "
        "results of:",
        "",
        f"    {command}",
        "",
        f"- result files: {len(runs)}; cells: {len(cells)}; seeds: {len(per_seed)} "
        f"(diverged: {int(per_seed['diverged'].sum())})",
        f"{COMMITS_LINE}{value_counts_text(runs['git_commit'])}",
        f"- devices: {value_counts_text(runs['device'])}; hosts: {value_counts_text(runs['host'])}",
        f"{CPUS_LINE}{value_counts_text(runs['cpu'].fillna('not recorded'))}",
        f"- runs started {runs['started_at'].min()}, last finished {runs['finished_at'].max()}",
        "",
        "Files: `report.md` (the report's index, figures beside it), `claims.csv` (verdicts), "
        "`claim-<id>.csv` (every comparison behind them), `per_seed_metrics.csv` and "
        "`summary.csv` (every seed and cell), `curves.csv` (every seed's return curve at "
        f"{CURVE_POINTS} grid points); the aggregate figures `report.md` links to are not "
        "kept (megabytes). Regenerate the whole report from the raw results with "
        f"`python -m analysis.report {experiment_dir}`.",
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 2 on a missing experiment or report."""
    parser = ArgumentParser(prog="python -m analysis.evidence",
                            description="Export a study's compact evidence.")
    parser.add_argument("experiment_dir", type=Path)
    parser.add_argument("destination", type=Path)
    parser.add_argument("--command", default="(not given)",
                        help="the command line that made the results, recorded in README.md")
    args = parser.parse_args(argv)
    try:
        written = write_evidence(args.experiment_dir, args.destination, args.command)
    except DatasetError as error:
        print(f"analysis.evidence: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    size = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} files ({size / 1e6:.1f} MB) to {args.destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

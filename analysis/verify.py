"""Re-run a slice of a committed study and check it against the evidence: ``make verify``.

``python -m analysis.verify findings/<study> --experiment <preset> [overrides...]`` runs
``python -m bench.run --multirun +experiment=<preset> <overrides>`` into a temporary results
folder (the overrides narrow the preset's grid, e.g. ``env=cartpole optim=sgd
optim.lr=1e-4,1e-2 reduction=sum,mean``), computes the per-seed metrics as the report does
and compares each (cell, seed) with the evidence's ``per_seed_metrics.csv``: the
episode-stream digest (bit-identical training), final return and AUC. A slot's numbers do
not depend on what else shares its process, so a smaller slice reproduces the study's seeds
exactly on the same device and code; where they differ (another device, another commit), it
lists every difference instead of failing silently. Bit-identity across machines needs the same
CPU model and torch kernel set as well: the evidence's ``machine.json`` (`analysis.evidence`)
records them, and the output says whether this machine is that one, so a difference reads as
either a failed reproduction (same machine) or another machine's rounding (training is
chaotic: one rounding difference changes a seed's whole run). Exit status 0 when everything
matches, 1 when something differs, 2 on bad input.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.cells import compute_cell_metrics
from analysis.cli import ArgumentParser
from analysis.evidence import MACHINE_FILE
from analysis.load import SUMMARY_UPDATE_COLUMNS, DatasetError, cell_columns, load_dataset
from analysis.references import reference_scores
from analysis.settings import ReportSettings

COMPARED = ("stream", "final_return", "auc")
EXIT_DIFFERS, EXIT_USAGE = 1, 2


def compare(fresh: pd.DataFrame, evidence: pd.DataFrame, cells: Sequence[str]) -> pd.DataFrame:
    """One row per fresh (cell, seed): its values, the evidence's, and ``match`` (the digest
    and both metrics equal; metrics compared exactly, as text of their float value). A fresh
    seed the evidence lacks is a mismatch."""
    keys = [*cells, "seed"]
    as_text = {c: str for c in keys}
    left = fresh[[*keys, *COMPARED]].astype(as_text)
    right = evidence[[*keys, *COMPARED]].astype(as_text)
    merged = left.merge(right, on=keys, how="left", suffixes=("", "_evidence"),
                        indicator=True)
    match = merged["_merge"] == "both"
    for column in COMPARED:
        fresh_values, kept = merged[column], merged[f"{column}_evidence"]
        if column == "stream":
            match &= fresh_values.astype(str) == kept.astype(str)
        else:
            a = pd.to_numeric(fresh_values, errors="coerce").to_numpy(dtype=float)
            b = pd.to_numeric(kept, errors="coerce").to_numpy(dtype=float)
            match &= (a == b) | (np.isnan(a) & np.isnan(b))
    return merged.drop(columns="_merge").assign(match=match.to_numpy())


def run_slice(experiment: str, overrides: Sequence[str], results_dir: Path) -> Path:
    """Train the slice with the packing sweeper; returns its experiment folder."""
    command = [sys.executable, "-m", "bench.run", "--multirun", f"+experiment={experiment}",
               f"results_dir={results_dir}", *overrides]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    folders = [p.parent for p in results_dir.glob("*/data")]
    if len(folders) != 1:
        raise DatasetError(f"the slice wrote {len(folders)} experiment folders in {results_dir}")
    return folders[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    parser = ArgumentParser(prog="python -m analysis.verify", description=__doc__)
    parser.add_argument("evidence", type=Path, help="e.g. findings/seed_claims_003")
    parser.add_argument("--experiment", required=True, help="the preset, e.g. seed_claims_003")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides that narrow the grid")
    args = parser.parse_intermixed_args(argv)
    evidence_file = args.evidence / "per_seed_metrics.csv"
    if not evidence_file.is_file():
        parser.error(f"{evidence_file} does not exist")
    evidence = pd.read_csv(evidence_file)
    with tempfile.TemporaryDirectory(prefix="verify-") as scratch:
        try:
            experiment_dir = run_slice(args.experiment, args.overrides, Path(scratch))
        except subprocess.CalledProcessError as error:
            print(f"analysis.verify: error: the slice failed (exit {error.returncode})",
                  file=sys.stderr)
            return EXIT_USAGE
        dataset = load_dataset(experiment_dir, update_columns=SUMMARY_UPDATE_COLUMNS)
        fresh = compute_cell_metrics(dataset, ReportSettings(),
                                     reference_scores(dataset.runs)).per_seed
        result = compare(fresh, evidence, cell_columns(dataset))
    fresh_cpus = sorted({str(cpu) for cpu in dataset.runs["cpu"]})
    made_on = evidence_cpus(args.evidence)
    same_machine = made_on is not None and set(fresh_cpus) <= set(made_on)
    print(f"this machine: {', '.join(fresh_cpus)}; the evidence was made on: "
          f"{', '.join(made_on) if made_on else 'a CPU not recorded'}")
    matched = int(result["match"].sum())
    print(f"{matched} of {len(result)} seeds match {evidence_file} exactly "
          f"(episode stream digest, final return, AUC)")
    if matched == len(result):
        return 0
    print("differences:")
    print(result[~result["match"]].to_string(index=False))
    if same_machine:
        print("same CPU and kernel set as the evidence: these differences are a failed "
              "reproduction (another commit, or a bug)")
    else:
        print("another CPU (or one the evidence does not record): bit-identity is not "
              "expected, since rounding differs and one difference changes a seed's whole run")
    return EXIT_DIFFERS


def evidence_cpus(evidence: Path) -> list[str] | None:
    """The CPUs the evidence's results were made on (`machine.json`), or None when it does not
    record them."""
    record = evidence / MACHINE_FILE
    if not record.is_file():
        return None
    cpus = [cpu for cpu in json.loads(record.read_text()).get("cpu", []) if cpu != "not recorded"]
    return cpus or None


if __name__ == "__main__":
    sys.exit(main())

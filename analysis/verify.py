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
chaotic: one rounding difference changes a seed's whole run).

On another CPU bit-identity is not expected, so two checks take its place, both on the slice's
cells: the fresh seeds against the evidence's values of the same seeds in distribution
(`distribution_check`: the exact rank-sum test per cell and metric, Holm over all of them),
and every claim comparison the slice holds judged on the fresh seeds and on the evidence's
(`verdict_check`: the same verdict, or which one moved). Passing them says that no difference
large enough to show at the slice's seeds appeared and that the findings read the same, not
that the two CPUs' runs are equivalent. Exit status 0 when every seed matches,
or on another CPU when no cell differs in distribution and no verdict moved; 1 otherwise; 2 on
bad input.
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
from analysis.claims import evaluate, load_claims
from analysis.cli import ArgumentParser
from analysis.evidence import MACHINE_FILE
from analysis.formatting import family_label
from analysis.load import SUMMARY_UPDATE_COLUMNS, DatasetError, cell_columns, load_dataset
from analysis.references import reference_scores
from analysis.settings import ReportSettings
from analysis.stats import holm_adjusted, rank_sum_p_value

COMPARED = ("stream", "final_return", "auc")
# The metrics compared in distribution on another CPU.
DISTRIBUTION_METRICS = ("auc", "final_return")
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


def same_seeds(evidence: pd.DataFrame, fresh: pd.DataFrame, cells: Sequence[str]) -> pd.DataFrame:
    """The evidence's rows of the fresh (cell, seed) pairs (cell values matched as text)."""
    keys = [*cells, "seed"]
    wanted = fresh[keys].astype(str).drop_duplicates()
    found = evidence[keys].astype(str).merge(wanted, on=keys, how="left", indicator=True)
    return evidence[found["_merge"].eq("both").to_numpy()]


def distribution_check(fresh: pd.DataFrame, evidence: pd.DataFrame, cells: Sequence[str],
                       alpha: float = 0.05) -> pd.DataFrame:
    """Per fresh cell and metric (`DISTRIBUTION_METRICS`): the exact two-sided rank-sum test
    (`analysis.stats.rank_sum_p_value`) of the fresh seeds' values against the evidence's
    values of the same seeds (`same_seeds`), Holm-adjusted over every cell and metric;
    ``differs`` where the adjusted p is below ``alpha``. Columns: the cell, ``metric``, ``n_fresh``,
    ``n_evidence``, ``p_rank``, ``p_holm``, ``differs``. Seeds bit-identical on both sides
    only make a difference harder to show; a test needs two seeds a side (else p is NaN)."""
    keys = list(cells)
    kept = same_seeds(evidence, fresh, keys).astype({c: str for c in keys})
    fresh_text = fresh.astype({c: str for c in keys})
    rows = []
    for cell_values, group in fresh_text.groupby(keys, dropna=False, sort=True):
        values = cell_values if isinstance(cell_values, tuple) else (cell_values,)
        cell = dict(zip(keys, values, strict=True))
        theirs = kept.loc[(kept[keys] == pd.Series(cell)).all(axis=1)]
        for metric in DISTRIBUTION_METRICS:
            x = group[metric].dropna().to_numpy(dtype=float)
            y = theirs[metric].dropna().to_numpy(dtype=float)
            p = float(rank_sum_p_value(x, y)) if min(x.size, y.size) >= 2 else np.nan
            rows.append({**cell, "metric": metric, "n_fresh": x.size, "n_evidence": y.size,
                         "p_rank": p})
    table = pd.DataFrame(rows)
    table["p_holm"] = holm_adjusted(table["p_rank"].to_numpy(dtype=float))
    table["differs"] = table["p_holm"] < alpha
    return table


def verdict_check(experiment: str, fresh: pd.DataFrame, evidence: pd.DataFrame,
                  cells: Sequence[str], settings: ReportSettings) -> pd.DataFrame:
    """Every comparison of the claims judged on ``experiment`` that the fresh slice holds,
    judged on the fresh seeds and on the evidence's values of the same seeds (so both sides
    see one grid and sample: the best-lr view picks among the slice's rates). One row per
    comparison: claim, view, metric, the claim's conditions, ``grid_point`` (the lr at matched lr),
    treatment, ``verdict_fresh``, ``verdict_evidence`` and ``same``."""
    keys = list(cells)
    evidence = same_seeds(evidence, fresh, keys)
    parts = []
    for claim in load_claims(experiment=experiment):
        judged = {side: evaluate(claim, frame, keys, settings).comparisons
                  for side, frame in (("fresh", fresh), ("evidence", evidence))}
        if judged["fresh"].empty and judged["evidence"].empty:
            continue
        labelled = []
        for side, rows in judged.items():
            rows = rows[rows["metric"] == claim.metrics[0]] if len(rows) else rows
            labelled.append(pd.DataFrame({
                "claim": claim.id,
                "view": rows.get("view", pd.Series(dtype=str)),
                "metric": rows.get("metric", pd.Series(dtype=str)),
                "condition": [family_label(r, claim.conditions) for _, r in rows.iterrows()],
                "grid_point": [f"lr={r['lr']}" if r["view"] == "matched_lr" else "best lr"
                               for _, r in rows.iterrows()],
                "treatment": rows.get("treatment", pd.Series(dtype=str)),
                f"verdict_{side}": rows.get("verdict", pd.Series(dtype=str)),
            }))
        on = ["claim", "view", "metric", "condition", "grid_point", "treatment"]
        parts.append(labelled[0].merge(labelled[1], on=on, how="outer"))
    if not parts:
        return pd.DataFrame(columns=["claim", "view", "metric", "condition", "grid_point",
                                     "treatment", "verdict_fresh", "verdict_evidence", "same"])
    table = pd.concat(parts, ignore_index=True)
    table["same"] = table["verdict_fresh"] == table["verdict_evidence"]
    return table


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
        cells = cell_columns(dataset)
        result = compare(fresh, evidence, cells)
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
        return EXIT_DIFFERS
    print("another CPU (or one the evidence does not record): bit-identity is not "
          "expected, since rounding differs and one difference changes a seed's whole run; "
          "checking the slice in distribution and its claims' verdicts instead")
    return EXIT_DIFFERS if report_other_cpu(args.experiment, fresh, evidence, cells) else 0


def report_other_cpu(experiment: str, fresh: pd.DataFrame, evidence: pd.DataFrame,
                     cells: Sequence[str]) -> bool:
    """Print the distribution and verdict checks of another CPU; True when either fails."""
    settings = ReportSettings()
    distribution = distribution_check(fresh, evidence, cells, settings.alpha)
    tested = distribution["p_rank"].notna()
    print(f"in distribution (exact rank-sum test per cell and metric, Holm over "
          f"{int(tested.sum())} tests, level {settings.alpha}): "
          f"{int(distribution['differs'].sum())} of {len(distribution)} differ")
    print(distribution.to_string(index=False))
    verdicts = verdict_check(experiment, fresh, evidence, cells, settings)
    print(f"claims' verdicts on the slice: {int(verdicts['same'].sum())} of {len(verdicts)} "
          f"the same as on the evidence's values of these seeds")
    if len(verdicts):
        print(verdicts.to_string(index=False))
    failed = bool(distribution["differs"].any() or not verdicts["same"].all())
    print("the slice differs from the evidence beyond rounding" if failed else
          "the slice agrees with the evidence in distribution and in every verdict")
    return failed


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

"""One study's evidence from the evidence of its parts:
``python -m analysis.combine DEST [--part [NAME=]DIR ...] [--experiment NAME]``.

A study longer than one machine session runs in parts, seed ranges (``make sweep EXP=<preset>
SEEDS=[10,11,...,19]``) or slices of the grid (``ARGS="env=acrobot"``), each exported by
`analysis.evidence` before the machine goes. A slot's numbers do not depend on what shares
its process (the packing contract, tested bit for bit), so seeds 10-19 run on their own are
the seeds 10-19 of a 20-seed run on the same CPU type and code, and the union of the parts is
judged as one run's seeds are. This writes ``DEST``:

- ``parts/<name>/``: each part's data as it was exported (`PART_FILES`, and where the part
  has them `OPTIONAL_PART_FILES`: the response lengths of token tasks, ``machine.json``, the
  ``README.md`` that names the command, commit and machine that made it, and the part's own
  ``report.md``, its figures not kept);
- from the union of the parts: ``per_seed_metrics.csv``, ``summary.csv``, the claims
  (``claims.csv``, ``claim-<id>.csv``, ``claim-<id>.png``, through `analysis.report`'s own
  functions), the significance and best-lr tables, the lr-sensitivity figures, convergence
  figures drawn from the parts' curves (`analysis.evidence.CURVE_POINTS` points per seed, so
  coarser than a report's), ``report.md``, ``machine.json`` (every part's devices, CPUs and
  hosts) and ``README.md`` (what made each part, and this command).

Per-seed metrics are taken as each part's report computed them (grid points, final and
threshold fractions are fixed there); only the statistics are recomputed. Without ``--part``,
DEST is re-judged from its own ``parts/`` (after a claim file or a test changed).

Before anything is written the parts are checked (`CombineError`, one line): each has its
files and the same cell columns; no seed of a run key is in two parts; a cell that several
parts hold has the same run keys in each (else they ran different configurations under one
cell's label). DEST is written beside itself and swapped in whole: a failure leaves it as it
was.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from analysis import figures, metrics
from analysis.cells import PER_SEED_COLUMNS, summarize_cells
from analysis.claims import load_claims
from analysis.cli import ArgumentParser
from analysis.document import Block, Heading, Paragraph, Table, to_markdown
from analysis.evidence import (
    COMMITS_LINE,
    CPUS_LINE,
    CURVE_POINTS,
    MACHINE_FIELDS,
    MACHINE_FILE,
    provenance_command,
    provenance_commits,
    provenance_field,
)
from analysis.exports import write_table
from analysis.formatting import compact_ranges
from analysis.prose import (
    best_lr_blocks,
    cells_blocks,
    claims_blocks,
    convergence_blocks,
    methods_blocks,
    settings_text,
    significance_blocks,
    summary_blocks,
)
from analysis.report import (
    add_settings_arguments,
    build_tables,
    judge_claims,
    settings_from_arguments,
    with_lengths,
    write_claim_files,
)
from analysis.settings import ReportSettings
from analysis.staging import FolderNotWritable, write_whole

PARTS_DIRNAME = "parts"
PART_FILES = ("per_seed_metrics.csv", "curves.csv")
OPTIONAL_PART_FILES = ("per_seed_lengths.csv", MACHINE_FILE, "README.md", "report.md")
PART_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SEED_KEY = ["run_key", "seed"]
EXIT_USAGE = 2


class CombineError(ValueError):
    """Parts that cannot be combined (the message names the part and the bad value)."""


@dataclass(frozen=True)
class Part:
    """One part's evidence as read from its folder."""

    name: str
    directory: Path
    per_seed: pd.DataFrame
    curves: pd.DataFrame
    lengths: pd.DataFrame | None
    machine: dict[str, list[str]]
    readme: str

    @property
    def cells(self) -> list[str]:
        """The cell columns of its per-seed metrics (every column but `PER_SEED_COLUMNS`)."""
        return [c for c in self.per_seed.columns if c not in PER_SEED_COLUMNS]


@dataclass(frozen=True)
class Union:
    """The parts' data together: per-seed metrics (with response lengths of token tasks),
    curves and the cell columns."""

    per_seed: pd.DataFrame
    curves: pd.DataFrame
    lengths: pd.DataFrame | None
    cells: list[str]


def part_sources(destination: Path, specs: Sequence[str]) -> list[tuple[str, Path]]:
    """(name, folder) of each part: ``NAME=DIR`` or ``DIR`` (named after its folder); without
    specs, the folders in ``DEST/parts/``."""
    if not specs:
        parts_dir = destination / PARTS_DIRNAME
        found = sorted(p for p in parts_dir.iterdir() if p.is_dir()) if parts_dir.is_dir() else []
        if not found:
            raise CombineError(f"{destination} has no {PARTS_DIRNAME}/ folder with parts: name "
                               "them with --part [NAME=]DIR")
        return [(p.name, p) for p in found]
    sources = []
    for spec in specs:
        name, _, folder = spec.rpartition("=") if "=" in spec else ("", "", spec)
        path = Path(folder)
        name = name or path.resolve().name
        if not PART_NAME.fullmatch(name):
            raise CombineError(f"part name {name!r} (from {spec!r}): use letters, digits, "
                               "'.', '_' and '-', starting with a letter or digit")
        sources.append((name, path))
    names = [name for name, _ in sources]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CombineError(f"part name(s) {repeated} given twice; name each part NAME=DIR")
    return sources


def read_part(name: str, directory: Path) -> Part:
    """A part's files, checked to be there."""
    if not directory.is_dir():
        raise CombineError(f"part {name}: {directory} is not a folder")
    missing = [f for f in PART_FILES if not (directory / f).is_file()]
    if missing:
        raise CombineError(f"part {name}: {directory} lacks {missing} (an `analysis.evidence` "
                           f"export has {list(PART_FILES)})")
    lengths_file = directory / "per_seed_lengths.csv"
    machine_file = directory / MACHINE_FILE
    readme_file = directory / "README.md"
    per_seed = pd.read_csv(directory / "per_seed_metrics.csv")
    absent = [c for c in PER_SEED_COLUMNS if c not in per_seed]
    if absent:
        raise CombineError(f"part {name}: {directory / 'per_seed_metrics.csv'} lacks the "
                           f"per-seed column(s) {absent}")
    return Part(
        name=name, directory=directory, per_seed=per_seed,
        curves=pd.read_csv(directory / "curves.csv"),
        lengths=pd.read_csv(lengths_file) if lengths_file.is_file() else None,
        machine=json.loads(machine_file.read_text()) if machine_file.is_file() else {},
        readme=readme_file.read_text() if readme_file.is_file() else "",
    )


def union(parts: Sequence[Part]) -> Union:
    """The parts' data in one frame each, after the checks of the module docstring."""
    cells = parts[0].cells
    for part in parts[1:]:
        if part.cells != cells:
            raise CombineError(f"part {part.name} has cell columns {part.cells}, part "
                               f"{parts[0].name} has {cells}: parts of one study share them")
    with_lengths = [p.lengths is not None for p in parts]
    if any(with_lengths) and not all(with_lengths):
        lacking = [p.name for p, has in zip(parts, with_lengths, strict=True) if not has]
        raise CombineError(f"part(s) {lacking} lack per_seed_lengths.csv, which the others have")
    per_seed = pd.concat([p.per_seed.assign(part=p.name) for p in parts], ignore_index=True)
    twice = per_seed[per_seed.duplicated(SEED_KEY, keep=False)]
    if len(twice):
        first = twice.iloc[0]
        holders = sorted(twice.loc[(twice["run_key"] == first["run_key"])
                                   & (twice["seed"] == first["seed"]), "part"])
        raise CombineError(f"seed {first['seed']} of run key {first['run_key']} is in parts "
                           f"{holders} ({len(twice)} rows held twice): parts must not overlap")
    keys = per_seed.groupby([*cells, "part"], dropna=False)["run_key"].agg(
        lambda keys: tuple(sorted(set(keys))))
    for cell, by_part in keys.groupby(level=list(range(len(cells))), dropna=False):
        if by_part.nunique() > 1:
            where = dict(zip(cells, cell if isinstance(cell, tuple) else (cell,), strict=True))
            seen = {part: list(k) for (*_, part), k in by_part.items()}
            raise CombineError(f"cell {where} has run keys {seen} by part: the parts ran "
                               "different configurations under one cell's label")
    order = [*cells, "seed"]
    per_seed = per_seed.drop(columns="part").sort_values(order, kind="stable").reset_index(
        drop=True)
    curves = pd.concat([p.curves for p in parts], ignore_index=True)
    lengths = (pd.concat([p.lengths for p in parts], ignore_index=True) if all(with_lengths)
               else None)
    return Union(per_seed, curves, lengths, cells)


def curve_bands(data: Union, settings: ReportSettings) -> pd.DataFrame:
    """Per cell, the mean return curve over its seeds that did not diverge with its Student t
    band (`analysis.metrics.curve_band`), on the curves' grid."""
    diverged = data.per_seed.set_index(SEED_KEY)["diverged"].astype(bool)
    parts = []
    for cell_values, cell in data.curves.groupby(data.cells, dropna=False, sort=True):
        wide = cell.pivot(index=SEED_KEY, columns="env_step", values="episode_return")
        # A cell whose seeds all diverged keeps its place with no seeds, as in the report.
        healthy = wide[~diverged.reindex(wide.index, fill_value=False).to_numpy()]
        band = metrics.curve_band(healthy, settings.confidence)
        parts.append(band.reset_index().assign(
            **dict(zip(data.cells, cell_values, strict=True))))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def machine_union(parts: Sequence[Part]) -> dict[str, list[str]]:
    """Every part's devices, CPUs and hosts (``not recorded`` for a part without them)."""
    return {f: sorted({v for p in parts for v in (p.machine.get(f) or ["not recorded"])})
            for f in MACHINE_FIELDS}


def part_rows(parts: Sequence[Part]) -> pd.DataFrame:
    """One row per part: its seeds, cells, command, commits and CPUs."""
    rows = []
    for part in parts:
        seeds = part.per_seed["seed"]
        rows.append({
            "part": part.name,
            "seeds": compact_ranges(seeds),
            "cells": str(len(part.per_seed.drop_duplicates(part.cells))),
            "seed runs": str(len(part.per_seed)),
            "command": f"`{provenance_command(part.readme)}`",
            "git commits": provenance_field(part.readme, COMMITS_LINE),
            "CPUs": provenance_field(part.readme, CPUS_LINE),
        })
    return pd.DataFrame(rows)


def parts_text(parts: Sequence[Part]) -> str:
    """ "1 part", "2 parts"."""
    return f"{len(parts)} part{'s' if len(parts) != 1 else ''}"


def provenance_text(name: str, destination: Path, parts: Sequence[Part], data: Union,
                    command: str, generated: str) -> str:
    """DEST's README: the union's totals first (the lines `analysis.findings` reads), then
    what made each part."""
    commits = sorted({c for p in parts for c in provenance_commits(p.readme)})
    cpus = machine_union(parts)["cpu"]
    per_seed = data.per_seed
    lines = [
        f"# Evidence: {name} (combined from {parts_text(parts)})",
        "",
        f"Combined {generated} by:",
        "",
        f"    {command}",
        "",
        f"- cells: {len(per_seed.drop_duplicates(data.cells))}; seeds: {len(per_seed)} "
        f"(diverged: {int(per_seed['diverged'].astype(bool).sum())})",
        COMMITS_LINE + (", ".join(f"`{c}`" for c in commits) or "not recorded"),
        CPUS_LINE + ", ".join(f"`{c}`" for c in cpus),
        "",
        "Parts (each folder's README names the command, commit and machine that made it):",
        "",
    ]
    for _, row in part_rows(parts).iterrows():
        lines.append(f"- `{PARTS_DIRNAME}/{row['part']}`: seeds {row['seeds']}, "
                     f"{row['seed runs']} seed runs; made by {row['command']}; commits "
                     f"{row['git commits']}; CPUs {row['CPUs']}")
    lines += [
        "",
        "Files: `report.md` (claims, convergence from the parts' curves, significance and "
        "best-lr tables, per-cell summary), `claims.csv` (verdicts), `claim-<id>.csv` (every "
        "comparison behind them), `per_seed_metrics.csv` and `summary.csv` (the union of the "
        "parts, every seed and cell), the tables as CSV, Markdown and LaTeX; each part's "
        f"`per_seed_metrics.csv` and `curves.csv` (return curves at {CURVE_POINTS} grid points) "
        f"are in `{PARTS_DIRNAME}/`. Re-judge them (after a claim file or a test changed) "
        f"with `python -m analysis.combine {shlex.quote(str(destination))}`.",
        "",
    ]
    return "\n".join(lines)


def report_blocks(name: str, parts: Sequence[Part], data: Union, command: str,
                  generated: str, tables_: Sequence, claims: tuple, figure_files: dict,
                  summary: pd.DataFrame, settings: ReportSettings) -> list[Block]:
    """The combined report: provenance, then the report's own sections on the union."""
    by_name = {t.name: t for t in tables_}
    claim_results, claim_errors = claims
    return [
        Heading(f"Report: {name} (combined from {parts_text(parts)})", 1),
        Paragraph(
            f"Generated {generated} by `{command}` from the compact evidence of the parts "
            "below: their per-seed metrics as each part's report computed them, judged "
            f"together. {settings_text(settings)} The parts' raw results are not kept: aggregates "
            "across envs (reference scores) and per-episode detail are in each part's report."
        ),
        Table(part_rows(parts)),
        *claims_blocks(claim_results, claim_errors, figure_files["claims"], settings),
        *convergence_blocks(figure_files["convergence"], settings),
        Paragraph(f"(Drawn from the parts' return curves at {CURVE_POINTS} grid points per "
                  f"seed, coarser than a report's {settings.grid_points}.)"),
        *significance_blocks(
            [by_name[n] for n in by_name if n.startswith("significance-")], settings),
        *best_lr_blocks(
            [by_name[n] for n in by_name if n.startswith("best_lr-")], figure_files["lr"],
            settings),
        *summary_blocks(summary, settings),
        *methods_blocks(settings),
        *cells_blocks(data.per_seed, data.cells),
    ]


def png_only(files: figures.FigureFiles) -> figures.FigureFiles:
    """Figures without their PDFs (deleted: the evidence keeps PNGs, as `analysis.evidence`)."""
    kept = []
    for title, (png, pdf) in files:
        if pdf is not None:
            Path(pdf).unlink(missing_ok=True)
        kept.append((title, (png, None)))
    return kept


def write_combined(staging: Path, destination: Path, experiment: str, parts: Sequence[Part],
                   data: Union, settings: ReportSettings, command: str) -> None:
    """Every file of ``destination`` into the (empty) ``staging`` folder."""
    name = destination.resolve().name
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for part in parts:
        target = staging / PARTS_DIRNAME / part.name
        target.mkdir(parents=True)
        for file in (*PART_FILES, *OPTIONAL_PART_FILES):
            if (part.directory / file).is_file():
                shutil.copy2(part.directory / file, target / file)
    per_seed, cells = data.per_seed, data.cells
    summary = summarize_cells(per_seed, cells, settings)
    per_seed.to_csv(staging / "per_seed_metrics.csv", index=False)
    summary.to_csv(staging / "summary.csv", index=False)
    if data.lengths is not None:
        data.lengths.to_csv(staging / "per_seed_lengths.csv", index=False)
    comparison_tables = build_tables(per_seed, cells, settings)
    for table in comparison_tables:
        write_table(table, staging)
    claims = judge_claims(experiment, with_lengths(per_seed, data.lengths), cells, settings)
    figure_files = {
        "claims": png_only(write_claim_files(claims[0], staging, settings)),
        "lr": png_only(figures.write_lr_sensitivity_figures(summary, cells, staging, settings)),
        "convergence": png_only(figures.write_convergence_figures(
            curve_bands(data, settings), cells, staging, settings)),
    }
    blocks = report_blocks(name, parts, data, command, generated, comparison_tables, claims,
                           figure_files, summary, settings)
    (staging / "report.md").write_text(to_markdown(blocks, staging))
    (staging / MACHINE_FILE).write_text(json.dumps(machine_union(parts), indent=2) + "\n")
    (staging / "README.md").write_text(
        provenance_text(name, destination, parts, data, command, generated))


def combine(destination: Path, specs: Sequence[str], experiment: str | None,
            settings: ReportSettings, command: str) -> Path:
    """Check the parts, then write ``destination`` whole (staged beside it, swapped in)."""
    destination = Path(destination)
    name = destination.resolve().name
    experiment = experiment or name
    known = sorted({c.experiment for c in load_claims()})
    if experiment not in known:
        raise CombineError(f"no claim in conf/claims is judged on experiment {experiment!r} "
                           f"(DEST's folder name unless --experiment is given); valid: {known}")
    parts = [read_part(n, d) for n, d in part_sources(destination, specs)]
    data = union(parts)
    write_whole(destination, lambda staging: write_combined(
        staging, destination, experiment, parts, data, settings, command))
    return destination


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 2 on parts that cannot be combined."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = ArgumentParser(prog="python -m analysis.combine",
                            description="One study's evidence from the evidence of its parts.")
    parser.add_argument("destination", type=Path, help="the study's evidence folder")
    parser.add_argument("--part", action="append", default=[], metavar="[NAME=]DIR",
                        help="a part's evidence folder (analysis.evidence), named NAME or "
                        "after its folder; repeat per part; none: DEST's own parts/")
    parser.add_argument("--experiment", default=None,
                        help="the experiment whose claims to judge (default: DEST's name)")
    add_settings_arguments(parser, curves=False)
    args = parser.parse_args(argv)
    settings = settings_from_arguments(args, parser)
    command = shlex.join(["python", "-m", "analysis.combine", *argv])
    try:
        written = combine(args.destination, args.part, args.experiment, settings, command)
    except (CombineError, FolderNotWritable) as error:
        print(f"analysis.combine: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    size = sum(p.stat().st_size for p in written.rglob("*") if p.is_file())
    print(f"wrote {written} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

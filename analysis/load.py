"""Load an experiment's results dataset into pandas.

An experiment directory holds one parquet file per training job under ``data/`` (the contract is
`bench.schema`). Each file is read and validated on its own, so that files with different swept
columns unify instead of losing columns, and a corrupt, damaged (rows that do not match the
content digest in its metadata), foreign or wrong-version file is skipped and reported (a
`SkippedFileWarning` and an entry in `Dataset.skipped`) instead of being mixed in.

A result is identified by (run key, seed): each pair is taken from exactly one file, the first
in name order that holds it, and the pairs a later file repeats are left out of it (a
`DuplicateSeedsWarning` and an entry in `Dataset.duplicates`; a file that holds nothing new is
skipped). The trainer's resume (`bench.store.completed_seeds`) credits seeds by the same rule.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from bench import schema

DATA_DIRNAME = "data"

# Identity columns that, with the swept columns, make a cell: everything but `kind`, `run_key`
# (the hash of the whole config) and `seed`.
CELL_IDENTITY_COLUMNS: tuple[str, ...] = ("algo", "env", "reduction", "optim", "lr")

# Columns of each frame, in this order, followed by the swept columns.
EPISODE_FRAME_COLUMNS: tuple[str, ...] = (
    *(c for c in schema.IDENTITY_COLUMNS if c != "kind"),
    *schema.COMMON_COLUMNS,
    *schema.EPISODE_COLUMNS,
    *schema.TOKEN_EPISODE_COLUMNS,
)
UPDATE_FRAME_COLUMNS: tuple[str, ...] = (
    *(c for c in schema.IDENTITY_COLUMNS if c != "kind"),
    *schema.COMMON_COLUMNS,
    *schema.UPDATE_COLUMNS,
    *schema.TOKEN_UPDATE_COLUMNS,
)
# Diagnostics rows: besides their own columns, the update whose batch was probed and that
# batch's shape and learning rate (`bench.schema.DIAGNOSTICS_COLUMNS`).
DIAGNOSTICS_FRAME_COLUMNS: tuple[str, ...] = (
    *(c for c in schema.IDENTITY_COLUMNS if c != "kind"),
    *schema.COMMON_COLUMNS,
    "update",
    "batch_steps",
    "batch_trajectories",
    "learning_rate",
    *schema.DIAGNOSTICS_COLUMNS,
)


# The update columns the report, the evidence export and `make verify` read: when each run
# ended and which seeds diverged where (`analysis.cells`). Loading only these keeps a stepwise
# study's update rows (one per env step and seed) within memory.
SUMMARY_UPDATE_COLUMNS: tuple[str, ...] = ("run_key", "seed", "env_step", "diverged")


class DatasetError(Exception):
    """The experiment directory has no usable results (missing, empty, or every file skipped)."""


class InvalidResultFile(Exception):
    """One file is not a readable results file of the current schema version."""


class SkippedFileWarning(UserWarning):
    """A results file was left out of the dataset; the message names the file and the reason."""


class DuplicateSeedsWarning(SkippedFileWarning):
    """Some (run key, seed) pairs of a file were left out: an earlier file holds them."""


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of the dataset and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class DuplicateSeeds:
    """Seeds of one run that a file repeats: taken from ``loaded_from``, left out of ``path``."""

    path: Path
    run_key: str
    seeds: list[int]
    loaded_from: Path


@dataclass(frozen=True)
class ResultFile:
    """One validated results file: its rows and its decoded metadata."""

    path: Path
    table: pa.Table
    metadata: dict[str, str]
    config: dict[str, Any]
    swept_columns: tuple[str, ...]
    seeds: list[int]
    diverged_seeds: list[int]
    versions: dict[str, str]
    overrides: list[str]


@dataclass
class Dataset:
    """An experiment's results.

    - ``episodes``: one row per finished episode (identity, common and episode columns, then the
      swept columns);
    - ``updates``: one row per gradient update (identity, common and update columns, then the
      swept columns; only the columns asked for when `load_dataset` was given
      ``update_columns``);
    - ``diagnostics``: one row per probe reduction at each probed update of a seed
      (`DIAGNOSTICS_FRAME_COLUMNS`, then the swept columns); empty, with those columns, when
      no file has gradient diagnostics;
    - ``runs``: one row per file, with its metadata (``config``: the resolved config as a dict)
      and its identity and swept values;
    - ``swept_columns``: the union of the files' swept columns, in first-seen order;
    - ``skipped``: the files left out and why;
    - ``duplicates``: the seeds left out of files that repeat them (``runs`` lists, per file,
      only the seeds taken from it).
    """

    experiment_dir: Path
    episodes: pd.DataFrame
    updates: pd.DataFrame
    diagnostics: pd.DataFrame
    runs: pd.DataFrame
    swept_columns: tuple[str, ...]
    skipped: list[SkippedFile]
    duplicates: list[DuplicateSeeds] = field(default_factory=list)


def data_dir(experiment_dir: Path | str) -> Path:
    """The directory holding an experiment's parquet files."""
    return Path(experiment_dir) / DATA_DIRNAME


def list_result_files(directory: Path) -> list[Path]:
    """The parquet files in ``directory``, sorted; temporary files (name starts with ".") are
    left out."""
    return sorted(
        path
        for path in directory.glob("*.parquet")
        if path.is_file() and not path.name.startswith(".")
    )


def read_result_file(path: Path) -> ResultFile:
    """Read one results file and check it against `bench.schema`.

    Raises `InvalidResultFile` with the reason when the file is not readable parquet, has no or
    another schema version, has metadata that does not parse, lacks a column of the schema or
    one of its swept columns, has rows that do not match its content digest (files written
    before digests existed have none and are read as before), or rows of another run key or of
    seeds its metadata does not list.
    """
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise InvalidResultFile(f"not a readable parquet file ({error})") from error
    metadata = {
        key.decode(errors="replace"): value.decode(errors="replace")
        for key, value in (table.schema.metadata or {}).items()
    }
    version = metadata.get(schema.SCHEMA_VERSION_KEY)
    if version is None:
        raise InvalidResultFile(
            f"no '{schema.SCHEMA_VERSION_KEY}' metadata: not a bench results file"
        )
    readable = [str(v) for v in schema.READABLE_SCHEMA_VERSIONS]
    if version not in readable:
        raise InvalidResultFile(
            f"schema version {version!r}, this code reads versions {', '.join(readable)}"
        )
    digest = metadata.get(schema.CONTENT_DIGEST_KEY)
    if digest is not None and schema.content_digest(table) != digest:
        raise InvalidResultFile(
            "content check failed: its rows do not match the content digest in its metadata "
            "(damaged data pages)"
        )
    for added_in, columns in schema.COLUMNS_ADDED_IN.items():
        if int(version) < added_in:  # written before these columns existed: they are null
            for name, type_name in columns.items():
                arrow_type = (pa.string() if type_name == "string"
                              else pa.from_numpy_dtype(np.dtype(type_name)))
                table = table.append_column(name, pa.nulls(table.num_rows, type=arrow_type))
    swept_columns = tuple(_json_metadata(metadata, schema.SWEPT_COLUMNS_KEY, default=[]))
    missing = [c for c in (*schema.COLUMNS, *swept_columns) if c not in table.column_names]
    if missing:
        raise InvalidResultFile(f"missing columns: {', '.join(missing)}")
    seeds = _json_metadata(metadata, schema.SEEDS_KEY, default=None)
    run_key = metadata.get(schema.RUN_KEY_KEY)
    row_keys = set(pc.unique(table["run_key"]).to_pylist())
    if run_key is not None and row_keys - {run_key}:
        raise InvalidResultFile(
            f"rows of run {sorted(map(str, row_keys - {run_key}))} in a file of run {run_key}"
        )
    if seeds is not None:
        extra = set(pc.unique(table["seed"]).to_pylist()) - set(seeds)
        if extra:
            raise InvalidResultFile(f"rows of seeds {sorted(extra)} its metadata does not list")
    return ResultFile(
        path=path,
        table=table,
        metadata=metadata,
        config=_yaml_config(metadata),
        swept_columns=swept_columns,
        seeds=seeds if seeds is not None else sorted(pc.unique(table["seed"]).to_pylist()),
        diverged_seeds=_json_metadata(metadata, schema.DIVERGED_SEEDS_KEY, default=[]),
        versions=_json_metadata(metadata, schema.VERSIONS_KEY, default={}),
        overrides=_json_metadata(metadata, schema.OVERRIDES_KEY, default=[]),
    )


def load_dataset(
    experiment_dir: Path | str, update_columns: Sequence[str] | None = None
) -> Dataset:
    """Load every results file of ``<experiment_dir>/data`` into one `Dataset`.

    Invalid files are skipped with a `SkippedFileWarning` and listed in `Dataset.skipped`. Each
    (run_key, seed) is taken from the first file (by name order) that holds it: a later file's
    rows of that pair are left out (a `DuplicateSeedsWarning` and an entry in
    `Dataset.duplicates`), and a file that holds no new pair is skipped, so no seed is counted
    twice and none is lost. A swept column that a file lacks is filled from that file's
    resolved config where the dotted path exists there, and is missing (NaN) otherwise. Raises
    `DatasetError` naming the path when the experiment or its data directory does not exist, or
    holds no results file, or no valid one.

    ``update_columns``: None loads every update column and the swept columns
    (`UPDATE_FRAME_COLUMNS`); a sequence (e.g. `SUMMARY_UPDATE_COLUMNS`) loads only those
    columns of the update rows, which is what keeps a stepwise study (one update row per env
    step: tens of millions of rows) within memory. Files are read one at a time and only their
    frames are kept, so memory holds the frames, not every file's whole table.
    """
    if update_columns is not None:
        unknown = [c for c in update_columns if c not in UPDATE_FRAME_COLUMNS]
        if unknown:
            raise ValueError(
                f"unknown update column(s) {', '.join(map(repr, unknown))}; valid choices: "
                f"{', '.join(UPDATE_FRAME_COLUMNS)}"
            )
    if not Path(experiment_dir).is_dir():
        raise DatasetError(f"experiment directory not found: {experiment_dir}")
    directory = data_dir(experiment_dir)
    if not directory.is_dir():
        raise DatasetError(f"no results directory: {directory} does not exist")
    paths = list_result_files(directory)
    if not paths:
        raise DatasetError(f"no results files (*.parquet) in {directory}")

    files: list[_LoadedFile] = []
    skipped: list[SkippedFile] = []
    duplicates: list[DuplicateSeeds] = []
    loaded_seeds: dict[tuple[str, int], Path] = {}
    for path in paths:
        try:
            result = read_result_file(path)
            result, repeated = _claim_seeds(result, loaded_seeds)
        except InvalidResultFile as error:
            skipped.append(SkippedFile(path=path, reason=str(error)))
            warnings.warn(f"skipping {path}: {error}", SkippedFileWarning, stacklevel=2)
            continue
        for duplicate in repeated:
            duplicates.append(duplicate)
            warnings.warn(
                f"{path}: run {duplicate.run_key} seeds "
                f"{', '.join(map(str, duplicate.seeds))} left out, already loaded from "
                f"{duplicate.loaded_from.name}; seeds {', '.join(map(str, result.seeds))} "
                "taken from it",
                DuplicateSeedsWarning,
                stacklevel=2,
            )
        files.append(_load_file(result, update_columns))
        del result  # its table: only the frames above are kept
    if not files:
        reasons = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped)
        raise DatasetError(f"no valid results files in {directory} ({reasons})")

    swept_columns = tuple(dict.fromkeys(c for f in files for c in f.result.swept_columns))
    frame_columns = {
        schema.KIND_EPISODE: (EPISODE_FRAME_COLUMNS, swept_columns),
        schema.KIND_UPDATE: (
            (UPDATE_FRAME_COLUMNS, swept_columns)
            if update_columns is None
            else (tuple(update_columns), ())
        ),
        schema.KIND_DIAGNOSTICS: (DIAGNOSTICS_FRAME_COLUMNS, swept_columns),
    }
    frames = {
        kind: _concat(
            _with_swept_columns(f.frames.pop(kind), f.result, columns, swept)
            for f in files
        )
        for kind, (columns, swept) in frame_columns.items()
    }
    runs = pd.DataFrame([_run_record(f, swept_columns) for f in files])
    return Dataset(
        experiment_dir=Path(experiment_dir),
        episodes=frames[schema.KIND_EPISODE],
        updates=frames[schema.KIND_UPDATE],
        diagnostics=frames[schema.KIND_DIAGNOSTICS],
        runs=runs,
        swept_columns=swept_columns,
        skipped=skipped,
        duplicates=duplicates,
    )


def cell_columns(dataset: Dataset) -> list[str]:
    """The columns whose values make a cell: algo, env, reduction, optim, lr, then the swept
    columns. A cell's seeds are its replicates."""
    swept = [c for c in dataset.swept_columns if c not in CELL_IDENTITY_COLUMNS]
    return [*CELL_IDENTITY_COLUMNS, *swept]


def config_value(config: dict[str, Any], dotted_path: str) -> Any:
    """The value at ``dotted_path`` (e.g. ``algo.gamma``) of a nested config, or None."""
    value: Any = config
    for part in dotted_path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _json_metadata(metadata: dict[str, str], key: str, default: Any) -> Any:
    """A JSON metadata value, ``default`` when absent; invalid JSON makes the file invalid."""
    if key not in metadata:
        return default
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as error:
        raise InvalidResultFile(f"metadata '{key}' is not valid JSON ({error})") from error


def _yaml_config(metadata: dict[str, str]) -> dict[str, Any]:
    """The resolved config of the file (empty when absent); invalid YAML makes the file
    invalid."""
    try:
        config = yaml.safe_load(metadata.get(schema.CONFIG_KEY, "")) or {}
    except yaml.YAMLError as error:
        raise InvalidResultFile(f"metadata '{schema.CONFIG_KEY}' is not valid YAML") from error
    if not isinstance(config, dict):
        raise InvalidResultFile(f"metadata '{schema.CONFIG_KEY}' is not a mapping")
    return config


def _file_seed_keys(result: ResultFile) -> set[tuple[str, int]]:
    """The (run_key, seed) pairs the file holds: its metadata's run key and seeds (those of its
    rows for a file without them)."""
    run_key = result.metadata.get(schema.RUN_KEY_KEY)
    if run_key is not None:
        return {(run_key, int(seed)) for seed in result.seeds}
    pairs = result.table.select(["run_key", "seed"]).group_by(["run_key", "seed"]).aggregate([])
    return set(zip(pairs["run_key"].to_pylist(), pairs["seed"].to_pylist(), strict=True))


def _claim_seeds(
    result: ResultFile, loaded_seeds: dict[tuple[str, int], Path]
) -> tuple[ResultFile, list[DuplicateSeeds]]:
    """Record the file's new (run_key, seed) pairs and return the file restricted to them, with
    the pairs it repeats per run; a file with no new pair is invalid."""
    pairs = _file_seed_keys(result)
    repeated = sorted(pairs & loaded_seeds.keys())
    new = pairs - loaded_seeds.keys()
    if repeated and not new:
        first = loaded_seeds[repeated[0]]
        seeds = ", ".join(str(seed) for _, seed in repeated)
        raise InvalidResultFile(
            f"run {repeated[0][0]} seeds {seeds} were already loaded from {first.name}"
        )
    loaded_seeds.update(dict.fromkeys(new, result.path))
    if not repeated:
        return result, []
    by_source: dict[tuple[str, Path], list[int]] = {}
    for run_key, seed in repeated:
        by_source.setdefault((run_key, loaded_seeds[(run_key, seed)]), []).append(seed)
    duplicates = [
        DuplicateSeeds(path=result.path, run_key=run_key, seeds=seeds, loaded_from=source)
        for (run_key, source), seeds in by_source.items()
    ]
    keep = pa.array(sorted({seed for _, seed in new}), type=pa.int64())
    table = result.table.filter(pc.is_in(result.table["seed"], value_set=keep))
    kept = set(keep.to_pylist())
    restricted = replace(
        result,
        table=table,
        seeds=[seed for seed in result.seeds if seed in kept],
        diverged_seeds=[seed for seed in result.diverged_seeds if seed in kept],
    )
    return restricted, duplicates


@dataclass
class _LoadedFile:
    """What `load_dataset` keeps of one file: its frames per kind (with the file's own swept
    columns), its row count per kind, and the file with its table cut to the first row (the
    rest of the rows live in the frames only)."""

    result: ResultFile
    frames: dict[str, pd.DataFrame]
    rows_by_kind: dict[str, int]


def _load_file(result: ResultFile, update_columns: Sequence[str] | None) -> _LoadedFile:
    """Split one validated file into its frames per kind; ``update_columns`` as in
    `load_dataset`."""
    table = result.table
    own_swept = list(result.swept_columns)
    kinds = {
        schema.KIND_EPISODE: [*EPISODE_FRAME_COLUMNS, *own_swept],
        schema.KIND_UPDATE: (
            [*UPDATE_FRAME_COLUMNS, *own_swept] if update_columns is None else list(update_columns)
        ),
        schema.KIND_DIAGNOSTICS: [*DIAGNOSTICS_FRAME_COLUMNS, *own_swept],
    }
    frames = {}
    for kind, columns in kinds.items():
        frame = table.filter(pc.equal(table["kind"], kind)).select(columns).to_pandas()
        for column in own_swept:
            if column in frame and frame[column].dtype == object:
                frame[column] = frame[column].map(_as_group_key)
        frames[kind] = frame
    kind_counts = pc.value_counts(table["kind"]).to_pylist()
    return _LoadedFile(
        result=replace(result, table=table.slice(0, 1)),
        frames=frames,
        rows_by_kind={entry["values"]: entry["counts"] for entry in kind_counts},
    )


def _with_swept_columns(
    frame: pd.DataFrame,
    result: ResultFile,
    columns: Iterable[str],
    swept_columns: tuple[str, ...],
) -> pd.DataFrame:
    """A file's frame with ``columns`` and then ``swept_columns`` (the dataset's): a swept
    column the file lacks is filled from its config (NaN where the config has no such path)."""
    for column in swept_columns:
        if column not in result.swept_columns:
            value = _as_group_key(config_value(result.config, column))
            frame[column] = np.nan if value is None else value
    return frame[[*columns, *swept_columns]]


def _as_group_key(value: Any) -> Any:
    """Scalars as Python scalars; lists and mappings (e.g. a swept list of layer sizes) as JSON
    text, so that they can serve as group keys."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def _concat(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate per-file frames; files without rows of the kind do not change column types."""
    frames = list(frames)
    non_empty = [f for f in frames if len(f)]
    return pd.concat(non_empty or frames[:1], ignore_index=True)


def _swept_value(result: ResultFile, column: str) -> Any:
    """The file's value of a swept column: from its rows when it has the column, else from its
    config."""
    if column in result.swept_columns and result.table.num_rows:
        return _as_group_key(result.table[column][0].as_py())
    return _as_group_key(config_value(result.config, column))


def _run_record(loaded: _LoadedFile, swept_columns: tuple[str, ...]) -> dict[str, Any]:
    """One row of `Dataset.runs`: the file, its metadata, and its identity and swept values."""
    result, rows_by_kind = loaded.result, loaded.rows_by_kind
    metadata = result.metadata
    first_row = result.table.slice(0, 1).select(list(CELL_IDENTITY_COLUMNS)).to_pylist()
    identity = first_row[0] if first_row else dict.fromkeys(CELL_IDENTITY_COLUMNS)
    return {
        "path": str(result.path),
        "run_key": metadata.get(schema.RUN_KEY_KEY),
        "seeds": result.seeds,
        "diverged_seeds": result.diverged_seeds,
        **identity,
        **{column: _swept_value(result, column) for column in swept_columns},
        "total_steps": config_value(result.config, "total_steps"),
        "n_episodes": rows_by_kind.get(schema.KIND_EPISODE, 0),
        "n_updates": rows_by_kind.get(schema.KIND_UPDATE, 0),
        "n_diagnostics": rows_by_kind.get(schema.KIND_DIAGNOSTICS, 0),
        "git_commit": metadata.get(schema.GIT_COMMIT_KEY),
        "device": metadata.get(schema.DEVICE_KEY),
        "host": metadata.get(schema.HOST_KEY),
        "cpu": metadata.get(schema.CPU_KEY),
        "versions": result.versions,
        "started_at": metadata.get(schema.STARTED_AT_KEY),
        "finished_at": metadata.get(schema.FINISHED_AT_KEY),
        "command": metadata.get(schema.COMMAND_KEY),
        "overrides": result.overrides,
        "config": result.config,
    }

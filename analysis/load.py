"""Load an experiment's results dataset into pandas.

An experiment directory holds one parquet file per training job under ``data/`` (the contract is
`bench.schema`). Each file is read and validated on its own, so that files with different swept
columns unify instead of losing columns, and a corrupt, foreign or wrong-version file is skipped
and reported (a `SkippedFileWarning` and an entry in `Dataset.skipped`) instead of being mixed in.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
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
)
UPDATE_FRAME_COLUMNS: tuple[str, ...] = (
    *(c for c in schema.IDENTITY_COLUMNS if c != "kind"),
    *schema.COMMON_COLUMNS,
    *schema.UPDATE_COLUMNS,
)


class DatasetError(Exception):
    """The experiment directory has no usable results (missing, empty, or every file skipped)."""


class InvalidResultFile(Exception):
    """One file is not a readable results file of the current schema version."""


class SkippedFileWarning(UserWarning):
    """A results file was left out of the dataset; the message names the file and the reason."""


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of the dataset and why."""

    path: Path
    reason: str


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
      swept columns);
    - ``runs``: one row per file, with its metadata (``config``: the resolved config as a dict)
      and its identity and swept values;
    - ``swept_columns``: the union of the files' swept columns, in first-seen order;
    - ``skipped``: the files left out and why.
    """

    experiment_dir: Path
    episodes: pd.DataFrame
    updates: pd.DataFrame
    runs: pd.DataFrame
    swept_columns: tuple[str, ...]
    skipped: list[SkippedFile]


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
    another schema version, has metadata that does not parse, or lacks a column of the schema or
    one of its swept columns.
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
    if version != str(schema.SCHEMA_VERSION):
        raise InvalidResultFile(
            f"schema version {version!r}, this code reads version {schema.SCHEMA_VERSION}"
        )
    swept_columns = tuple(_json_metadata(metadata, schema.SWEPT_COLUMNS_KEY, default=[]))
    missing = [c for c in (*schema.COLUMNS, *swept_columns) if c not in table.column_names]
    if missing:
        raise InvalidResultFile(f"missing columns: {', '.join(missing)}")
    return ResultFile(
        path=path,
        table=table,
        metadata=metadata,
        config=_yaml_config(metadata),
        swept_columns=swept_columns,
        seeds=_json_metadata(metadata, schema.SEEDS_KEY, default=[]),
        diverged_seeds=_json_metadata(metadata, schema.DIVERGED_SEEDS_KEY, default=[]),
        versions=_json_metadata(metadata, schema.VERSIONS_KEY, default={}),
        overrides=_json_metadata(metadata, schema.OVERRIDES_KEY, default=[]),
    )


def load_dataset(experiment_dir: Path | str) -> Dataset:
    """Load every results file of ``<experiment_dir>/data`` into one `Dataset`.

    Invalid files are skipped with a `SkippedFileWarning` and listed in `Dataset.skipped`; so is
    a file whose (run_key, seed) pairs were already loaded from an earlier file (by name order),
    which would otherwise count those seeds twice. A swept column that a file lacks is filled
    from that file's resolved config where the dotted path exists there, and is missing (NaN)
    otherwise. Raises `DatasetError` naming the path when the experiment or its data directory
    does not exist, or holds no results file, or no valid one.
    """
    if not Path(experiment_dir).is_dir():
        raise DatasetError(f"experiment directory not found: {experiment_dir}")
    directory = data_dir(experiment_dir)
    if not directory.is_dir():
        raise DatasetError(f"no results directory: {directory} does not exist")
    paths = list_result_files(directory)
    if not paths:
        raise DatasetError(f"no results files (*.parquet) in {directory}")

    files: list[ResultFile] = []
    skipped: list[SkippedFile] = []
    loaded_seeds: dict[tuple[str, int], Path] = {}
    for path in paths:
        try:
            result = read_result_file(path)
            _claim_seeds(result, loaded_seeds)
        except InvalidResultFile as error:
            skipped.append(SkippedFile(path=path, reason=str(error)))
            warnings.warn(f"skipping {path}: {error}", SkippedFileWarning, stacklevel=2)
            continue
        files.append(result)
    if not files:
        reasons = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped)
        raise DatasetError(f"no valid results files in {directory} ({reasons})")

    swept_columns = tuple(dict.fromkeys(c for f in files for c in f.swept_columns))
    episodes = _concat(
        _rows_of_kind(f, schema.KIND_EPISODE, EPISODE_FRAME_COLUMNS, swept_columns) for f in files
    )
    updates = _concat(
        _rows_of_kind(f, schema.KIND_UPDATE, UPDATE_FRAME_COLUMNS, swept_columns) for f in files
    )
    runs = pd.DataFrame([_run_record(f, swept_columns) for f in files])
    return Dataset(
        experiment_dir=Path(experiment_dir),
        episodes=episodes,
        updates=updates,
        runs=runs,
        swept_columns=swept_columns,
        skipped=skipped,
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
    """The (run_key, seed) pairs present in the file's rows."""
    pairs = result.table.select(["run_key", "seed"]).group_by(["run_key", "seed"]).aggregate([])
    return set(zip(pairs["run_key"].to_pylist(), pairs["seed"].to_pylist(), strict=True))


def _claim_seeds(result: ResultFile, loaded_seeds: dict[tuple[str, int], Path]) -> None:
    """Record the file's (run_key, seed) pairs; a pair already loaded makes the file invalid."""
    pairs = _file_seed_keys(result)
    duplicates = sorted(pairs & loaded_seeds.keys())
    if duplicates:
        first = loaded_seeds[duplicates[0]]
        seeds = ", ".join(str(seed) for _, seed in duplicates)
        raise InvalidResultFile(
            f"run {duplicates[0][0]} seeds {seeds} were already loaded from {first.name}"
        )
    loaded_seeds.update(dict.fromkeys(pairs, result.path))


def _rows_of_kind(
    result: ResultFile, kind: str, columns: Iterable[str], swept_columns: tuple[str, ...]
) -> pd.DataFrame:
    """The file's rows of one kind, with ``columns`` and every swept column of the dataset."""
    rows = result.table.filter(pc.equal(result.table["kind"], kind))
    own_swept = [c for c in swept_columns if c in result.swept_columns]
    frame = rows.select([*columns, *own_swept]).to_pandas()
    for column in own_swept:
        if frame[column].dtype == object:
            frame[column] = frame[column].map(_as_group_key)
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


def _run_record(result: ResultFile, swept_columns: tuple[str, ...]) -> dict[str, Any]:
    """One row of `Dataset.runs`: the file, its metadata, and its identity and swept values."""
    metadata = result.metadata
    first_row = result.table.slice(0, 1).select(list(CELL_IDENTITY_COLUMNS)).to_pylist()
    identity = first_row[0] if first_row else dict.fromkeys(CELL_IDENTITY_COLUMNS)
    kind_counts = pc.value_counts(result.table["kind"]).to_pylist()
    rows_by_kind = {entry["values"]: entry["counts"] for entry in kind_counts}
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
        "git_commit": metadata.get(schema.GIT_COMMIT_KEY),
        "device": metadata.get(schema.DEVICE_KEY),
        "host": metadata.get(schema.HOST_KEY),
        "versions": result.versions,
        "started_at": metadata.get(schema.STARTED_AT_KEY),
        "finished_at": metadata.get(schema.FINISHED_AT_KEY),
        "command": metadata.get(schema.COMMAND_KEY),
        "overrides": result.overrides,
        "config": result.config,
    }

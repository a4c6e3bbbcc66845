"""The results writer: one parquet file per job, written atomically, with full provenance.

Layout: ``<results_dir>/<name>/data/<run_key>-<seed_tag>.parquet``. The run key hashes the
resolved config without seeds and output settings, so every seed of a configuration shares
it; the seed tag hashes the file's seed list. Files are written to a dot-prefixed temporary
name (which parquet readers ignore), read back and checked against the content digest stored
in their metadata, and renamed into place, so a file that exists was complete when written.
Columns are fixed by `bench.schema`.

Result identity is (run key, seed): a seed of a run is complete when some intact file of that
run key lists it (`completed_seeds`; intact: its rows decode and match its content digest),
and resume trains only the seeds no intact file has. `RunLock` makes "which seeds are missing,
train them, write them" one step per run key, so two processes given the same run never train
the same seed twice; the reader (`analysis.load`) takes each (run key, seed) from exactly one
file, the first in name order that holds it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench import schema

# Config keys that decide where results go or how fast a job runs, never what it computes.
NON_RESULT_KEYS = ("seeds", "results_dir", "name", "threads", "progress_interval_s", "pack")
# Nested config values that only the report reads (dotted paths); not part of the run key.
ANALYSIS_ONLY_PATHS = ("env.reference_scores",)
PACKAGES = ("torch", "numpy", "gymnasium", "hydra-core", "omegaconf", "pyarrow")
REPO_ROOT = Path(__file__).resolve().parent.parent


def run_key(resolved_config: Mapping[str, Any]) -> str:
    """16 hex digits of SHA-256 over the resolved config minus `NON_RESULT_KEYS` and
    `ANALYSIS_ONLY_PATHS` (and the `diagnostics` node when they are off): the values that
    decide what a job computes."""
    identity = json.loads(json.dumps(
        {k: v for k, v in resolved_config.items() if k not in NON_RESULT_KEYS}
    ))
    # Diagnostics off compute exactly what runs without the setting computed: same key.
    if not (identity.get("diagnostics") or {}).get("every"):
        identity.pop("diagnostics", None)
    for path in ANALYSIS_ONLY_PATHS:
        drop_path(identity, path)
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def drop_path(config: dict[str, Any], path: str) -> None:
    """Remove the value at dotted `path` of a nested dict, if it is there."""
    *parents, leaf = path.split(".")
    node: Any = config
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


def seed_tag(seeds: Sequence[int]) -> str:
    """8 hex digits identifying a seed list (order-insensitive)."""
    text = json.dumps(sorted(seeds))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def data_dir(results_dir: str | Path, name: str) -> Path:
    return Path(results_dir) / name / "data"


def result_path(results_dir: str | Path, name: str, key: str, seeds: Sequence[int]) -> Path:
    return data_dir(results_dir, name) / f"{key}-{seed_tag(seeds)}.parquet"


class ResultsDirError(OSError):
    """Results cannot be written where the config puts them; the message names the directory
    and the reason, in one line."""


def ensure_writable(directory: Path) -> None:
    """Create `directory` if needed and check that files can be written there, before any
    training (`ResultsDirError` naming the directory otherwise)."""
    probe = directory / f".write-test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb"):
            pass
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        culprit = str(error.filename) if error.filename else None
        where = f" ({culprit})" if culprit not in (None, str(probe), str(directory)) else ""
        raise ResultsDirError(f"cannot write results to {directory}: {reason}{where}") from None


def check_writable(directory: Path) -> None:
    """`ensure_writable` without creating anything (for checks before a job is accepted): the
    directory, or where it does not exist yet its nearest existing parent, must be a directory
    in which a file can be written."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    where = f" ({existing})" if existing != directory else ""
    if not existing.is_dir():
        raise ResultsDirError(f"cannot write results to {directory}: Not a directory{where}")
    probe = existing / f".write-test-{os.getpid()}"
    try:
        with open(probe, "wb"):
            pass
        probe.unlink()
    except OSError as error:
        raise ResultsDirError(f"cannot write results to {directory}: "
                              f"{error.strerror or error}{where}") from None


class ResultFileError(ValueError):
    """A result file is not a complete, intact result (the message says why, in one line)."""


def first_line(text: object) -> str:
    return str(text).strip().partition("\n")[0]


def check_content(table: pa.Table, file_metadata: Mapping[bytes, bytes]) -> None:
    """`ResultFileError` unless the rows match the file's content digest (a file without one,
    written before digests existed, passes: it is trusted as long as its rows decode)."""
    stored = file_metadata.get(schema.CONTENT_DIGEST_KEY.encode())
    if stored is not None and schema.content_digest(table) != stored.decode():
        raise ResultFileError("its rows do not match the content digest in its metadata "
                              "(damaged data pages)")


def read_result(path: Path) -> tuple[pa.Table, dict[bytes, bytes]]:
    """The rows and metadata of a result file whose rows decode and match its content digest
    (`ResultFileError` otherwise)."""
    try:
        table = pq.read_table(path)
    except Exception as error:  # noqa: BLE001 - whatever pyarrow raises, the file is unreadable
        raise ResultFileError(f"unreadable ({first_line(error)})") from None
    file_metadata = dict(table.schema.metadata or {})
    check_content(table, file_metadata)
    return table, file_metadata


def completed_seeds(results_dir: str | Path, name: str, key: str) -> dict[int, Path]:
    """Seeds of run `key` that already have an intact result file, with that file: the first
    in name order that lists the seed (the rule `analysis.load` applies). A file that does not
    decode, does not match its content digest or belongs to another run is not counted (a
    warning says why), so its seeds are trained again; retrained with the same seed list, the
    new file replaces it."""
    done: dict[int, Path] = {}
    for path in sorted(data_dir(results_dir, name).glob(f"{key}-*.parquet")):
        try:
            _, file_metadata = read_result(path)
            own_key = file_metadata.get(schema.RUN_KEY_KEY.encode(), b"").decode()
            if own_key != key:
                raise ResultFileError(f"its metadata names run {own_key or 'none'!r}")
            seeds = json.loads(file_metadata[schema.SEEDS_KEY.encode()])
        except (ResultFileError, KeyError, ValueError) as error:
            print(f"warning: {path} is not counted as complete: {error}", file=sys.stderr)
            continue
        for seed in seeds:
            done.setdefault(int(seed), path)
    return done


LOCKS_DIRNAME = ".locks"
# flock errors of file systems that have no locks.
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class RunLock:
    """An exclusive lock on one run key of one data directory, ``data/.locks/<key>.lock``,
    held with flock(2) on an open file: the kernel releases it when the holder exits, however
    it ends (kill -9 included), so a lock is never stale and a later process never waits for a
    dead one. While held, the file says who holds it (pid, host, since when) for the message of
    a process that waits. Lock files stay (removing one races with a process opening it); they
    are dot-files, which parquet readers ignore. flock works across the nodes of a cluster on
    NFS (Linux emulates it with NFS byte-range locks), as on one machine."""

    def __init__(self, directory: Path, key: str) -> None:
        self.path = directory / LOCKS_DIRNAME / f"{key}.lock"
        self.fd: int | None = None

    def acquire(self, *, blocking: bool) -> bool:
        """Take the lock (waiting for it when `blocking`); False if another process holds it."""
        assert self.fd is None, "lock already held"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            if error.errno in NO_LOCKS:  # a file system without locks: go on as before locks
                print(f"warning: cannot lock {self.path} ({error.strerror}); two processes "
                      "given this run at once would both train it", file=sys.stderr)
                return True
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {utc_now()}\n".encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it ('pid 12 on host since <time>')."""
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"


def git_commit() -> str:
    """HEAD's commit of the code's repository, with "+dirty" if tracked files had changes."""
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def cpu_description() -> str:
    """'<CPU model> (torch <kernel set>)', e.g. 'Intel(R) Xeon(R) Processor (torch AVX512)':
    what decides floating-point rounding on a CPU besides the code."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} (torch {torch.backends.cpu.get_cpu_capability()})"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RunRecorder:
    """Collects a job's episode and update rows in columnar form, then writes one file."""

    def __init__(
        self,
        key: str,
        seeds: Sequence[int],
        identity: Mapping[str, Any],
        swept: Mapping[str, Any],
    ) -> None:
        """identity: algo, env, reduction, optim, lr; swept: extra column name -> value."""
        self.key = key
        self.seeds = np.asarray(seeds, dtype=np.int64)
        self.identity = dict(identity)
        self.swept = dict(swept)
        self._episodes: list[dict[str, np.ndarray]] = []
        self._updates: list[dict[str, np.ndarray]] = []
        self._diagnostics: list[dict[str, np.ndarray]] = []

    def add_episodes(self, seed_index: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        """Episode rows: `seed_index` into the job's seed list, plus EPISODE/COMMON columns."""
        if len(seed_index):
            self._episodes.append({"seed": self.seeds[seed_index], **columns})

    def add_updates(self, seed_index: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        """Update rows: `seed_index` into the job's seed list, plus UPDATE/COMMON columns."""
        if len(seed_index):
            self._updates.append({"seed": self.seeds[seed_index], **columns})

    def add_diagnostics(self, seed_index: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        """Diagnostics rows: `seed_index` into the job's seed list, plus DIAGNOSTICS columns
        (and update, env_step, learning_rate, batch_steps, batch_trajectories)."""
        if len(seed_index):
            self._diagnostics.append({"seed": self.seeds[seed_index], **columns})

    def table(self) -> pa.Table:
        """All rows in the fixed schema plus swept columns, sorted by kind, seed, then episode
        or update (diagnostics rows of one update in the order they were added)."""
        parts = [
            self._kind_table(schema.KIND_EPISODE, self._episodes, "episode"),
            self._kind_table(schema.KIND_UPDATE, self._updates, "update"),
        ]
        if self._diagnostics:  # no diagnostics, no rows of that kind (as before they existed)
            parts.append(self._kind_table(schema.KIND_DIAGNOSTICS, self._diagnostics, "update"))
        return pa.concat_tables(parts)

    def _kind_table(self, kind: str, chunks: list[dict[str, np.ndarray]], order: str) -> pa.Table:
        merged = {
            name: np.concatenate([chunk[name] for chunk in chunks])
            for name in (chunks[0] if chunks else {})
        }
        rows = len(merged.get("seed", ()))
        if rows:
            permutation = np.lexsort((merged[order], merged["seed"]))
            merged = {name: values[permutation] for name, values in merged.items()}
        constants = {"kind": kind, "run_key": self.key, **self.identity}
        arrays, fields = [], []
        for name, type_name in schema.COLUMNS.items():
            arrow_type = pa.string() if type_name == "string" else pa.from_numpy_dtype(
                np.dtype(type_name)
            )
            if name in merged:
                array = pa.array(merged[name], type=arrow_type, from_pandas=True)
            elif name in constants:
                array = pa.array([constants[name]] * rows, type=arrow_type)
            else:
                array = pa.nulls(rows, type=arrow_type)
            arrays.append(array)
            fields.append(pa.field(name, arrow_type))
        for name, value in self.swept.items():
            # Typed from the value itself, so a kind with no rows still has the column's type.
            array = pa.array([value] * rows, type=pa.array([value]).type)
            arrays.append(array)
            fields.append(pa.field(name, array.type))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


# Temporary files are dot-files (parquet readers and `completed_seeds` ignore them) named so.
TEMPORARY_GLOB = ".*.tmp-*"


def temporary_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place (unique per process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_atomically(table: pa.Table, path: Path, file_metadata: Mapping[str, str]) -> None:
    """Write `table` with `file_metadata` and the rows' content digest to `path` via a
    temporary file, which is read back and checked against the digest before the rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = table.schema.metadata or {}
    merged = {**existing, **{k.encode(): v.encode() for k, v in file_metadata.items()},
              schema.CONTENT_DIGEST_KEY.encode(): schema.content_digest(table).encode()}
    table = table.replace_schema_metadata(merged)
    temporary = temporary_path(path)
    try:
        pq.write_table(table, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        try:
            read_result(temporary)
        except ResultFileError as error:
            raise OSError(f"{temporary} does not read back as written: {error}") from None
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def provenance(
    key: str,
    seeds: Sequence[int],
    config_yaml: str,
    overrides: Sequence[str],
    swept_columns: Sequence[str],
    device: str,
    started_at: str,
    diverged_seeds: Sequence[int],
) -> dict[str, str]:
    """The file metadata that traces every number to the command and code that made it."""
    return {
        schema.SCHEMA_VERSION_KEY: str(schema.SCHEMA_VERSION),
        schema.RUN_KEY_KEY: key,
        schema.SEEDS_KEY: json.dumps(list(map(int, seeds))),
        schema.CONFIG_KEY: config_yaml,
        schema.OVERRIDES_KEY: json.dumps(list(overrides)),
        schema.COMMAND_KEY: " ".join([sys.executable, "-m", "bench.run", *sys.argv[1:]]),
        schema.SWEPT_COLUMNS_KEY: json.dumps(list(swept_columns)),
        schema.VERSIONS_KEY: json.dumps(package_versions()),
        schema.GIT_COMMIT_KEY: git_commit(),
        schema.DEVICE_KEY: device,
        schema.HOST_KEY: socket.gethostname(),
        schema.CPU_KEY: cpu_description(),
        schema.STARTED_AT_KEY: started_at,
        schema.FINISHED_AT_KEY: utc_now(),
        schema.DIVERGED_SEEDS_KEY: json.dumps(list(map(int, diverged_seeds))),
    }

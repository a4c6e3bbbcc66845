"""The run key, the atomic writer, content digests, resume's seed identity, run locks."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench import schema
from bench.store import (
    ResultsDirError,
    RunLock,
    check_writable,
    completed_seeds,
    ensure_writable,
    run_key,
    seed_tag,
    write_atomically,
)

CONFIG = {
    "algo": {"name": "reinforce", "gamma": 0.99},
    "env": {"id": "CartPole-v1", "reference_scores": {"random": 21.6, "solved": 475.0}},
    "optim": {"name": "adam", "lr": 0.001},
    "seeds": 4,
    "total_steps": 1000,
    "results_dir": "results",
    "name": "quick",
    "threads": 1,
    "progress_interval_s": 10,
    "device": "cpu",
}


def variant(**changes) -> dict:
    config = {
        key: (dict(value) if isinstance(value, dict) else value) for key, value in CONFIG.items()
    }
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


@pytest.mark.parametrize(
    "change",
    [
        {"seeds": [0, 1]},
        {"results_dir": "elsewhere"},
        {"name": "other"},
        {"threads": 2},
        {"progress_interval_s": 0},
        {"env__reference_scores": {"random": 0.0, "solved": 1.0}},
    ],
)
def test_run_key_ignores_output_speed_and_analysis_settings(change) -> None:
    assert run_key(variant(**change)) == run_key(CONFIG)


@pytest.mark.parametrize(
    "change",
    [
        {"optim__lr": 0.002},
        {"algo__gamma": 0.9},
        {"device": "cuda"},
        {"total_steps": 2000},
    ],
)
def test_run_key_covers_what_changes_results(change) -> None:
    assert run_key(variant(**change)) != run_key(CONFIG)


def test_seed_tag_ignores_order() -> None:
    assert seed_tag([3, 1, 2]) == seed_tag([1, 2, 3]) != seed_tag([1, 2])


def test_failed_write_leaves_no_file_and_no_temporary(tmp_path, monkeypatch) -> None:
    table = pa.table({"a": [1, 2]})
    target = tmp_path / "data" / "key-tag.parquet"
    write_atomically(table, target, {"bench.x": "1"})
    assert pq.read_schema(target).metadata[b"bench.x"] == b"1"

    def broken_write(*args, **kwargs):
        with open(args[1], "wb") as handle:
            handle.write(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken_write)
    other = tmp_path / "data" / "key-other.parquet"
    with pytest.raises(OSError, match="disk full"):
        write_atomically(table, other, {})
    assert sorted(p.name for p in target.parent.iterdir()) == ["key-tag.parquet"]


def test_content_digest_survives_the_file_and_sees_a_changed_value(tmp_path) -> None:
    table = pa.table({"kind": ["episode", "update", None], "seed": [0, 0, 1],
                      "value": [1.5, None, float("inf")], "flag": [True, None, False]})
    path = tmp_path / "k-t.parquet"
    write_atomically(table, path, {})
    read_back = pq.read_table(path)
    stored = read_back.schema.metadata[schema.CONTENT_DIGEST_KEY.encode()].decode()
    assert schema.content_digest(read_back) == schema.content_digest(table) == stored
    rechunked = pa.concat_tables([read_back.slice(0, 1), read_back.slice(1)])
    assert schema.content_digest(rechunked) == stored
    changed = pa.table({**{c: read_back[c] for c in ("kind", "seed", "flag")},
                        "value": [1.5, None, 2.0]}).select(read_back.column_names)
    assert schema.content_digest(changed) != stored
    assert schema.content_digest(read_back.slice(0, 2)) != stored


def result_file(data: Path, key: str, seeds: list[int], *, digest: bool = True) -> Path:
    table = pa.table({"run_key": [key] * len(seeds), "seed": seeds})
    path = data / f"{key}-{seed_tag(seeds)}.parquet"
    write_atomically(table, path, {schema.RUN_KEY_KEY: key, schema.SEEDS_KEY: str(seeds)})
    if not digest:
        metadata = dict(pq.read_schema(path).metadata)
        del metadata[schema.CONTENT_DIGEST_KEY.encode()]
        pq.write_table(pq.read_table(path).replace_schema_metadata(metadata), path)
    return path


def test_completed_seeds_counts_each_seed_once_and_skips_damaged_files(tmp_path, capsys):
    data = tmp_path / "x" / "data"
    first = result_file(data, "k", [0, 1])
    second = result_file(data, "k", [0, 1, 9])
    legacy = result_file(data, "k", [4], digest=False)
    result_file(data, "other", [5])
    assert completed_seeds(tmp_path, "x", "k") == dict(
        sorted({0: min(first, second), 1: min(first, second), 9: second, 4: legacy}.items()))
    # Damaged rows under an intact footer: the file no longer counts, with a warning.
    table = pq.read_table(second)
    damaged = pa.table({"run_key": table["run_key"], "seed": [0, 1, 8]})
    pq.write_table(damaged.replace_schema_metadata(table.schema.metadata), second)
    assert set(completed_seeds(tmp_path, "x", "k")) == {0, 1, 4}
    assert f"warning: {second} is not counted as complete: its rows do not match" in \
        capsys.readouterr().err


def test_run_lock_is_exclusive_and_released_on_close(tmp_path) -> None:
    first, second = RunLock(tmp_path, "k"), RunLock(tmp_path, "k")
    assert first.acquire(blocking=False)
    assert not second.acquire(blocking=False)
    assert f"pid {os.getpid()} on " in second.holder()
    assert RunLock(tmp_path, "other").acquire(blocking=False)
    first.release()
    assert second.acquire(blocking=False)
    second.release()


def test_checking_writability_creates_nothing(tmp_path) -> None:
    target = tmp_path / "a" / "b" / "data"
    check_writable(target)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a").write_text("a file in the way")
    with pytest.raises(ResultsDirError, match=f"cannot write results to {target}: Not a "
                       f"directory \\({tmp_path / 'a'}\\)"):
        check_writable(target)
    with pytest.raises(ResultsDirError, match="cannot write results to"):
        ensure_writable(target)

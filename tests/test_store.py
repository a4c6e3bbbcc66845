"""The run key and the atomic writer."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.store import run_key, seed_tag, write_atomically

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

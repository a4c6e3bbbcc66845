"""The cells a Hydra multirun meant to produce, to list those missing from a partial sweep.

Each multirun writes ``<experiment_dir>/hydra/<time>/multirun.yaml``; its swept values are
``hydra.sweeper.params`` (the experiment preset) updated by the command line's task overrides,
as Hydra's basic sweeper combines them. The expected cells are the product of those values over
the overrides that name a cell column; overrides of anything else (seeds, output settings, the
experiment preset) do not define cells.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

MULTIRUN_GLOB = "hydra/*/multirun.yaml"
# Override keys that are stored under another column name.
KEY_COLUMNS = {"optim.lr": "lr"}


def sweep_overrides(multirun: dict[str, Any]) -> list[str]:
    """The ``key=values`` overrides of one multirun.yaml: the sweeper's params, then the command
    line's task overrides (a key given in both takes the command line's values)."""
    hydra = multirun.get("hydra", {}) or {}
    params = (hydra.get("sweeper", {}) or {}).get("params", {}) or {}
    task = (hydra.get("overrides", {}) or {}).get("task", []) or []
    merged = {str(key): f"{key}={value}" for key, value in params.items()}
    for override in task:
        key = str(override).split("=", 1)[0]
        merged[key.lstrip("+~")] = str(override)
    return list(merged.values())


def expected_cells(multirun: dict[str, Any], columns: Sequence[str]) -> pd.DataFrame:
    """The cells one multirun sweeps: one row per combination of the values of its overrides
    that name one of ``columns`` (group choices such as ``env``, ``optim.lr`` as ``lr``, swept
    config paths); the frame's columns are those columns."""
    values: dict[str, list[Any]] = {}
    for override in OverridesParser.create().parse_overrides(sweep_overrides(multirun)):
        key = override.key_or_group
        column = KEY_COLUMNS.get(key, key)
        if column not in columns:
            continue
        if override.is_sweep_override():
            strings = list(override.sweep_string_iterator())
        else:
            strings = [override.get_value_element_as_str()]
        values[column] = [comparable(yaml.safe_load(s)) for s in strings]
    return pd.DataFrame(list(itertools.product(*values.values())), columns=list(values))


def read_multiruns(experiment_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every readable ``hydra/*/multirun.yaml`` of the experiment, oldest first (by name)."""
    multiruns = []
    for path in sorted(Path(experiment_dir).glob(MULTIRUN_GLOB)):
        try:
            content = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(content, dict):
            multiruns.append((path, content))
    return multiruns


def missing_cells(
    experiment_dir: Path, observed: pd.DataFrame, columns: Sequence[str]
) -> tuple[pd.DataFrame, list[Path]]:
    """The expected cells (over all multiruns of the experiment) with no seed in ``observed``.

    ``observed`` has one row per observed cell with ``columns``. Returns the missing cells
    (columns: the swept ones of the multirun that expects them, then ``multirun``, its path) and
    the multirun.yaml files read.
    """
    multiruns = read_multiruns(experiment_dir)
    missing = []
    for path, multirun in multiruns:
        expected = expected_cells(multirun, columns)
        if expected.empty:
            continue
        swept = list(expected.columns)
        seen = {tuple(comparable(v) for v in row) for row in observed[swept].itertuples(False)}
        absent = [row for row in expected.itertuples(False) if tuple(row) not in seen]
        missing.append(pd.DataFrame(absent, columns=swept).assign(multirun=str(path)))
    frame = pd.concat(missing, ignore_index=True) if missing else pd.DataFrame()
    return frame, [path for path, _ in multiruns]


def comparable(value: Any) -> Any:
    """A value in a form that compares equal between the dataset and the sweep: numbers as
    floats, lists and mappings as JSON text (as `analysis.load` stores them), the rest as
    text."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)

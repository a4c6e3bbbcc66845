"""Fixed per-environment reference returns, for normalised scores and steps-to-threshold.

Each env config may hold ``reference_scores: {random: ..., solved: ...}`` (see
``conf/env/<env>.yaml`` for where each number comes from). The report reads them from the
resolved config stored in each results file (``bench.config``); files written before the keys
existed fall back to the repository's ``conf/env/<env>.yaml``. An env with neither has no
references: it is left out of the aggregates and of steps-to-threshold, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ENV_CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf" / "env"
REFERENCE_KEY = "reference_scores"

Scores = np.ndarray | pd.Series | float


@dataclass(frozen=True)
class ReferenceScores:
    """An env's random-policy and solved returns, and where they were read."""

    random: float
    solved: float
    source: str  # "results metadata" or the path of the env config file

    def normalize(self, returns: Scores) -> Scores:
        """``(returns - random) / (solved - random)``: 0 is the random policy, 1 is solved."""
        return (returns - self.random) / (self.solved - self.random)

    def threshold(self, fraction: float) -> float:
        """The return at normalised score ``fraction``: random + fraction * (solved - random)."""
        return self.random + fraction * (self.solved - self.random)


def parse_reference_scores(env_config: Any, source: str) -> ReferenceScores | None:
    """The env config's ``reference_scores`` as `ReferenceScores`; None when absent or when the
    values are not two finite numbers with ``solved != random``."""
    if not isinstance(env_config, dict) or not isinstance(env_config.get(REFERENCE_KEY), dict):
        return None
    scores = env_config[REFERENCE_KEY]
    try:
        random, solved = float(scores["random"]), float(scores["solved"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (np.isfinite(random) and np.isfinite(solved)) or random == solved:
        return None
    return ReferenceScores(random=random, solved=solved, source=source)


def reference_scores(
    runs: pd.DataFrame, env_config_dir: Path = ENV_CONFIG_DIR
) -> dict[str, ReferenceScores]:
    """Per env name (the ``env`` column), its reference scores.

    Taken from the resolved configs of the runs (``runs["config"]["env"]``; when files disagree,
    the env is left out, since its scores would not be comparable); an env none of whose files
    carries them falls back to ``<env_config_dir>/<env>.yaml``. Envs without references are
    absent from the result.
    """
    references: dict[str, ReferenceScores] = {}
    for env, env_runs in runs.groupby("env", sort=True):
        from_files = {
            parsed
            for config in env_runs["config"]
            if (parsed := parse_reference_scores(config.get("env"), "results metadata"))
        }
        if len(from_files) == 1:
            references[str(env)] = from_files.pop()
        elif not from_files:
            fallback = _env_config_references(env_config_dir / f"{env}.yaml")
            if fallback is not None:
                references[str(env)] = fallback
    return references


def _env_config_references(path: Path) -> ReferenceScores | None:
    """The reference scores of an env config file, None when it or the keys do not exist."""
    if not path.is_file():
        return None
    return parse_reference_scores(yaml.safe_load(path.read_text()), str(path))

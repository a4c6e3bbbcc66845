"""Training algorithms: one module per implementation, each with a `train(job, recorder,
progress)` function. `bench.config.ALGORITHMS` maps algorithm names to these modules."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def trainer(implementation: str) -> Callable:
    """The `train` function of `bench.algos.<implementation>`."""
    return importlib.import_module(f"bench.algos.{implementation}").train

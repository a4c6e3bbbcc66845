"""The packing sweeper as a Hydra plugin (``hydra/sweeper=packed``): Hydra instantiates
sweepers only from the `hydra_plugins` package. What it plans is in `bench.packing`."""

# No `from __future__ import annotations`: Hydra executes plugin modules outside sys.modules,
# where a dataclass cannot resolve string annotations.

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional  # noqa: UP035 - OmegaConf reads these hints

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from bench import sweep
from bench.packing import (
    default_max_slots,
    longest_first,
    plan_packs,
    seed_count,
    seed_list,
    shared_overrides,
)


@dataclass
class PackingSweeperConf:
    _target_: str = "hydra_plugins.bench_packing.packing_sweeper.PackingSweeper"
    # The grid, as for the basic sweeper (`key: comma-separated values`).
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045
    # Most slots (grid points x seeds) per job; null = DEFAULT_MAX_SLOTS of the job's device.
    max_slots: Optional[int] = None  # noqa: UP045
    # Jobs handed to the launcher at once (null: all), as the basic sweeper's option.
    max_batch_size: Optional[int] = None  # noqa: UP045


ConfigStore.instance().store(group="hydra/sweeper", name="packed", node=PackingSweeperConf,
                             provider="bench")


class PackingSweeper(BasicSweeper):
    """Hydra sweeper whose jobs are packs of grid points (see `bench.packing`)."""

    def __init__(self, params: dict[str, str] | None = None, max_slots: int | None = None,
                 max_batch_size: int | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        if max_slots is not None and (not isinstance(max_slots, int) or max_slots < 1):
            raise ValueError(f"hydra.sweeper.max_slots must be a positive integer or null, "
                             f"got {max_slots!r}")
        self.max_slots = max_slots

    def point_config(self, overrides: Sequence[str]) -> dict[str, Any]:
        """The resolved config of one grid point, without Hydra's own node."""
        config: DictConfig = self.hydra_context.config_loader.load_sweep_config(
            self.config, list(overrides))
        with open_dict(config):
            del config["hydra"]
        return OmegaConf.to_container(config, resolve=True)

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        started = time.time()
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        (grid,) = self.split_arguments(overrides, None)
        configs = []
        for number, point in enumerate(grid, start=1):
            try:
                configs.append(self.point_config(point))
            except (HydraException, OmegaConfBaseException) as error:
                # Nothing has been written yet: refuse the sweep in one line, as `bench.run`
                # refuses a command line it cannot compose.
                print(f"error: grid point {number} ({sweep.job_label(point)}): "
                      f"{sweep.one_line(error)}", file=sys.stderr, flush=True)
                sys.exit(2)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        max_slots = self.max_slots or default_max_slots(configs[0])
        packs = longest_first(plan_packs(configs, max_slots), configs)
        jobs = []
        for number, pack in enumerate(packs):
            points = [{"overrides": list(grid[i]), "config": configs[i], "grid_index": i + 1,
                       "seeds": seed_list(configs[i]["seeds"])} for i in pack]
            sweep.write_json(sweep_dir / sweep.PACKS_DIR / f"{number}.json", points)
            jobs.append([*shared_overrides([grid[i] for i in pack]), f"pack={number}"])
        seeds = sum(seed_count(config["seeds"]) for config in configs)
        sweep.write_json(sweep_dir / sweep.MANIFEST_FILE, {
            "name": self.config.name, "points": len(grid), "started": started,
            "jobs": len(jobs), "seeds": seeds, "max_slots": max_slots})
        sweep.say(f"{self.config.name}: {len(grid)} grid points ({seeds} seeds) packed into "
                  f"{sweep.count_of(len(jobs), 'job')} of at most {max_slots} slots; Hydra "
                  f"output in {sweep_dir}")

        returns = []
        batch_size = self.max_batch_size or len(jobs)
        for start in range(0, len(jobs), batch_size):
            results = self.launcher.launch(jobs[start:start + batch_size],
                                           initial_job_idx=start)
            for result in results:
                _ = result.return_value  # raises if a job failed outside bench.run's guard
            returns.append(results)
        return returns

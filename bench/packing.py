"""Packing a sweep: which grid points share a process.

Hydra's basic sweeper launches one job per grid point. The packing sweeper
(``hydra/sweeper=packed``, the suite's default; the Hydra plugin is
`hydra_plugins.bench_packing.packing_sweeper`, the planning is here) builds the same grid
(``hydra.sweeper.params`` and the command line, with the same cartesian product), composes
every grid point's config, and groups the points whose configs share a pack key
(`bench.slots.pack_key`: everything but the batchable values) into packs of at most
`max_slots` slots (grid points x seeds). Each pack is one job of the chosen launcher (a joblib
worker, a submitit process, one task of a SLURM job array): its overrides are those its grid
points share plus ``pack=<n>``, and ``<sweep dir>/packs/<n>.json`` lists its grid points
(overrides and resolved config). `bench.run` trains them as one batched computation and
writes one result file per grid point, exactly as one job per point would.

``hydra/sweeper=basic`` (``make sweep PACK=0``) runs one job per grid point, for comparison
and debugging.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bench.slots import pack_key

# Slots per packed job when `max_slots` is null: on a CPU core, throughput per slot stops
# growing well before this (`make bench`); a GPU wants thousands of slots to be busy.
DEFAULT_MAX_SLOTS = {"cpu": 256, "cuda": 4096}


def seed_list(seeds: Any) -> list[Any]:
    """The seeds a `seeds` value names (a count n: 0..n-1, or a list); [] for a bad value,
    which the job rejects with its own error."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        return list(range(seeds))
    if isinstance(seeds, Sequence) and not isinstance(seeds, str):
        return list(seeds)
    return []


def seed_count(seeds: Any) -> int:
    """Slots a grid point takes: its number of seeds (at least 1)."""
    return max(len(seed_list(seeds)), 1)


def default_max_slots(config: dict[str, Any]) -> int:
    """`DEFAULT_MAX_SLOTS` of the device the jobs will train on."""
    device = config.get("device", "auto")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return DEFAULT_MAX_SLOTS.get(device, DEFAULT_MAX_SLOTS["cpu"])


def plan_packs(configs: Sequence[dict[str, Any]], max_slots: int) -> list[list[int]]:
    """Group grid points (their resolved configs) into packs: indices of points that share a
    pack key, at most `max_slots` slots each (a group that is larger is split into as few
    packs of as equal a size as whole grid points allow; a point with more seeds than
    `max_slots` is a pack of its own). Packs keep the grid's order within and between them."""
    groups: dict[str, list[int]] = {}
    for index, config in enumerate(configs):
        groups.setdefault(pack_key(config), []).append(index)
    packs: list[list[int]] = []
    for members in groups.values():
        sizes = [seed_count(configs[i]["seeds"]) for i in members]
        count = max(1, math.ceil(sum(sizes) / max_slots))
        target = sum(sizes) / count
        pack: list[int] = []
        slots = 0
        for index, size in zip(members, sizes, strict=True):
            if pack and (slots + size > max_slots or slots >= target):
                packs.append(pack)
                pack, slots = [], 0
            pack.append(index)
            slots += size
        packs.append(pack)
    return sorted(packs, key=lambda pack: pack[0])


def longest_first(packs: list[list[int]], configs: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Packs in the order a launcher should start them: the slowest first (a rough cost:
    per_step packs, whose loop makes one backward pass per step, before the others; then env
    steps of all slots), so that parallel workers do not end waiting on one long job."""
    def cost(pack: list[int]) -> tuple[bool, int]:
        first = configs[pack[0]]
        steps = sum(seed_count(configs[i]["seeds"]) for i in pack) * first["total_steps"]
        return first["reduction"]["name"] == "per_step", steps

    return sorted(packs, key=cost, reverse=True)


def shared_overrides(grid: Sequence[Sequence[str]]) -> list[str]:
    """The overrides that every grid point of a pack has, in the first point's order."""
    first, *rest = grid
    return [o for o in first if all(o in other for other in rest)]

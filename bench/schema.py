"""Column names and types of the results dataset: the one contract between `bench` and `analysis`.

Every job writes one parquet file under ``<results_dir>/<name>/data/``. A file holds rows of
several kinds in one table (column ``kind``) so that ``pandas.read_parquet(".../data")`` reads a
whole experiment; columns that do not apply to a row's kind are null.

- ``kind == "episode"``: one row per finished training episode of one seed.
- ``kind == "update"``: one row per gradient update of one seed.
- ``kind == "diagnostics"``: gradient diagnostics (``diagnostics.every``, off by default): at a
  probed update of one seed, one row per probe reduction, measured on the batch that update
  trains on, against a reference gradient from independent episodes (`bench.diagnostics`).

Besides the fixed columns below, a file has one column per swept config value (every Hydra
override of the job other than group choices, seeds and output settings), named by its dotted
config path (e.g. ``algo.gamma``); their names are listed in the file metadata under
``SWEPT_COLUMNS_KEY``. This module imports nothing heavy at import time (`content_digest`
imports pyarrow when called), so `analysis` may import it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# 2: the diagnostics kind and its columns. 3: the token-task (GRPO) columns. Files of an
# earlier version are still read, with the columns added since as nulls (`COLUMNS_ADDED_IN`).
SCHEMA_VERSION = 3
READABLE_SCHEMA_VERSIONS = (1, 2, 3)

# Values of the `reduction` column, in the order of DESIGN.md's table (bench.reductions
# implements them; reports list them in this order).
REDUCTIONS = (
    "sum",
    "mean",
    "traj_mean",
    "traj_step_mean",
    "constant",
    "length_power",
    "per_step",
)

KIND_EPISODE = "episode"
KIND_UPDATE = "update"
KIND_DIAGNOSTICS = "diagnostics"

# Keys of the parquet file's key-value metadata (all values are UTF-8 strings).
META_PREFIX = "bench."
SCHEMA_VERSION_KEY = META_PREFIX + "schema_version"
RUN_KEY_KEY = META_PREFIX + "run_key"
SEEDS_KEY = META_PREFIX + "seeds"  # JSON list of the seeds this file holds
CONFIG_KEY = META_PREFIX + "config"  # resolved config, YAML
OVERRIDES_KEY = META_PREFIX + "overrides"  # JSON list of the job's Hydra overrides
COMMAND_KEY = META_PREFIX + "command"  # the command line that started the process
SWEPT_COLUMNS_KEY = META_PREFIX + "swept_columns"  # JSON list of extra column names
VERSIONS_KEY = META_PREFIX + "versions"  # JSON {package: version}
GIT_COMMIT_KEY = META_PREFIX + "git_commit"  # commit hash, "+dirty" when the tree had changes
DEVICE_KEY = META_PREFIX + "device"
HOST_KEY = META_PREFIX + "host"
# The CPU model and the kernel set torch dispatches to (e.g. AVX512): float results are
# bit-identical across machines only where both agree (absent in files written before it).
CPU_KEY = META_PREFIX + "cpu"
STARTED_AT_KEY = META_PREFIX + "started_at"  # ISO 8601, UTC
FINISHED_AT_KEY = META_PREFIX + "finished_at"
DIVERGED_SEEDS_KEY = META_PREFIX + "diverged_seeds"  # JSON list
# SHA-256 of the file's rows (`content_digest`), checked by resume (`bench.store`) and by
# `analysis.load`: a file whose data pages were damaged while its footer (where this key lives)
# is intact is then retrained and reported instead of being taken as complete. Files written
# before it existed have no such key and are trusted as long as their rows decode.
CONTENT_DIGEST_KEY = META_PREFIX + "content_sha256"

# Columns identifying a run, present on every row. A "cell" (one configuration, all its
# seeds) is algo, env, reduction, optim, lr plus the swept columns.
IDENTITY_COLUMNS: dict[str, str] = {
    "kind": "string",
    "run_key": "string",  # hash of the resolved config without seeds and output settings
    "seed": "int64",
    "algo": "string",
    "env": "string",
    "reduction": "string",
    "optim": "string",
    "lr": "float64",
}

# Both kinds.
COMMON_COLUMNS: dict[str, str] = {
    # Environment steps this seed had taken when the episode ended / when the update was made.
    "env_step": "int64",
    # Seconds since the job started (wall clock; excluded from determinism checks).
    "wall_time": "float64",
}

EPISODE_COLUMNS: dict[str, str] = {
    "episode": "int64",  # index of the episode within its seed, from 0
    "episode_return": "float64",  # undiscounted sum of rewards
    "episode_length": "int64",
    "terminated": "bool",  # True: terminal state reached; False: cut by the time limit
}

UPDATE_COLUMNS: dict[str, str] = {
    "update": "int64",  # index of the gradient update within its seed, from 0
    # The scalar actually differentiated: sum over steps of weight * per-step loss (for
    # `per_step`, the sum of the per-step losses that were backpropagated one by one).
    "loss": "float64",
    # Unweighted means over the batch's valid steps, comparable across reductions.
    "policy_loss": "float64",
    "value_loss": "float64",  # null without a learned value function
    "entropy": "float64",
    # KL(old || new) on the batch after the update (k3 estimator), and PPO's clip fraction.
    "approx_kl": "float64",
    "clip_fraction": "float64",  # null where the algorithm has no clipping
    "grad_norm": "float64",  # L2 norm of this seed's gradient before clipping
    "learning_rate": "float64",
    "batch_steps": "int64",  # valid steps in the batch
    "batch_trajectories": "int64",  # trajectories (episodes or segments) in the batch
    # True from the update at which the seed's loss, gradient or parameters became NaN/inf;
    # the seed stops learning and acting there, so this is the seed's last update row.
    "diverged": "bool",
}

# Diagnostics rows also fill `update` (the index of the update whose batch was probed, taken
# before that update's step), `env_step`, `batch_steps` (sum_i T_i), `batch_trajectories` (N)
# and `learning_rate`. Gradients are of the policy-gradient term -log pi(a|s) A alone, with
# respect to every parameter the optimiser holds (entropy and value terms excluded; the
# would-be step is computed on the policy's parameters only).
DIAGNOSTICS_COLUMNS: dict[str, str] = {
    # The reduction whose gradient this row measures (any of REDUCTIONS, whatever trains).
    "probe_reduction": "string",
    # Cosine between the probe's gradient on the training batch and the reference gradient
    # (1/M) sum_i sum_t of M independent episodes under the same policy.
    "grad_cosine": "float64",
    # ||probe gradient|| / ||reference gradient||.
    "grad_norm_ratio": "float64",
    "reference_norm": "float64",  # ||reference gradient||
    # Cosine between the parameter step the seed's optimiser would take on the probe gradient
    # and the one it would take on the reference gradient (each from a copy of its state).
    "step_cosine": "float64",
    # From B independent training-sized batches: the mean pairwise cosine of the probe's B
    # gradients (1: no direction noise), and the trace of their covariance (unbiased, 1/(B-1)).
    "noise_cosine": "float64",
    "noise_trace": "float64",
    # Standard deviation of the trajectory lengths T_i in the probed batch (0: all equal).
    "batch_length_std": "float64",
}

# Token tasks (algo=grpo, `bench.algos.grpo`): an episode row is one sampled response, its
# `episode_return` the reward, `episode_length` its tokens up to and including END, and
# `terminated` whether it ended with END (False: cut at max_response_length). Null elsewhere.
TOKEN_EPISODE_COLUMNS: dict[str, str] = {
    "correct": "bool",  # the task's verdict on the response
}
# On every update row of a GRPO batch: that batch's statistics (each of its gradient steps
# repeats them), and the per-token KL to the reference policy.
TOKEN_UPDATE_COLUMNS: dict[str, str] = {
    "accuracy": "float64",  # fraction of the batch's responses that are correct
    "response_length": "float64",  # mean tokens per response (END included)
    "response_length_correct": "float64",  # the same over correct responses (null: none)
    "response_length_incorrect": "float64",  # over incorrect ones (null: none)
    # KL(pi || pi_ref) per token (k3 estimator, as TRL's), unweighted mean over the
    # minibatch's valid tokens, at the parameters the gradient step starts from.
    "kl_reference": "float64",
}

COLUMNS: dict[str, str] = {
    **IDENTITY_COLUMNS,
    **COMMON_COLUMNS,
    **EPISODE_COLUMNS,
    **UPDATE_COLUMNS,
    **DIAGNOSTICS_COLUMNS,
    **TOKEN_EPISODE_COLUMNS,
    **TOKEN_UPDATE_COLUMNS,
}
# The columns each schema version added; a file of version v lacks those of later versions.
COLUMNS_ADDED_IN: dict[int, dict[str, str]] = {
    2: DIAGNOSTICS_COLUMNS,
    3: {**TOKEN_EPISODE_COLUMNS, **TOKEN_UPDATE_COLUMNS},
}

# Columns whose values depend on wall-clock time, not on (config, seeds, device).
NONDETERMINISTIC_COLUMNS = ("wall_time",)


def content_digest(table: Any) -> str:
    """SHA-256 (hex) of a pyarrow table's rows: column names and types, then per column its
    null mask and its values (nulls as zero / empty), independent of chunking and of how
    parquet encoded the pages, so the writer's table and the table read back from the file give
    the same digest. pyarrow is imported here, not at module level (see the docstring)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    digest = hashlib.sha256(f"rows={table.num_rows}".encode())
    for field in table.schema:
        digest.update(f"|{field.name}:{field.type}|".encode())
        column = table[field.name]
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if pa.types.is_null(array.type):
            continue
        mask = array.is_null().to_numpy(zero_copy_only=False)
        digest.update(np.packbits(mask).tobytes())
        if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
            encoded = pc.fill_null(array, "").dictionary_encode()
            words = encoded.dictionary.to_pylist()
            digest.update(json.dumps(words).encode())
            values = encoded.indices.to_numpy(zero_copy_only=False).astype("<i8")
        elif pa.types.is_boolean(array.type):
            values = pc.fill_null(array, False).to_numpy(zero_copy_only=False).astype("u1")
        elif pa.types.is_integer(array.type) or pa.types.is_floating(array.type):
            values = pc.fill_null(array, 0).to_numpy(zero_copy_only=False)
            values = values.astype(values.dtype.newbyteorder("<"))
        else:  # not a type of this schema; compare its Python values
            digest.update(json.dumps(array.to_pylist(), default=str).encode())
            continue
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()

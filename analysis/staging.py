"""Writing a folder whole: its files go to a sibling folder first, which is swapped into place,
so a failure never leaves a mix of old and new files (the old folder stays as it was)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


class FolderNotWritable(OSError):
    """The staging folder beside the target cannot be created."""


def write_whole(final: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on an empty staging folder beside ``final``, then swap it in for
    ``final``; on any failure the staging folder is removed and ``final`` restored."""
    staging = final.parent / f".{final.name}.tmp-{os.getpid()}"
    previous = final.parent / f".{final.name}.old-{os.getpid()}"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    except OSError as error:
        raise FolderNotWritable(error.errno, error.strerror, str(staging)) from None
    try:
        write(staging)
        if final.exists():
            final.rename(previous)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if previous.exists() and not final.exists():
            previous.rename(final)
        raise
    shutil.rmtree(previous, ignore_errors=True)

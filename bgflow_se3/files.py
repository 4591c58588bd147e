"""Atomic file writes: a file is either its old version or its new one, never a part (checkpoints, caches, results).

``write_atomically`` writes to ``<path>.tmp``, syncs it, renames it over ``path`` and syncs the folder, so that
neither an interrupted process nor a crash of the machine leaves a truncated file under the real name.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, *chunks: bytes | memoryview) -> None:
    """Write the ``chunks`` one after the other to ``path.tmp``, sync it and rename it over ``path``: ``path`` then
    holds the old file or the new one, never a part. On failure the ``OSError`` propagates, the old file is unchanged
    and the partial one removed."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX; not possible everywhere)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

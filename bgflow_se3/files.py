"""Atomic file writes: a file is either its old version or its new one, never a part (checkpoints, caches, results).

``write_atomically`` writes to ``<path>.tmp``, syncs it, renames it over ``path`` and syncs the folder, so that
neither an interrupted process nor a crash of the machine leaves a truncated file under the real name.
``save_npz_atomically`` and ``save_npy_atomically`` do the same for numpy's ``savez`` and ``save`` formats.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

__all__ = ["save_npy_atomically", "save_npz_atomically", "write_atomically"]


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


def save_npz_atomically(path: Path, **arrays: Any) -> None:
    """``numpy.savez(path, **arrays)``, written atomically (``write_atomically``)."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomically(path, buffer.getbuffer())


def save_npy_atomically(path: Path, array: Any) -> None:
    """``numpy.save(path, array)``, written atomically (``write_atomically``)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    write_atomically(path, buffer.getbuffer())

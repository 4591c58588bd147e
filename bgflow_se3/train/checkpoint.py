"""Files of a training run: a write probe for the output folder, atomic writes, and checkpoints read with checks.

``probe_output_dir`` shows an unwritable folder before training and ``free_bytes`` the space left on its disk;
``write_atomically`` leaves a file either old or new, never a part. ``serialize_checkpoint`` gives a checkpoint's
bytes: a header (the line ``bgflow_se3 checkpoint``, then ``sha256 <hex digest> bytes <n>``) and the ``torch.save``
payload the digest covers. ``read_checkpoint`` verifies that checksum before it unpickles anything; it and
``check_fits`` and ``check_config`` turn a corrupt or unreadable checkpoint, one of another flow class, flow size or
objective, or one written with other training settings, into a ``CheckpointError`` that names the file and the
mismatch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, OutputWriteError
from ..files import write_atomically

__all__ = [
    "CheckpointBytes",
    "check_config",
    "check_fits",
    "class_name",
    "free_bytes",
    "output_error",
    "probe_output_dir",
    "read_checkpoint",
    "serialize_checkpoint",
    "write_atomically",
]

logger = logging.getLogger(__name__)

#: what every checkpoint of format 1 holds
CHECKPOINT_KEYS = ("iteration", "flow", "optimizer", "scheduler", "objective", "counters", "history", "rng")
PROBE_BYTES = 4096
#: the first line of every checkpoint file with a checksum; the second is ``sha256 <64 hex digits> bytes <n>``
MAGIC = b"bgflow_se3 checkpoint\n"
_CHECKSUM_LINE = re.compile(rb"sha256 ([0-9a-f]{64}) bytes ([0-9]+)\n")
_MAX_HEADER = len(MAGIC) + 100


@dataclass(frozen=True)
class CheckpointBytes:
    """A checkpoint serialised in memory: ``header`` (magic line, checksum line) and the ``torch.save`` ``payload``
    whose SHA-256 and length the header holds. The file is ``header + payload``; ``size`` is its length in bytes."""

    header: bytes
    payload: memoryview

    @property
    def size(self) -> int:
        """Bytes of the file: header and payload."""
        return len(self.header) + self.payload.nbytes


def serialize_checkpoint(state: dict) -> CheckpointBytes:
    """``state`` ``torch.save``d in memory, with the header that lets ``read_checkpoint`` verify it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    digest = hashlib.sha256(payload).hexdigest()
    return CheckpointBytes(MAGIC + f"sha256 {digest} bytes {payload.nbytes}\n".encode(), payload)


def output_error(err: OSError, message: str) -> OutputWriteError:
    """An ``OutputWriteError`` with ``message`` and the errno of ``err`` (when it has one)."""
    return OutputWriteError(err.errno, message) if err.errno is not None else OutputWriteError(message)


def probe_output_dir(folder: Path) -> None:
    """Make ``folder`` and write, sync and remove a 4 KiB file in it.

    Raises ``OutputWriteError`` (with the operating system's errno) when that fails: not a folder, not writable,
    disk full. Nothing is left behind.
    """
    probe = folder / f".write_probe_{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(bytes(PROBE_BYTES))
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as err:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        raise output_error(
            err,
            f"cannot write in the output folder {folder} ({err.strerror or err}): make it writable, free disk space, "
            "or pass another out_dir; nothing was trained",
        ) from err


def free_bytes(folder: Path) -> int:
    """Bytes free for this user on the disk that holds ``folder`` (``shutil.disk_usage``)."""
    return int(shutil.disk_usage(folder).free)


def read_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """The state dict that ``Trainer.save_checkpoint`` wrote to ``path``, tensors on ``device``.

    The file's SHA-256 checksum (in its header, see ``serialize_checkpoint``) is verified before anything is
    unpickled. Files without that header (written before checkpoints had one, or ``torch.save``d by hand) are still
    read, without an integrity check, and a warning says so. Raises ``CheckpointError`` naming the file when it cannot
    be read (checksum mismatch, truncated, corrupt, empty) or is not a training checkpoint (e.g. a flow's weights
    alone); ``FileNotFoundError`` when it does not exist.
    """
    path = Path(path)
    data = path.read_bytes()
    payload = _verified_payload(data, path)
    try:
        state = torch.load(io.BytesIO(payload), map_location=device, weights_only=False)
    except MemoryError:
        raise
    except Exception as err:  # torch and pickle raise many types here (RuntimeError, UnpicklingError, EOFError, ...)
        raise _unreadable(
            path,
            len(data),
            f"{type(err).__name__}: {str(err).rstrip('. ')}. The file is truncated or corrupt (a copy cut short, a "
            "full disk, another program's file)",
        ) from err
    if not isinstance(state, dict) or state.get("format") != 1:
        found = f"format {state.get('format')!r}" if isinstance(state, dict) else f"a pickled {type(state).__name__}"
        raise CheckpointError(
            f"{path} is not a bgflow_se3 training checkpoint ({found}; Trainer.save_checkpoint writes a dict of "
            "format 1): pass the checkpoint.pt of a training run"
        )
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"the checkpoint {path} lacks {', '.join(missing)}: it is incomplete or from another version of bgflow_se3"
        )
    if payload is data:
        logger.warning("the checkpoint %s has no checksum (an older file): read without an integrity check", path)
    return state


def _verified_payload(data: bytes, path: Path) -> bytes:
    """The ``torch.save`` payload of a checkpoint file's bytes, its checksum verified; ``data`` itself when the file
    has no header (an older checkpoint)."""
    if not data.startswith(MAGIC):
        return data
    line = _CHECKSUM_LINE.match(data[len(MAGIC) : _MAX_HEADER])
    if line is None:
        raise _unreadable(path, len(data), "its checksum line is damaged. The file is corrupt")
    digest, size = line.group(1).decode(), int(line.group(2))
    payload = data[len(MAGIC) + line.end() :]
    if len(payload) != size:
        raise _unreadable(
            path,
            len(data),
            f"its header announces {size} bytes of data, it holds {len(payload)}. The file is truncated",
        )
    if hashlib.sha256(payload).hexdigest() != digest:
        raise _unreadable(
            path, len(data), "its SHA-256 checksum does not match the one in its header. The file is corrupt"
        )
    return payload


def _unreadable(path: Path, size: int, why: str) -> CheckpointError:
    return CheckpointError(
        f"cannot read the checkpoint {path} ({size} bytes): {why}: restore it from a backup, or move it away to train "
        "from scratch"
    )


def check_fits(state: dict, path: Path, flow: nn.Module, objective: object) -> None:
    """Raise ``CheckpointError`` unless ``state`` (from ``read_checkpoint(path)``) was written for this objective's
    class and this flow: its class (when the checkpoint names them) and the names and shapes of every parameter and
    buffer. Changes nothing."""
    ours, theirs = class_name(objective), state.get("objective_class")
    if theirs is not None and theirs != ours:
        raise CheckpointError(
            f"the checkpoint {path} was written by a {_short(theirs)} run; this Trainer runs {_short(ours)}: "
            "resume it with the objective that wrote it, or train from scratch (another out_dir, or no resume)"
        )
    ours, theirs = class_name(flow), state.get("flow_class")
    if theirs is not None and theirs != ours:
        raise CheckpointError(
            f"the checkpoint {path} holds a {_short(theirs)}; this Trainer trains a {_short(ours)}: resume it with "
            "the flow that wrote it, or train from scratch (another out_dir, or no resume)"
        )
    saved, current = state["flow"], flow.state_dict()
    if not isinstance(saved, dict):
        raise CheckpointError(f"the checkpoint {path} holds no flow weights (found a {type(saved).__name__})")
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    shapes = [
        f"{k} {tuple(saved[k].shape)} there, {tuple(v.shape)} here"
        for k, v in current.items()
        if k in saved and isinstance(saved[k], Tensor) and tuple(saved[k].shape) != tuple(v.shape)
    ]
    problems = [
        f"{len(keys)} {what} ({'; '.join(keys[:3])}{'; ...' if len(keys) > 3 else ''})"
        for keys, what in ((missing, "missing"), (unexpected, "unexpected"), (shapes, "of another shape"))
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"the flow weights in the checkpoint {path} do not fit this {_short(ours)} (another size or "
            f"architecture): {'; '.join(problems)}. Build the flow with the sizes of the run that wrote it, or "
            "train from scratch (another out_dir, or no resume)"
        )


def check_config(state: dict, path: Path, config: dict, free: Collection[str]) -> None:
    """Raise ``CheckpointError`` when a training setting in ``config`` (``asdict(TrainConfig)``) differs from the one
    ``state`` (from ``read_checkpoint(path)``) was written with, except the settings named in ``free``. Settings
    only one side has (a checkpoint of an older version) are not compared. Changes nothing."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        return
    changed = [
        f"{k}={saved[k]!r} there, {v!r} here"
        for k, v in config.items()
        if k in saved and k not in free and saved[k] != v
    ]
    if changed:
        raise CheckpointError(
            f"the checkpoint {path} was written with other training settings ({'; '.join(changed)}); resuming would "
            "mix two runs. Resume with the settings that wrote it (only "
            f"{', '.join(sorted(free))} may change), or train from scratch in another out_dir"
        )


def class_name(obj: object) -> str:
    """``module.QualifiedName`` of the class of ``obj`` (stored in checkpoints, compared on resume)."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]

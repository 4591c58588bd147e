"""Planning a training run's disk space: does ``out_dir`` have room for the checkpoints still to come?

Before the first iteration the checkpoint is serialised in memory (``Checkpoints.check_disk_space``) and
``OutputWriteError`` (ENOSPC, naming the bytes needed and free) is raised when the disk lacks room for two such
checkpoints (the new one is written beside the old), grown by Adam's moments and the history of the iterations
left, plus the metrics log and a margin.
"""

from __future__ import annotations

import errno
from pathlib import Path

import torch

from ..errors import OutputWriteError
from .checkpoint import CheckpointBytes

__all__ = ["bytes_needed", "check_free_space", "optimizer_bytes_to_come"]

#: an upper bound of one iteration's record in the checkpoint's history and as a line of the metrics log (FAB on
#: DW4: ~200 and ~550 bytes)
_RECORD_BYTES = 1024
#: an upper bound of what Adam's state adds to a checkpoint per parameter tensor beyond the two moments' data (zip
#: records and pickle of step, exp_avg, exp_avg_sq: ~770 bytes measured)
_OPTIMIZER_TENSOR_BYTES = 1024
#: free disk space kept beyond the estimate (the plot, metrics lines longer than estimated)
_DISK_MARGIN_BYTES = 16 * 2**20


def bytes_needed(now: CheckpointBytes, optimizer: torch.optim.Optimizer, iterations_left: int, existing: int) -> int:
    """Free bytes the rest of a run needs in ``out_dir``, from the checkpoint as it is now (``now``): the final
    checkpoint (now's, plus Adam's moments if no step was made yet, plus ``_RECORD_BYTES`` of history per
    iteration left) twice, as a new checkpoint is written beside the old one before it replaces it (the space of
    a checkpoint on disk now, ``existing`` bytes, comes back), the metrics log's lines, and ``_DISK_MARGIN_BYTES``."""
    checkpoint = now.size + optimizer_bytes_to_come(optimizer) + iterations_left * _RECORD_BYTES
    return max(checkpoint, 2 * checkpoint - existing) + iterations_left * _RECORD_BYTES + _DISK_MARGIN_BYTES


def optimizer_bytes_to_come(optimizer: torch.optim.Optimizer) -> int:
    """Bytes Adam's state will add to a checkpoint at its first step (0 once it has one): two moments per
    trained parameter, with ``_OPTIMIZER_TENSOR_BYTES`` overhead per parameter."""
    if optimizer.state:
        return 0
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    return sum(2 * p.numel() * p.element_size() + _OPTIMIZER_TENSOR_BYTES for p in params)


def check_free_space(needed: float, free: float, out_dir: Path) -> None:
    """Raise ``OutputWriteError`` (ENOSPC) when ``needed`` bytes exceed the ``free`` bytes of ``out_dir``'s disk."""
    if needed > free:
        raise OutputWriteError(
            errno.ENOSPC,
            f"not enough free disk space for the checkpoints of this run in {out_dir}: they need about "
            f"{needed:.0f} bytes ({needed / 2**20:.1f} MiB), {free:.0f} bytes are free. Free disk space or pass "
            "another out_dir; no iteration was trained",
        )

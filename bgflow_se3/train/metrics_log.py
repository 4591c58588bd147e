"""The records of a training run: one per iteration, made global across ranks, written to ``metrics.jsonl``.

The log is strict JSON lines (non-finite values as null, ``jsonio.strict_json``), written by rank 0 alone; the
training-curve plot is drawn from the same records (``curves.py``). Under ``torch.distributed`` the history
(identical on every rank) holds global values: loss, target evaluations and masked samples summed over ranks, the
objective's metrics (ESS, acceptance, buffer length, wall time) averaged over ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import OutputWriteError
from ..jsonio import strict_json
from .distributed import DistributedContext

__all__ = ["METRICS_NAME", "MetricsLog", "global_record"]

METRICS_NAME = "metrics.jsonl"
#: record keys summed over ranks; keys in _SHARED_KEYS are equal on every rank; the others are averaged
_SUMMED_KEYS = ("loss", "n_target_evaluations", "n_masked_samples", "n_nonfinite_target", "n_dropped_samples")
_SHARED_KEYS = ("iteration", "lr", "grad_norm", "ess", "n_skipped_nonfinite", "n_skipped_outlier", "n_skipped_masked")


def global_record(record: dict[str, float], dist: DistributedContext) -> dict[str, float]:
    """The global record (a collective): ``_SUMMED_KEYS`` summed over ranks, ``_SHARED_KEYS`` kept, the rest
    averaged."""
    keys = sorted(k for k in record if k not in _SHARED_KEYS)
    values = dist.all_reduce_floats([float(record[k]) for k in keys])
    out = dict(record)
    for key, value in zip(keys, values):
        out[key] = value if key in _SUMMED_KEYS else value / dist.world_size
    return out


class MetricsLog:
    """``out_dir/metrics.jsonl`` of a run (``path`` None: no log), written where ``writes`` (rank 0).

    write_error: turns an ``OSError`` writing ``path`` into the ``OutputWriteError`` to raise (it names the
    checkpoint that is still intact), called as ``write_error(err, path, "the metrics log")``.
    """

    def __init__(
        self, path: Path | None, writes: bool, write_error: Callable[[OSError, Path, str], OutputWriteError]
    ) -> None:
        self.path = path
        self.writes = writes
        self.write_error = write_error

    def append(self, record: dict[str, float]) -> None:
        """Add one line."""
        if self.path is not None and self.writes:
            try:
                with open(self.path, "a") as f:
                    f.write(strict_json(record, indent=None) + "\n")
            except OSError as err:
                raise self.write_error(err, self.path, "the metrics log") from err

    def rewrite(self, history: Sequence[dict[str, float]]) -> None:
        """Make the log hold exactly ``history`` (drops lines written after the last checkpoint)."""
        try:
            with open(self.path, "w") as f:
                for record in history:
                    f.write(strict_json(record, indent=None) + "\n")
        except OSError as err:
            raise self.write_error(err, self.path, "the metrics log") from err

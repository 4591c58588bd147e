"""The settings of a training run (``TrainConfig``) and what it did (``TrainResult``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["FREE_SETTINGS", "TrainConfig", "TrainResult"]

#: TrainConfig fields a resumed run may change: they only change what is shown, logged or saved (see Trainer.run)
FREE_SETTINGS = frozenset({"progress", "plot", "checkpoint_every", "checkpoint_every_s", "eval_every", "n_eval"})


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training loop.

    n_iterations: outer iterations (one objective batch each; FAB makes ``n_updates`` gradient steps per iteration).
    lr: peak learning rate of Adam; warmup_iterations: linear warm-up from lr / warmup_iterations; then cosine decay
    to ``final_lr_fraction * lr`` at ``n_iterations``. Gradient guards: see ``bgflow_se3.train.guards``.
    eval_every: every this many iterations, the reverse ESS of ``n_eval`` fresh flow samples is logged (needs an
    evaluation target; 0 = never). Checkpoints (with an out_dir) are written at the end of ``run``, at a stop signal,
    and periodically: once ``checkpoint_every_s`` seconds (wall clock of rank 0) have passed since the last one, and
    every ``checkpoint_every`` iterations (0 turns either off). seed: seeds the loop's generator (all sampling of the
    loop draws from it; rank r of a distributed run uses seed + r). progress: tqdm bar (rank 0 only); plot: write the
    training-curve PNG at the end of ``run`` (with an out_dir). A resumed run must use the settings of the run that
    wrote the checkpoint, except progress, plot, checkpoint_every, checkpoint_every_s, eval_every and n_eval (see
    ``Trainer.run``).
    """

    n_iterations: int = 1000
    lr: float = 2e-4
    warmup_iterations: int = 100
    final_lr_fraction: float = 0.0
    weight_decay: float = 0.0
    clip_multiple: float = 2.0
    skip_multiple: float = 10.0
    grad_history: int = 100
    min_grad_history: int = 10
    min_log_q: float = -1e4
    eval_every: int = 0
    n_eval: int = 256
    checkpoint_every: int = 0
    checkpoint_every_s: float = 300.0
    seed: int = 0
    progress: bool = True
    plot: bool = True

    def __post_init__(self) -> None:
        if self.n_iterations < 1 or not self.lr > 0 or self.warmup_iterations < 0:
            raise ValueError(
                f"need n_iterations >= 1, lr > 0, warmup_iterations >= 0; got {self.n_iterations}, {self.lr}, "
                f"{self.warmup_iterations}"
            )
        if not 1 <= self.clip_multiple <= self.skip_multiple:
            raise ValueError(
                f"need 1 <= clip_multiple <= skip_multiple, got {self.clip_multiple}, {self.skip_multiple}"
            )
        if self.checkpoint_every < 0 or not self.checkpoint_every_s >= 0:
            raise ValueError(
                f"need checkpoint_every >= 0 and checkpoint_every_s >= 0 (0: off), got {self.checkpoint_every}, "
                f"{self.checkpoint_every_s}"
            )


@dataclass(frozen=True)
class TrainResult:
    """What a training run did.

    history: one record per iteration (``iteration``, ``loss``, ``lr``, ``grad_norm``, ``n_target_evaluations``,
    ``wall_time_s``, counters, and the objective's metrics such as ``ess_flow`` / ``ess_ais`` / ``ess``).
    Counters: skipped steps (non-finite gradient, outlier norm, all samples masked) and masked samples.
    Paths are None without an output folder. Under ``torch.distributed`` every rank gets the same result, with the
    counts summed over ranks (the files are rank 0's).
    """

    history: list[dict[str, float]]
    iterations: int
    n_target_evaluations: int
    wall_time_s: float
    n_skipped_nonfinite: int
    n_skipped_outlier: int
    n_skipped_masked: int
    n_masked_samples: int
    checkpoint_path: Path | None = None
    metrics_path: Path | None = None
    plot_path: Path | None = None

    def series(self, key: str) -> np.ndarray:
        """The values of one metric over the iterations (NaN where absent), shape (n_records,)."""
        return np.array([float(r.get(key, math.nan)) for r in self.history])

    def last(self, key: str, n: int = 1) -> float:
        """Mean of the last n finite values of a metric (NaN if none)."""
        values = self.series(key)
        values = values[np.isfinite(values)][-n:]
        return float(values.mean()) if len(values) else math.nan

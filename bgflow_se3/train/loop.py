"""The one training loop: Adam, warm-up + cosine schedule, guarded gradient steps, checkpoints, metrics, progress.

``Trainer`` runs the iterations and composes the parts, each in its own module: the gradient guards (``guards``:
masked loss, median-norm clip and skip, counters), stop signals (``interrupts``), what a checkpoint holds and when
it is written (``checkpoint_state``; the file format: ``checkpoint``), the metrics log (``metrics_log``) and the
thread plan (``worker_threads``). The settings and the result are in ``config``.

Data parallel (``torch.distributed``, e.g. launched by ``torchrun``; see ``train/distributed.py``): every rank runs
the objective on its own batch (ML: its slice of a global batch; reverse KL: its own flow samples; FAB: its own AIS
batch and replay buffer), the loss is the masked mean over all ranks' samples, and the gradients are summed over
ranks by one all-reduce before the guards, which then decide alike on every rank. The global batch is
``batch_size`` x world size. Each rank's generator is seeded ``seed + rank``; the flow starts from rank 0's weights.
Rank 0 alone writes metrics, checkpoints and plots; the history (identical on every rank) holds global values
(``metrics_log``). Checkpoints of a distributed run, and resuming on another number of ranks: ``checkpoint_state``.

Faults: ``run`` first writes a probe file in the output folder, so an unwritable folder raises ``OutputWriteError``
before any training; after the objective's setup (which allocates FAB's replay buffer at its full length), before
the first iteration, it checks that the disk has room for the run's checkpoints (``checkpoint_state``). Each
checkpoint is serialised in memory with a SHA-256 checksum of its data in a short header, written to
``checkpoint.pt.tmp``, synced and renamed over ``checkpoint.pt``. Checkpoints without a checksum (older files) are
still read, with a warning. SIGINT and SIGTERM stop the run after the current iteration with a checkpoint
(``interrupts``); ``run`` applies the thread policy at its start (``worker_threads``).
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..energy.base import Energy
from ..errors import TrainingInterrupted
from ..sampling.joint import JointFlow, TargetDensity
from ..threads import ThreadPlan
from .checkpoint import probe_output_dir
from .checkpoint_state import CHECKPOINT_NAME, Checkpoints
from .config import TrainConfig, TrainResult
from .curves import plot_training_curves
from .distributed import DistributedContext, init_from_env, rank_seed
from .guards import Counters, GradientGuards
from .interrupts import StopSignals, exit_when_interrupted
from .metrics import effective_sample_size
from .metrics_log import METRICS_NAME, MetricsLog, global_record
from .objectives import Objective
from .worker_threads import apply_training_threads

__all__ = ["TrainConfig", "TrainResult", "Trainer", "exit_when_interrupted"]

logger = logging.getLogger(__name__)

PLOT_NAME = "training_curves.png"


class Trainer:
    """Drives an ``Objective`` on a flow with the guarded Adam loop; see the module docstring.

    flow: a flow following FLOW_PROTOCOL (augmented or not). objective: e.g. ``FABObjective``.
    out_dir: folder for checkpoint, metrics log (JSON lines) and training-curve plot; None keeps nothing on disk.
    eval_target: energy for the periodic reverse ESS (``config.eval_every``); defaults to the objective's target.
    distributed: the ranks to train on; None detects them (``init_from_env()``: the process group of a
    ``torchrun`` launch, started if needed, or a single process). Pass ``DistributedContext()`` to train in this
    process alone inside a distributed job. Every rank must build the same flow, objective and config; the flow
    must live on ``distributed.device`` under NCCL. ``thread_plan``: the thread plan the last ``run`` applied.
    """

    def __init__(
        self,
        flow: nn.Module,
        objective: Objective,
        config: TrainConfig | None = None,
        out_dir: str | Path | None = None,
        eval_target: Energy | TargetDensity | None = None,
        distributed: DistributedContext | None = None,
    ) -> None:
        self.flow = flow
        self.model = JointFlow(flow)
        self.objective = objective
        self.config = config if config is not None else TrainConfig()
        self.out_dir = None if out_dir is None else Path(out_dir)
        if eval_target is not None and not isinstance(eval_target, TargetDensity):
            eval_target = TargetDensity(eval_target)
        self.eval_target = eval_target if eval_target is not None else objective.target
        cfg = self.config
        self.optimizer = torch.optim.Adam(flow.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        device = self.model.parameter.device
        self.dist = distributed if distributed is not None else init_from_env()
        self.generator = torch.Generator(device=device).manual_seed(rank_seed(cfg.seed, self.dist.rank))
        self.shared_generator: torch.Generator | None = None
        if self.dist.distributed:
            if self.dist.backend == "nccl" and device.type != "cuda":
                raise ValueError(
                    f"the NCCL backend reduces CUDA tensors but the flow is on {device}: move it to "
                    f"{self.dist.device}, or start the process group with backend='gloo' to train on CPUs"
                )
            self.shared_generator = torch.Generator(device=device).manual_seed(cfg.seed)
            self.dist.broadcast_module(flow)
            objective.distribute(self.dist, self.shared_generator)
        self.iteration = 0
        self.history: list[dict[str, float]] = []
        self.thread_plan: ThreadPlan | None = None
        self.guards = GradientGuards(cfg, flow, self.optimizer, self.dist)
        self.stops = StopSignals(self.dist, self._where)
        self.checkpoints = Checkpoints(self)
        self.metrics_log = MetricsLog(self._path(METRICS_NAME), self.dist.is_main, self.checkpoints.write_error)

    @property
    def counters(self) -> Counters:
        """The loop's counters (skipped steps, masked samples, updates, wall time; ``guards.Counters``)."""
        return self.guards.counters

    @property
    def grad_norms(self) -> deque[float]:
        """The last ``config.grad_history`` gradient norms (the guards' median window)."""
        return self.guards.grad_norms

    @property
    def separate_eval_target(self) -> TargetDensity | None:
        """The evaluation target when it is not the objective's (its evaluations are counted apart), else None."""
        target = self.eval_target
        return None if target is None or target is self.objective.target else target

    def _lr_factor(self, iteration: int) -> float:
        cfg = self.config
        if iteration < cfg.warmup_iterations:
            return (iteration + 1) / cfg.warmup_iterations
        span = max(cfg.n_iterations - cfg.warmup_iterations, 1)
        progress = min((iteration - cfg.warmup_iterations) / span, 1.0)
        return cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    def _iterate(self) -> dict[str, float]:
        model, gen = self.model, self.generator
        with torch.no_grad():
            batches = self.objective.batches(model, gen)
        losses, norms = [], []
        for batch in batches:
            self.optimizer.zero_grad(set_to_none=True)
            terms = self.objective.losses(model, batch, gen)
            loss = self.guards.masked_loss(terms)
            if loss is None:
                self.counters.n_skipped_masked += 1
            else:
                loss.backward()
                norms.append(self.guards.step())
                losses.append(float(loss.detach()))
            self.objective.after_update(model, batch, terms)
        self.optimizer.zero_grad(set_to_none=True)
        record = {
            "iteration": self.iteration + 1,
            "loss": float(np.mean(losses)) if losses else math.nan,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "grad_norm": float(np.median(norms)) if norms else math.nan,
        }
        self.scheduler.step()
        self.iteration += 1
        record.update(self.objective.metrics())
        cfg = self.config
        if cfg.eval_every and self.iteration % cfg.eval_every == 0 and self.eval_target is not None:
            record["ess"] = self._reverse_ess_all_ranks(cfg.n_eval)
        return record

    def _log_weights(self, n: int) -> Tensor:
        with torch.no_grad():
            z, log_q = self.model.sample(n, self.generator)
            return self.eval_target.joint(self.model, z) - log_q

    def reverse_ess(self, n: int) -> float:
        """Normalised reverse ESS of n fresh flow samples on the augmented joint, log w = log p~ + log pi - log q.

        Drawn by this process alone (no collective), with the loop's generator."""
        if self.eval_target is None:
            raise ValueError("no evaluation target: pass eval_target to the Trainer")
        return effective_sample_size(self._log_weights(n))

    def _reverse_ess_all_ranks(self, n: int) -> float:
        """The reverse ESS of about n samples drawn ceil(n / world size) per rank (collective)."""
        if not self.dist.distributed:
            return self.reverse_ess(n)
        per_rank = -(-n // self.dist.world_size)
        return effective_sample_size(self.dist.all_gather_cat(self._log_weights(per_rank)))

    def run(self, until: int | None = None, resume: bool | str | Path = False) -> TrainResult:
        """Train up to iteration ``until`` (default ``config.n_iterations``); returns a ``TrainResult``.

        resume: True loads ``out_dir/checkpoint.pt`` when it exists (and starts fresh otherwise, with a logged
        warning); a path loads that checkpoint. The schedule always spans ``config.n_iterations``, so stopping early
        with ``until`` and resuming later reproduces the uninterrupted run. The config must equal the one the
        checkpoint was written with (n_iterations included: the learning-rate schedule spans it), except those that
        only change what is shown, logged or saved: progress, plot, checkpoint_every, checkpoint_every_s, eval_every,
        n_eval. (The reverse-ESS evaluations draw from the loop's generator, so with another eval_every the
        continuation is a valid run, not the bit-identical one.)
        Raises ``OutputWriteError`` before training when ``out_dir`` cannot be written or its disk lacks the space
        for the checkpoints (checked after the objective's setup, see the module docstring), ``CheckpointError`` when
        the checkpoint to resume cannot be read, is corrupt, does not fit or was written with other settings, and
        ``TrainingInterrupted`` after SIGINT / SIGTERM, once the checkpoint of the last complete iteration is written.
        """
        cfg = self.config
        writes = self.out_dir is not None and self.dist.is_main
        if writes:
            probe_output_dir(self.out_dir)
        if resume:
            self._resume(resume)
        stop = cfg.n_iterations if until is None else min(int(until), cfg.n_iterations)
        if writes:
            self.metrics_log.rewrite(self.history)
        self._apply_thread_policy()
        self.stops.signal = None
        with self.stops.caught():
            start = time.perf_counter()
            if not self.counters.setup_done:
                self.objective.setup(self.model, self.generator)
                self.counters.setup_done = True
            self.counters.wall_time_s += time.perf_counter() - start
            if self.out_dir is not None:
                self.checkpoints.check_disk_space()
            show = cfg.progress and self.dist.is_main
            with tqdm(total=cfg.n_iterations, initial=self.iteration, disable=not show, desc="train") as bar:
                signum = self._train_until(stop, bar)
            checkpoint_path = self.save_checkpoint() if self.out_dir is not None else None
            if signum is None:  # a signal during the last iteration or the final checkpoint stops the program too
                signum = self._agreed_signal()
        plot_path = None
        if self.out_dir is not None and self.history and cfg.plot:
            plot_path = self._path(PLOT_NAME)
            if self.dist.is_main:
                plot_training_curves(self.history, plot_path)
        n_evaluations, n_masked = self._global_counts()
        result = TrainResult(
            history=list(self.history),
            iterations=self.iteration,
            n_target_evaluations=n_evaluations,
            wall_time_s=self.counters.wall_time_s,
            n_skipped_nonfinite=self.counters.n_skipped_nonfinite,
            n_skipped_outlier=self.counters.n_skipped_outlier,
            n_skipped_masked=self.counters.n_skipped_masked,
            n_masked_samples=n_masked,
            checkpoint_path=checkpoint_path,
            metrics_path=self._path(METRICS_NAME),
            plot_path=plot_path,
        )
        if signum is not None:
            saved = f"checkpoint {checkpoint_path}" if checkpoint_path is not None else "no checkpoint (no out_dir)"
            raise TrainingInterrupted(
                f"training stopped by {signal.Signals(signum).name} after iteration {self.iteration} of "
                f"{cfg.n_iterations}; {saved}; run(resume=True) continues from it",
                signum,
                self.iteration,
                checkpoint_path,
                result,
            )
        return result

    def _resume(self, resume: bool | str | Path) -> None:
        """Load the checkpoint ``run(resume=...)`` names: ``out_dir/checkpoint.pt`` for True (none there: a warning,
        training starts fresh), else the path (which must exist)."""
        path = Path(resume) if not isinstance(resume, bool) else self._path(CHECKPOINT_NAME)
        if path is None:
            raise ValueError("resume=True needs an out_dir (or pass the checkpoint path)")
        if path.exists():
            self.load_checkpoint(path)
            logger.info("resumed from %s at iteration %d", path, self.iteration)
        elif not isinstance(resume, bool):
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        else:
            logger.warning("resume=True but there is no checkpoint %s: training from scratch", path)

    def _train_until(self, stop: int, bar: tqdm) -> int | None:
        """Iterate up to iteration ``stop`` with the periodic checkpoints; returns the agreed stop signal, or None.

        A periodic checkpoint is written before an iteration once ``checkpoint_every_s`` has passed on rank 0's clock
        or the iteration count is a multiple of ``checkpoint_every``, never twice for one iteration."""
        every = self.config.checkpoint_every
        saved = self.iteration  # the newest iteration on disk (or where this run began)
        self.checkpoints.clock = time.monotonic()
        while True:
            signum, time_due = self._poll()
            if signum is not None or self.iteration >= stop:
                return signum
            count_due = every > 0 and self.iteration % every == 0
            if self.out_dir is not None and self.iteration > saved and (time_due or count_due):
                self.save_checkpoint()
                saved = self.iteration
            self._train_one(bar)

    def _train_one(self, bar: tqdm) -> None:
        """One iteration; its record (global under ``torch.distributed``) goes to the history, the metrics log and
        the progress bar."""
        start = time.perf_counter()
        record = self._iterate()
        self.counters.wall_time_s += time.perf_counter() - start
        record.update(self._counter_record())
        if self.dist.distributed:
            record = global_record(record, self.dist)
            self.counters.wall_time_s = record["wall_time_s"]  # the mean over ranks, as recorded
        self.history.append(record)
        self.metrics_log.append(record)
        bar.update(1)
        bar.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "ess_flow", "ess_ais", "ess") if k in record})

    def _agreed_signal(self) -> int | None:
        """The signal that stops this run, or None (a collective under ``torch.distributed``, see ``_poll``)."""
        return self._poll()[0]

    def _poll(self) -> tuple[int | None, bool]:
        """(the signal that stops this run or None, whether a time-based checkpoint is due): agreed by every rank
        under ``torch.distributed`` (``StopSignals.agree``), on rank 0's clock."""
        return self.stops.agree(self.dist.is_main and self.checkpoints.time_due())

    def _where(self) -> str:
        """Where the run is and which checkpoint is kept, for a second stop signal."""
        return f"during iteration {self.iteration + 1}; {self.checkpoints.kept()}"

    def _apply_thread_policy(self) -> ThreadPlan:
        """Set torch's threads by the thread policy for the OpenMM workers behind the targets; log it on change."""
        targets = (self.objective.target, self.separate_eval_target)
        self.thread_plan = apply_training_threads(targets, self.dist, self.thread_plan)
        return self.thread_plan

    @property
    def n_target_evaluations(self) -> int:
        """Configurations passed to the target energy so far: by the objective and by the ESS evaluations.

        This process's count (under ``torch.distributed`` rank 0 also holds what a checkpoint it resumed from counted;
        the sum over ranks is the run's, as in the history and ``TrainResult``)."""
        extra = self.separate_eval_target
        return self.objective.n_target_evaluations + (0 if extra is None else extra.n_evaluations)

    def _global_counts(self) -> tuple[int, int]:
        """Target evaluations and masked samples summed over ranks (collective)."""
        local = [float(self.n_target_evaluations), float(self.counters.n_masked_samples)]
        n_evaluations, n_masked = self.dist.all_reduce_floats(local)
        return int(round(n_evaluations)), int(round(n_masked))

    def _counter_record(self) -> dict[str, float]:
        """The counters' part of an iteration's record (this rank's)."""
        c = self.counters
        return {
            "n_target_evaluations": float(self.n_target_evaluations),
            "wall_time_s": c.wall_time_s,
            "n_skipped_nonfinite": float(c.n_skipped_nonfinite),
            "n_skipped_outlier": float(c.n_skipped_outlier),
            "n_skipped_masked": float(c.n_skipped_masked),
            "n_masked_samples": float(c.n_masked_samples),
        }

    def _path(self, name: str) -> Path | None:
        return None if self.out_dir is None else self.out_dir / name

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write the full training state (``checkpoint_state``'s docstring); default ``out_dir/checkpoint.pt``.

        The file holds a SHA-256 checksum of its data, verified when it is read. Under ``torch.distributed`` every
        rank must call it (it gathers the per-rank states); rank 0 writes, and every rank returns once the file is
        complete.
        """
        return self.checkpoints.save(path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the state written by ``save_checkpoint``, on this many ranks or another (``checkpoint_state``).

        Raises ``CheckpointError`` naming the file when it cannot be read (checksum mismatch, truncated, corrupt, not a
        checkpoint), was written for another flow class, flow size or objective, or with other training settings
        (``run``'s docstring says which may change); these checks run before any state changes.
        """
        self.checkpoints.load(path, self.model.parameter.device)

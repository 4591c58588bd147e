"""The one training loop: Adam, warm-up + cosine schedule, guarded gradient steps, checkpoints, metrics, progress.

Guards (as in the augmented-coupling-flow reference): samples whose loss or log q is not finite, or whose log q
is below ``min_log_q``, are masked out of the mean; a step whose gradient norm is not finite is skipped; once
``min_grad_history`` norms are known, a step whose norm exceeds ``skip_multiple`` x the median of the last
``grad_history`` norms is skipped and otherwise the gradient is clipped at ``clip_multiple`` x that median. Every
skip and mask is counted. Checkpoints hold the flow, optimiser, scheduler, objective (replay buffer, HMC step sizes,
target-evaluation count), loop counters, history and RNG states, so ``run(resume=True)`` continues to the same
state as an uninterrupted run.

Data parallel (``torch.distributed``, e.g. launched by ``torchrun``; see ``train/distributed.py``): every rank runs
the objective on its own batch (ML: its slice of a global batch; reverse KL: its own flow samples; FAB: its own AIS
batch and replay buffer), the loss is the masked mean over all ranks' samples, and the gradients are summed over
ranks by one all-reduce before the guards, which then decide alike on every rank. The global batch is
``batch_size`` x world size. Each rank's generator is seeded ``seed + rank``; the flow starts from rank 0's weights.
Rank 0 alone writes metrics, checkpoints and plots; the history (identical on every rank) holds global values:
loss, target evaluations and masked samples summed over ranks, the objective's metrics (ESS, acceptance, buffer
length, wall time) averaged over ranks. A checkpoint holds the global state once (flow, optimiser, scheduler,
counters, history, HMC step sizes, the shared generator) and the per-rank state of every rank (replay buffer,
generators). Resuming on as many ranks continues exactly; on another number of ranks (also from or to a single
process) the replay buffers are pooled and re-sharded, each rank's generator is re-seeded from (seed, rank,
iteration), and FAB tops up buffers below their minimum: reproducible, not bit-identical to an uninterrupted run.

Faults: ``run`` first writes a probe file in the output folder, so an unwritable folder raises ``OutputWriteError``
before any training; after the objective's setup (which allocates FAB's replay buffer at its full length), before
the first iteration, it serialises the checkpoint in memory and raises ``OutputWriteError`` (ENOSPC, naming the
bytes needed and free) when the disk lacks room for two such checkpoints (the new one is written beside the old),
grown by Adam's moments and the history of the iterations left, plus the metrics log and a margin. Checkpoints are
written at the end, at a stop signal, and periodically: every ``checkpoint_every_s`` seconds (default 300) and every
``checkpoint_every`` iterations, so a killed run (SIGKILL, power cut) resumes from the last one. Each is serialised in
memory with a SHA-256 checksum of its data in a short header, written to ``checkpoint.pt.tmp``, synced and renamed
over ``checkpoint.pt``: a failed write (disk full) raises ``OutputWriteError`` and leaves the previous checkpoint as
it was; the message advises ``run(resume=True)`` only when a checkpoint of the run is on disk. During ``run`` SIGINT
and SIGTERM (in the main thread, where not ignored) ask for a stop: the current iteration finishes, the checkpoint
is written and ``TrainingInterrupted`` (a ``KeyboardInterrupt``; ``exit_code`` 130 or 143) is raised; a second
signal while a checkpoint is written waits for it, a second signal at any other time raises ``KeyboardInterrupt`` at
once, leaving the last checkpoint as it was. The previous handlers are restored when ``run`` returns. Under
``torch.distributed`` the ranks agree on the stop and on the time-based checkpoints (rank 0's clock; one small
all-reduce per iteration), so all stop and checkpoint after the same iterations. Resuming checks the checkpoint
first: a checksum that does not match, an unreadable file, a flow of another class or size, another objective, or
other training settings (``Trainer.run`` lists those that may change) raise ``CheckpointError`` naming the file and
the mismatch, before any state changes. Checkpoints without a checksum (older files) are still read, with a
warning.

Threads: at its start ``run`` applies the thread policy (``bgflow_se3.threads.apply_thread_policy``) with the
number of OpenMM worker processes behind the targets (``OpenMMEnergy(n_workers=k)``, k > 1, also inside wrapping
energies; one worker evaluates in this process and counts 0) and logs its reason when it changes. A user's choice
(``set_threads``, ``BGFLOW_SE3_THREADS``, ``OMP_NUM_THREADS``, ``torch.set_num_threads``) is kept. When several
ranks share a machine, each plans with its share of the cores (``cores // local_world_size``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import signal
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..energy.base import Energy
from ..errors import CheckpointError, OutputWriteError, TrainingInterrupted
from ..jsonio import strict_json
from ..sampling.joint import JointFlow, TargetDensity
from ..threads import ThreadPlan, apply_thread_policy, plan_threads, usable_cores
from .checkpoint import (
    CheckpointBytes,
    check_config,
    check_fits,
    class_name,
    free_bytes,
    output_error,
    probe_output_dir,
    read_checkpoint,
    serialize_checkpoint,
    write_atomically,
)
from .curves import plot_training_curves
from .distributed import DistributedContext, init_from_env, rank_seed
from .metrics import effective_sample_size
from .objectives import LossTerms, Objective

__all__ = ["TrainConfig", "TrainResult", "Trainer", "exit_when_interrupted"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "training_curves.png"
#: record keys summed over ranks; keys in _SHARED_KEYS are equal on every rank; the others are averaged
_SUMMED_KEYS = ("loss", "n_target_evaluations", "n_masked_samples", "n_nonfinite_target", "n_dropped_samples")
_SHARED_KEYS = ("iteration", "lr", "grad_norm", "ess", "n_skipped_nonfinite", "n_skipped_outlier", "n_skipped_masked")
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: TrainConfig fields a resumed run may change: they only change what is shown, logged or saved (see Trainer.run)
_FREE_SETTINGS = frozenset({"progress", "plot", "checkpoint_every", "checkpoint_every_s", "eval_every", "n_eval"})
#: an upper bound of one iteration's record in the checkpoint's history and as a line of the metrics log (FAB on
#: DW4: ~200 and ~550 bytes)
_RECORD_BYTES = 1024
#: an upper bound of what Adam's state adds to a checkpoint per parameter tensor beyond the two moments' data (zip
#: records and pickle of step, exp_avg, exp_avg_sq: ~770 bytes measured)
_OPTIMIZER_TENSOR_BYTES = 1024
#: free disk space kept beyond the estimate (the plot, metrics lines longer than estimated)
_DISK_MARGIN_BYTES = 16 * 2**20


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training loop.

    n_iterations: outer iterations (one objective batch each; FAB makes ``n_updates`` gradient steps per iteration).
    lr: peak learning rate of Adam; warmup_iterations: linear warm-up from lr / warmup_iterations; then cosine decay
    to ``final_lr_fraction * lr`` at ``n_iterations``. Gradient guards: see the module docstring.
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


@dataclass
class _Counters:
    n_skipped_nonfinite: int = 0
    n_skipped_outlier: int = 0
    n_skipped_masked: int = 0
    n_masked_samples: int = 0
    n_updates: int = 0
    wall_time_s: float = 0.0
    setup_done: bool = False
    grad_norms: list[float] = field(default_factory=list)


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
        self.counters = _Counters()
        self.grad_norms: deque[float] = deque(maxlen=cfg.grad_history)
        self.history: list[dict[str, float]] = []
        self.thread_plan: ThreadPlan | None = None
        self._signal: int | None = None  # the first SIGINT / SIGTERM received during run()
        self._writing = False  # a checkpoint is being written: signals wait for it
        self._last_checkpoint: tuple[Path, int] | None = None  # (path, iteration) last written or loaded
        self._checkpoint_clock = time.monotonic()  # when the last checkpoint was written (or the loop started)

    def _lr_factor(self, iteration: int) -> float:
        cfg = self.config
        if iteration < cfg.warmup_iterations:
            return (iteration + 1) / cfg.warmup_iterations
        span = max(cfg.n_iterations - cfg.warmup_iterations, 1)
        progress = min((iteration - cfg.warmup_iterations) / span, 1.0)
        return cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    # ---- one gradient update -------------------------------------------------------------------------------
    def _masked_loss(self, terms: list[tuple[float, LossTerms]]) -> Tensor | None:
        if self.dist.distributed:
            return self._masked_loss_all_ranks(terms)
        total = None
        for weight, t in terms:
            mask = torch.isfinite(t.loss) & torch.isfinite(t.log_q) & (t.log_q > self.config.min_log_q)
            n_valid = int(mask.sum())
            self.counters.n_masked_samples += int(mask.numel()) - n_valid
            if n_valid == 0:
                return None
            term = weight * t.loss[mask].mean()
            total = term if total is None else total + term
        return total

    def _masked_loss_all_ranks(self, terms: list[tuple[float, LossTerms]]) -> Tensor | None:
        """This rank's part of the masked mean over all ranks' samples: sum of its valid losses / valid count of all
        ranks, per term. The parts sum to the global loss, their gradients to its gradient. None (on every rank)
        when a term has no valid sample on any rank."""
        masks = [torch.isfinite(t.loss) & torch.isfinite(t.log_q) & (t.log_q > self.config.min_log_q) for _, t in terms]
        for mask in masks:
            self.counters.n_masked_samples += int(mask.numel()) - int(mask.sum())
        counts = self.dist.all_reduce_floats([float(mask.sum()) for mask in masks])
        if min(counts) == 0:
            return None
        parts = [weight * t.loss[mask].sum() / n for (weight, t), mask, n in zip(terms, masks, counts)]
        return sum(parts[1:], parts[0])

    def _guarded_step(self) -> float:
        cfg = self.config
        if self.dist.distributed:  # every rank reduces the same list, whichever gradients it holds
            self.dist.all_reduce_gradients([p for p in self.flow.parameters() if p.requires_grad])
        params = [p for p in self.flow.parameters() if p.grad is not None]
        if not params:
            raise RuntimeError("the loss does not depend on any flow parameter; check the objective")
        norm = float(torch.nn.utils.clip_grad_norm_(params, math.inf))
        if not math.isfinite(norm):
            self.counters.n_skipped_nonfinite += 1
            return norm
        enough = len(self.grad_norms) >= cfg.min_grad_history
        median = statistics.median(self.grad_norms) if enough else math.inf
        self.grad_norms.append(norm)
        if norm > cfg.skip_multiple * median:
            self.counters.n_skipped_outlier += 1
            return norm
        if enough:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_multiple * median)
        self.optimizer.step()
        self.counters.n_updates += 1
        return norm

    def _iterate(self) -> dict[str, float]:
        model, gen = self.model, self.generator
        with torch.no_grad():
            batches = self.objective.batches(model, gen)
        losses, norms = [], []
        for batch in batches:
            self.optimizer.zero_grad(set_to_none=True)
            terms = self.objective.losses(model, batch, gen)
            loss = self._masked_loss(terms)
            if loss is None:
                self.counters.n_skipped_masked += 1
            else:
                loss.backward()
                norms.append(self._guarded_step())
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

    # ---- the loop -------------------------------------------------------------------------------------------
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
            self._rewrite_metrics()
        self._apply_thread_policy()
        self._signal = None
        with self._stop_signals_caught():
            start = time.perf_counter()
            if not self.counters.setup_done:
                self.objective.setup(self.model, self.generator)
                self.counters.setup_done = True
            self.counters.wall_time_s += time.perf_counter() - start
            if self.out_dir is not None:
                self._check_disk_space()
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
        self._checkpoint_clock = time.monotonic()
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
            record = self._reduce_record(record)
            self.counters.wall_time_s = record["wall_time_s"]  # the mean over ranks, as recorded
        self.history.append(record)
        self._append_metrics(record)
        bar.update(1)
        bar.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "ess_flow", "ess_ais", "ess") if k in record})

    # ---- signals and threads --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _stop_signals_caught(self) -> Iterator[None]:
        """SIGINT and SIGTERM call ``_on_signal`` inside the block (main thread only; ignored signals stay ignored);
        the previous handlers come back afterwards."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
        caught = [s for s, handler in previous.items() if handler is not signal.SIG_IGN]
        for s in caught:
            signal.signal(s, self._on_signal)
        try:
            yield
        finally:
            for s in caught:
                handler = previous[s]
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, signum: int, frame: object) -> None:
        """First signal: stop after the current iteration. Later ones: wait for a checkpoint being written, else
        raise ``KeyboardInterrupt`` now."""
        name = signal.Signals(signum).name
        if self._signal is None:
            self._signal = signum
            logger.warning(
                "%s: stopping after the current iteration, with a checkpoint (send it again to stop at once, without)",
                name,
            )
            return
        if self._writing:
            logger.warning("%s: a checkpoint is being written; stopping once it is complete", name)
            return
        last = self._last_checkpoint
        kept = f"the checkpoint of iteration {last[1]} ({last[0]}) is unchanged" if last else "no checkpoint written"
        raise KeyboardInterrupt(f"second {name}: stopped at once, during iteration {self.iteration + 1}; {kept}")

    def _agreed_signal(self) -> int | None:
        """The signal that stops this run, or None (a collective under ``torch.distributed``, see ``_poll``)."""
        return self._poll()[0]

    def _poll(self) -> tuple[int | None, bool]:
        """(the signal that stops this run or None, whether a time-based checkpoint is due).

        Under ``torch.distributed`` one small all-reduce, so every rank gets the same answer: a signal on any rank
        stops every rank (SIGINT when some rank got SIGINT, else SIGTERM), and rank 0's clock alone times the
        checkpoints (every rank must take part in writing one)."""
        due = self.dist.is_main and self._checkpoint_time_due()
        if not self.dist.distributed:
            return self._signal, due
        got_int, got_term, due_on_main = self.dist.all_reduce_floats(
            [float(self._signal == signal.SIGINT), float(self._signal == signal.SIGTERM), float(due)]
        )
        signum = signal.SIGINT if got_int > 0 else signal.SIGTERM if got_term > 0 else None
        return signum, due_on_main > 0

    def _checkpoint_time_due(self) -> bool:
        """Whether ``checkpoint_every_s`` (> 0) has passed on this process's clock since the last checkpoint."""
        every = self.config.checkpoint_every_s
        return every > 0 and time.monotonic() - self._checkpoint_clock >= every

    def _apply_thread_policy(self) -> ThreadPlan:
        """Set torch's threads by the thread policy for the OpenMM workers behind the targets; log it on change."""
        n_workers = _worker_processes(self.objective.target, self._separate_eval_target)
        cores = busy = None
        local_ranks = self.dist.local_world_size if self.dist.distributed else 1
        if local_ranks > 1:
            total = usable_cores()
            cores, busy = _rank_share(total, plan_threads(0, cores=total).busy, local_ranks)
        plan = apply_thread_policy(n_workers, cores=cores, busy=busy)
        previous = self.thread_plan
        if previous is None or (previous.torch_threads, previous.reason) != (plan.torch_threads, plan.reason):
            logger.info("torch threads: %d (%s)", plan.torch_threads, plan.reason)
        self.thread_plan = plan
        return plan

    @property
    def _separate_eval_target(self) -> TargetDensity | None:
        target = self.eval_target
        return None if target is None or target is self.objective.target else target

    @property
    def n_target_evaluations(self) -> int:
        """Configurations passed to the target energy so far: by the objective and by the ESS evaluations.

        This process's count (under ``torch.distributed`` rank 0 also holds what a checkpoint it resumed from counted;
        the sum over ranks is the run's, as in the history and ``TrainResult``)."""
        extra = self._separate_eval_target
        return self.objective.n_target_evaluations + (0 if extra is None else extra.n_evaluations)

    def _global_counts(self) -> tuple[int, int]:
        """Target evaluations and masked samples summed over ranks (collective)."""
        local = [float(self.n_target_evaluations), float(self.counters.n_masked_samples)]
        n_evaluations, n_masked = self.dist.all_reduce_floats(local)
        return int(round(n_evaluations)), int(round(n_masked))

    def _reduce_record(self, record: dict[str, float]) -> dict[str, float]:
        """The global record: ``_SUMMED_KEYS`` summed over ranks, ``_SHARED_KEYS`` kept, the rest averaged."""
        keys = sorted(k for k in record if k not in _SHARED_KEYS)
        values = self.dist.all_reduce_floats([float(record[k]) for k in keys])
        out = dict(record)
        for key, value in zip(keys, values):
            out[key] = value if key in _SUMMED_KEYS else value / self.dist.world_size
        return out

    def _counter_record(self) -> dict[str, float]:
        c = self.counters
        return {
            "n_target_evaluations": float(self.n_target_evaluations),
            "wall_time_s": c.wall_time_s,
            "n_skipped_nonfinite": float(c.n_skipped_nonfinite),
            "n_skipped_outlier": float(c.n_skipped_outlier),
            "n_skipped_masked": float(c.n_skipped_masked),
            "n_masked_samples": float(c.n_masked_samples),
        }

    # ---- files ----------------------------------------------------------------------------------------------
    def _path(self, name: str) -> Path | None:
        return None if self.out_dir is None else self.out_dir / name

    def _append_metrics(self, record: dict[str, float]) -> None:
        path = self._path(METRICS_NAME)
        if path is not None and self.dist.is_main:
            try:
                with open(path, "a") as f:
                    f.write(strict_json(record, indent=None) + "\n")
            except OSError as err:
                raise self._write_error(err, path, "the metrics log") from err

    def _rewrite_metrics(self) -> None:
        """Make the metrics log hold exactly the history (drops lines written after the last checkpoint)."""
        path = self._path(METRICS_NAME)
        try:
            with open(path, "w") as f:
                for record in self.history:
                    f.write(strict_json(record, indent=None) + "\n")
        except OSError as err:
            raise self._write_error(err, path, "the metrics log") from err

    def _write_error(self, err: OSError, path: Path, what: str) -> OutputWriteError:
        """An ``OutputWriteError`` naming the file that could not be written, the checkpoint still intact (if any) and
        a remedy that holds: resuming only when there is a checkpoint to resume."""
        last = self._last_checkpoint
        if last is not None and last[0].exists():
            resume = "run(resume=True)" if last[0] == self._path(CHECKPOINT_NAME) else f"run(resume='{last[0]}')"
            state = (
                f"the checkpoint of iteration {last[1]} ({last[0]}) is intact. Free disk space or fix the folder, "
                f"then resume with {resume}"
            )
        else:
            state = (
                "no checkpoint of this run is on disk, so it cannot be resumed. Free disk space or fix the folder and "
                "train again from the start, or pass another out_dir (while this Trainer exists, "
                "save_checkpoint(path) to another disk keeps what it trained: resume it with run(resume=path))"
            )
        return output_error(
            err, f"could not write {what} {path} at iteration {self.iteration} ({err.strerror or err}); {state}"
        )

    def _rng_state(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write the full training state (see the module docstring); default ``out_dir/checkpoint.pt``.

        The file holds a SHA-256 checksum of its data, verified when it is read. Under ``torch.distributed`` every
        rank must call it (it gathers the per-rank states); rank 0 writes, and every rank returns once the file is
        complete.
        """
        path = Path(path) if path is not None else self._path(CHECKPOINT_NAME)
        if path is None:
            raise ValueError("no checkpoint path: pass one or give the Trainer an out_dir")
        state = self._checkpoint_state()
        if state is not None:
            self._write_checkpoint(path, state)
        self._checkpoint_clock = time.monotonic()
        self.dist.barrier()  # under torch.distributed: every rank returns once rank 0 has written the file
        return path

    def _checkpoint_state(self) -> dict | None:
        """The state a checkpoint holds (module docstring) on rank 0, None on the other ranks. Under
        ``torch.distributed`` a collective: rank 0 gathers every rank's own state."""
        self.counters.grad_norms = list(self.grad_norms)
        extra = self._separate_eval_target
        rank_state = {"objective": self.objective.state_dict(), "rng": self._rng_state()}
        counters = asdict(self.counters)
        eval_evaluations = 0 if extra is None else extra.n_evaluations
        if self.dist.distributed:  # global counts, and every rank's own state on rank 0
            n_objective, eval_evaluations, counters["n_masked_samples"] = (
                int(round(v))
                for v in self.dist.all_reduce_floats(
                    [self.objective.n_target_evaluations, eval_evaluations, self.counters.n_masked_samples]
                )
            )
            shards = self.dist.gather_objects(_to_cpu(rank_state))
            if not self.dist.is_main:
                return None
            rank_state = shards[0]
            rank_state["objective"]["n_target_evaluations"] = n_objective
        state = {
            "format": 1,
            "flow_class": class_name(self.flow),
            "objective_class": class_name(self.objective),
            "world_size": self.dist.world_size,
            "iteration": self.iteration,
            "config": asdict(self.config),
            "flow": self.flow.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "objective": rank_state["objective"],
            "eval_target_evaluations": eval_evaluations,
            "counters": counters,
            "history": self.history,
            "rng": rank_state["rng"],
        }
        if self.dist.distributed:
            state["rng"]["shared"] = self.shared_generator.get_state()
            state["rank_states"] = shards[1:]  # ranks 1 .. world_size - 1: replay buffers, generators
        return state

    def _write_checkpoint(self, path: Path, state: dict) -> None:
        """Serialise ``state`` with its checksum and write it atomically to ``path``; a stop signal waits for it."""
        self._writing = True
        try:
            data = serialize_checkpoint(state)
            write_atomically(path, data.header, data.payload)
        except OSError as err:
            raise self._write_error(err, path, "the checkpoint") from err
        finally:
            self._writing = False
        self._last_checkpoint = (path, self.iteration)
        logger.info("checkpoint at iteration %d written to %s", self.iteration, path)

    def _check_disk_space(self) -> None:
        """Raise ``OutputWriteError`` (ENOSPC) when the disk of ``out_dir`` has less free space than the rest of this
        run's output needs (``_disk_bytes_needed``). Under ``torch.distributed`` a collective: rank 0 measures, every
        rank decides alike."""
        state = self._checkpoint_state()
        needed = free = 0.0
        if state is not None:
            needed = float(self._disk_bytes_needed(serialize_checkpoint(state)))
            free = float(free_bytes(self.out_dir))
        needed, free = self.dist.all_reduce_floats([needed, free])
        if needed > free:
            raise OutputWriteError(
                errno.ENOSPC,
                f"not enough free disk space for the checkpoints of this run in {self.out_dir}: they need about "
                f"{needed:.0f} bytes ({needed / 2**20:.1f} MiB), {free:.0f} bytes are free. Free disk space or pass "
                "another out_dir; no iteration was trained",
            )

    def _disk_bytes_needed(self, now: CheckpointBytes) -> int:
        """Free bytes the rest of this run needs in ``out_dir``, from the checkpoint as it is now: the final
        checkpoint (now's, plus Adam's moments if no step was made yet, plus ``_RECORD_BYTES`` of history per
        iteration left) twice, as a new checkpoint is written beside the old one before it replaces it (the space of
        a checkpoint on disk now comes back), the metrics log's lines, and ``_DISK_MARGIN_BYTES``."""
        left = max(self.config.n_iterations - self.iteration, 0)
        checkpoint = now.size + self._optimizer_bytes_to_come() + left * _RECORD_BYTES
        path = self._path(CHECKPOINT_NAME)
        existing = path.stat().st_size if path is not None and path.exists() else 0
        return max(checkpoint, 2 * checkpoint - existing) + left * _RECORD_BYTES + _DISK_MARGIN_BYTES

    def _optimizer_bytes_to_come(self) -> int:
        """Bytes Adam's state will add to a checkpoint at its first step (0 once it has one): two moments per
        trained parameter, with ``_OPTIMIZER_TENSOR_BYTES`` overhead per parameter."""
        if self.optimizer.state:
            return 0
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad]
        return sum(2 * p.numel() * p.element_size() + _OPTIMIZER_TENSOR_BYTES for p in params)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the state written by ``save_checkpoint``, on this many ranks or another (module docstring).

        Raises ``CheckpointError`` naming the file when it cannot be read (checksum mismatch, truncated, corrupt, not a
        checkpoint), was written for another flow class, flow size or objective, or with other training settings
        (``run``'s docstring says which may change); these checks run before any state changes.
        """
        path = Path(path)
        state = read_checkpoint(path, self.model.parameter.device)
        check_fits(state, path, self.flow, self.objective)
        check_config(state, path, asdict(self.config), _FREE_SETTINGS)
        try:
            self._restore(state)
        except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"the checkpoint {path} does not fit this Trainer ({type(err).__name__}: {err}); it comes from another "
                "setup or version: resume it with the setup that wrote it, or train from scratch (no resume). This "
                "Trainer is now partly restored: build a new one"
            ) from err
        self._last_checkpoint = (path, self.iteration)

    def _restore(self, state: dict) -> None:
        """Set the flow, optimiser, scheduler, objective, counters, history and generators from a checked state."""
        rank, world_size = self.dist.rank, self.dist.world_size
        ranks = [{"objective": state["objective"], "rng": state["rng"]}, *state.get("rank_states", [])]
        saved_world_size = len(ranks)
        saved_shared = state["rng"].get("shared")
        self.flow.load_state_dict(state["flow"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.objective.load_shards([r["objective"] for r in ranks], rank, world_size)
        if self._separate_eval_target is not None:
            self._separate_eval_target.n_evaluations = int(state["eval_target_evaluations"]) if rank == 0 else 0
        self.counters = _Counters(**state["counters"])
        if rank != 0:
            self.counters.n_masked_samples = 0  # rank 0 holds the run's count
        self.grad_norms = deque(self.counters.grad_norms, maxlen=self.config.grad_history)
        self.history = list(state["history"])
        self.iteration = int(state["iteration"])
        if self.shared_generator is not None:  # the shared stream (a single process's data stream is its generator)
            shared = saved_shared if saved_shared is not None else ranks[0]["rng"]["generator"]
            self.shared_generator.set_state(shared.cpu())
        if saved_world_size == world_size:
            rng = ranks[rank]["rng"]
            generator = saved_shared if not self.dist.distributed and saved_shared is not None else rng["generator"]
            self.generator.set_state(generator.cpu())
            torch.set_rng_state(rng["torch"].cpu())
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        else:
            if not self.dist.distributed and saved_shared is not None:
                self.generator.set_state(saved_shared.cpu())  # a single process continues the global data stream
            else:
                self.generator.manual_seed(rank_seed(self.config.seed, rank, self.iteration))
            torch.manual_seed(rank_seed(self.config.seed, rank, self.iteration))
            self.counters.setup_done = False  # re-sharded replay buffers may need topping up
            logger.info(
                "resumed a checkpoint of %d rank(s) on %d: per-rank state re-sharded, generators re-seeded",
                saved_world_size,
                world_size,
            )


def _worker_processes(*targets: TargetDensity | Energy | None) -> int:
    """OpenMM worker processes behind ``targets``: the ``n_workers`` of each ``OpenMMEnergy`` with more than one
    (one worker evaluates in this process), also inside wrapping energies (e.g. ``RestrictedEnergy``). Found by its
    ``worker_pids`` method, so that train/ never imports openmm."""
    seen: set[int] = set()
    total = 0
    for target in targets:
        energy = target.energy if isinstance(target, TargetDensity) else target
        for module in energy.modules() if isinstance(energy, nn.Module) else ():
            n = getattr(module, "n_workers", None)
            if callable(getattr(module, "worker_pids", None)) and isinstance(n, int) and id(module) not in seen:
                seen.add(id(module))
                total += n if n > 1 else 0
    return total


def _rank_share(cores: int, busy: int, local_ranks: int) -> tuple[int, int]:
    """(cores, busy) of one of ``local_ranks`` ranks on a machine with ``cores`` usable cores, ``busy`` of them busy:
    its share of the cores, and its share of the busy cores beyond what the other ranks of the job may keep busy
    (they count in the load average)."""
    share = max(1, cores // local_ranks)
    return share, max(0, busy - (local_ranks - 1) * share) // local_ranks


def _to_cpu(obj: object) -> object:
    """obj with every tensor in (nested) dicts, lists and tuples moved to the CPU."""
    if isinstance(obj, Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


@contextlib.contextmanager
def exit_when_interrupted(on_exit: Callable[[], None] | None = None) -> Iterator[None]:
    """For command-line scripts: a ``TrainingInterrupted`` inside the block ends the program the shell's way.

    Calls ``on_exit`` (e.g. ``DistributedContext.close``), prints the stop and how to resume to stderr, and exits
    with the exception's ``exit_code`` (130 after SIGINT, 143 after SIGTERM). The checkpoint of the last complete
    iteration is already written, so rerunning with ``--resume`` continues.
    """
    try:
        yield
    except TrainingInterrupted as stop:
        if on_exit is not None:
            on_exit()
        print(f"{stop}\nrerun this command with --resume to continue", file=sys.stderr)
        sys.exit(stop.exit_code)

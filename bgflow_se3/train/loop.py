"""The one training loop: Adam, warm-up + cosine schedule, guarded gradient steps, checkpoints, metrics, progress.

Guards (as in the augmented-coupling-flow reference): samples whose loss or log q is not finite, or whose log q
is below ``min_log_q``, are masked out of the mean; a step whose gradient norm is not finite is skipped; once
``min_grad_history`` norms are known, a step whose norm exceeds ``skip_multiple`` x the median of the last
``grad_history`` norms is skipped and otherwise the gradient is clipped at ``clip_multiple`` x that median. Every
skip and mask is counted. Checkpoints hold the flow, optimiser, scheduler, objective (replay buffer, HMC step sizes,
target-evaluation count), loop counters, history and RNG states, so ``run(resume=True)`` continues to the same
state as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..energy.base import Energy
from ..sampling.joint import JointFlow, TargetDensity
from .curves import plot_training_curves
from .metrics import effective_sample_size
from .objectives import LossTerms, Objective

__all__ = ["TrainConfig", "TrainResult", "Trainer"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "training_curves.png"


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training loop.

    n_iterations: outer iterations (one objective batch each; FAB makes ``n_updates`` gradient steps per iteration).
    lr: peak learning rate of Adam; warmup_iterations: linear warm-up from lr / warmup_iterations; then cosine decay
    to ``final_lr_fraction * lr`` at ``n_iterations``. Gradient guards: see the module docstring.
    eval_every: every this many iterations, the reverse ESS of ``n_eval`` fresh flow samples is logged (needs an
    evaluation target; 0 = never). checkpoint_every: also checkpoint every this many iterations (0: only at the end
    or stop). seed: seeds the loop's generator (all sampling of the loop draws from it). progress: tqdm bar;
    plot: write the training-curve PNG at the end of ``run`` (with an out_dir).
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


@dataclass(frozen=True)
class TrainResult:
    """What a training run did.

    history: one record per iteration (``iteration``, ``loss``, ``lr``, ``grad_norm``, ``n_target_evaluations``,
    ``wall_time_s``, counters, and the objective's metrics such as ``ess_flow`` / ``ess_ais`` / ``ess``).
    Counters: skipped steps (non-finite gradient, outlier norm, all samples masked) and masked samples.
    Paths are None without an output folder.
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
    """

    def __init__(
        self,
        flow: nn.Module,
        objective: Objective,
        config: TrainConfig | None = None,
        out_dir: str | Path | None = None,
        eval_target: Energy | TargetDensity | None = None,
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
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.iteration = 0
        self.counters = _Counters()
        self.grad_norms: deque[float] = deque(maxlen=cfg.grad_history)
        self.history: list[dict[str, float]] = []

    def _lr_factor(self, iteration: int) -> float:
        cfg = self.config
        if iteration < cfg.warmup_iterations:
            return (iteration + 1) / cfg.warmup_iterations
        span = max(cfg.n_iterations - cfg.warmup_iterations, 1)
        progress = min((iteration - cfg.warmup_iterations) / span, 1.0)
        return cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    # ---- one gradient update -------------------------------------------------------------------------------
    def _masked_loss(self, terms: list[tuple[float, LossTerms]]) -> Tensor | None:
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

    def _guarded_step(self) -> float:
        cfg = self.config
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
            record["ess"] = self.reverse_ess(cfg.n_eval)
        return record

    def reverse_ess(self, n: int) -> float:
        """Normalised reverse ESS of n fresh flow samples on the augmented joint, log w = log p~ + log pi - log q."""
        if self.eval_target is None:
            raise ValueError("no evaluation target: pass eval_target to the Trainer")
        with torch.no_grad():
            z, log_q = self.model.sample(n, self.generator)
            log_w = self.eval_target.joint(self.model, z) - log_q
        return effective_sample_size(log_w)

    # ---- the loop -------------------------------------------------------------------------------------------
    def run(self, until: int | None = None, resume: bool | str | Path = False) -> TrainResult:
        """Train up to iteration ``until`` (default ``config.n_iterations``); returns a ``TrainResult``.

        resume: True loads ``out_dir/checkpoint.pt`` when it exists (and starts fresh otherwise); a path loads that
        checkpoint. The schedule always spans ``config.n_iterations``, so stopping early with ``until`` and resuming
        later reproduces the uninterrupted run.
        """
        cfg = self.config
        if resume:
            path = Path(resume) if not isinstance(resume, bool) else self._path(CHECKPOINT_NAME)
            if path is None:
                raise ValueError("resume=True needs an out_dir (or pass the checkpoint path)")
            if path.exists():
                self.load_checkpoint(path)
                logger.info("resumed from %s at iteration %d", path, self.iteration)
            elif not isinstance(resume, bool):
                raise FileNotFoundError(f"checkpoint {path} does not exist")
        stop = cfg.n_iterations if until is None else min(int(until), cfg.n_iterations)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._rewrite_metrics()
        start = time.perf_counter()
        if not self.counters.setup_done:
            self.objective.setup(self.model, self.generator)
            self.counters.setup_done = True
        self.counters.wall_time_s += time.perf_counter() - start
        with tqdm(total=cfg.n_iterations, initial=self.iteration, disable=not cfg.progress, desc="train") as bar:
            while self.iteration < stop:
                start = time.perf_counter()
                record = self._iterate()
                self.counters.wall_time_s += time.perf_counter() - start
                record.update(self._counter_record())
                self.history.append(record)
                self._append_metrics(record)
                bar.update(1)
                bar.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "ess_flow", "ess_ais", "ess") if k in record})
                if cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0 and self.iteration < stop:
                    self.save_checkpoint()
        checkpoint_path = self.save_checkpoint() if self.out_dir is not None else None
        plot_path = None
        if self.out_dir is not None and self.history and cfg.plot:
            plot_path = plot_training_curves(self.history, self._path(PLOT_NAME))
        return TrainResult(
            history=list(self.history),
            iterations=self.iteration,
            n_target_evaluations=self.n_target_evaluations,
            wall_time_s=self.counters.wall_time_s,
            n_skipped_nonfinite=self.counters.n_skipped_nonfinite,
            n_skipped_outlier=self.counters.n_skipped_outlier,
            n_skipped_masked=self.counters.n_skipped_masked,
            n_masked_samples=self.counters.n_masked_samples,
            checkpoint_path=checkpoint_path,
            metrics_path=self._path(METRICS_NAME),
            plot_path=plot_path,
        )

    @property
    def _separate_eval_target(self) -> TargetDensity | None:
        target = self.eval_target
        return None if target is None or target is self.objective.target else target

    @property
    def n_target_evaluations(self) -> int:
        """Configurations passed to the target energy so far: by the objective and by the ESS evaluations."""
        extra = self._separate_eval_target
        return self.objective.n_target_evaluations + (0 if extra is None else extra.n_evaluations)

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
        if path is not None:
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def _rewrite_metrics(self) -> None:
        """Make the metrics log hold exactly the history (drops lines written after the last checkpoint)."""
        path = self._path(METRICS_NAME)
        with path.open("w") as f:
            for record in self.history:
                f.write(json.dumps(record) + "\n")

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write the full training state (see the module docstring); default ``out_dir/checkpoint.pt``."""
        path = Path(path) if path is not None else self._path(CHECKPOINT_NAME)
        if path is None:
            raise ValueError("no checkpoint path: pass one or give the Trainer an out_dir")
        self.counters.grad_norms = list(self.grad_norms)
        state = {
            "format": 1,
            "iteration": self.iteration,
            "config": asdict(self.config),
            "flow": self.flow.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "objective": self.objective.state_dict(),
            "eval_target_evaluations": 0
            if self._separate_eval_target is None
            else self._separate_eval_target.n_evaluations,
            "counters": asdict(self.counters),
            "history": self.history,
            "rng": {
                "generator": self.generator.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(state, tmp)
        tmp.replace(path)  # atomic: an interrupted save never leaves a broken checkpoint
        logger.info("checkpoint at iteration %d written to %s", self.iteration, path)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the state written by ``save_checkpoint``."""
        state = torch.load(Path(path), map_location=self.model.parameter.device, weights_only=False)
        if state.get("format") != 1:
            raise ValueError(f"{path} is not a bgflow_se3 training checkpoint (format {state.get('format')})")
        self.flow.load_state_dict(state["flow"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.objective.load_state_dict(state["objective"])
        if self._separate_eval_target is not None:
            self._separate_eval_target.n_evaluations = int(state["eval_target_evaluations"])
        self.counters = _Counters(**state["counters"])
        self.grad_norms = deque(self.counters.grad_norms, maxlen=self.config.grad_history)
        self.history = list(state["history"])
        self.iteration = int(state["iteration"])
        self.generator.set_state(state["rng"]["generator"].cpu())
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])

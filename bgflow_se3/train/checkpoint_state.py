"""What a training checkpoint holds, and when and where a ``Trainer`` writes it (the file format: ``checkpoint.py``).

A checkpoint holds the flow, optimiser, scheduler, objective (replay buffer, HMC step sizes, target-evaluation
count), loop counters, history and RNG states, so ``run(resume=True)`` continues to the same state as an
uninterrupted run. Under ``torch.distributed`` it holds the global state once (flow, optimiser, scheduler, counters,
history, HMC step sizes, the shared generator) and the per-rank state of every rank (replay buffer, generators).
Resuming on as many ranks continues exactly; on another number of ranks (also from or to a single process) the
replay buffers are pooled and re-sharded, each rank's generator is re-seeded from (seed, rank, iteration), and FAB
tops up buffers below their minimum: reproducible, not bit-identical to an uninterrupted run.

Checkpoints are written at the end, at a stop signal, and periodically: every ``checkpoint_every_s`` seconds (rank
0's clock) and every ``checkpoint_every`` iterations, so a killed run (SIGKILL, power cut) resumes from the last one.
A failed write (disk full) raises ``OutputWriteError`` and leaves the previous checkpoint as it was; the message
advises ``run(resume=True)`` only when a checkpoint of the run is on disk. Before the first iteration the disk is
checked for room for the run's checkpoints (``disk_space``). Loading checks the checkpoint first: a checksum
that does not match, an unreadable file, a flow of another class or size, another objective, or other training
settings (``Trainer.run`` lists those that may change) raise ``CheckpointError`` naming the file and the mismatch,
before any state changes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, OutputWriteError
from ..sampling.joint import TargetDensity
from .checkpoint import (
    check_config,
    check_fits,
    class_name,
    free_bytes,
    output_error,
    read_checkpoint,
    serialize_checkpoint,
    write_atomically,
)
from .config import FREE_SETTINGS, TrainConfig
from .disk_space import bytes_needed, check_free_space
from .distributed import DistributedContext, rank_seed
from .guards import Counters, GradientGuards
from .interrupts import StopSignals
from .objectives import Objective

__all__ = ["CHECKPOINT_NAME", "Checkpoints", "TrainingState", "rng_state", "to_cpu"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


class TrainingState(Protocol):
    """What ``Checkpoints`` reads and restores: the ``Trainer``'s attributes of these names."""

    flow: nn.Module
    objective: Objective
    config: TrainConfig
    out_dir: Path | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    dist: DistributedContext
    generator: torch.Generator
    shared_generator: torch.Generator | None
    guards: GradientGuards
    stops: StopSignals
    iteration: int
    history: list[dict[str, float]]

    @property
    def separate_eval_target(self) -> TargetDensity | None: ...


class Checkpoints:
    """The checkpoints of one ``Trainer`` (``trainer``; module docstring).

    ``last``: (path, iteration) of the checkpoint last written or loaded, None before; ``clock``: when the last
    checkpoint was written (or the loop started), ``time.monotonic()`` seconds.
    """

    def __init__(self, trainer: TrainingState) -> None:
        self.trainer = trainer
        self.last: tuple[Path, int] | None = None
        self.clock = time.monotonic()

    @property
    def default_path(self) -> Path | None:
        """``out_dir/checkpoint.pt``, None without an out_dir."""
        out_dir = self.trainer.out_dir
        return None if out_dir is None else out_dir / CHECKPOINT_NAME

    def time_due(self) -> bool:
        """Whether ``checkpoint_every_s`` (> 0) has passed on this process's clock since the last checkpoint."""
        every = self.trainer.config.checkpoint_every_s
        return every > 0 and time.monotonic() - self.clock >= every

    def save(self, path: str | Path | None = None) -> Path:
        """``Trainer.save_checkpoint``: build the state (a collective), write it on rank 0, wait for every rank."""
        path = Path(path) if path is not None else self.default_path
        if path is None:
            raise ValueError("no checkpoint path: pass one or give the Trainer an out_dir")
        state = self.state()
        if state is not None:
            self.write(path, state)
        self.clock = time.monotonic()
        self.trainer.dist.barrier()  # under torch.distributed: every rank returns once rank 0 has written the file
        return path

    def state(self) -> dict | None:
        """The state a checkpoint holds (module docstring) on rank 0, None on the other ranks. Under
        ``torch.distributed`` a collective: rank 0 gathers every rank's own state."""
        t = self.trainer
        dist = t.dist
        extra = t.separate_eval_target
        rank_state = {"objective": t.objective.state_dict(), "rng": rng_state(t.generator)}
        counters = asdict(t.guards.snapshot())
        eval_evaluations = 0 if extra is None else extra.n_evaluations
        if dist.distributed:  # global counts, and every rank's own state on rank 0
            n_objective, eval_evaluations, counters["n_masked_samples"] = (
                int(round(v))
                for v in dist.all_reduce_floats(
                    [t.objective.n_target_evaluations, eval_evaluations, t.guards.counters.n_masked_samples]
                )
            )
            shards = dist.gather_objects(to_cpu(rank_state))
            if not dist.is_main:
                return None
            rank_state = shards[0]
            rank_state["objective"]["n_target_evaluations"] = n_objective
        state = {
            "format": 1,
            "flow_class": class_name(t.flow),
            "objective_class": class_name(t.objective),
            "world_size": dist.world_size,
            "iteration": t.iteration,
            "config": asdict(t.config),
            "flow": t.flow.state_dict(),
            "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict(),
            "objective": rank_state["objective"],
            "eval_target_evaluations": eval_evaluations,
            "counters": counters,
            "history": t.history,
            "rng": rank_state["rng"],
        }
        if dist.distributed:
            state["rng"]["shared"] = t.shared_generator.get_state()
            state["rank_states"] = shards[1:]  # ranks 1 .. world_size - 1: replay buffers, generators
        return state

    def write(self, path: Path, state: dict) -> None:
        """Serialise ``state`` with its checksum and write it atomically to ``path``; a stop signal waits for it."""
        try:
            with self.trainer.stops.writing_checkpoint():
                data = serialize_checkpoint(state)
                write_atomically(path, data.header, data.payload)
        except OSError as err:
            raise self.write_error(err, path, "the checkpoint") from err
        self.last = (path, self.trainer.iteration)
        logger.info("checkpoint at iteration %d written to %s", self.trainer.iteration, path)

    def write_error(self, err: OSError, path: Path, what: str) -> OutputWriteError:
        """An ``OutputWriteError`` naming the file that could not be written, the checkpoint still intact (if any) and
        a remedy that holds: resuming only when there is a checkpoint to resume."""
        last = self.last
        if last is not None and last[0].exists():
            resume = "run(resume=True)" if last[0] == self.default_path else f"run(resume='{last[0]}')"
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
            err,
            f"could not write {what} {path} at iteration {self.trainer.iteration} ({err.strerror or err}); {state}",
        )

    def kept(self) -> str:
        """Which checkpoint is on disk, for a run stopped at once."""
        last = self.last
        return f"the checkpoint of iteration {last[1]} ({last[0]}) is unchanged" if last else "no checkpoint written"

    def check_disk_space(self) -> None:
        """Raise ``OutputWriteError`` (ENOSPC) when the disk of ``out_dir`` has less free space than the rest of this
        run's output needs (``disk_space``). Under ``torch.distributed`` a collective: rank 0 measures, every rank
        decides alike."""
        t = self.trainer
        state = self.state()
        needed = free = 0.0
        if state is not None:
            path = self.default_path
            existing = path.stat().st_size if path is not None and path.exists() else 0
            left = max(t.config.n_iterations - t.iteration, 0)
            needed = float(bytes_needed(serialize_checkpoint(state), t.optimizer, left, existing))
            free = float(free_bytes(t.out_dir))
        needed, free = t.dist.all_reduce_floats([needed, free])
        check_free_space(needed, free, t.out_dir)

    def load(self, path: str | Path, device: torch.device) -> None:
        """``Trainer.load_checkpoint``: read and check the file at ``path`` (to ``device``), then restore it."""
        t = self.trainer
        path = Path(path)
        state = read_checkpoint(path, device)
        check_fits(state, path, t.flow, t.objective)
        check_config(state, path, asdict(t.config), FREE_SETTINGS)
        try:
            self.restore(state)
        except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"the checkpoint {path} does not fit this Trainer ({type(err).__name__}: {err}); it comes from another "
                "setup or version: resume it with the setup that wrote it, or train from scratch (no resume). This "
                "Trainer is now partly restored: build a new one"
            ) from err
        self.last = (path, t.iteration)

    def restore(self, state: dict) -> None:
        """Set the flow, optimiser, scheduler, objective, counters, history and generators from a checked state."""
        t = self.trainer
        rank, world_size = t.dist.rank, t.dist.world_size
        ranks = [{"objective": state["objective"], "rng": state["rng"]}, *state.get("rank_states", [])]
        saved_world_size = len(ranks)
        saved_shared = state["rng"].get("shared")
        t.flow.load_state_dict(state["flow"])
        t.optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        t.objective.load_shards([r["objective"] for r in ranks], rank, world_size)
        if t.separate_eval_target is not None:
            t.separate_eval_target.n_evaluations = int(state["eval_target_evaluations"]) if rank == 0 else 0
        counters = Counters(**state["counters"])
        if rank != 0:
            counters.n_masked_samples = 0  # rank 0 holds the run's count
        t.guards.load(counters)
        t.history = list(state["history"])
        t.iteration = int(state["iteration"])
        if t.shared_generator is not None:  # the shared stream (a single process's data stream is its generator)
            shared = saved_shared if saved_shared is not None else ranks[0]["rng"]["generator"]
            t.shared_generator.set_state(shared.cpu())
        if saved_world_size == world_size:
            rng = ranks[rank]["rng"]
            generator = saved_shared if not t.dist.distributed and saved_shared is not None else rng["generator"]
            t.generator.set_state(generator.cpu())
            torch.set_rng_state(rng["torch"].cpu())
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        else:
            if not t.dist.distributed and saved_shared is not None:
                t.generator.set_state(saved_shared.cpu())  # a single process continues the global data stream
            else:
                t.generator.manual_seed(rank_seed(t.config.seed, rank, t.iteration))
            torch.manual_seed(rank_seed(t.config.seed, rank, t.iteration))
            t.guards.counters.setup_done = False  # re-sharded replay buffers may need topping up
            logger.info(
                "resumed a checkpoint of %d rank(s) on %d: per-rank state re-sharded, generators re-seeded",
                saved_world_size,
                world_size,
            )


def rng_state(generator: torch.Generator) -> dict:
    """The random state of this process: the loop's ``generator``, torch's global CPU and CUDA generators."""
    return {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def to_cpu(obj: object) -> object:
    """obj with every tensor in (nested) dicts, lists and tuples moved to the CPU."""
    if isinstance(obj, Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj

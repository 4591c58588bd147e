"""Small, deterministic DW4 FAB training runs for the training fault tests, and energies that fail on purpose.

Run as a script, it trains one such run in this process (the subprocess of the signal tests)::

    python tests/robustness/_training_helpers.py --out DIR [--iterations N] [--resume] [--signal-during-save]
        [--checkpoint-every-s S]
    torchrun --nproc_per_node 2 tests/robustness/_training_helpers.py --out DIR --sigterm-rank-1-at-call K
        [--checkpoint-every-s S --rank-1-clock-stopped]

and exits 0 when training completes, or with ``TrainingInterrupted.exit_code`` (130 SIGINT, 143 SIGTERM) after a
stop signal, the message on stderr; either way each rank prints ``rank R: N checkpoints`` (the checkpoints it took
part in). Under torchrun (gloo) ``--sigterm-rank-1-at-call K`` makes rank 1 send itself SIGTERM at its K-th target
evaluation, and ``--rank-1-clock-stopped`` makes rank 1's own clock never find a time-based checkpoint due.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from pathlib import Path

import torch
from torch import Tensor

from bgflow_se3 import DoubleWellEnergy
from bgflow_se3.energy import Energy
from bgflow_se3.flow import AugmentedCouplingFlow
from bgflow_se3.train import (
    DistributedContext,
    FABObjective,
    Objective,
    ReverseKLObjective,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    init_from_env,
)

N_ITERATIONS = 12


def make_flow(hidden: int = 8) -> AugmentedCouplingFlow:
    """A one-block augmented coupling flow for DW4 (4 particles in 2D), float64; weights from torch's global RNG."""
    flow = AugmentedCouplingFlow(
        4,
        dim=2,
        n_aug=1,
        n_blocks=1,
        hidden=hidden,
        egnn_layers=1,
        projection="vector",
        length_scale=2.0,
        sigma_aug=0.5,
    )
    return flow.double()


def make_objective(energy: Energy | None = None, kind: str = "fab") -> Objective:
    """FAB on DW4 at test size (batch 16, one intermediate distribution, 2 updates), or reverse KL (``kind="kl"``)."""
    energy = energy if energy is not None else DoubleWellEnergy()
    if kind == "kl":
        return ReverseKLObjective(energy, batch_size=16)
    return FABObjective(
        energy,
        batch_size=16,
        n_intermediate=1,
        n_leapfrog=2,
        n_updates=2,
        buffer_max_length=256,
        buffer_min_length=32,
        step_size=0.05,
    )


def make_trainer(
    out_dir: str | Path | None,
    n_iterations: int = N_ITERATIONS,
    *,
    hidden: int = 8,
    energy: Energy | None = None,
    objective: str = "fab",
    checkpoint_every: int = 0,
    checkpoint_every_s: float = 0.0,
    seed: int = 0,
    distributed: DistributedContext | None = None,
) -> Trainer:
    """The test run: ``make_flow(hidden)`` (torch seeded with ``seed`` first) trained by ``make_objective``.

    Every call with the same arguments builds the same state, as a fresh process would. Time-based checkpoints are
    off unless ``checkpoint_every_s`` > 0, so that how many checkpoints a test sees does not depend on the machine.
    """
    torch.manual_seed(seed)
    config = TrainConfig(
        n_iterations=n_iterations,
        lr=1e-3,
        warmup_iterations=2,
        min_grad_history=2,
        checkpoint_every=checkpoint_every,
        checkpoint_every_s=checkpoint_every_s,
        seed=seed,
        progress=False,
        plot=False,
    )
    flow, target = make_flow(hidden), make_objective(energy, objective)
    return Trainer(flow, target, config, out_dir=out_dir, distributed=distributed or DistributedContext())


def parameters(trainer: Trainer) -> Tensor:
    """All flow parameters, flattened and copied, shape (n_parameters,)."""
    return torch.cat([p.detach().flatten().clone() for p in trainer.flow.parameters()])


def comparable(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """The history without wall times (the only entries that differ between identical runs)."""
    return [{k: v for k, v in record.items() if k != "wall_time_s"} for record in history]


class FlakyEnergy(Energy):
    """``energy``, except that in a random ``call_fraction`` of calls a random ``row_fraction`` of the rows (at
    least one) returns ``value`` (NaN or +inf), raw, as a failing backend would. ``n_poisoned`` counts those rows.

    Randomness comes from its own generator (seed ``seed``), so the failures repeat from run to run.
    """

    def __init__(
        self, energy: Energy, value: float, call_fraction: float = 0.05, row_fraction: float = 0.25, seed: int = 0
    ) -> None:
        super().__init__(energy.n_atoms, energy.dim, temperature=energy.temperature, on_error=energy.on_error)
        self.energy = energy
        self.value = float(value)
        self.call_fraction, self.row_fraction = float(call_fraction), float(row_fraction)
        self.generator = torch.Generator().manual_seed(seed)
        self.n_calls = self.n_poisoned = 0

    def forward(self, x: Tensor) -> Tensor:
        """u (batch,) of the wrapped energy with the poisoned rows set to ``value``."""
        u = self.energy(x)
        self.n_calls += 1
        if float(torch.rand((), generator=self.generator)) >= self.call_fraction:
            return u
        rows = torch.rand(len(u), generator=self.generator) < self.row_fraction
        rows[int(torch.randint(len(u), (), generator=self.generator))] = True
        self.n_poisoned += int(rows.sum())
        return torch.where(rows.to(u.device), torch.full_like(u, self.value), u)


class SignallingEnergy(Energy):
    """``energy`` that sends ``signum`` to this process on each call listed in ``at_calls`` (1-based)."""

    def __init__(self, energy: Energy, signum: int, at_calls: tuple[int, ...]) -> None:
        super().__init__(energy.n_atoms, energy.dim, temperature=energy.temperature, on_error=energy.on_error)
        self.energy = energy
        self.signum, self.at_calls = signum, set(at_calls)
        self.n_calls = 0

    def forward(self, x: Tensor) -> Tensor:
        """u (batch,) of the wrapped energy; the signal is handled before it returns."""
        self.n_calls += 1
        if self.n_calls in self.at_calls:
            os.kill(os.getpid(), self.signum)
        return self.energy(x)


def _signal_during_save(trainer: Trainer) -> None:
    """Make the stop checkpoint meet a second SIGINT: it is sent while the file is written, before the rename."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if trainer.stops.signal is not None and trainer.stops.writing:
            os.kill(os.getpid(), signal.SIGINT)
        real_fsync(fd)

    os.fsync = fsync


def _count_checkpoints(trainer: Trainer) -> list[int]:
    """A one-element list that counts the calls of ``trainer.save_checkpoint`` (every rank takes part in each)."""
    count = [0]
    save = trainer.save_checkpoint

    def counted(*args, **kwargs):
        count[0] += 1
        return save(*args, **kwargs)

    trainer.save_checkpoint = counted
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=N_ITERATIONS)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--signal-during-save", action="store_true")
    parser.add_argument("--checkpoint-every-s", type=float, default=0.0)
    parser.add_argument("--sigterm-rank-1-at-call", type=int, default=None)
    parser.add_argument("--rank-1-clock-stopped", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal, even if launched in the background
    ctx = init_from_env(backend="gloo")
    energy = None
    if args.sigterm_rank_1_at_call is not None and ctx.rank == 1:
        energy = SignallingEnergy(DoubleWellEnergy(), signal.SIGTERM, (args.sigterm_rank_1_at_call,))
    trainer = make_trainer(
        args.out, args.iterations, energy=energy, checkpoint_every_s=args.checkpoint_every_s, distributed=ctx
    )
    if args.rank_1_clock_stopped and ctx.rank == 1:
        trainer.checkpoints.time_due = lambda: False
    if args.signal_during_save:
        _signal_during_save(trainer)
    n_checkpoints = _count_checkpoints(trainer)
    try:
        result = trainer.run(resume=args.resume)
    except TrainingInterrupted as stop:
        ctx.close()
        print(f"rank {ctx.rank}: {n_checkpoints[0]} checkpoints", file=sys.stderr)
        print(f"rank {ctx.rank}: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    ctx.close()
    print(f"rank {ctx.rank}: {n_checkpoints[0]} checkpoints")
    assert all(math.isfinite(float(p.sum())) for p in trainer.flow.parameters())
    print(f"done: {result.iterations} iterations")


if __name__ == "__main__":
    main()

"""The rank side of ``tests/train/test_distributed.py``: run under ``torchrun`` (gloo, CPU), one scenario per launch.

python -m torch.distributed.run --standalone --nproc_per_node 2 tests/train/_distributed_worker.py train OUT
python -m torch.distributed.run --standalone --nproc_per_node 2 tests/train/_distributed_worker.py fail OUT

"train": ML on a fixed data set (parameters after N steps, and a checkpoint half way), then FAB straight, stopped
half way and resumed on two ranks, and resumed from a single-process checkpoint ``OUT/fab_single/checkpoint.pt``
that the test wrote first. Rank 0 saves what the test compares into ``OUT/*.pt``. "fail": FAB whose target raises
on rank 1 after the replay buffer is filled; the job must end with that error.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from bgflow_se3.train import (
    FABObjective,
    MaximumLikelihoodObjective,
    TrainConfig,
    Trainer,
    fit_ml,
    init_from_env,
)
from tests.train._helpers import GaussianAugmentedFlow, GaussianMixtureEnergy, centre

#: per-rank ML batch; the single-process reference uses ML_BATCH * 2
ML_BATCH = 8
ML_ITERATIONS = 8
FAB_CONFIG = TrainConfig(
    n_iterations=6, lr=1e-2, warmup_iterations=2, seed=3, progress=False, min_grad_history=2, plot=False
)


def ml_data() -> torch.Tensor:
    """A fixed data set (64, 3, 2), float64."""
    g = torch.Generator().manual_seed(5)
    mean = torch.tensor([[1.0, 0.0], [-0.5, 0.8], [0.2, -0.6]], dtype=torch.float64)
    return centre(mean + 0.4 * torch.randn(64, 3, 2, generator=g, dtype=torch.float64))


def ml_kwargs(batch_size: int) -> dict:
    """The fit_ml settings of the test; ``batch_size`` per rank."""
    return dict(batch_size=batch_size, n_iterations=ML_ITERATIONS, lr=0.02, warmup_iterations=2, seed=3, progress=False)


def mixture() -> GaussianMixtureEnergy:
    """The three-component target of the FAB tests (as ``tests/train/conftest.py``)."""
    g = torch.Generator().manual_seed(7)
    means = 1.2 * torch.randn(3, 3, 2, generator=g, dtype=torch.float64)
    return GaussianMixtureEnergy(means, [0.5, 0.6, 0.7], [0.5, 0.3, 0.2], log_z=2.3)


def fab_objective(target) -> FABObjective:
    """FAB at unit-test size: batch 16, 2 intermediates (4 leapfrog steps), 2 updates, buffer 32 to 128."""
    return FABObjective(
        target, batch_size=16, n_intermediate=2, n_updates=2, buffer_max_length=128, buffer_min_length=32
    )


def params(flow: torch.nn.Module) -> torch.Tensor:
    """All parameters, flattened."""
    return torch.cat([p.detach().flatten().clone() for p in flow.parameters()])


class FailingEnergy(GaussianMixtureEnergy):
    """The mixture, raising on rank ``fail_rank`` once it has evaluated more than ``after`` configurations."""

    def __init__(self, fail_rank: int, rank: int, after: int) -> None:
        base = mixture()
        super().__init__(base.means, base.sigmas.tolist(), base.log_weights.exp().tolist(), base.log_z)
        self.fail, self.after, self.seen = rank == fail_rank, after, 0

    def _reduced_energy(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        if self.fail and self.seen > self.after:
            raise RuntimeError(f"injected failure on rank 1 at {time.time():.3f}")
        return super()._reduced_energy(x)


def train(out: Path) -> None:
    ctx = init_from_env(timeout_s=60)
    main = ctx.is_main
    # ML: the parameters after N steps, and a checkpoint half way (the test resumes it in one process)
    flow = GaussianAugmentedFlow().double()
    result = fit_ml(flow, ml_data(), **ml_kwargs(ML_BATCH))
    if main:
        torch.save({"params": params(flow), "loss": result.series("loss").tolist()}, out / "ml.pt")
    config = TrainConfig(**{k: v for k, v in ml_kwargs(ML_BATCH).items() if k != "batch_size"}, plot=False)
    half = Trainer(
        GaussianAugmentedFlow().double(), MaximumLikelihoodObjective(ml_data(), ML_BATCH), config, out / "ml"
    )
    half.run(until=ML_ITERATIONS // 2)

    # FAB: straight, stopped half way and resumed, all on two ranks
    flow = GaussianAugmentedFlow().double()
    objective = fab_objective(mixture())
    straight = Trainer(flow, objective, FAB_CONFIG).run()
    buffer = objective.buffer
    log_w_sum = float(buffer.log_w[: len(buffer)].sum())
    local = [objective.n_target_evaluations, len(buffer), float(objective.ais.hmc.step_sizes[0]), log_w_sum]
    gathered = ctx.gather_objects(local)
    if main:
        torch.save(
            {
                "history": straight.history,
                "params": params(flow),
                "n": straight.n_target_evaluations,
                "ranks": gathered,
            },
            out / "fab_straight.pt",
        )
    Trainer(GaussianAugmentedFlow().double(), fab_objective(mixture()), FAB_CONFIG, out / "fab").run(until=3)
    if main:
        shutil.copy(out / "fab" / "checkpoint.pt", out / "fab_at_3.pt")
    resumed_flow = GaussianAugmentedFlow().double()
    with torch.no_grad():
        resumed_flow.mu_x.add_(1.0)  # different initial weights: the checkpoint must overwrite them
    resumed = Trainer(resumed_flow, fab_objective(mixture()), FAB_CONFIG, out / "fab").run(resume=True)
    if main:
        torch.save(
            {"history": resumed.history, "params": params(resumed_flow), "n": resumed.n_target_evaluations},
            out / "fab_resumed.pt",
        )
    # FAB: from a single-process checkpoint onto two ranks
    objective = fab_objective(mixture())
    grown = Trainer(GaussianAugmentedFlow().double(), objective, FAB_CONFIG, out / "fab_1_to_2").run(
        resume=out / "fab_single" / "checkpoint.pt"
    )
    gathered = ctx.gather_objects([len(objective.buffer), objective.n_target_evaluations])
    if main:
        torch.save({"history": grown.history, "n": grown.n_target_evaluations, "ranks": gathered}, out / "fab_1to2.pt")


def fail(out: Path) -> None:
    ctx = init_from_env(timeout_s=60)
    target = FailingEnergy(fail_rank=1, rank=ctx.rank, after=400)  # setup evaluates 2 x 144, each iteration 144
    Trainer(GaussianAugmentedFlow().double(), fab_objective(target), replace(FAB_CONFIG, n_iterations=50)).run()


if __name__ == "__main__":
    torch.set_num_threads(1)
    scenario, folder = sys.argv[1], Path(sys.argv[2])
    {"train": train, "fail": fail}[scenario](folder)

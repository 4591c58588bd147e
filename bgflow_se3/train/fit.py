"""One-call training: ``fit_ml``, ``fit_kl`` and ``fit_fab`` build the objective and run the ``Trainer``.

Launched by ``torchrun`` they train data parallel (the ``Trainer`` notices the launch, see ``train/distributed.py``):
``batch_size`` is then per rank, so the global batch is ``batch_size`` x world size; call them identically on every
rank, with the flow (and a ``TorchForceField`` target) on the rank's device and an ``out_dir`` every rank can read.
They fail and stop like ``Trainer.run``: ``OutputWriteError`` before training when ``out_dir`` cannot be written,
``CheckpointError`` for a checkpoint that cannot be resumed, and ``TrainingInterrupted`` after SIGINT / SIGTERM with
the checkpoint written (call again with ``resume=True`` to continue).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from ..energy.base import Energy
from ..sampling.joint import TargetDensity
from .config import TrainConfig, TrainResult
from .loop import Trainer
from .objectives import FABObjective, MaximumLikelihoodObjective, MLKLObjective, ReverseKLObjective

__all__ = ["fit_fab", "fit_kl", "fit_ml"]


def _run(flow, objective, out_dir, resume, eval_target, config_kwargs) -> TrainResult:
    trainer = Trainer(flow, objective, TrainConfig(**config_kwargs), out_dir=out_dir, eval_target=eval_target)
    return trainer.run(resume=resume)


def fit_ml(
    flow: nn.Module,
    data: Tensor,
    *,
    batch_size: int = 128,
    target: Energy | None = None,
    kl_weight: float = 0.0,
    aux_weight: float = 1.0,
    energy_cut: float = 1e3,
    out_dir: str | Path | None = None,
    resume: bool | str | Path = False,
    **config: object,
) -> TrainResult:
    """Maximum likelihood on data (n, n_atoms, dim) (nm or reduced units, like the flow) with a ~ pi(a | x) fresh.

    target: an energy for the periodic reverse ESS (``eval_every``) and, with ``kl_weight > 0``, for the ML + KL
    mix of Köhler et al. (loss = NLL + kl_weight * KL). Other keywords go to ``TrainConfig`` (n_iterations, lr,
    warmup_iterations, eval_every, seed, progress, ...). Returns the ``TrainResult``.
    """
    density = None if target is None else TargetDensity(target, energy_cut=energy_cut)
    if kl_weight > 0:
        if density is None:
            raise ValueError("kl_weight > 0 needs a target energy")
        objective = MLKLObjective(data, density, batch_size, 1.0, kl_weight, aux_weight)
    else:
        objective = MaximumLikelihoodObjective(data, batch_size, aux_weight)
    return _run(flow, objective, out_dir, resume, density, config)


def fit_kl(
    flow: nn.Module,
    target: Energy,
    *,
    batch_size: int = 128,
    aux_weight: float = 1.0,
    energy_cut: float = 1e3,
    out_dir: str | Path | None = None,
    resume: bool | str | Path = False,
    **config: object,
) -> TrainResult:
    """Reverse KL on the augmented joint against ``target`` (reduced energy u), from the energy alone.

    Mode seeking: prefer ``fit_fab`` for multimodal targets. Other keywords go to ``TrainConfig``.
    """
    density = TargetDensity(target, energy_cut=energy_cut)
    return _run(flow, ReverseKLObjective(density, batch_size, aux_weight), out_dir, resume, None, config)


def fit_fab(
    flow: nn.Module,
    target: Energy,
    *,
    batch_size: int = 128,
    n_intermediate: int = 8,
    n_updates: int = 8,
    buffer_max_length: int | None = None,
    buffer_min_length: int | None = None,
    step_size: float = 0.1,
    n_leapfrog: int = 4,
    aux_weight: float = 1.0,
    energy_cut: float = 1e3,
    out_dir: str | Path | None = None,
    resume: bool | str | Path = False,
    **config: object,
) -> TrainResult:
    """FAB (alpha = 2, prioritised replay buffer) on the augmented joint against ``target``, from the energy alone.

    Sizes in samples; buffer defaults are 512 and 64 batches (fab-torch). ``step_size`` is the initial HMC step in
    the units of x. Reduced energies above ``energy_cut`` (kT) are regularised lin-log. Other keywords go to
    ``TrainConfig``. The history logs ``ess_flow`` (reverse ESS of the AIS start samples), ``ess_ais``,
    ``n_target_evaluations`` and ``wall_time_s`` each iteration.
    """
    objective = FABObjective(
        TargetDensity(target, energy_cut=energy_cut),
        batch_size=batch_size,
        n_intermediate=n_intermediate,
        n_updates=n_updates,
        buffer_max_length=buffer_max_length,
        buffer_min_length=buffer_min_length,
        step_size=step_size,
        n_leapfrog=n_leapfrog,
        aux_weight=aux_weight,
    )
    return _run(flow, objective, out_dir, resume, None, config)

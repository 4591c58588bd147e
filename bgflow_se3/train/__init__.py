"""Training: maximum likelihood, reverse KL and FAB, with one training loop (one process or data parallel).

The loop (``loop.Trainer``) composes its parts: ``guards``, ``interrupts``, ``checkpoint_state`` (with the file format
in ``checkpoint``), ``metrics_log``, ``worker_threads``; its settings and result are in ``config``.

Compatibility re-exports: ``AISResult``, ``AnnealedImportanceSampler``, ``EnergySamples``, ``HMCPoint``,
``HamiltonianMonteCarlo``, ``JointFlow``, ``LogDensityFn``, ``TargetDensity``, ``autograd_log_density`` and
``sample_with_energies`` live in ``bgflow_se3.sampling`` (import them from there); they stay importable from
``bgflow_se3.train`` for code written before the move.
"""

from ..errors import CheckpointError, OutputWriteError, TrainingInterrupted
from ..sampling import (  # compatibility re-exports (module docstring)
    AISResult,
    AnnealedImportanceSampler,
    EnergySamples,
    HamiltonianMonteCarlo,
    HMCPoint,
    JointFlow,
    LogDensityFn,
    TargetDensity,
    autograd_log_density,
    sample_with_energies,
)
from .buffer import BufferBatch, PrioritisedReplayBuffer
from .checkpoint import read_checkpoint
from .curves import plot_training_curves
from .distributed import DistributedContext, init_from_env, rank_seed
from .evaluate import fab_scores, marginal_nll, training_summary
from .fit import fit_fab, fit_kl, fit_ml
from .loop import TrainConfig, Trainer, TrainResult, exit_when_interrupted
from .metrics import effective_sample_size, log_normalizer
from .objectives import (
    FABObjective,
    LossTerms,
    MaximumLikelihoodObjective,
    MLKLObjective,
    Objective,
    ReverseKLObjective,
    fab_loss,
    maximum_likelihood_loss,
    reverse_kl_loss,
)

__all__ = [
    "AISResult",
    "AnnealedImportanceSampler",
    "BufferBatch",
    "CheckpointError",
    "DistributedContext",
    "EnergySamples",
    "FABObjective",
    "HMCPoint",
    "HamiltonianMonteCarlo",
    "JointFlow",
    "LogDensityFn",
    "LossTerms",
    "MLKLObjective",
    "MaximumLikelihoodObjective",
    "Objective",
    "OutputWriteError",
    "PrioritisedReplayBuffer",
    "ReverseKLObjective",
    "TargetDensity",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "autograd_log_density",
    "effective_sample_size",
    "exit_when_interrupted",
    "fab_scores",
    "fab_loss",
    "fit_fab",
    "fit_kl",
    "fit_ml",
    "init_from_env",
    "log_normalizer",
    "marginal_nll",
    "maximum_likelihood_loss",
    "plot_training_curves",
    "rank_seed",
    "read_checkpoint",
    "reverse_kl_loss",
    "sample_with_energies",
    "training_summary",
]

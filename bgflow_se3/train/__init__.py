"""Training: maximum likelihood, reverse KL and FAB, with one training loop (one process or data parallel)."""

from ..errors import CheckpointError, OutputWriteError, TrainingInterrupted
from ..sampling.ais import AISResult, AnnealedImportanceSampler
from ..sampling.hmc import HamiltonianMonteCarlo, HMCPoint, LogDensityFn, autograd_log_density
from ..sampling.joint import JointFlow, TargetDensity
from .buffer import BufferBatch, PrioritisedReplayBuffer
from .checkpoint import read_checkpoint
from .curves import plot_training_curves
from .distributed import DistributedContext, init_from_env, rank_seed
from .evaluate import EnergySamples, fab_scores, marginal_nll, sample_with_energies, training_summary
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

"""Sampling, below training and analysis: batched Langevin dynamics (training data, starting points), HMC and
annealed importance sampling (``hmc``, ``ais``; FAB and ``state_ais`` use them), the packed augmented state of a flow
(``joint``), and flow samples with their target energies (``flow_samples``). Imports nothing from ``train``."""

from .ais import AISResult, AnnealedImportanceSampler
from .flow_samples import EnergySamples, sample_with_energies
from .hmc import HamiltonianMonteCarlo, HMCPoint, LogDensityFn, autograd_log_density
from .joint import JointFlow, TargetDensity
from .langevin import LangevinTrajectory, RelaxedRun, langevin_dynamics, minimise, relax_and_run

__all__ = [
    "AISResult",
    "AnnealedImportanceSampler",
    "EnergySamples",
    "HMCPoint",
    "HamiltonianMonteCarlo",
    "JointFlow",
    "LangevinTrajectory",
    "LogDensityFn",
    "RelaxedRun",
    "TargetDensity",
    "autograd_log_density",
    "langevin_dynamics",
    "minimise",
    "relax_and_run",
    "sample_with_energies",
]

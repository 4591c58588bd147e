"""bgflow_se3: SE(3) x S_n equivariant Boltzmann generators for OpenMM systems, and unbiased free energies."""

from .energy import DoubleWellEnergy, Energy, LennardJonesEnergy, OpenMMEnergy, TorchForceField, regularize_energy
from .errors import (
    BgflowError,
    ConvergenceError,
    EmptyStateError,
    EnergyEvaluationError,
    LowOverlapWarning,
    NonFiniteInputError,
    UnsupportedForceError,
    UnsupportedSystemError,
    WorkerError,
)
from .flow import AugmentedCouplingFlow, FlowSample
from .reweight import (
    FreeEnergy,
    TargetSamples,
    effective_sample_size,
    free_energy_difference,
    free_energy_surface,
    log_importance_weights,
    log_partition_ratio,
)
from .train import fit_fab, fit_kl, fit_ml

__version__ = "0.1.0"

__all__ = [
    "AugmentedCouplingFlow",
    "FlowSample",
    "BgflowError",
    "ConvergenceError",
    "DoubleWellEnergy",
    "EmptyStateError",
    "Energy",
    "EnergyEvaluationError",
    "FreeEnergy",
    "LennardJonesEnergy",
    "LowOverlapWarning",
    "NonFiniteInputError",
    "OpenMMEnergy",
    "TorchForceField",
    "TargetSamples",
    "UnsupportedForceError",
    "UnsupportedSystemError",
    "WorkerError",
    "fit_fab",
    "fit_kl",
    "fit_ml",
    "__version__",
    "regularize_energy",
    "effective_sample_size",
    "free_energy_difference",
    "free_energy_surface",
    "log_importance_weights",
    "log_partition_ratio",
]

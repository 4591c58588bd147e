"""bgflow_se3: SE(3) x S_n equivariant Boltzmann generators for OpenMM systems, and unbiased free energies."""

from .energy import DoubleWellEnergy, Energy, LennardJonesEnergy
from .errors import (
    BgflowError,
    ConvergenceError,
    EnergyEvaluationError,
    LowOverlapWarning,
    NonFiniteInputError,
    UnsupportedForceError,
    UnsupportedSystemError,
    WorkerError,
)
from .flow import AugmentedCouplingFlow, FlowSample
from .train import fit_fab, fit_kl, fit_ml

__version__ = "0.1.0"

__all__ = [
    "AugmentedCouplingFlow",
    "FlowSample",
    "BgflowError",
    "ConvergenceError",
    "DoubleWellEnergy",
    "Energy",
    "EnergyEvaluationError",
    "LennardJonesEnergy",
    "LowOverlapWarning",
    "NonFiniteInputError",
    "UnsupportedForceError",
    "UnsupportedSystemError",
    "WorkerError",
    "fit_fab",
    "fit_kl",
    "fit_ml",
    "__version__",
]

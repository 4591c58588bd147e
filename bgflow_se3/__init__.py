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
    "__version__",
]

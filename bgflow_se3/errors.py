"""Exceptions and warnings raised by bgflow_se3; one base class, specific subclasses."""

__all__ = [
    "BgflowError",
    "ConvergenceError",
    "EmptyStateError",
    "EnergyEvaluationError",
    "InsufficientMemoryError",
    "LowOverlapWarning",
    "NonFiniteInputError",
    "UnsupportedForceError",
    "UnsupportedSystemError",
    "WorkerError",
]


class BgflowError(Exception):
    """Base class of every error raised on purpose by bgflow_se3."""


class NonFiniteInputError(BgflowError, ValueError):
    """Coordinates (or log-densities) hold NaN or infinity where a finite value is required."""


class UnsupportedSystemError(BgflowError, ValueError):
    """An openmm.System has a feature we do not model (periodic box, constraints, virtual sites, cutoffs)."""


class UnsupportedForceError(UnsupportedSystemError, NotImplementedError):
    """An openmm.Force has no implementation on the requested path; the message names the force."""


class EnergyEvaluationError(BgflowError, RuntimeError):
    """An energy evaluation failed (OpenMM raised, or returned a non-finite value) and the caller asked to raise."""


class WorkerError(BgflowError, RuntimeError):
    """A worker process died or timed out more often than the retry policy allows."""


class InsufficientMemoryError(BgflowError, MemoryError):
    """A call would need more memory than the device has free; raised before it allocates, naming the size."""


class ConvergenceError(BgflowError, RuntimeError):
    """An estimator (e.g. pymbar) did not converge or returned a result that cannot be trusted."""


class LowOverlapWarning(UserWarning):
    """Few effective samples or poor overlap between states: the estimate may be biased or its error too small."""


class EmptyStateError(BgflowError, ValueError):
    """A state (a boolean mask over samples) holds no sample with nonzero weight, so its free energy is undefined."""

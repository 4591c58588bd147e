"""Exceptions and warnings raised by bgflow_se3; one base class, specific subclasses."""

__all__ = [
    "BgflowError",
    "CheckpointError",
    "ConvergenceError",
    "EmptyStateError",
    "EnergyEvaluationError",
    "InputFileError",
    "InputMismatchError",
    "InsufficientMemoryError",
    "LowOverlapWarning",
    "NonFiniteInputError",
    "OutputWriteError",
    "RunFolderError",
    "TrainingInterrupted",
    "UnreachedStateError",
    "UnsupportedForceError",
    "UnsupportedMoleculeError",
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


class UnsupportedMoleculeError(UnsupportedSystemError):
    """A molecule's bond graph has a feature a flow does not model (e.g. a ring for the Z-matrix of
    ``InternalCoordinateFlow``); the message names the atoms and what to use instead."""


class InputFileError(BgflowError, ValueError):
    """An input file (a System's XML, a PDB) cannot be read or holds the wrong thing; the message names the file."""


class InputMismatchError(BgflowError, ValueError):
    """Inputs that must describe the same molecule do not (e.g. a PDB's atoms and a System's particles: their
    number, elements or masses); the message names the first atom that differs and both values."""


class EnergyEvaluationError(BgflowError, RuntimeError):
    """An energy evaluation failed (OpenMM raised, or returned a non-finite value) and the caller asked to raise."""


class WorkerError(BgflowError, RuntimeError):
    """A worker process died or timed out more often than the retry policy allows."""


class InsufficientMemoryError(BgflowError, MemoryError):
    """A call would need more memory than the device has free; raised before it allocates, naming the size and the
    limit that binds (e.g. a cgroup memory limit, ``ulimit -v``, or the system's available memory)."""


class ConvergenceError(BgflowError, RuntimeError):
    """An estimator (e.g. pymbar) did not converge or returned a result that cannot be trusted."""


class LowOverlapWarning(UserWarning):
    """Few effective samples or poor overlap between states: the estimate may be biased or its error too small."""


class EmptyStateError(BgflowError, ValueError):
    """A state (a boolean mask over samples) holds no sample with nonzero weight, so its free energy is undefined."""


class UnreachedStateError(EmptyStateError):
    """A state the user named holds no frame of the training data (no replica reached it), so no flow trained on
    them could estimate its free energy; raised before training, naming the state."""


class RunFolderError(BgflowError, ValueError):
    """A workflow's output folder holds another run (other inputs or settings), or ``--resume`` finds nothing to
    continue; the message names the folder and what differs."""


class CheckpointError(BgflowError, ValueError):
    """A training checkpoint cannot be resumed: unreadable (truncated, corrupt, its checksum does not match) or
    written by another setup (flow class or size, objective, training settings); the message names the file and the
    mismatch."""


class OutputWriteError(BgflowError, OSError):
    """The training output cannot be written (folder not writable, not a folder, disk full or too full for the run's
    checkpoints); ``errno`` is the operating system's, and the message names the file and what on disk is still
    intact."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at SIGINT or SIGTERM after its last complete iteration, with the checkpoint written.

    A ``KeyboardInterrupt`` (not a ``BgflowError``) on purpose: ``except Exception`` does not swallow a request to
    stop. signum: the signal; iteration: iterations completed; checkpoint_path: the checkpoint written (None without
    an output folder); result: the ``TrainResult`` so far; exit_code: 128 + signum, the shell's convention.
    ``Trainer.run(resume=True)`` continues from the checkpoint.
    """

    def __init__(
        self, message: str, signum: int, iteration: int, checkpoint_path: object = None, result: object = None
    ) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.iteration = int(iteration)
        self.checkpoint_path = checkpoint_path
        self.result = result

    @property
    def exit_code(self) -> int:
        """The exit status a program stopped by this signal reports: 128 + signum (130 for SIGINT, 143 SIGTERM)."""
        return 128 + self.signum

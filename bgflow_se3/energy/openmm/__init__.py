"""OpenMMEnergy: an openmm.System evaluated by OpenMM Contexts, in-process or in a pool of worker processes.

``energy`` (OpenMMEnergy, check_system) <- ``pool`` (WorkerPool: processes, chunks, timeouts, restarts) <- ``worker``
(one Context per process; run as a file by the pool, so it imports nothing from this package).
"""

from .energy import OpenMMEnergy, check_system

__all__ = ["OpenMMEnergy", "check_system"]

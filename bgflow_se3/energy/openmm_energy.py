"""Old import path, kept for users: OpenMMEnergy now lives in ``bgflow_se3.energy.openmm.energy``."""

from .openmm.energy import OpenMMEnergy, check_system

__all__ = ["OpenMMEnergy", "check_system"]

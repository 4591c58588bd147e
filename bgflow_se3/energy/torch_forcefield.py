"""Old import path, kept for users: TorchForceField now lives in ``bgflow_se3.energy.torchff`` (forcefield, standard,
registry, base)."""

from .torchff.base import ForceTerm
from .torchff.forcefield import TorchForceField
from .torchff.registry import SUPPORTED_FORCES, compile_force
from .torchff.standard import GBSAOBCTerm, HarmonicAngleTerm, HarmonicBondTerm, NonbondedTerm, PeriodicTorsionTerm

__all__ = [
    "SUPPORTED_FORCES",
    "ForceTerm",
    "GBSAOBCTerm",
    "HarmonicAngleTerm",
    "HarmonicBondTerm",
    "NonbondedTerm",
    "PeriodicTorsionTerm",
    "TorchForceField",
    "compile_force",
]

"""Energy targets: batched reduced energies u(x) = E(x)/kT with forces, from OpenMM systems or pure torch."""

from .backend import energy_for_device
from .base import MOLAR_GAS_CONSTANT, Energy, kT_in_kJ_per_mol
from .openmm import OpenMMEnergy, check_system
from .particles import DoubleWellEnergy, LennardJonesEnergy, pair_distances
from .regularize import regularize_energy
from .restricted import RestrictedEnergy
from .torchff import TorchForceField

__all__ = [
    "MOLAR_GAS_CONSTANT",
    "DoubleWellEnergy",
    "Energy",
    "LennardJonesEnergy",
    "OpenMMEnergy",
    "RestrictedEnergy",
    "check_system",
    "energy_for_device",
    "TorchForceField",
    "kT_in_kJ_per_mol",
    "pair_distances",
    "regularize_energy",
]

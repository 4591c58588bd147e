"""OpenMM Reference-platform energies and forces that the energy tests compare against."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import openmm


def one_group_per_force(system):
    """A copy of ``system`` whose force k sits in force group k (so a mismatch names the force)."""
    system = copy.deepcopy(system)
    for k, force in enumerate(system.getForces()):
        force.setForceGroup(k)
    return system


def _context(system, global_parameters: Mapping[str, float] | None = None):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    for name, value in (global_parameters or {}).items():
        context.setParameter(name, value)
    return context


def openmm_energies_and_forces(
    system, positions: np.ndarray, global_parameters: Mapping[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Energies (kJ/mol, (n,)) and forces (kJ/mol/nm, (n, atoms, 3)) of positions (nm, (n, atoms, 3))."""
    context = _context(system, global_parameters)
    energies, forces = np.empty(len(positions)), np.empty(np.shape(positions))
    for s, pos in enumerate(positions):
        context.setPositions(pos)
        state = context.getState(getEnergy=True, getForces=True)
        energies[s] = state.getPotentialEnergy()._value
        forces[s] = state.getForces(asNumpy=True)._value
    return energies, forces


def openmm_by_group(system, positions: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Energies (kJ/mol, (n,)) and forces (kJ/mol/nm, (n, atoms, 3)) per force group in use, {group: (e, f)}."""
    context = _context(system)
    groups = sorted({f.getForceGroup() for f in system.getForces()})
    out = {g: (np.empty(len(positions)), np.empty(np.shape(positions))) for g in groups}
    for s, pos in enumerate(positions):
        context.setPositions(pos)
        for g in groups:
            state = context.getState(getEnergy=True, getForces=True, groups={g})
            out[g][0][s] = state.getPotentialEnergy()._value
            out[g][1][s] = state.getForces(asNumpy=True)._value
    return out

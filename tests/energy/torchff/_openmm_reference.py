"""OpenMM Reference-platform energies and forces that the energy tests compare against."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import openmm
import torch

#: relative agreement with OpenMM asked of every term: energy per configuration, force as the per-configuration norm
ENERGY_RTOL = 1e-6
FORCE_RTOL = 1e-5


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


def assert_matches_openmm(
    energy: torch.Tensor, grad: torch.Tensor, e_ref: np.ndarray, f_ref: np.ndarray, name: str = ""
) -> None:
    """Our energies (n,) and their gradients (n, atoms, 3) against OpenMM's energies (n,) and forces: relative
    energy error <= ENERGY_RTOL and relative force-norm error <= FORCE_RTOL in every configuration."""
    n = len(e_ref)
    e_err = np.abs(energy.detach().numpy() - e_ref) / np.maximum(np.abs(e_ref), 1e-8)
    f_err = np.linalg.norm((-grad.numpy() - f_ref).reshape(n, -1), axis=1) / np.maximum(
        np.linalg.norm(f_ref.reshape(n, -1), axis=1), 1e-8
    )
    prefix = f"{name}: " if name else ""
    assert e_err.max() <= ENERGY_RTOL, f"{prefix}energy relative error {e_err.max():.2e} at {e_err.argmax()}"
    assert f_err.max() <= FORCE_RTOL, f"{prefix}force relative error {f_err.max():.2e} at {f_err.argmax()}"


def assert_groups_match_openmm(ff, system, positions: np.ndarray, reference=None) -> None:
    """Every force group of ``ff`` (a TorchForceField of ``system``) against OpenMM's (``openmm_by_group``, computed
    here unless given), per ``assert_matches_openmm``; a mismatch names the force."""
    reference = openmm_by_group(system, positions) if reference is None else reference
    x = torch.tensor(positions, dtype=torch.float64, requires_grad=True)
    for k, force in enumerate(system.getForces()):
        if type(force).__name__ == "CMMotionRemover":
            continue
        g = force.getForceGroup()
        energy = ff.potential_energy(x, groups={g})
        (grad,) = torch.autograd.grad(energy.sum(), x)
        assert_matches_openmm(energy, grad, *reference[g], name=f"force {k} ({type(force).__name__})")

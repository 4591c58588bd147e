"""Langevin dynamics of an openmm.System: hydrogen mass repartitioning and a single-threaded CPU context."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

__all__ = ["heavy_hydrogen_masses", "langevin_context", "reduced_energies", "repartition_hydrogen_mass"]


def heavy_hydrogen_masses(system: Any, topology: Any, hydrogen_mass_amu: float = 3.0) -> np.ndarray:
    """The particle masses (amu, float64, (n_atoms,)) of ``system`` with every hydrogen (by the topology's
    elements) raised to ``hydrogen_mass_amu``, for the batched torch Langevin runs (``sampling.relax_and_run``).

    Unlike ``repartition_hydrogen_mass`` no mass is taken from the bonded atom: masses do not enter the
    configurational distribution, and these runs only sample configurations.
    """
    import openmm.unit as unit

    masses = np.array(
        [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())],
        dtype=np.float64,
    )
    for atom in topology.atoms():
        if atom.element is not None and atom.element.atomic_number == 1:
            masses[atom.index] = max(masses[atom.index], hydrogen_mass_amu)
    return masses


def repartition_hydrogen_mass(system: Any, topology: Any, hydrogen_mass_amu: float = 3.0) -> Any:
    """A copy of ``system`` whose hydrogens weigh ``hydrogen_mass_amu``, the mass taken from their bonded atom.

    Masses do not enter the configurational Boltzmann distribution ``exp(-E(x)/kT)``, so repartitioning changes
    no equilibrium average over positions (phi profiles, free energies); it slows the fastest (X-H) vibrations so
    that larger time steps are stable without constraints. Total mass is conserved.
    """
    import openmm.app as app
    import openmm.unit as unit

    system = copy.deepcopy(system)
    for bond in topology.bonds():
        a, b = bond[0], bond[1]
        if a.element == app.element.hydrogen and b.element != app.element.hydrogen:
            hydrogen, heavy = a, b
        elif b.element == app.element.hydrogen and a.element != app.element.hydrogen:
            hydrogen, heavy = b, a
        else:
            continue
        m_h = system.getParticleMass(hydrogen.index).value_in_unit(unit.dalton)
        m_x = system.getParticleMass(heavy.index).value_in_unit(unit.dalton)
        delta = hydrogen_mass_amu - m_h
        if m_x - delta < 1.0:
            raise ValueError(
                f"repartitioning leaves atom {heavy.index} ({heavy.name}) with {m_x - delta:.2f} amu; "
                "use a smaller hydrogen mass"
            )
        system.setParticleMass(hydrogen.index, hydrogen_mass_amu * unit.dalton)
        system.setParticleMass(heavy.index, (m_x - delta) * unit.dalton)
    return system


def langevin_context(
    system: Any,
    positions_nm: np.ndarray,
    *,
    temperature: float = 300.0,
    timestep_fs: float = 2.0,
    friction_per_ps: float = 1.0,
    seed: int = 0,
    platform: str = "CPU",
    threads: int = 1,
) -> Any:
    """An ``openmm.Context`` with a ``LangevinMiddleIntegrator``, positions set, velocities drawn at temperature.

    positions_nm: shape (n_atoms, 3), nm. temperature in kelvin. ``threads`` applies to the CPU platform.
    """
    import openmm
    import openmm.unit as unit

    integrator = openmm.LangevinMiddleIntegrator(
        temperature * unit.kelvin, friction_per_ps / unit.picosecond, timestep_fs * unit.femtosecond
    )
    integrator.setRandomNumberSeed(int(seed))
    properties = {"Threads": str(threads)} if platform == "CPU" else {}
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform), properties)
    context.setPositions(np.asarray(positions_nm, dtype=np.float64) * unit.nanometer)
    context.setVelocitiesToTemperature(temperature * unit.kelvin, int(seed) + 1)
    return context


def reduced_energies(system: Any, x_nm: Any, temperature: float = 300.0, platform: str = "Reference") -> np.ndarray:
    """Reduced energies ``u = E / kT`` of a batch of configurations, through :class:`OpenMMEnergy`.

    x_nm: positions, shape (batch, n_atoms, 3), nm (numpy or torch). Returns float64 numpy, shape (batch,); a
    configuration whose energy is not finite (or that OpenMM refuses) gets ``+inf``, i.e. weight 0 when
    reweighting. A convenience for analysis scripts; training uses the ``Energy`` classes directly.
    """
    import torch

    from ..energy import OpenMMEnergy

    if hasattr(x_nm, "detach"):
        x_nm = x_nm.detach().cpu().numpy()
    x = torch.as_tensor(np.asarray(x_nm, dtype=np.float64))
    energy = OpenMMEnergy(system, temperature, platform=platform)
    try:
        u, _ = energy.energy_and_force(x)
    finally:
        energy.close()
    return u.numpy()

"""The Lennard-Jones cluster benchmark (LJ13, LJ55) as an openmm.System, equal to ``LennardJonesEnergy``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["LennardJonesSystem", "lennard_jones_system"]


@dataclass(frozen=True)
class LennardJonesSystem:
    """An LJ cluster for OpenMM: ``OpenMMEnergy(lj.system, lj.temperature)`` equals ``LennardJonesEnergy``.

    system: openmm.System with ``n_particles`` particles (mass 1 amu), no box, no constraints.
    temperature: kelvin, chosen so that kT = tau kJ/mol (see ``lennard_jones_system``).
    """

    system: Any
    temperature: float
    n_particles: int


def lennard_jones_system(
    n_particles: int = 13,
    eps: float = 1.0,
    rm: float = 1.0,
    oscillator_scale: float = 1.0,
    tau: float = 1.0,
    pair_sum: str = "ordered",
) -> LennardJonesSystem:
    """Build the benchmark LJ cluster (the convention of ``LennardJonesEnergy``) as an openmm.System.

    E(x) = c * eps * sum over ordered pairs i != j of ((rm/d)^12 - 2 (rm/d)^6) + 0.5 * k * sum_i |x_i - x_com|^2,
    with k = ``oscillator_scale`` and c = 1 (``pair_sum="ordered"``) or 1/2 (``"unique"``), as in
    ``LennardJonesEnergy``. The pair sum is a CustomNonbondedForce over all unique pairs (no cutoff, no
    exclusions) with a factor 2 for the ordered-pair sum; the restraint is a
    CustomCentroidBondForce between each particle and the unweighted centroid of all particles (x_com is the
    plain mean, not mass-weighted).

    Units trick: OpenMM reads lengths as nm and energies as kJ/mol, so the reduced units become eps = 1 kJ/mol and
    r_m = 1 nm; the returned temperature is ``tau / R`` kelvin (R in kJ/(mol K), about 120.27 K for tau = 1), so
    that kT = tau kJ/mol and E/kT is exactly the benchmark's reduced energy u = E/tau.
    """
    import openmm
    import openmm.unit as unit

    if n_particles < 2:
        raise ValueError(f"an LJ cluster needs at least 2 particles, got {n_particles}")
    if not (eps > 0 and rm > 0 and tau > 0 and oscillator_scale >= 0):
        raise ValueError("need eps, rm, tau > 0 and oscillator_scale >= 0")
    if pair_sum not in ("ordered", "unique"):
        raise ValueError(f"pair_sum must be 'ordered' or 'unique', got {pair_sum!r}")
    system = openmm.System()
    for _ in range(n_particles):
        system.addParticle(1.0)

    factor = 2 if pair_sum == "ordered" else 1  # x2: unique pairs -> ordered pairs
    pairs = openmm.CustomNonbondedForce(f"{factor}*eps*((rm/r)^12 - 2*(rm/r)^6)")
    pairs.addGlobalParameter("eps", eps)
    pairs.addGlobalParameter("rm", rm)
    pairs.setNonbondedMethod(openmm.CustomNonbondedForce.NoCutoff)
    for _ in range(n_particles):
        pairs.addParticle([])
    system.addForce(pairs)

    restraint = openmm.CustomCentroidBondForce(2, "0.5*k*distance(g1, g2)^2")
    restraint.addGlobalParameter("k", oscillator_scale)
    everyone = restraint.addGroup(list(range(n_particles)), [1.0] * n_particles)
    for i in range(n_particles):
        single = restraint.addGroup([i], [1.0])
        restraint.addBond([single, everyone], [])
    restraint.setUsesPeriodicBoundaryConditions(False)
    system.addForce(restraint)
    # R in kJ/(mol K) as OpenMM defines it: the same CODATA 2018 value (bit for bit) as energy.MOLAR_GAS_CONSTANT,
    # taken from OpenMM so that the catalogue imports nothing of the energies
    molar_gas_constant = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
    return LennardJonesSystem(system=system, temperature=tau / molar_gas_constant, n_particles=n_particles)

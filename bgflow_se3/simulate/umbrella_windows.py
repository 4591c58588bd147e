"""One umbrella window along a dihedral (OpenMM): its settings, bias, System, Langevin context and recording.

A window adds a ``CustomTorsionForce`` ``k/2 * dphi^2`` (dphi wrapped into [-pi, pi)) to the System and runs
Langevin dynamics, recording phi and psi. Shared by the two ways of running the windows, so that they import
one way: ``umbrella_sampling`` (independent windows, cached on disk) and ``replica_exchange`` (the windows swap
configurations) both import this module, and ``umbrella_sampling`` dispatches to ``replica_exchange``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "UmbrellaConfig",
    "add_torsion_bias",
    "biased_system",
    "phi_atom_indices",
    "psi_atom_indices",
    "record_angles",
    "window_centers",
    "window_context",
    "window_seed",
]


@dataclass(frozen=True)
class UmbrellaConfig:
    """Settings of an umbrella-sampling run (all windows share them); changing any needs a fresh cache.

    solvent: "implicit" or "vacuum" (``load_aldp``). n_windows: centres evenly on [-pi, pi).
    force_constant: bias stiffness, kJ/mol/rad^2. temperature: K. timestep_fs, friction_per_ps: Langevin.
    hydrogen_mass_amu: hydrogen mass repartitioning (None: natural masses; it leaves the configurational
    distribution unchanged and allows 2 fs without constraints). save_every: steps between stored phi values.
    start_at_center: start every window from the shipped structure with phi rotated to the window's centre
    (bond lengths and angles kept), instead of letting the bias drag phi there (a violent start that leaves
    slow modes to relax inside the production). equilibration_ps: biased dynamics before the first stored value.
    exchange_every_ps: None runs the windows independently; a time (ps) runs them as Hamiltonian replica exchange
    (``replica_exchange.run_replica_exchange``): every that many ps, neighbouring windows try to swap their
    configurations (Metropolis on the bias energies), so slow coordinates the bias does not touch (psi) relax in
    the windows where they move fast and travel to the others.
    platform: OpenMM platform ("Reference" is the fastest on one core for 22 atoms). seed: the run's random
    seed; every window (and every restart of it) draws its OpenMM seeds from ``window_seed(seed, k, ...)``, so runs
    with different seeds share no random stream.
    """

    solvent: str = "implicit"
    n_windows: int = 36
    force_constant: float = 200.0
    temperature: float = 300.0
    timestep_fs: float = 2.0
    friction_per_ps: float = 1.0
    hydrogen_mass_amu: float | None = 3.0
    save_every: int = 250
    start_at_center: bool = True
    equilibration_ps: float = 50.0
    exchange_every_ps: float | None = None
    platform: str = "Reference"
    seed: int = 0

    @property
    def kappa(self) -> float:
        """Force constant in kT / rad^2."""
        from ..energy import kT_in_kJ_per_mol

        return self.force_constant / kT_in_kJ_per_mol(self.temperature)

    @property
    def steps_per_ns(self) -> int:
        return int(round(1e6 / self.timestep_fs))


def window_centers(n_windows: int) -> np.ndarray:
    """Window centres evenly spaced on [-pi, pi), radians, shape (n_windows,)."""
    return -np.pi + 2 * np.pi * np.arange(n_windows) / n_windows


def window_seed(seed: int, window: int, restart: int = 0) -> int:
    """OpenMM random seed (in [1, 2^31 - 1)) of ``window`` of the run ``seed``, for its ``restart``-th (re)start.

    Hashed through ``numpy.random.SeedSequence``: distinct (seed, window, restart) give unrelated seeds, so the
    repeats ``seed, seed + 1, ...`` of a run are independent (with ``seed + window`` window k + 1 of one repeat
    would replay the random stream of window k of the next), and 0, which OpenMM reads as "pick one at random",
    never occurs.
    """
    state = np.random.SeedSequence([int(seed) % 2**32, int(window), int(restart)]).generate_state(1)[0]
    return 1 + int(state) % (2**31 - 2)


def add_torsion_bias(system, atoms: Sequence[int], force_constant: float, center: float) -> int:
    """Add ``force_constant/2 * dphi^2`` on the dihedral ``atoms`` (kJ/mol/rad^2, radians); returns the force index.

    The centre is the global parameter ``phi0`` (change it with ``context.setParameter("phi0", value)``).
    """
    import openmm

    force = openmm.CustomTorsionForce(
        "0.5*k_bias*dphi^2; dphi = d - two_pi*floor((d + 0.5*two_pi)/two_pi); d = theta - phi0;"
        "two_pi = 6.283185307179586"
    )
    force.addGlobalParameter("phi0", float(center))
    force.addGlobalParameter("k_bias", float(force_constant))
    force.addTorsion(*[int(a) for a in atoms], [])
    return system.addForce(force)


def phi_atom_indices(topology) -> list[int]:
    """Atom indices (4,) of the first backbone phi, found by mdtraj from the topology."""
    return _backbone_dihedral(topology, "phi")


def psi_atom_indices(topology) -> list[int]:
    """Atom indices (4,) of the first backbone psi, found by mdtraj from the topology."""
    return _backbone_dihedral(topology, "psi")


def _backbone_dihedral(topology, name: str) -> list[int]:
    import mdtraj

    top = mdtraj.Topology.from_openmm(topology)
    compute = {"phi": mdtraj.compute_phi, "psi": mdtraj.compute_psi}[name]
    indices, _ = compute(mdtraj.Trajectory(np.zeros((1, top.n_atoms, 3)), top), periodic=False)
    if len(indices) == 0:
        raise ValueError(f"the topology has no backbone {name} dihedral")
    return [int(a) for a in indices[0]]


def _start_at(positions_nm: np.ndarray, topology, atoms: Sequence[int], value: float) -> np.ndarray:
    """positions (n, 3) with the dihedral ``atoms`` rotated to ``value`` radians (the smaller side moves)."""
    import torch

    from ..geometry import set_torsion

    bonds = [(a.index, b.index) for a, b in topology.bonds()]
    x = torch.as_tensor(np.asarray(positions_nm, dtype=np.float64))[None]
    return set_torsion(x, bonds, atoms, value)[0].numpy()


def biased_system(config: UmbrellaConfig, center: float) -> tuple:
    """The window System of ``config`` with its bias at ``center`` (radians; the global parameter ``phi0``).

    Returns (AlanineDipeptide, openmm.System with repartitioned masses and the phi bias, phi atoms (4,), psi
    atoms (4,)).
    """
    from ..systems.aldp import load_aldp
    from .openmm_langevin import repartition_hydrogen_mass

    aldp = load_aldp(config.solvent)
    system = copy.deepcopy(aldp.system)
    if config.hydrogen_mass_amu is not None:
        system = repartition_hydrogen_mass(system, aldp.topology, config.hydrogen_mass_amu)
    atoms = phi_atom_indices(aldp.topology)
    add_torsion_bias(system, atoms, config.force_constant, center)
    return aldp, system, atoms, psi_atom_indices(aldp.topology)


def window_context(
    config: UmbrellaConfig,
    aldp,
    system,
    phi_atoms: Sequence[int],
    center: float,
    seed: int,
    positions_nm: np.ndarray | None = None,
    velocities: np.ndarray | None = None,
):
    """A Langevin ``openmm.Context`` of a window System (``biased_system``), ready for production.

    Fresh (``positions_nm`` None): the shipped structure (phi rotated to ``center`` with ``config.start_at_center``),
    minimised, velocities drawn with ``seed``, ``config.equilibration_ps`` of biased dynamics. Resumed: the stored
    positions (nm, (n_atoms, 3)) and velocities (nm/ps). ``seed`` also seeds the integrator.
    """
    import openmm
    import openmm.unit as unit

    from .openmm_langevin import langevin_context

    fresh = positions_nm is None
    if fresh:
        positions_nm = aldp.positions_nm
        if config.start_at_center:
            positions_nm = _start_at(positions_nm, aldp.topology, phi_atoms, center)
    context = langevin_context(
        system,
        positions_nm,
        temperature=config.temperature,
        timestep_fs=config.timestep_fs,
        friction_per_ps=config.friction_per_ps,
        seed=seed,
        platform=config.platform,
    )
    if fresh:
        openmm.LocalEnergyMinimizer.minimize(context, maxIterations=200)
        context.setVelocitiesToTemperature(config.temperature * unit.kelvin, seed)
        context.getIntegrator().step(int(round(config.equilibration_ps * 1000 / config.timestep_fs)))
    else:
        context.setVelocities(velocities * unit.nanometer / unit.picosecond)
    return context


def record_angles(context, n_saves: int, save_every: int, phi_atoms, psi_atoms) -> np.ndarray:
    """Run ``n_saves`` x ``save_every`` steps, recording (phi, psi) in radians after each: shape (n_saves, 2)."""
    import openmm.unit as unit

    phi_index, psi_index = np.asarray(phi_atoms), np.asarray(psi_atoms)
    integrator = context.getIntegrator()
    angles = np.empty((n_saves, 2))
    for s in range(n_saves):
        integrator.step(save_every)
        x = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        angles[s] = _dihedral(x[phi_index]), _dihedral(x[psi_index])
    return angles


def _dihedral(x: np.ndarray) -> float:
    """Dihedral of four positions (4, 3), radians (IUPAC sign): ``geometry.openmm_dihedral`` in float64."""
    import torch

    from ..geometry import openmm_dihedral

    return float(openmm_dihedral(*torch.as_tensor(np.asarray(x, dtype=np.float64)).unbind(0)))

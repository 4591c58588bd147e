"""One umbrella window along a dihedral (OpenMM): its settings, bias, System, Langevin context and recording.

A window adds a ``CustomTorsionForce`` ``k/2 * dphi^2`` (dphi wrapped into [-pi, pi)) to the System and runs
Langevin dynamics, recording phi and psi. The molecule is the shipped alanine dipeptide (``solvent``) or any
molecule given as a serialized System and a PDB (``UmbrellaConfig.for_files``), biased along any torsion; the
series keep the names "phi" (the biased torsion) and "psi" (a second recorded torsion) whatever the molecule.

Shared by the two ways of running the windows, so that they import one way: ``umbrella_sampling`` (independent
windows, cached on disk) and ``replica_exchange`` (the windows swap configurations) both import this module, and
``umbrella_sampling`` dispatches to ``replica_exchange``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "UmbrellaConfig",
    "add_torsion_bias",
    "biased_system",
    "inputs_fingerprint",
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
    system_xml, pdb: paths of a serialized System and the molecule's PDB, instead of the shipped alanine dipeptide
    (``solvent`` is then ignored); inputs_sha256: their fingerprint (``for_files`` fills it; a changed file is
    refused). torsion: the biased dihedral's four 0-based atoms (default: the first backbone phi); record_torsion:
    the second recorded dihedral (default: the first backbone psi, else the biased torsion).
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
    system_xml: str | None = None
    pdb: str | None = None
    inputs_sha256: str | None = None
    torsion: tuple[int, ...] | None = None
    record_torsion: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if (self.system_xml is None) != (self.pdb is None):
            raise ValueError("give both system_xml and pdb (a molecule of your own), or neither (alanine dipeptide)")
        for name in ("torsion", "record_torsion"):
            atoms = getattr(self, name)
            if atoms is not None:  # JSON gives lists: keep tuples so that configs compare equal
                atoms = tuple(int(a) for a in atoms)
                if len(atoms) != 4 or len(set(atoms)) != 4 or min(atoms) < 0:
                    raise ValueError(f"{name} must be four distinct 0-based atom indices, got {atoms}")
                object.__setattr__(self, name, atoms)

    @classmethod
    def for_files(cls, system_xml: str | Path, pdb: str | Path, torsion: Sequence[int], **settings) -> UmbrellaConfig:
        """The settings of a run on your own molecule: the files' absolute paths and fingerprint, the biased
        ``torsion`` (four 0-based atoms) and ``settings`` (the other fields)."""
        system_xml, pdb = Path(system_xml).resolve(), Path(pdb).resolve()
        return cls(
            system_xml=str(system_xml),
            pdb=str(pdb),
            inputs_sha256=inputs_fingerprint(system_xml, pdb),
            torsion=tuple(torsion),
            **settings,
        )

    @property
    def kappa(self) -> float:
        """Force constant in kT / rad^2."""
        from ..energy import kT_in_kJ_per_mol

        return self.force_constant / kT_in_kJ_per_mol(self.temperature)

    @property
    def steps_per_ns(self) -> int:
        return int(round(1e6 / self.timestep_fs))


def inputs_fingerprint(system_xml: str | Path, pdb: str | Path) -> str:
    """SHA-256 of the System file's bytes followed by the PDB's: a cache made from other files is refused."""
    digest = hashlib.sha256()
    for path in (system_xml, pdb):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


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
    x = torch.tensor(np.array(positions_nm, dtype=np.float64))[None]
    return set_torsion(x, bonds, atoms, value)[0].numpy()


def _molecule(config: UmbrellaConfig):
    """The molecule of ``config``: the shipped alanine dipeptide, or its files (checked against the fingerprint)."""
    if config.system_xml is None:
        from ..systems.aldp import load_aldp

        return load_aldp(config.solvent)
    from ..workflow.inputs import load_molecule

    if config.inputs_sha256 is not None and inputs_fingerprint(config.system_xml, config.pdb) != config.inputs_sha256:
        raise ValueError(
            f"{config.system_xml} or {config.pdb} changed since this umbrella run started (fingerprint differs): "
            "use a fresh cache for the new files"
        )
    return load_molecule(config.system_xml, config.pdb)


def biased_system(config: UmbrellaConfig, center: float) -> tuple:
    """The window System of ``config`` with its bias at ``center`` (radians; the global parameter ``phi0``).

    Returns (the molecule: ``AlanineDipeptide`` or ``workflow.Molecule``, with ``.topology`` and
    ``.positions_nm``; openmm.System with repartitioned masses and the bias; biased torsion's atoms (4,);
    recorded torsion's atoms (4,)).
    """
    from .openmm_langevin import repartition_hydrogen_mass

    molecule = _molecule(config)
    system = copy.deepcopy(molecule.system)
    if config.hydrogen_mass_amu is not None:
        system = repartition_hydrogen_mass(system, molecule.topology, config.hydrogen_mass_amu)
    atoms = list(config.torsion) if config.torsion is not None else phi_atom_indices(molecule.topology)
    if config.record_torsion is not None:
        recorded = list(config.record_torsion)
    else:
        try:
            recorded = psi_atom_indices(molecule.topology)
        except ValueError:  # not a peptide: record the biased torsion twice
            recorded = list(atoms)
    n_atoms = system.getNumParticles()
    if max(atoms + recorded) >= n_atoms:
        raise ValueError(f"torsion atoms {atoms} / {recorded} out of range for a System of {n_atoms} particles")
    add_torsion_bias(system, atoms, config.force_constant, center)
    return molecule, system, atoms, recorded


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

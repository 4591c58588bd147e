"""The workflow's input checks: an OpenMM System and a PDB of the molecule, checked once, before anything runs.

``load_molecule(system_xml, pdb)`` reads both files and calls ``check_molecule(system, topology, positions_nm)``,
which refuses, with one clear error each (the problem and its remedy), what the workflow cannot use: a periodic
box, constraints, virtual sites or massless particles; a PDB whose atoms do not match the System's particles (count,
element masses) or whose positions are not finite; a bond graph that is disconnected or has rings (the Z-matrix of
``InternalCoordinateFlow``; its message is passed through). A force ``TorchForceField`` cannot compile is no error:
the molecule is evaluated through ``OpenMMEnergy`` instead, and ``Molecule.backend_reason`` says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    InputFileError,
    InputMismatchError,
    NonFiniteInputError,
    UnsupportedMoleculeError,
    UnsupportedSystemError,
)

__all__ = ["HYDROGEN_MASS_MAX", "Molecule", "check_molecule", "load_molecule"]

#: the largest hydrogen mass (Da) accepted: hydrogen mass repartitioning moves up to ~3 Da to each hydrogen (4 Da)
HYDROGEN_MASS_MAX = 4.5
#: masses (Da) closer than this to the PDB element's (after repartitioning) match (force fields round, e.g. 12.01)
MASS_TOLERANCE = 0.05


@dataclass(frozen=True)
class Molecule:
    """A checked molecule: what the workflow needs, and which energy backend evaluates it.

    system: the ``openmm.System`` (no box, constraints or virtual sites). topology: the PDB's
    ``openmm.app.Topology`` (its bonds form a tree). positions_nm: float64 (n_atoms, 3), finite.
    bonds: the topology's bonds as sorted index pairs. energy_backend: ``"TorchForceField"`` where every force
    compiles to torch, else ``"OpenMMEnergy"``; backend_reason: why (for OpenMMEnergy, the force it could not
    compile).
    """

    system: Any
    topology: Any
    positions_nm: np.ndarray
    bonds: tuple[tuple[int, int], ...]
    energy_backend: str
    backend_reason: str

    @property
    def n_atoms(self) -> int:
        """Number of atoms (= the System's particles = the PDB's atoms)."""
        return int(self.positions_nm.shape[0])


def load_molecule(system_xml: str | PathLike, pdb: str | PathLike) -> Molecule:
    """Read an ``openmm.System`` from ``system_xml`` (``XmlSerializer`` format) and the molecule's topology and
    positions from ``pdb``, and check them with ``check_molecule``.

    Raises ``InputFileError`` naming the file that is missing, unreadable or not what it should be, and whatever
    ``check_molecule`` raises.
    """
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    system_xml, pdb = Path(system_xml), Path(pdb)
    try:
        text = system_xml.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputFileError(f"cannot read the System file {str(system_xml)!r} ({e}); pass an existing file") from e
    try:
        system = openmm.XmlSerializer.deserialize(text)
    except Exception as e:  # OpenMM raises a plain Exception for XML it cannot parse
        why = str(e).strip() or type(e).__name__
        raise InputFileError(
            f"the System file {str(system_xml)!r} is not a serialized openmm.System ({why}); "
            "write it with openmm.XmlSerializer.serialize(system)"
        ) from e
    if not isinstance(system, openmm.System):
        raise InputFileError(
            f"the System file {str(system_xml)!r} holds a serialized {type(system).__name__}, not an openmm.System; "
            "write the System with openmm.XmlSerializer.serialize(system)"
        )
    if not pdb.is_file():
        raise InputFileError(f"cannot read the PDB file {str(pdb)!r} (no such file); pass an existing file")
    try:
        structure = app.PDBFile(str(pdb))
        positions = np.asarray(structure.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
    except Exception as e:  # PDBFile raises ValueError, IndexError, KeyError, ... on malformed records
        raise InputFileError(
            f"cannot parse the PDB file {str(pdb)!r} ({type(e).__name__}: {e}); pass a PDB file of the molecule"
        ) from e
    if structure.topology.getNumAtoms() == 0:
        raise InputFileError(f"the PDB file {str(pdb)!r} holds no atoms; pass a PDB file with the molecule's atoms")
    return check_molecule(system, structure.topology, positions)


def _atom_label(atom) -> str:
    """ "ALA2:CA (atom 8)": residue name and number, atom name and index, as error messages name atoms."""
    res = atom.residue
    number = getattr(res, "id", None) or res.index + 1
    return f"{res.name}{number}:{atom.name} (atom {atom.index})"


def _check_system(system) -> None:
    """Refuse what the flow cannot model: no particles, a periodic box, constraints, virtual sites, zero masses."""
    import openmm

    if not isinstance(system, openmm.System):
        raise TypeError(f"system must be an openmm.System, got {type(system).__name__}")
    n = system.getNumParticles()
    if n == 0:
        raise UnsupportedSystemError("the System has no particles; pass the System of the molecule")
    if system.usesPeriodicBoundaryConditions():
        periodic = [
            f"{i} ({type(f).__name__})" for i, f in enumerate(system.getForces()) if f.usesPeriodicBoundaryConditions()
        ]
        raise UnsupportedSystemError(
            f"the System uses a periodic box (forces {', '.join(periodic) or 'none; the box itself'}), but the "
            "workflow models one molecule in vacuum or implicit solvent: rebuild it with createSystem(..., "
            "nonbondedMethod=NoCutoff) and no explicit water"
        )
    if system.getNumConstraints() > 0:
        raise UnsupportedSystemError(
            f"the System has {_count(system.getNumConstraints(), 'distance constraint')}, but the flow moves every "
            "atom freely: rebuild it with createSystem(..., constraints=None, rigidWater=False)"
        )
    sites = [i for i in range(n) if system.isVirtualSite(i)]
    if sites:
        raise UnsupportedSystemError(
            f"the System has {_count(len(sites), 'virtual site')} (particles {', '.join(map(str, sites[:5]))}"
            f"{', ...' if len(sites) > 5 else ''}), which are not degrees of freedom: use a force field without "
            "virtual sites (e.g. no TIP4P water or extra points)"
        )
    massless = [i for i in range(n) if system.getParticleMass(i).value_in_unit(openmm.unit.dalton) <= 0]
    if massless:
        raise UnsupportedSystemError(
            f"the System has {_count(len(massless), 'particle')} of zero mass (particles "
            f"{', '.join(map(str, massless[:5]))}{', ...' if len(massless) > 5 else ''}), which cannot move in a "
            "simulation: give every atom its mass (or remove the dummy particles)"
        )


def _check_masses(system, atoms: list, bonds: list[tuple[int, int]]) -> None:
    """Each particle's mass against its PDB atom's element: hydrogens may weigh up to ``HYDROGEN_MASS_MAX`` (mass
    repartitioning), a heavy atom its element's mass less what its bonded hydrogens gained."""
    import openmm.unit as unit

    masses = [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(len(atoms))]
    elements = [None if a.element is None else a.element.mass.value_in_unit(unit.dalton) for a in atoms]
    is_h = [a.element is not None and a.element.atomic_number == 1 for a in atoms]
    gained = [0.0] * len(atoms)  # mass a heavy atom gave its bonded hydrogens
    for a, b in bonds:
        for h, heavy in ((a, b), (b, a)):
            if is_h[h] and not is_h[heavy]:
                gained[heavy] += masses[h] - elements[h]
    for i, atom in enumerate(atoms):
        if elements[i] is None:
            continue  # an atom without an element (a PDB with unknown names): nothing to compare
        if is_h[i]:
            ok = elements[i] - MASS_TOLERANCE <= masses[i] <= HYDROGEN_MASS_MAX
            expected = f"{elements[i]:.3f} Da, or up to {HYDROGEN_MASS_MAX} Da with hydrogen mass repartitioning"
        else:
            target = elements[i] - gained[i]
            ok = abs(masses[i] - target) <= MASS_TOLERANCE
            expected = f"{target:.3f} Da" + (
                f" ({elements[i]:.3f} less {gained[i]:.3f} moved to its hydrogens)" if gained[i] else ""
            )
        if not ok:
            raise InputMismatchError(
                f"the PDB does not match the System: {_atom_label(atom)} is {atom.element.symbol} in the PDB "
                f"(expected mass {expected}) but particle {i} of the System weighs {masses[i]:.3f} Da; check that the "
                "PDB lists the System's atoms in the same order"
            )


def _energy_backend(system) -> tuple[str, str]:
    """("TorchForceField", why) where every force compiles to torch, else ("OpenMMEnergy", the force that did not)."""
    from ..energy import TorchForceField
    from ..errors import UnsupportedForceError

    try:
        TorchForceField.from_system(system, 300.0)
    except (UnsupportedForceError, UnsupportedSystemError) as e:
        return "OpenMMEnergy", f"TorchForceField cannot compile this System ({e}); energies are evaluated by OpenMM"
    forces = sorted({type(f).__name__ for f in system.getForces()})
    return "TorchForceField", f"every force compiles to torch ({', '.join(forces) or 'none'})"


def check_molecule(system, topology, positions_nm) -> Molecule:
    """Check that ``system`` (an ``openmm.System``), ``topology`` (an ``openmm.app.Topology``, e.g. a PDB's) and
    ``positions_nm`` ((n_atoms, 3) in nm, or an openmm Quantity) describe one molecule the workflow can use, and
    return it as a ``Molecule`` with its energy backend.

    Raises, each message one sentence naming the problem and the remedy:
    ``UnsupportedSystemError``: no particles, a periodic box, constraints, virtual sites, massless particles;
    ``InputMismatchError``: atom count or shape of the positions differs from the System's particles, or an atom's
    mass does not match its PDB element (hydrogen mass repartitioning allowed);
    ``NonFiniteInputError``: NaN or infinite positions (naming the first atom);
    ``UnsupportedMoleculeError``: a bond graph with rings (the Z-matrix's message, passed through), or one that is
    disconnected or has fewer than 3 atoms.
    A force without a torch version is no error: the backend is then ``"OpenMMEnergy"`` and the reason names it.
    """
    from ..flow.internal_coordinates import atom_labels, zmatrix_from_bonds

    _check_system(system)
    n = system.getNumParticles()
    atoms = list(topology.atoms())
    if len(atoms) != n:
        raise InputMismatchError(
            f"the PDB does not match the System: it has {len(atoms)} atoms and the System {n} particles; pass the "
            "PDB of the molecule the System was built from"
        )
    if hasattr(positions_nm, "value_in_unit"):
        import openmm.unit as unit

        positions_nm = positions_nm.value_in_unit(unit.nanometer)
    positions = np.array(positions_nm, dtype=np.float64)
    if positions.shape != (n, 3):
        raise InputMismatchError(
            f"the positions have shape {positions.shape}, the System {n} particles; pass positions of shape ({n}, 3)"
        )
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if bad.size:
        raise NonFiniteInputError(
            f"{_count(bad.size, 'atom')} with non-finite positions (first: {_atom_label(atoms[bad[0]])}); pass a PDB "
            "with finite coordinates for every atom"
        )
    bonds = sorted({(min(a.index, b.index), max(a.index, b.index)) for a, b in topology.bonds()})
    _check_masses(system, atoms, bonds)
    try:
        zmatrix_from_bonds(n, bonds, labels=atom_labels(topology))
    except UnsupportedMoleculeError:
        raise  # rings: the Z-matrix's own message names them and what to use instead
    except ValueError as e:
        raise UnsupportedMoleculeError(
            f"the molecule's bonds cannot place every atom ({e}); give the PDB CONECT records for every bond of a "
            "non-standard residue (or one covalently bonded molecule per run)"
        ) from e
    backend, reason = _energy_backend(system)
    positions.setflags(write=False)
    return Molecule(
        system=system,
        topology=topology,
        positions_nm=positions,
        bonds=tuple(bonds),
        energy_backend=backend,
        backend_reason=reason,
    )


def _count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: "1 virtual site", "2 virtual sites"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"

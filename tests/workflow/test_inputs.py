"""The workflow's input checks (bgflow_se3.workflow.inputs): the shipped alanine dipeptide passes; each defect of a
System or PDB is refused with a message naming it, and a force without a torch version falls back to OpenMMEnergy."""

from __future__ import annotations

from importlib import resources

import numpy as np
import openmm
import openmm.app as app
import pytest

from bgflow_se3.errors import (
    InputFileError,
    InputMismatchError,
    NonFiniteInputError,
    UnsupportedMoleculeError,
    UnsupportedSystemError,
)
from bgflow_se3.systems import load_aldp
from bgflow_se3.workflow import Molecule, check_molecule, load_molecule

DATA = resources.files("bgflow_se3.systems") / "data" / "aldp"


@pytest.fixture
def aldp():
    """A fresh alanine dipeptide (implicit solvent): its System and topology may be modified by the test."""
    return load_aldp("implicit")


def _copy_topology(topology, bonds=None) -> app.Topology:
    """A copy of an openmm topology with ``bonds`` (index pairs; default: the original's)."""
    copy = app.Topology()
    atoms = []
    for chain in topology.chains():
        c = copy.addChain(chain.id)
        for residue in chain.residues():
            r = copy.addResidue(residue.name, c, residue.id)
            atoms += [copy.addAtom(a.name, a.element, r) for a in residue.atoms()]
    if bonds is None:
        bonds = [(a.index, b.index) for a, b in topology.bonds()]
    for a, b in bonds:
        copy.addBond(atoms[a], atoms[b])
    return copy


def test_shipped_aldp_passes_with_torch_backend(aldp):
    mol = check_molecule(aldp.system, aldp.topology, aldp.positions_nm)
    assert isinstance(mol, Molecule)
    assert mol.n_atoms == 22 and mol.positions_nm.shape == (22, 3) and mol.positions_nm.dtype == np.float64
    assert len(mol.bonds) == 21
    assert mol.energy_backend == "TorchForceField", mol.backend_reason
    np.testing.assert_array_equal(mol.positions_nm, aldp.positions_nm)
    # an openmm Quantity is accepted as well
    assert check_molecule(aldp.system, aldp.topology, aldp.positions).n_atoms == 22


def test_load_molecule_reads_the_shipped_files():
    with resources.as_file(DATA / "implicit.xml") as xml, resources.as_file(DATA / "aldp.pdb") as pdb:
        mol = load_molecule(xml, pdb)
    assert mol.n_atoms == 22 and mol.energy_backend == "TorchForceField"
    np.testing.assert_allclose(mol.positions_nm, load_aldp("implicit").positions_nm)


def test_periodic_box_is_refused(aldp):
    system = aldp.system
    for force in system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            force.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
            force.setCutoffDistance(1.0)
    system.setDefaultPeriodicBoxVectors(openmm.Vec3(3, 0, 0), openmm.Vec3(0, 3, 0), openmm.Vec3(0, 0, 3))
    with pytest.raises(UnsupportedSystemError, match=r"periodic box \(forces \d+ \(NonbondedForce\).*NoCutoff"):
        check_molecule(system, aldp.topology, aldp.positions_nm)


def test_constraints_are_refused_naming_how_many(aldp):
    aldp.system.addConstraint(0, 1, 0.109)
    aldp.system.addConstraint(1, 2, 0.109)
    with pytest.raises(UnsupportedSystemError, match=r"2 distance constraints.*constraints=None"):
        check_molecule(aldp.system, aldp.topology, aldp.positions_nm)


def test_virtual_site_is_refused_naming_the_particle(aldp):
    aldp.system.setVirtualSite(5, openmm.TwoParticleAverageSite(4, 6, 0.5, 0.5))
    with pytest.raises(UnsupportedSystemError, match=r"1 virtual site \(particles 5\)"):
        check_molecule(aldp.system, aldp.topology, aldp.positions_nm)


def test_massless_particle_is_refused(aldp):
    aldp.system.setParticleMass(3, 0.0)
    with pytest.raises(UnsupportedSystemError, match=r"zero mass \(particles 3\)"):
        check_molecule(aldp.system, aldp.topology, aldp.positions_nm)


def test_unsupported_force_falls_back_to_openmm_naming_it(aldp):
    aldp.system.addForce(openmm.RMSDForce(aldp.positions, [8, 14, 6]))
    mol = check_molecule(aldp.system, aldp.topology, aldp.positions_nm)
    assert mol.energy_backend == "OpenMMEnergy"
    assert "RMSDForce" in mol.backend_reason and "OpenMM" in mol.backend_reason


def test_pdb_with_an_atom_removed_is_refused(tmp_path):
    lines = (DATA / "aldp.pdb").read_text().splitlines()
    kept = [line for line in lines if not line.startswith("CONECT") and not line.startswith("HETATM   22")]
    assert len(kept) == len([line for line in lines if not line.startswith("CONECT")]) - 1
    pdb = tmp_path / "short.pdb"
    pdb.write_text("\n".join(kept) + "\n")
    with resources.as_file(DATA / "implicit.xml") as xml:
        with pytest.raises(InputMismatchError, match=r"it has 21 atoms and the System 22 particles"):
            load_molecule(xml, pdb)


def test_mass_mismatch_names_the_atom_and_both_values(aldp):
    aldp.system.setParticleMass(8, 14.007)  # the alanine CA weighs as a nitrogen
    with pytest.raises(InputMismatchError, match=r"ALA2:CA \(atom 8\) is C in the PDB \(expected mass 12\.01.*14\.007"):
        check_molecule(aldp.system, aldp.topology, aldp.positions_nm)


def test_hydrogen_mass_repartitioning_is_accepted_and_a_too_heavy_hydrogen_is_not(aldp):
    system, shift = aldp.system, 2.0
    for a, b in aldp.topology.bonds():
        h, heavy = (a, b) if a.element.symbol == "H" else (b, a)
        if h.element.symbol == "H":
            system.setParticleMass(h.index, system.getParticleMass(h.index) + shift * openmm.unit.dalton)
            system.setParticleMass(heavy.index, system.getParticleMass(heavy.index) - shift * openmm.unit.dalton)
    assert check_molecule(system, aldp.topology, aldp.positions_nm).energy_backend == "TorchForceField"
    system.setParticleMass(0, 6.0)
    with pytest.raises(InputMismatchError, match=r"ACE1:H1 \(atom 0\).*repartitioning.*6\.000 Da"):
        check_molecule(system, aldp.topology, aldp.positions_nm)


def test_ring_is_refused_with_the_zmatrix_message(aldp):
    aldp.topology.addBond(list(aldp.topology.atoms())[4], list(aldp.topology.atoms())[14])  # closes C-N-CA-C
    with pytest.raises(UnsupportedMoleculeError, match=r"1 ring: ring of 4 atoms.*AugmentedCouplingFlow"):
        check_molecule(aldp.system, aldp.topology, aldp.positions_nm)


def test_topology_without_bonds_is_refused_as_disconnected(aldp):
    topology = _copy_topology(aldp.topology, bonds=[])
    with pytest.raises(UnsupportedMoleculeError, match=r"disconnected.*CONECT"):
        check_molecule(aldp.system, topology, aldp.positions_nm)


def test_nan_position_names_the_atom(aldp):
    x = aldp.positions_nm.copy()
    x[10, 1] = np.nan
    with pytest.raises(NonFiniteInputError, match=r"1 atom with non-finite positions \(first: ALA2:CB \(atom 10\)\)"):
        check_molecule(aldp.system, aldp.topology, x)


def test_positions_of_the_wrong_shape_are_refused(aldp):
    with pytest.raises(InputMismatchError, match=r"shape \(21, 3\)"):
        check_molecule(aldp.system, aldp.topology, aldp.positions_nm[:21])


@pytest.mark.parametrize("what", ["missing", "garbage", "integrator"])
def test_unreadable_system_xml_names_the_file(tmp_path, what):
    xml = tmp_path / "system.xml"
    if what == "garbage":
        xml.write_text("<System this is not xml")
    elif what == "integrator":
        xml.write_text(openmm.XmlSerializer.serialize(openmm.VerletIntegrator(0.001)))
    with resources.as_file(DATA / "aldp.pdb") as pdb:
        with pytest.raises(InputFileError, match=r"system\.xml"):
            load_molecule(xml, pdb)


@pytest.mark.parametrize("what", ["missing", "empty", "garbage"])
def test_unreadable_pdb_names_the_file(tmp_path, what):
    pdb = tmp_path / "molecule.pdb"
    if what == "empty":
        pdb.write_text("")
    elif what == "garbage":
        pdb.write_text("ATOM      1  N   ALA A   1    not numbers at all\n")
    with resources.as_file(DATA / "implicit.xml") as xml:
        with pytest.raises(InputFileError, match=r"molecule\.pdb"):
            load_molecule(xml, pdb)

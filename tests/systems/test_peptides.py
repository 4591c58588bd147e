"""The shipped capped alanine peptides (Ace-(Ala)3-Nme "ala4", Ace-(Ala)5-Nme "ala6") load, are L, are set up like
the alanine dipeptide and score the same with TorchForceField as with OpenMM. The recipe
(systems/peptides/build.py) is not run here: it writes the shipped files."""

import math

import numpy as np
import pytest
import torch

from bgflow_se3.analysis.chirality import chirality_signs
from bgflow_se3.energy import TorchForceField
from bgflow_se3.systems import load_peptide
from bgflow_se3.systems.peptides import PEPTIDES
from bgflow_se3.workflow import peptide_torsions
from tests.energy.torchff._openmm_reference import (
    assert_groups_match_openmm,
    one_group_per_force,
    openmm_energies_and_forces,
)

N_ALA = {"ala4": 3, "ala6": 5}


@pytest.fixture(scope="module", params=sorted(PEPTIDES))
def peptide(request):
    return load_peptide(request.param)


def test_atoms_and_residues(peptide):
    sequence, n_atoms = PEPTIDES[peptide.name]
    n_ala = N_ALA[peptide.name]
    assert n_atoms == 6 + 10 * n_ala + 6
    assert peptide.topology.getNumAtoms() == peptide.system.getNumParticles() == n_atoms
    assert peptide.positions_nm.shape == (n_atoms, 3)
    assert [r.name for r in peptide.topology.residues()] == list(sequence) == ["ACE"] + ["ALA"] * n_ala + ["NME"]
    assert peptide.solvent == "implicit"


def test_system_settings_match_the_recipe(peptide):
    import openmm

    system = peptide.system
    assert system.getNumConstraints() == 0
    assert not system.usesPeriodicBoundaryConditions()
    names = sorted(type(f).__name__ for f in system.getForces())
    assert names == sorted(
        ["HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce", "GBSAOBCForce"]
    )
    for force in system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            assert force.getNonbondedMethod() == openmm.NonbondedForce.NoCutoff
        if isinstance(force, openmm.GBSAOBCForce):
            assert force.getNonbondedMethod() == openmm.GBSAOBCForce.NoCutoff


def test_every_alpha_carbon_is_l(peptide):
    signs = chirality_signs(peptide.topology, peptide.positions_nm[None])
    assert signs.shape == (1, N_ALA[peptide.name])
    assert (signs == 1).all()


def test_shipped_structure_is_minimised_and_sane(peptide):
    energy, forces = openmm_energies_and_forces(peptide.system, peptide.positions_nm[None])
    provenance = peptide.provenance
    assert math.isfinite(energy[0]) and abs(energy[0]) < 500.0
    assert energy[0] == pytest.approx(provenance["energy_minimised_kj_mol"], abs=0.01)
    assert np.abs(forces).max() < 200.0  # minimised up to the PDB rounding (1e-4 nm: ~100 kJ/mol/nm on a bond)
    x = peptide.positions_nm
    d = np.linalg.norm(x[:, None] - x[None], axis=-1) + np.eye(len(x))
    assert d.min() > 0.09  # bonded X-H pairs are ~0.1 nm; nothing overlaps
    assert provenance["checks"]["min_nonbonded_distance_nm"] > 0.1
    assert provenance["sequence"] == list(PEPTIDES[peptide.name][0])


def test_torchforcefield_matches_openmm(peptide):
    system = one_group_per_force(peptide.system)
    rng = np.random.default_rng(0)
    x = peptide.positions_nm
    positions = np.stack([x] + [x + 0.005 * rng.normal(size=x.shape) for _ in range(3)])
    ff = TorchForceField.from_system(system)
    assert_groups_match_openmm(ff, system, positions)
    e_ref, _ = openmm_energies_and_forces(system, positions)
    total = ff.potential_energy(torch.tensor(positions, dtype=torch.float64)).detach().numpy()
    np.testing.assert_allclose(total, e_ref, rtol=1e-6)


def test_peptide_torsions(peptide):
    torsions = peptide_torsions(peptide.topology)
    n_ala = N_ALA[peptide.name]
    assert sum(t.name.startswith("phi") for t in torsions) == n_ala
    assert sum(t.name.startswith("psi") for t in torsions) == n_ala


def test_unknown_peptide_and_solvent_are_refused():
    with pytest.raises(ValueError, match="'ala4', 'ala6'"):
        load_peptide("ala5")
    with pytest.raises(ValueError, match="implicit"):
        load_peptide("ala4", solvent="vacuum")

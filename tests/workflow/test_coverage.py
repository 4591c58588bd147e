"""Seeded Langevin coverage for any molecule: seeds land on their angles, states are counted, unreached states are
refused, rotatable torsions come from the bond graph."""

from __future__ import annotations

import math

import mdtraj
import numpy as np
import pytest
import torch

from bgflow_se3.energy import TorchForceField
from bgflow_se3.errors import UnreachedStateError
from bgflow_se3.systems import load_aldp
from bgflow_se3.workflow import check_molecule, negative_state, peptide_torsions, positive_state, torsion_values
from bgflow_se3.workflow.coverage import SEED_ANGLES, check_coverage, seed_structures, seeded_langevin, state_coverage
from bgflow_se3.workflow.rotatable import rotatable_torsions
from bgflow_se3.workflow.states import Torsion


@pytest.fixture(scope="module")
def aldp_molecule():
    aldp = load_aldp("implicit")
    return check_molecule(aldp.system, aldp.topology, aldp.positions_nm)


def test_seeds_set_each_torsion_to_its_angle_in_equal_shares(aldp_molecule):
    torsions = peptide_torsions(aldp_molecule.topology)
    x, seeds, seeded = seed_structures(
        aldp_molecule.positions_nm,
        aldp_molecule.bonds,
        torsions,
        n_replicas=36,
        generator=torch.Generator().manual_seed(1),
        dtype=torch.float64,
    )
    assert x.shape == (36, 22, 3) and seeds.shape == (36, 2) and [t.name for t in seeded] == ["phi1", "psi1"]
    angles = torsion_values(x, seeded)
    wrapped = np.angle(np.exp(1j * (angles - seeds.numpy())))
    assert np.abs(wrapped).max() < 1e-8
    for k in range(2):  # every seed angle seeds 36 / 6 replicas of each torsion
        values, counts = np.unique(np.round(seeds[:, k].numpy(), 6), return_counts=True)
        assert np.allclose(values, np.round(SEED_ANGLES, 6)) and (counts == 6).all()
    assert len({tuple(row) for row in np.round(seeds.numpy(), 6)}) > 12  # combined at random, not in lock step
    # bond lengths are untouched: seeding rotates rigidly about the central bonds
    bonds = np.array(aldp_molecule.bonds)
    start = np.linalg.norm(np.diff(aldp_molecule.positions_nm[bonds], axis=1), axis=-1)[:, 0]
    after = torch.linalg.vector_norm(x[:, bonds[:, 0]] - x[:, bonds[:, 1]], dim=-1).numpy()
    assert np.allclose(after, start[None], atol=1e-10)


def test_torsions_about_one_bond_are_seeded_once(aldp_molecule):
    phi = peptide_torsions(aldp_molecule.topology)[0]
    same_bond = Torsion("phi_other", (5, phi.atoms[1], phi.atoms[2], 10))
    _, seeds, seeded = seed_structures(aldp_molecule.positions_nm, aldp_molecule.bonds, [phi, same_bond], 6)
    assert [t.name for t in seeded] == ["phi1"] and seeds.shape == (6, 1)


def test_seeded_langevin_reaches_both_phi_states_and_counts_them(aldp_molecule):
    energy = TorchForceField.from_system(aldp_molecule.system, 300.0)
    torsions = peptide_torsions(aldp_molecule.topology)
    data = seeded_langevin(
        aldp_molecule,
        energy,
        torsions,
        n_replicas=12,
        ps=0.2,
        equilibration_ps=0.02,
        save_every_ps=0.02,
        generator=torch.Generator().manual_seed(0),
    )
    assert data.frames.shape == (10, 12, 22, 3) and torch.isfinite(data.frames).all()
    phi = torsions[0]
    counts = state_coverage(data.flat().double(), {"up": positive_state(phi), "down": negative_state(phi)})
    assert counts["up"] + counts["down"] == 120 and counts["up"] > 0 and counts["down"] > 0
    train, valid = data.split(0.25)
    assert train.shape == (90, 22, 3) and valid.shape == (30, 22, 3)


def test_unreached_state_is_refused_by_name_and_thin_states_warned():
    with pytest.raises(UnreachedStateError, match="'phi1 in narrow'") as info:
        check_coverage({"phi1 > 0": 40, "phi1 in narrow": 0}, 400)
    assert "--replicas" in str(info.value)
    warnings = check_coverage({"phi1 > 0": 40, "phi1 <= 0": 360}, 400)
    assert len(warnings) == 1 and "'phi1 > 0'" in warnings[0]


def _topology(atoms: list[tuple[str, str]], bonds: list[tuple[int, int]], residue: str = "MOL") -> mdtraj.Topology:
    top = mdtraj.Topology()
    res = top.add_residue(residue, top.add_chain())
    made = [top.add_atom(name, mdtraj.element.get_by_symbol(symbol), res) for name, symbol in atoms]
    for i, j in bonds:
        top.add_bond(made[i], made[j])
    return top


def _with_hydrogens(heavy: list[tuple[str, str]], bonds: list[tuple[int, int]], n_h: list[int]):
    atoms, all_bonds = list(heavy), list(bonds)
    for i, count in enumerate(n_h):
        for k in range(count):
            all_bonds.append((i, len(atoms)))
            atoms.append((f"H{i}{k}", "H"))
    return _topology(atoms, all_bonds)


def test_rotatable_torsions_of_small_molecules():
    butane = _with_hydrogens(
        [("C1", "C"), ("C2", "C"), ("C3", "C"), ("C4", "C")], [(0, 1), (1, 2), (2, 3)], [3, 2, 2, 3]
    )
    assert [t.atoms for t in rotatable_torsions(butane)] == [(0, 1, 2, 3)]  # the methyl rotors are not seeded
    # N-methylacetamide: CH3-C(=O)-NH-CH3, the amide bond is not rotatable
    nma = _with_hydrogens(
        [("C1", "C"), ("C", "C"), ("O", "O"), ("N", "N"), ("C2", "C")],
        [(0, 1), (1, 2), (1, 3), (3, 4)],
        [3, 0, 0, 1, 3],
    )
    assert rotatable_torsions(nma) == []
    # cyclohexane with an ethyl group: ring bonds are not rotatable, the ring-ethyl bond is
    ring = [(k, (k + 1) % 6) for k in range(6)]
    heavy = [(f"C{k}", "C") for k in range(8)]
    found = rotatable_torsions(_with_hydrogens(heavy, [*ring, (0, 6), (6, 7)], [1, 2, 2, 2, 2, 2, 2, 3]))
    assert [t.atoms[1:3] for t in found] == [(0, 6)]


def test_rotatable_torsions_of_alanine_dipeptide_are_phi_and_psi(aldp_molecule):
    central = {frozenset(t.atoms[1:3]) for t in rotatable_torsions(aldp_molecule.topology)}
    assert central == {frozenset(t.atoms[1:3]) for t in peptide_torsions(aldp_molecule.topology)}


def test_seed_angles_are_sixty_degrees_apart():
    assert np.allclose(np.diff(SEED_ANGLES), math.radians(60))

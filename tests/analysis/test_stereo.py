"""Generic stereocentres from the bond graph: found for any molecule, handedness flips in the mirror image."""

import numpy as np
import pytest
import torch
from openmm.app import Element, Topology

from bgflow_se3 import LennardJonesEnergy
from bgflow_se3.analysis import handedness, same_handedness, stereocentres
from bgflow_se3.energy import RestrictedEnergy
from bgflow_se3.systems import load_aldp
from bgflow_se3.systems.aldp import is_l_form

TETRA = np.array([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]]) / np.sqrt(3.0)


def _topology(elements, bonds, order=None):
    """An openmm Topology of atoms ``elements`` (symbols) and ``bonds``, atoms added in ``order`` (a permutation)."""
    order = list(range(len(elements))) if order is None else list(order)
    top = Topology()
    residue = top.addResidue("MOL", top.addChain())
    atoms = {}
    for i in order:
        atoms[i] = top.addAtom(f"{elements[i]}{i}", Element.getBySymbol(elements[i]), residue)
    for i, j in bonds:
        top.addBond(atoms[i], atoms[j])
    return top


def _two_centres():
    """CHFCl-CHFBr: two stereocentres (atoms 0 and 4); positions (8, 3) nm, proper tetrahedra."""
    elements = ["C", "H", "F", "Cl", "C", "H", "F", "Br"]
    bonds = [(0, 1), (0, 2), (0, 3), (0, 4), (4, 5), (4, 6), (4, 7)]
    x = np.zeros((8, 3))
    x[4] = 0.15 * TETRA[0]  # C2 along the first tetrahedral direction of C1
    x[1], x[2], x[3] = 0.1 * TETRA[1], 0.1 * TETRA[2], 0.1 * TETRA[3]
    x[5], x[6], x[7] = x[4] - 0.1 * TETRA[1], x[4] - 0.1 * TETRA[2], x[4] - 0.1 * TETRA[3]
    return elements, bonds, x


@pytest.fixture(scope="module")
def aldp():
    return load_aldp("implicit")


def test_alanine_dipeptide_has_only_the_alpha_carbon(aldp):
    ca = next(a.index for a in aldp.topology.atoms() if a.name == "CA")
    centres = stereocentres(aldp.topology)
    assert centres.shape == (1, 5) and centres[0, 0] == ca
    neighbours = sorted(
        b[1].index if b[0].index == ca else b[0].index for b in aldp.topology.bonds() if ca in (b[0].index, b[1].index)
    )
    assert list(centres[0, 1:]) == neighbours
    np.testing.assert_array_equal(stereocentres(aldp.mdtraj_topology), centres)


def test_same_handedness_agrees_with_is_l_form(aldp):
    allowed = same_handedness(aldp.topology, aldp.positions)  # an openmm Quantity
    rng = np.random.default_rng(0)
    x = aldp.positions_nm[None] + 0.01 * rng.normal(size=(64, 22, 3))
    x[32:] *= -1.0  # half of them mirror images
    x = torch.from_numpy(x)
    torch.testing.assert_close(allowed(x), is_l_form(x))
    assert allowed(x)[:32].all() and not allowed(x)[32:].any()
    start = torch.from_numpy(aldp.positions_nm)[None]
    assert allowed(start).item() and not allowed(-start).item() and is_l_form(start).item()
    assert not allowed(torch.full_like(start, float("nan"))).item()


def test_hand_built_centres_known_signs_and_mirror():
    elements, bonds, x = _two_centres()
    top = _topology(elements, bonds)
    centres = stereocentres(top)
    np.testing.assert_array_equal(centres, [[0, 1, 2, 3, 4], [4, 0, 5, 6, 7]])
    # at atom 0, H, F, Cl lie along (1,-1,-1), (-1,1,-1), (-1,-1,1): det = -4 / sqrt(3)^3 < 0, by hand
    expected = [np.sign(np.linalg.det(x[row[1:4]] - x[row[0]])) for row in centres]
    assert expected[0] == -1.0
    signs = handedness(top, x[None])
    np.testing.assert_array_equal(signs, [expected])
    np.testing.assert_array_equal(handedness(top, -x[None]), -signs)
    swapped = x.copy()
    swapped[[2, 3]] = swapped[[3, 2]]  # exchange F and Cl at the first centre: that centre only is inverted
    np.testing.assert_array_equal(handedness(top, swapped[None]), [[-expected[0], expected[1]]])
    allowed = same_handedness(top, x)
    batch = torch.from_numpy(np.stack([x, -x, swapped, x + 1.0]))
    np.testing.assert_array_equal(allowed(batch).numpy(), [True, False, False, True])
    energy = RestrictedEnergy(LennardJonesEnergy(8), allowed)
    u = energy(batch)
    assert torch.isinf(u[1:3]).all() and torch.isfinite(u[[0, 3]]).all()


def test_identical_substituents_are_not_centres():
    # 2-fluoropropane with explicit methyl hydrogens: CH(F)(CH3)2 has two identical methyls
    elements = ["C", "H", "F", "C", "C"] + ["H"] * 6
    bonds = [(0, 1), (0, 2), (0, 3), (0, 4), (3, 5), (3, 6), (3, 7), (4, 8), (4, 9), (4, 10)]
    assert stereocentres(_topology(elements, bonds)).shape == (0, 5)
    # 1-chloro-1-fluorocyclohexane (no hydrogens written): the two ring directions from C1 are identical ...
    ring = [(i, (i + 1) % 6) for i in range(6)]
    elements = ["C"] * 6 + ["F", "Cl"]
    assert stereocentres(_topology(elements, [*ring, (0, 6), (0, 7)])).shape == (0, 5)
    # ... until a substituent on C2 breaks the symmetry: C1 becomes a stereocentre (C2 has only three neighbours)
    top = _topology([*elements, "Br"], [*ring, (0, 6), (0, 7), (1, 8)])
    np.testing.assert_array_equal(stereocentres(top), [[0, 1, 5, 6, 7]])


def test_permuting_atom_order_keeps_the_detected_atoms():
    # CHFCl-CF(Br)-CH3: centres 0 and 4; the methyl carbon 7 (three H) is not one
    elements = ["C", "H", "F", "Cl", "C", "F", "Br", "C", "H", "H", "H"]
    bonds = [(0, 1), (0, 2), (0, 3), (0, 4), (4, 5), (4, 6), (4, 7), (7, 8), (7, 9), (7, 10)]
    np.testing.assert_array_equal(stereocentres(_topology(elements, bonds))[:, 0], [0, 4])
    rng = np.random.default_rng(1)
    for _ in range(5):
        order = rng.permutation(len(elements))  # new index k holds old atom order[k]
        centres = stereocentres(_topology(elements, bonds, order))
        assert {int(order[c]) for c in centres[:, 0]} == {0, 4}, order
        for row in centres:  # each row holds the centre's neighbours, in ascending new index
            assert list(row[1:]) == sorted(row[1:])


def test_planar_reference_raises_naming_the_atom():
    elements, bonds, x = _two_centres()
    top = _topology(elements, bonds)
    flat = x.copy()
    flat[4:, 2] = x[4, 2]  # the second centre and its neighbours H, F, Br in one plane z = const
    flat[0, 2] = x[4, 2]
    with pytest.raises(ValueError, match="stereocentre atom 4"):
        same_handedness(top, flat)
    with pytest.raises(ValueError, match="shape"):
        handedness(top, x)


def test_cli_mirror_rule_uses_the_generic_stereocentres():
    from bgflow_se3.cli import _mirror_samples

    elements, bonds, x = _two_centres()
    top = _topology(elements, bonds)  # no residue with N, CA, C, CB: alpha-carbon chirality would see no centre
    swapped = x.copy()
    swapped[[2, 3]] = swapped[[3, 2]]  # a diastereomer: one centre inverted
    mirror, n_centres = _mirror_samples(top, np.stack([x, -x, swapped]).astype(np.float32), x)
    assert n_centres == 2
    np.testing.assert_array_equal(mirror, [False, True, True])

"""Rings in the bond graph: InternalCoordinateFlow's Z-matrix cannot close them, so they are refused by name."""

import math

import openmm.app as app
import pytest
import torch

from bgflow_se3.errors import UnsupportedMoleculeError, UnsupportedSystemError
from bgflow_se3.flow.internal_coordinates import InternalCoordinateFlow, find_rings, zmatrix_from_bonds

# alanine dipeptide (implicit) Z-matrix as built by zmatrix_from_bonds before rings were checked (the pretrained
# flow's Z-matrix): acyclic molecules must keep it exactly
ALDP_ZMATRIX = [
    [1, -1, -1, -1], [0, 1, -1, -1], [2, 1, 0, -1], [3, 1, 0, 2], [4, 1, 0, 2], [5, 4, 1, 0], [6, 4, 1, 5],
    [7, 6, 4, 1], [8, 6, 4, 7], [9, 8, 6, 4], [10, 8, 6, 9], [14, 8, 6, 9], [11, 10, 8, 6], [12, 10, 8, 11],
    [13, 10, 8, 11], [15, 14, 8, 6], [16, 14, 8, 15], [17, 16, 14, 8], [18, 16, 14, 17], [19, 18, 16, 14],
    [20, 18, 16, 19], [21, 18, 16, 19],
]  # fmt: skip


def benzene() -> app.Topology:
    """C6H6 (atoms C1..C6 = 0..5, H1..H6 = 6..11), one residue BEN1."""
    top = app.Topology()
    res = top.addResidue("BEN", top.addChain())
    carbons = [top.addAtom(f"C{i + 1}", app.element.carbon, res) for i in range(6)]
    hydrogens = [top.addAtom(f"H{i + 1}", app.element.hydrogen, res) for i in range(6)]
    for i in range(6):
        top.addBond(carbons[i], carbons[(i + 1) % 6])
        top.addBond(carbons[i], hydrogens[i])
    return top


def ace_pro_nme() -> tuple[app.Topology, dict]:
    """Heavy atoms of Ace-Pro-Nme: the proline ring N-CA-CB-CG-CD closes through the backbone nitrogen."""
    top = app.Topology()
    chain = top.addChain()
    atoms = {}
    for resname, number, names in [("ACE", "1", "CH3 C O"), ("PRO", "2", "N CD CG CB CA C O"), ("NME", "3", "N C")]:
        res = top.addResidue(resname, chain, id=number)
        for name in names.split():
            atoms[resname, name] = top.addAtom(name, app.element.get_by_symbol(name[0]), res)
    for a, b in [
        (("ACE", "CH3"), ("ACE", "C")), (("ACE", "C"), ("ACE", "O")), (("ACE", "C"), ("PRO", "N")),
        (("PRO", "N"), ("PRO", "CA")), (("PRO", "CA"), ("PRO", "CB")), (("PRO", "CB"), ("PRO", "CG")),
        (("PRO", "CG"), ("PRO", "CD")), (("PRO", "CD"), ("PRO", "N")), (("PRO", "CA"), ("PRO", "C")),
        (("PRO", "C"), ("PRO", "O")), (("PRO", "C"), ("NME", "N")), (("NME", "N"), ("NME", "C")),
    ]:  # fmt: skip
        top.addBond(atoms[a], atoms[b])
    return top, {key: atom.index for key, atom in atoms.items()}


def test_ring_breaks_without_the_check_and_is_refused_with_it():
    top = benzene()
    bonds = [(a.index, b.index) for a, b in top.bonds()]
    with pytest.raises(UnsupportedMoleculeError) as info:
        InternalCoordinateFlow.for_topology(top)
    msg = str(info.value)
    assert isinstance(info.value, UnsupportedSystemError) and isinstance(info.value, ValueError)
    assert "1 ring:" in msg and "ring of 6 atoms BEN1:C1, C2, C3, C4, C5, C6 (indices 0, 1, 2, 3, 4, 5)" in msg
    assert "AugmentedCouplingFlow" in msg and "acyclic" in msg
    with pytest.raises(UnsupportedMoleculeError, match=r"ring of 6 atoms \(indices 0, 1, 2, 3, 4, 5\)"):
        zmatrix_from_bonds(12, bonds)
    # the escape: the Z-matrix keeps 11 of the 12 bonds, so the flow's samples leave the closing bond free
    torch.manual_seed(0)
    ring = [[0.14 * math.cos(i * math.pi / 3), 0.14 * math.sin(i * math.pi / 3), 0.0] for i in range(6)]
    x0 = torch.tensor(ring + [[r * 0.248 / 0.14 for r in p] for p in ring], dtype=torch.float64)
    data = x0 + 0.003 * torch.randn(128, 12, 3, dtype=torch.float64)
    flow = InternalCoordinateFlow.for_topology(top, data=data, allow_rings=True, n_layers=2, hidden=8).double()
    in_zmatrix = {frozenset(row[:2]) for row in flow.zmatrix.tolist()[1:]}
    (closing,) = [b for b in bonds if frozenset(b) not in in_zmatrix]
    x, _ = flow.sample(256, torch.Generator().manual_seed(0))
    length = torch.linalg.vector_norm(x[:, closing[0]] - x[:, closing[1]], dim=-1)
    assert (length - 0.14).abs().median() > 0.1  # the ring is broken: why rings are refused by default


def test_two_fused_rings_are_both_named():
    # naphthalene's carbons: ring A 0-1-2-3-4-9, ring B 4-5-6-7-8-9, sharing the bond 4-9; a methyl on atom 2
    a = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 9), (9, 0)]
    b = [(4, 5), (5, 6), (6, 7), (7, 8), (8, 9)]
    for bonds in (a + b + [(2, 10)], [(2, 10)] + b[::-1] + a[::-1], [(j, i) for i, j in a + b] + [(10, 2)]):
        assert find_rings(11, bonds) == [[0, 1, 2, 3, 4, 9], [4, 5, 6, 7, 8, 9]]  # not the outer 10-ring
        with pytest.raises(UnsupportedMoleculeError) as info:
            zmatrix_from_bonds(11, bonds)
        msg = str(info.value)
        assert "2 rings:" in msg
        assert "ring of 6 atoms (indices 0, 1, 2, 3, 4, 9); ring of 6 atoms (indices 4, 5, 6, 7, 8, 9)" in msg


def test_find_rings_counts_independent_rings_and_caps_the_message():
    assert find_rings(4, [(0, 1), (1, 2), (2, 3)]) == [] and find_rings(3, [(0, 1), (0, 1), (1, 0), (1, 2)]) == []
    cube = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]
    rings = find_rings(8, cube)
    assert len(rings) == 12 - 8 + 1 and all(len(r) == 4 for r in rings)
    # six 5-rings in a row, each joined to the next by a bond: more rings than the message shows
    chains = [(5 * n + i, 5 * n + (i + 1) % 5) for n in range(6) for i in range(5)]
    chains += [(5 * n, 5 * n + 5) for n in range(5)]
    with pytest.raises(UnsupportedMoleculeError, match=r"6 rings: .*; and 2 more\. ") as info:
        zmatrix_from_bonds(30, chains)
    assert str(info.value).count("ring of 5 atoms") == 4
    assert zmatrix_from_bonds(30, chains, allow_rings=True).shape == (30, 4)


def test_proline_ring_through_the_backbone_is_named_by_residue():
    top, index = ace_pro_nme()
    with pytest.raises(UnsupportedMoleculeError) as info:
        InternalCoordinateFlow.for_topology(top)
    ring = [index["PRO", n] for n in ("N", "CA", "CB", "CG", "CD")]
    assert sorted(find_rings(12, [(a.index, b.index) for a, b in top.bonds()])[0]) == sorted(ring)
    assert "ring of 5 atoms PRO2:N, CD, CG, CB, CA (indices 3, 4, 5, 6, 7)" in str(info.value)


@pytest.mark.parametrize("solvent", ["implicit", "vacuum"])
def test_acyclic_alanine_dipeptide_keeps_its_zmatrix(solvent):
    from bgflow_se3.systems import load_aldp

    top = load_aldp(solvent).topology
    bonds = [(a.index, b.index) for a, b in top.bonds()]
    expected = torch.tensor(ALDP_ZMATRIX)
    assert torch.equal(zmatrix_from_bonds(22, bonds), expected)
    assert torch.equal(zmatrix_from_bonds(22, bonds, allow_rings=True), expected)
    assert find_rings(22, bonds) == []
    flow = InternalCoordinateFlow.for_topology(top, n_layers=2, hidden=8)
    assert torch.equal(flow.zmatrix, expected)

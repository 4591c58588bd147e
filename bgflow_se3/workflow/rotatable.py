"""The rotatable torsions of a molecule, from its bond graph alone: the torsions whose basins the training data seed.

A bond b-c is rotatable when both b and c have another heavy-atom neighbour (a terminal methyl, hydroxyl or amine
rotates among equivalent or fast-exchanging positions and is left to the dynamics), it is not an amide C-N bond (a
partial double bond: cis/trans does not exchange at room temperature and a seed between them would only build
strained replicas) and it lies in no ring. Its torsion is (a, b, c, d) with a and d the lowest-indexed heavy
neighbours of b and c other than each other. For alanine dipeptide this finds exactly phi and psi; for a valine
dipeptide it adds chi1.
"""

from __future__ import annotations

from typing import Any

from ..analysis.dihedrals import as_mdtraj_topology
from .states import Torsion

__all__ = ["rotatable_torsions"]


def _neighbours(top) -> list[list[int]]:
    neighbours: list[list[int]] = [[] for _ in range(top.n_atoms)]
    for bond in top.bonds:
        i, j = bond[0].index, bond[1].index
        if i != j and j not in neighbours[i]:
            neighbours[i].append(j)
            neighbours[j].append(i)
    return neighbours


def _is_amide_bond(b: int, c: int, elements: list[str], heavy: list[list[int]], neighbours) -> bool:
    """b-c is C-N with the C also bonded to a terminal O (a carbonyl): the peptide / amide bond."""
    for carbon, nitrogen in ((b, c), (c, b)):
        if elements[carbon] == "C" and elements[nitrogen] == "N":
            if any(elements[o] == "O" and len(neighbours[o]) == 1 for o in heavy[carbon]):
                return True
    return False


def _in_ring(b: int, c: int, neighbours: list[list[int]]) -> bool:
    """Whether c reaches b without the bond b-c."""
    seen, stack = {c}, [c]
    while stack:
        i = stack.pop()
        for j in neighbours[i]:
            if i == c and j == b:
                continue
            if j == b:
                return True
            if j not in seen:
                seen.add(j)
                stack.append(j)
    return False


def rotatable_torsions(topology: Any) -> list[Torsion]:
    """One torsion per rotatable bond of an openmm.app or mdtraj topology (module docstring), named after the
    bond's atoms, e.g. "VAL2:CA-CB" (residue name and 1-based number, atom names); ordered by bond."""
    top = as_mdtraj_topology(topology)
    atoms = list(top.atoms)
    elements = [a.element.symbol if a.element is not None else a.name for a in atoms]
    neighbours = _neighbours(top)
    heavy = [sorted(j for j in nbrs if elements[j] != "H") for nbrs in neighbours]
    torsions = []
    bonds = sorted({(min(i, j), max(i, j)) for i, nbrs in enumerate(neighbours) for j in nbrs})
    for b, c in bonds:
        if elements[b] == "H" or elements[c] == "H":
            continue
        a_side, d_side = [j for j in heavy[b] if j != c], [j for j in heavy[c] if j != b]
        if not a_side or not d_side or _is_amide_bond(b, c, elements, heavy, neighbours):
            continue
        if _in_ring(b, c, neighbours):
            continue
        rb, rc = atoms[b].residue, atoms[c].residue
        name = f"{rb.name}{rb.resSeq}:{atoms[b].name}-" + (
            atoms[c].name if rc is rb else f"{rc.name}{rc.resSeq}:{atoms[c].name}"
        )
        torsions.append(Torsion(name, (a_side[0], b, c, d_side[0])))
    return torsions

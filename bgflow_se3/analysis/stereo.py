"""Stereocentres found from the bond graph, for any molecule, and the handedness of configurations at them.

An achiral force field gives a molecule and its mirror image the same energy, so the Boltzmann target of the molecule
the user gave is the force field's density restricted to that structure's handedness at every stereocentre:
``RestrictedEnergy(energy, same_handedness(topology, positions))``. ``analysis.chirality`` does this for amino-acid
alpha carbons named N/CA/C/CB only; this module needs nothing but elements and bonds.

Detection (``stereocentres``): an atom with exactly four bonded neighbours is a stereocentre when its four
substituents are pairwise distinct as graphs. The substituent through neighbour n of centre c is labelled by colour
refinement on directed bonds (non-backtracking Weisfeiler-Lehman): the label of the bond c -> n starts as n's element
and is refined, round by round, to (its previous label, n's element, the sorted labels of n -> m for the other
neighbours m of n), relabelled to dense integers after each round (no hashing, so no collisions); rounds stop when
the number of distinct labels stops growing (the partition is then stable). Two substituents get equal labels
exactly when their non-backtracking walk trees (the CIP-like hierarchical digraphs, unlabelled by stereo) are equal
to every depth.

Limits: this is constitutional distinctness, not CIP priority (no R/S labels), which is all a handedness-consistency
check needs. Only four-coordinate (sp3) centres count: double-bond E/Z isomerism, axial chirality (allenes,
biaryls), planar chirality and ring cis/trans isomerism of centres that are not themselves distinct-substituted are
not detected; nor are pseudo-asymmetric centres whose substituents differ only in their own stereo (r/s), nor
three-coordinate centres (sulfoxides, phosphines). Isotopes count as their element. Walk-tree refinement cannot
separate some non-isomorphic, highly regular ring systems (it then calls two substituents equal and misses a centre);
it never reports a centre whose substituents are isomorphic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..geometry import signed_volume
from .dihedrals import as_mdtraj_topology, as_positions

__all__ = ["handedness", "same_handedness", "stereocentres"]


def _graph(topology: Any) -> tuple[list[str], list[list[int]]]:
    """(element symbols, neighbour lists) of an mdtraj or openmm.app topology; an atom without element uses its name."""
    top = as_mdtraj_topology(topology)
    elements = [atom.element.symbol if atom.element is not None else f"?{atom.name}" for atom in top.atoms]
    neighbours: list[list[int]] = [[] for _ in elements]
    for bond in top.bonds:
        i, j = bond[0].index, bond[1].index
        if i == j or j in neighbours[i]:
            continue
        neighbours[i].append(j)
        neighbours[j].append(i)
    return elements, neighbours


def _branch_labels(elements: list[str], neighbours: list[list[int]]) -> dict[tuple[int, int], int]:
    """Label of every directed bond (u, v): the class of the substituent of u through v, by colour refinement."""
    edges = [(u, v) for u in range(len(elements)) for v in neighbours[u]]
    symbols = sorted(set(elements))
    label = {(u, v): symbols.index(elements[v]) for u, v in edges}
    n_classes = len(set(label.values()))
    while True:
        signature = {
            (u, v): (label[(u, v)], tuple(sorted(label[(v, w)] for w in neighbours[v] if w != u))) for u, v in edges
        }
        dense = {sig: k for k, sig in enumerate(sorted(set(signature.values())))}
        label = {edge: dense[sig] for edge, sig in signature.items()}
        if len(dense) == n_classes:
            return label
        n_classes = len(dense)


def stereocentres(topology: Any) -> np.ndarray:
    """Every sp3 stereocentre of ``topology`` (openmm.app or mdtraj, with bonds), shape (n_centres, 5), int64.

    A row is (centre, n1, n2, n3, n4): an atom with exactly four bonded neighbours whose four substituents are
    pairwise constitutionally distinct, then its neighbours in ascending atom index (a fixed order, so the signs of
    ``handedness`` compare between configurations of one topology). Rows are in ascending centre index. See the
    module docstring for the method and what it does not detect (E/Z, axial chirality, pseudo-asymmetry).
    """
    elements, neighbours = _graph(topology)
    label = _branch_labels(elements, neighbours)
    rows = []
    for c, nbrs in enumerate(neighbours):
        if len(nbrs) == 4 and len({label[(c, n)] for n in nbrs}) == 4:
            rows.append([c, *sorted(nbrs)])
    return np.asarray(rows, dtype=np.int64).reshape(-1, 5)


def _signs(centres: np.ndarray, x: Tensor) -> Tensor:
    """Sign of (n1 - c) . ((n2 - c) x (n3 - c)) at each centre, x (batch, n_atoms, 3) -> (batch, n_centres)."""
    index = torch.as_tensor(centres, device=x.device)
    c, n1, n2, n3 = (x[:, index[:, i]] for i in range(4))
    return torch.sign(signed_volume(n1, c, n2, n3))


def _nanometres(positions: Any) -> np.ndarray:
    """numpy / torch positions, or an openmm Quantity, as float64 nm."""
    if hasattr(positions, "value_in_unit"):
        import openmm.unit as unit

        positions = np.asarray(positions.value_in_unit(unit.nanometer), dtype=np.float64)
    return as_positions(positions)


def handedness(topology: Any, x: Any) -> np.ndarray:
    """Sign (+1, -1; 0 planar) of the signed volume of (n1 - c, n2 - c, n3 - c) at every stereocentre.

    x: positions in nm, shape (batch, n_atoms, 3) (numpy, torch or an openmm Quantity). Returns (batch, n_centres),
    columns in the order of ``stereocentres(topology)``; a mirror image (x -> -x) flips every sign. NaN stays NaN.
    """
    x = _nanometres(x)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"x must have shape (batch, n_atoms, 3) in nm, got {x.shape}")
    centres = stereocentres(topology)
    n_atoms = as_mdtraj_topology(topology).n_atoms
    if x.shape[1] != n_atoms:
        raise ValueError(f"x has {x.shape[1]} atoms, the topology {n_atoms}")
    return _signs(centres, torch.from_numpy(x)).numpy()


def same_handedness(topology: Any, reference_positions: Any) -> Callable[[Tensor], Tensor]:
    """A predicate for ``energy.RestrictedEnergy``: x (batch, n_atoms, 3) torch -> bool (batch,) on x's device.

    True where every stereocentre of ``topology`` has the sign it has in ``reference_positions`` (one structure,
    (n_atoms, 3), nm, numpy / torch / openmm Quantity): the configurations of the molecule the user gave, not of
    its mirror image or a diastereomer. NaN coordinates give False; with no stereocentre every x is
    True. A reference that is planar at a stereocentre (sign 0) raises ``ValueError`` naming the atom.
    """
    reference = _nanometres(reference_positions)
    if reference.ndim != 2 or reference.shape[1] != 3:
        raise ValueError(f"reference_positions must have shape (n_atoms, 3) in nm, got {reference.shape}")
    centres = stereocentres(topology)
    target = handedness(topology, reference[None])[0]
    if (target == 0).any() or np.isnan(target).any():
        atom = int(centres[np.flatnonzero(~(np.abs(target) == 1))[0], 0])
        name = list(as_mdtraj_topology(topology).atoms)[atom]
        raise ValueError(
            f"the reference structure is planar (or not finite) at stereocentre atom {atom} ({name}): its four "
            "neighbours lie in one plane, so it has no handedness; give a proper structure"
        )

    def allowed(x: Tensor) -> Tensor:
        if len(centres) == 0:
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        signs = _signs(centres, x)
        return (signs == torch.as_tensor(target, dtype=signs.dtype, device=x.device)).all(dim=1)

    return allowed

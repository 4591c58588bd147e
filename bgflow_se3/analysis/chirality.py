"""Chirality of amino-acid alpha carbons in coordinate batches: the fraction of samples with D residues.

A flow that is only E(3) invariant, or a poorly trained SE(3) flow, can put mass on the mirror image of a
molecule, which a force field without chirality terms scores the same; such samples are D amino acids and must be
counted (or filtered) before comparing with L reference data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..geometry import chirality_sign
from .dihedrals import as_mdtraj_topology, as_positions

__all__ = ["L_CHIRALITY_SIGN", "chiral_centres", "chirality_mismatch", "chirality_signs", "d_chirality_fraction"]

#: Sign of the signed volume (N - CA) . ((C - CA) x (CB - CA)) of an L amino acid (the "CORN" rule).
L_CHIRALITY_SIGN = 1.0


def chiral_centres(topology: Any) -> np.ndarray:
    """Atom indices (N, CA, C, CB) of every residue that has all four (glycine has no CB), shape (n_centres, 4)."""
    top = as_mdtraj_topology(topology)
    centres = []
    for residue in top.residues:
        names = {atom.name: atom.index for atom in residue.atoms}
        if all(name in names for name in ("N", "CA", "C", "CB")):
            centres.append([names["N"], names["CA"], names["C"], names["CB"]])
    return np.asarray(centres, dtype=np.int64).reshape(-1, 4)


def chirality_signs(topology: Any, x: Any) -> np.ndarray:
    """Sign of (N - CA) . ((C - CA) x (CB - CA)) at every chiral alpha carbon, shape (batch, n_centres).

    x: positions in nm, shape (batch, n_atoms, 3) (numpy or torch). +1 is L (``L_CHIRALITY_SIGN``), -1 is D.
    """
    x = as_positions(x)
    centres = chiral_centres(topology)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"x must have shape (batch, n_atoms, 3) in nm, got {x.shape}")
    if len(centres) == 0:
        raise ValueError("the topology has no residue with N, CA, C and CB atoms: no chirality to report")
    if not np.isfinite(x).all():
        raise ValueError("x holds NaN or inf; drop those samples before computing chirality")
    n, ca, c, cb = (torch.from_numpy(x[:, centres[:, i]]) for i in range(4))
    return chirality_sign(n, ca, c, cb).numpy()


def d_chirality_fraction(topology: Any, x: Any) -> float:
    """Fraction of configurations x (batch, n_atoms, 3), nm, with at least one D alpha carbon, in [0, 1]."""
    signs = chirality_signs(topology, x)
    if len(signs) == 0:
        raise ValueError("x holds no configuration: the D fraction of an empty batch is undefined")
    return float(np.mean((signs != L_CHIRALITY_SIGN).any(axis=1)))


def chirality_mismatch(topology: Any, x: Any, reference: Any | None = None) -> np.ndarray:
    """Which configurations differ in handedness from ``reference`` at some chiral alpha carbon, shape (batch,).

    x: positions in nm, shape (batch, n_atoms, 3). reference: one structure (n_atoms, 3), nm, whose handedness
    defines the target molecule, or None for L at every alpha carbon (``L_CHIRALITY_SIGN``). True marks a mirror
    image (for an all-L reference: a sample with a D residue), which an achiral force field scores like the
    reference molecule; the library gives such samples u = +inf (``evaluate_dipeptide(restrict_to_l=True)``,
    ``energy.RestrictedEnergy``). A reference that is planar at a chiral centre raises ``ValueError``.
    """
    signs = chirality_signs(topology, x)
    if reference is None:
        target = np.full(signs.shape[1], L_CHIRALITY_SIGN)
    else:
        target = chirality_signs(topology, as_positions(reference)[None])[0]
        if (target == 0).any():
            raise ValueError(
                "the reference structure is planar at a chiral centre (N, CA, C, CB in one plane), so it has no "
                "handedness: give a proper structure"
            )
    return (signs != target).any(axis=1)

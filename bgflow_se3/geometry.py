"""Molecular geometry on coordinate tensors: angles, dihedrals, setting a torsion, the handedness of a chiral centre.

One copy of each operation, used by the flows, the energies, sampling, the simulation drivers and the analysis.
Positions are torch tensors of shape (..., 3) (any length unit); angles are radians. This module imports only
torch, so every layer of the package (also the leaf catalogue ``bgflow_se3.systems``) may use it.

Two operations come in two forms, because callers that feed energies or flow log-densities must keep their exact
floating-point operations:

- ``angle`` / ``torsion``: the internal-coordinate forms (the internal-coordinate flow's Z-matrix, ``set_torsion``):
  ``torch.linalg.cross``, the torsion from the bonds projected onto the plane normal to the central bond.
- ``openmm_vector_angle`` / ``openmm_angle`` / ``openmm_dihedral``: OpenMM's definitions (the torch force field's
  kernels): an exact component-wise ``cross``, the dihedral from the two plane normals, and OpenMM's values where
  the angle is undefined (NaN for an arm of zero length, pi/2 for a vanishing normal).

Both dihedral forms give the same angle (IUPAC sign, as mdtraj) up to rounding on well-formed inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "angle",
    "chirality_sign",
    "cross",
    "moving_side",
    "openmm_angle",
    "openmm_dihedral",
    "openmm_vector_angle",
    "set_torsion",
    "signed_volume",
    "torsion",
    "torsion_angle",
    "unit",
]


def unit(v: Tensor) -> Tensor:
    """``v`` (..., 3) divided by its length (NaN for a zero vector)."""
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


def cross(a: Tensor, b: Tensor) -> Tensor:
    """Cross product of vectors of shape (..., 3), component by component: exactly zero for parallel inputs such
    as b = -a (``torch.linalg.cross`` may fuse multiply-adds and leave a rounding residue there)."""
    a0, a1, a2 = a.unbind(-1)
    b0, b1, b2 = b.unbind(-1)
    return torch.stack((a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0), dim=-1)


def angle(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Angle a-b-c in [0, pi], (..., 3) -> (...): atan2(|u x v|, u . v) with ``torch.linalg.cross``, no guard for
    degenerate arms (the internal-coordinate flow's form; ``openmm_angle`` is OpenMM's)."""
    u, v = a - b, c - b
    return torch.atan2(torch.linalg.vector_norm(torch.linalg.cross(u, v, dim=-1), dim=-1), (u * v).sum(-1))


def torsion(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """Dihedral a-b-c-d in [-pi, pi] (IUPAC sign, as mdtraj), (..., 3) -> (...), from the outer bonds projected onto
    the plane normal to the central bond (the internal-coordinate flow's form; ``openmm_dihedral`` is OpenMM's)."""
    b0, b1, b2 = a - b, c - b, d - c
    b1u = unit(b1)
    v = b0 - (b0 * b1u).sum(-1, keepdim=True) * b1u
    w = b2 - (b2 * b1u).sum(-1, keepdim=True) * b1u
    return torch.atan2((torch.linalg.cross(b1u, v, dim=-1) * w).sum(-1), (v * w).sum(-1))


def openmm_vector_angle(a: Tensor, b: Tensor) -> Tensor:
    """Angle between vectors ``a`` and ``b`` (shape (..., 3)) in radians, accurate near 0 and pi (atan2 form).

    NaN where ``a`` or ``b`` has zero length (the angle is undefined; OpenMM's cosine is 0/0 there). The gradient
    is zero for exactly parallel vectors, as OpenMM's force.
    """
    zero_length = (a * a).sum(dim=-1) * (b * b).sum(dim=-1) == 0
    return torch.atan2(cross(a, b).norm(dim=-1), (a * b).sum(dim=-1)).masked_fill(zero_length, math.nan)


def openmm_angle(p1: Tensor, p2: Tensor, p3: Tensor) -> Tensor:
    """Angle p1-p2-p3 of positions (..., 3) with vertex p2, radians: ``openmm_vector_angle(p1 - p2, p3 - p2)``."""
    return openmm_vector_angle(p1 - p2, p3 - p2)


def openmm_dihedral(p1: Tensor, p2: Tensor, p3: Tensor, p4: Tensor) -> Tensor:
    """Dihedral p1-p2-p3-p4 of positions (..., 3) in radians, (-pi, pi], OpenMM's sign convention.

    Degenerate (n1 = b1 x b2 or n2 = b2 x b3 zero, e.g. two of the atoms coincident): pi/2, as OpenMM (its
    normalised dot product of the normals is then 0); the gradient there is not finite (nor is OpenMM's force).
    """
    b1, b2, b3 = p2 - p1, p3 - p2, p4 - p3
    n1 = cross(b1, b2)
    n2 = cross(b2, b3)
    y = b2.norm(dim=-1) * (b1 * n2).sum(dim=-1)
    x = (n1 * n2).sum(dim=-1)
    return torch.atan2(y, x).masked_fill((x == 0) & (y == 0), 0.5 * math.pi)


def torsion_angle(x: Tensor, atoms: Sequence[int]) -> Tensor:
    """Dihedral angle of atoms (a, b, c, d) in radians, [-pi, pi] (IUPAC sign, as mdtraj); x (batch, n, 3)."""
    a, b, c, d = atoms
    return torsion(x[:, a], x[:, b], x[:, c], x[:, d])


def moving_side(n_atoms: int, bonds: Sequence[tuple[int, int]], b: int, c: int) -> list[int]:
    """Atoms on c's side of the bond b-c (c included): what turns when the torsion about b-c is set.
    Raises ``ValueError`` when b-c lies in a ring (both sides are connected without it)."""
    neighbours: list[list[int]] = [[] for _ in range(n_atoms)]
    for i, j in bonds:
        neighbours[i].append(j)
        neighbours[j].append(i)
    side, stack = {c}, [c]
    while stack:
        i = stack.pop()
        for j in neighbours[i]:
            if (i, j) in ((c, b),) or j in side:
                continue
            if j == b:
                raise ValueError(f"bond {b}-{c} is in a ring: its torsion cannot be set by a rigid rotation")
            side.add(j)
            stack.append(j)
    return sorted(side)


def set_torsion(x: Tensor, bonds: Sequence[tuple[int, int]], atoms: Sequence[int], value: float | Tensor) -> Tensor:
    """x (batch, n, 3) with the dihedral of atoms (a, b, c, d) set to ``value`` (radians) by rotating c's side of
    the b-c bond about its axis (bond lengths and angles unchanged). Returns a new tensor."""
    a, b, c, d = atoms
    side = torch.tensor(moving_side(x.shape[1], bonds, b, c), device=x.device)
    delta = torch.as_tensor(value, dtype=x.dtype, device=x.device) - torsion_angle(x, atoms)
    axis = x[:, c] - x[:, b]
    axis = axis / torch.linalg.vector_norm(axis, dim=-1, keepdim=True)
    p = x[:, side] - x[:, b, None]
    cos, sin = torch.cos(delta)[:, None, None], torch.sin(delta)[:, None, None]
    k = axis[:, None]
    rotated = (
        p * cos + torch.linalg.cross(k.expand_as(p), p, dim=-1) * sin + k * (k * p).sum(-1, keepdim=True) * (1 - cos)
    )
    out = x.clone()
    out[:, side] = rotated + x[:, b, None]
    return out


def signed_volume(n: Tensor, ca: Tensor, c: Tensor, cb: Tensor) -> Tensor:
    """The signed volume (N - CA) . ((C - CA) x (CB - CA)) of a chiral alpha carbon, positions (..., 3) -> (...).

    Positive for an L amino acid (the "CORN" rule), negative for D, zero for a planar centre.
    """
    return (torch.linalg.cross(c - ca, cb - ca, dim=-1) * (n - ca)).sum(-1)


def chirality_sign(n: Tensor, ca: Tensor, c: Tensor, cb: Tensor) -> Tensor:
    """Sign of ``signed_volume``: +1 for L, -1 for D, 0 for a planar centre (NaN stays NaN)."""
    return torch.sign(signed_volume(n, ca, c, cb))

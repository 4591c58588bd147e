"""Set a torsion of a molecule by rotating one side of its central bond: hand-built starting structures.

Used to seed dynamics in every basin of a Ramachandran plot (e.g. alanine dipeptide's phi > 0 states, which
unbiased MD at 300 K rarely visits), so that training data cover the states whose free energies we estimate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["moving_side", "set_torsion", "torsion_angle"]


def torsion_angle(x: Tensor, atoms: Sequence[int]) -> Tensor:
    """Dihedral angle of atoms (a, b, c, d) in radians, [-pi, pi] (IUPAC sign, as mdtraj); x (batch, n, 3)."""
    from ..flow.internal_coordinates import _torsion

    a, b, c, d = atoms
    return _torsion(x[:, a], x[:, b], x[:, c], x[:, d])


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

"""OpenMM's ``CMAPTorsionForce`` as a batched torch term: bicubic energy maps over pairs of dihedral angles.

The patch coefficients are built the way ``CMAPTorsionForceImpl::calcMapDerivatives`` builds them: the first
derivatives along each angle and the cross derivative at every grid point come from periodic cubic splines through
the grid values (the cross derivative is the spline derivative, along the first angle, of the second-angle
derivatives), and each of the ``size x size`` patches holds the 16 coefficients of the bicubic polynomial that
matches the value, both first derivatives and the cross derivative at its four corners. Angles follow OpenMM's
Reference platform: the dihedral (``PeriodicTorsionForce``'s convention, in (-pi, pi]) is wrapped into [0, 2 pi),
and ``energy[i + size * j]`` of a map is the energy at (``i * 2 pi / size``, ``j * 2 pi / size``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import UnsupportedSystemError
from .base import ForceTerm, plain
from .kernels import dihedral_angle

__all__ = ["CMAPTorsionTerm", "cmap_patch_coefficients", "periodic_spline_slopes"]


def periodic_spline_slopes(values: np.ndarray) -> np.ndarray:
    """First derivatives at the knots of the periodic cubic spline through equally spaced ``values``.

    values: shape (..., size), the function at ``k * 2 pi / size`` (k = 0 .. size-1; period 2 pi).
    Returns dvalues/dangle per radian, same shape. The spline's second derivatives M solve the cyclic system
    ``M[k-1] + 4 M[k] + M[k+1] = 6 (y[k+1] - 2 y[k] + y[k-1]) / h^2``, and the slope at knot k is
    ``(y[k+1] - y[k]) / h - h (2 M[k] + M[k+1]) / 6`` (h = 2 pi / size).
    """
    values = np.asarray(values, dtype=np.float64)
    size = values.shape[-1]
    h = 2.0 * math.pi / size
    if size < 3:  # too few knots for the cyclic system: a constant or two-point map
        nxt = np.roll(values, -1, axis=-1)
        prv = np.roll(values, 1, axis=-1)
        return (nxt - prv) / (2.0 * h) if size == 2 else np.zeros_like(values)
    nxt = np.roll(values, -1, axis=-1)
    prv = np.roll(values, 1, axis=-1)
    system = 4.0 * np.eye(size) + np.roll(np.eye(size), 1, axis=1) + np.roll(np.eye(size), -1, axis=1)
    rhs = 6.0 * (nxt - 2.0 * values + prv) / (h * h)
    second = np.linalg.solve(system, rhs.reshape(-1, size).T).T.reshape(values.shape)
    return (nxt - values) / h - h * (2.0 * second + np.roll(second, -1, axis=-1)) / 6.0


def _bicubic_matrix() -> np.ndarray:
    """The (16, 16) inverse of the map from coefficients c[i, j] (of u^i v^j on the unit square, flattened i*4+j)
    to the corner conditions [f, f_u, f_v, f_uv] at corners (0,0), (1,0), (1,1), (0,1), in that order."""
    corners = ((0, 0), (1, 0), (1, 1), (0, 1))
    rows = []
    for derivative in ((0, 0), (1, 0), (0, 1), (1, 1)):
        for u, v in corners:
            row = np.zeros(16)
            for i in range(4):
                for j in range(4):
                    if i < derivative[0] or j < derivative[1]:
                        continue
                    factor_u = i if derivative[0] else 1
                    factor_v = j if derivative[1] else 1
                    power_u, power_v = i - derivative[0], j - derivative[1]
                    row[i * 4 + j] = factor_u * factor_v * (u**power_u) * (v**power_v)
            rows.append(row)
    return np.linalg.inv(np.array(rows))


def cmap_patch_coefficients(energy: np.ndarray, size: int) -> np.ndarray:
    """Bicubic patch coefficients of one CMAP energy map, as ``CMAPTorsionForceImpl`` computes them.

    energy: kJ/mol, shape (size * size,), ``energy[i + size * j]`` at angles (i, j) * 2 pi / size.
    Returns shape (size * size, 4, 4), kJ/mol: patch ``s + size * t`` covers angles [s, s+1) x [t, t+1) grid steps
    and holds c[a, b], the coefficient of ``u^a v^b`` with u, v in [0, 1) the position inside the patch.
    """
    grid = np.asarray(energy, dtype=np.float64).reshape(size, size).T  # grid[i, j] = energy[i + size * j]
    d1 = periodic_spline_slopes(grid.T).T  # along the first angle (axis 0)
    d2 = periodic_spline_slopes(grid)  # along the second angle (axis 1)
    d12 = periodic_spline_slopes(d2.T).T  # the first-angle derivative of d2
    delta = 2.0 * math.pi / size
    inverse = _bicubic_matrix()
    nxt = (np.arange(size) + 1) % size
    coefficients = np.empty((size, size, 16))  # [s, t]
    for s in range(size):
        for t in range(size):
            corners = ((s, t), (nxt[s], t), (nxt[s], nxt[t]), (s, nxt[t]))
            rhs = np.concatenate(
                [
                    [grid[c] for c in corners],
                    [d1[c] * delta for c in corners],
                    [d2[c] * delta for c in corners],
                    [d12[c] * delta * delta for c in corners],
                ]
            )
            coefficients[s, t] = inverse @ rhs
    return coefficients.transpose(1, 0, 2).reshape(size * size, 4, 4)  # patch index s + size * t


class CMAPTorsionTerm(ForceTerm):
    """``CMAPTorsionForce``: ``sum_torsions map(phi, psi)``, kJ/mol, with OpenMM's bicubic interpolation.

    Buffers: atoms (long, (n_torsions, 8)): the four atoms of the first and of the second dihedral; offset (long,
    (n_torsions,)): where the torsion's map starts in ``coefficients``; size (float64, (n_torsions,)): its grid
    size; coefficients (float64, (n_patches_all_maps, 16)), kJ/mol. Memory per configuration: O(n_torsions).
    """

    def __init__(
        self,
        atoms: Tensor,
        offset: Tensor,
        size: Tensor,
        coefficients: Tensor,
        force_index: int = -1,
        force_group: int = 0,
    ) -> None:
        super().__init__("CMAPTorsionForce", force_index, force_group)
        self.register_buffer("atoms", atoms)
        self.register_buffer("offset", offset)
        self.register_buffer("size", size)
        self.register_buffer("coefficients", coefficients)

    @classmethod
    def from_force(cls, force: Any, force_index: int = -1) -> CMAPTorsionTerm:
        """Build from an ``openmm.CMAPTorsionForce``; periodic forces raise ``UnsupportedSystemError``."""
        if force.usesPeriodicBoundaryConditions():
            raise UnsupportedSystemError(
                f"force {force_index} (CMAPTorsionForce) uses periodic boundary conditions; TorchForceField "
                "supports only non-periodic Systems: use OpenMMEnergy"
            )
        tables, offsets, sizes, start = [], [], [], 0
        for m in range(force.getNumMaps()):
            size, energy = force.getMapParameters(m)
            values = np.array([plain(e) for e in energy], dtype=np.float64)
            tables.append(cmap_patch_coefficients(values, size).reshape(-1, 16))
            offsets.append(start)
            sizes.append(size)
            start += size * size
        rows = [force.getTorsionParameters(t) for t in range(force.getNumTorsions())]
        maps = np.array([r[0] for r in rows], dtype=np.int64)
        atoms = np.array([r[1:9] for r in rows], dtype=np.int64).reshape(-1, 8)
        offset_arr = np.asarray(offsets, dtype=np.int64)[maps] if len(rows) else np.zeros(0, dtype=np.int64)
        size_arr = np.asarray(sizes, dtype=np.float64)[maps] if len(rows) else np.zeros(0)
        coefficients = np.concatenate(tables) if tables else np.zeros((0, 16))
        return cls(
            torch.as_tensor(atoms),
            torch.as_tensor(offset_arr),
            torch.as_tensor(size_arr),
            torch.as_tensor(coefficients),
            force_index,
            force.getForceGroup(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Energy in kJ/mol, shape (batch,), for positions ``x`` in nm, shape (batch, n_atoms, 3)."""
        if self.atoms.shape[0] == 0:
            return x.new_zeros(x.shape[0])
        two_pi = 2.0 * math.pi
        size = self.size.to(x.dtype)
        delta = two_pi / size
        angles = dihedral_angle(x, self.atoms.view(-1, 4)).view(x.shape[0], -1, 2)
        angles = torch.where(angles < 0, angles + two_pi, angles)  # OpenMM: fmod(angle + 2 pi, 2 pi)
        scaled = angles / delta.unsqueeze(-1)
        cell = torch.minimum(scaled.detach().floor(), (size - 1).unsqueeze(-1))
        u, v = (scaled - cell).unbind(-1)
        s, t = cell.long().unbind(-1)
        patch = self.offset + s + self.size.long() * t
        c = self.coefficients.to(x.dtype).index_select(0, patch.reshape(-1)).view(*patch.shape, 4, 4)
        along_v = ((c[..., 3] * v.unsqueeze(-1) + c[..., 2]) * v.unsqueeze(-1) + c[..., 1]) * v.unsqueeze(-1)
        along_v = along_v + c[..., 0]  # (batch, n_torsions, 4): the polynomial in v for each power of u
        energy = ((along_v[..., 3] * u + along_v[..., 2]) * u + along_v[..., 1]) * u + along_v[..., 0]
        return energy.sum(dim=-1)

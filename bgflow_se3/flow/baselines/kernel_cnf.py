"""Köhler, Klein and Noé's radial-kernel dynamics (arXiv 1910.00753, eqs. 3-4) as a CNF baseline.

``dx_i/dt = sum_{j != i} psi(|x_i - x_j|, t) (x_i - x_j)`` with a scalar ``psi`` built from Gaussian radial basis
functions in the distance times Gaussian basis functions in time. The vector field is E(n) and permutation
equivariant and keeps the CoM fixed; its exact divergence (eq. 4) is
``sum_{i != j} [psi'(r_ij) r_ij + dim * psi(r_ij)]``, computed in closed form (no autograd pass).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .cnf import ContinuousFlow

__all__ = ["KernelDynamics", "KernelFlow", "default_r_max", "gaussian_basis", "pair_field", "unique_pairs"]


def gaussian_basis(r: Tensor, centres: Tensor, width: float) -> tuple[Tensor, Tensor]:
    """Gaussians exp(-(r - mu)^2 / (2 w^2)) at the centres and their r-derivatives; shapes r.shape + (n_centres,)."""
    d = (r[..., None] - centres) / width
    value = torch.exp(-0.5 * d * d)
    return value, value * d * (-1.0 / width)


def unique_pairs(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Unique pairs i < j of x (batch, n, dim): indices i, j (P,), the incidence matrix (n, P) (+1 at i, -1 at j),
    x_i - x_j (batch, P, dim) and r_ij (batch, P)."""
    n = x.shape[1]
    i, j = torch.triu_indices(n, n, offset=1, device=x.device)
    pair = torch.arange(len(i), device=x.device)
    incidence = torch.zeros(n, len(i), dtype=x.dtype, device=x.device)
    incidence[i, pair] = 1.0
    incidence[j, pair] = -1.0
    diff = x[:, i] - x[:, j]
    return i, j, incidence, diff, diff.pow(2).sum(-1).clamp_min(1e-30).sqrt()  # no inf gradient at r = 0


def pair_field(incidence: Tensor, psi: Tensor, diff: Tensor) -> Tensor:
    """The field ``f_i = sum_{j != i} psi_ij (x_i - x_j)`` from unique-pair values psi (batch, P), symmetric in i and
    j, and x_i - x_j (batch, P, dim) (``unique_pairs``): pair p adds psi (x_i - x_j) to i and its negative to j.
    Returns (batch, n, dim); the field sums to zero, so the CoM stays fixed."""
    return torch.einsum("np,bpd->bnd", incidence, psi[..., None] * diff)


def default_r_max(n_atoms: int, dim: int) -> float:
    """Largest distance the radial features cover by default (reduced units): 8 in 2D (DW4), else 2 ceil(n^(1/3))."""
    return 8.0 if dim == 2 else 2.0 * math.ceil(n_atoms ** (1 / 3))


class KernelDynamics(nn.Module):
    """The radial-kernel vector field of Köhler et al.

    psi(r, t) = sum_{k, l} A_kl exp(-(r - mu_k)^2 / (2 s^2)) exp(-(t - c_l)^2 / (2 s_t^2)), with ``n_kernels``
    distance centres ``mu_k`` evenly on [0, r_max] (width s = their spacing), ``n_time`` time centres on [0, 1].
    A starts at zero, so the flow starts as the identity. Distances in the reduced units of the data.
    """

    def __init__(self, n_kernels: int = 32, r_max: float = 8.0, n_time: int = 8) -> None:
        super().__init__()
        if n_kernels < 2 or n_time < 1 or not r_max > 0:
            raise ValueError(f"need n_kernels >= 2, n_time >= 1, r_max > 0; got {n_kernels}, {n_time}, {r_max}")
        self.register_buffer("mu", torch.linspace(0.0, r_max, n_kernels))
        self.register_buffer("c", torch.linspace(0.0, 1.0, n_time))
        self.width = r_max / (n_kernels - 1)
        self.time_width = 1.0 / max(n_time - 1, 1)
        self.weights = nn.Parameter(torch.zeros(n_kernels, n_time))

    def _psi_and_derivative(self, r: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """psi(r, t) and d psi / dr for distances r of any shape; returns two tensors of r's shape."""
        time_basis, _ = gaussian_basis(t, self.c, self.time_width)  # (n_time,)
        coeff = self.weights @ time_basis  # (n_kernels,)
        basis, d_basis = gaussian_basis(r, self.mu, self.width)
        return basis @ coeff, d_basis @ coeff

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        """dx/dt, shape (batch, n_atoms, dim), for x of shape (batch, n_atoms, dim) and a 0-d time t."""
        _, _, incidence, diff, r = unique_pairs(x)
        psi, _ = self._psi_and_derivative(r, t.to(x.dtype))
        return pair_field(incidence, psi, diff)

    def divergence(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """dx/dt and its exact divergence (Köhler et al. eq. 4): shapes (batch, n_atoms, dim) and (batch,)."""
        _, _, incidence, diff, r = unique_pairs(x)
        psi, dpsi = self._psi_and_derivative(r, t.to(x.dtype))
        f = pair_field(incidence, psi, diff)
        div = 2.0 * (dpsi * r + x.shape[-1] * psi).sum(-1)  # each unique pair counts for (i, j) and (j, i)
        return f, div


class KernelFlow(ContinuousFlow):
    """CNF with Köhler et al.'s radial-kernel dynamics and its closed-form divergence.

    n_atoms, dim: system size; r_max: largest distance the kernels cover (reduced units; 8 suits DW4, 4 LJ13).
    length_scale, kinetic_weight: the base's std and the kinetic-energy regulariser (see ``ContinuousFlow``).
    Exposes ``sample(n, generator) -> (x, log_q)`` and ``log_prob(x)`` like every flow baseline.
    """

    def __init__(
        self,
        n_atoms: int,
        dim: int,
        n_kernels: int = 32,
        r_max: float | None = None,
        n_time: int = 8,
        n_steps: int = 20,
        length_scale: float = 1.0,
        kinetic_weight: float = 0.0,
    ) -> None:
        if r_max is None:
            r_max = default_r_max(n_atoms, dim)
        super().__init__(
            KernelDynamics(n_kernels, r_max, n_time), n_atoms, dim, n_steps=n_steps, trace="analytic",
            length_scale=length_scale, kinetic_weight=kinetic_weight,
        )  # fmt: skip

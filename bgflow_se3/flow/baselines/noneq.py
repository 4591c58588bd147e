"""A non-equivariant baseline: RealNVP affine couplings on the flattened CoM-free subspace coordinates.

CoM-free x (n_atoms, dim) is mapped isometrically to y = B^T x of shape (n_atoms - 1, dim), with B an orthonormal
basis (n_atoms, n_atoms - 1) of the zero-sum vectors (Helmert); then flattened to (n_atoms - 1) * dim numbers, on
which a stack of affine couplings acts, with a standard Gaussian base. The isometry has unit Jacobian, so log q
is normalised on the same subspace as the equivariant flows and the NLLs compare. It has no built-in rotation or
permutation symmetry: that is what Köhler et al.'s generalisation experiment contrasts. ``random_rotations``
provides the optional rotation augmentation of training data.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..checks import check_positions
from ..coupling_stack import CouplingStack, alternating_masks, zero_output_mlp
from .cnf import remove_mean

__all__ = ["NonEquivariantFlow", "from_helmert", "helmert_basis", "random_rotations", "to_helmert"]


def helmert_basis(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Orthonormal basis of {v in R^n : sum(v) = 0}, shape (n, n - 1) (columns: Helmert contrasts)."""
    basis = torch.zeros(n, n - 1, dtype=dtype)
    for k in range(1, n):
        basis[:k, k - 1] = 1.0
        basis[k, k - 1] = -float(k)
        basis[:, k - 1] /= math.sqrt(k * (k + 1))
    return basis


def to_helmert(x: Tensor, basis: Tensor) -> Tensor:
    """Isometric subspace coordinates B^T x of positions x (..., n_atoms, dim) (CoM removed first), shape
    (..., n_atoms - 1, dim); basis: ``helmert_basis(n_atoms)``."""
    return torch.einsum("na,...nd->...ad", basis.to(x.dtype), remove_mean(x))


def from_helmert(y: Tensor, basis: Tensor) -> Tensor:
    """Inverse of ``to_helmert``: CoM-free positions (..., n_atoms, dim) from y (..., n_atoms - 1, dim)."""
    return torch.einsum("na,...ad->...nd", basis.to(y.dtype), y)


def random_rotations(
    n: int,
    dim: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """n uniformly random proper rotation matrices, shape (n, dim, dim) (QR of Gaussian matrices, det +1).
    ``device`` is where the Gaussian matrices are drawn (the generator's device)."""
    a = torch.randn(n, dim, dim, generator=generator, dtype=dtype, device=device)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    flip = torch.det(q) < 0
    q[flip, :, 0] = -q[flip, :, 0]
    return q


class _AffineCoupling(nn.Module):
    """y_b = x_b * exp(s(x_a)) + t(x_a) on the coordinates where ``mask`` is False; scales bounded by tanh."""

    def __init__(self, mask: Tensor, hidden: int, n_hidden: int) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        d_in, d_out = int(mask.sum()), int((~mask).sum())
        self.net = zero_output_mlp(d_in, 2 * d_out, hidden, n_hidden)
        self.scale = nn.Parameter(torch.ones(d_out))

    def _params(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.net(cond).chunk(2, dim=-1)
        return self.scale * torch.tanh(s), t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._params(x[:, self.mask])
        y = x.clone()
        y[:, ~self.mask] = x[:, ~self.mask] * torch.exp(s) + t
        return y, s.sum(-1)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._params(y[:, self.mask])
        x = y.clone()
        x[:, ~self.mask] = (y[:, ~self.mask] - t) * torch.exp(-s)
        return x, -s.sum(-1)


class NonEquivariantFlow(CouplingStack):
    """RealNVP on (n_atoms - 1) * dim CoM-free subspace coordinates; data -> latent is ``forward``.

    n_layers affine couplings alternate between the two halves of a fixed random permutation per layer (seeded by
    ``seed``), followed by a learned per-coordinate scale and shift on the data side. Exposes ``n_atoms``, ``dim``,
    ``sample(n, generator) -> (x, log_q)``, ``log_prob(x)`` and the bijection ``forward`` / ``inverse`` on
    subspace coordinates with log-dets. length_scale: initial value of the learned data-side scale (the data's RMS
    coordinate trains faster than 1).
    """

    def __init__(
        self,
        n_atoms: int,
        dim: int,
        n_layers: int = 8,
        hidden: int = 64,
        n_hidden: int = 2,
        seed: int = 0,
        length_scale: float = 1.0,
    ) -> None:
        if n_atoms < 2:
            raise ValueError(f"need at least 2 particles, got n_atoms={n_atoms}")
        if not length_scale > 0:
            raise ValueError(f"length_scale must be positive, got {length_scale}")
        d = (n_atoms - 1) * dim
        layers = [_AffineCoupling(mask, hidden, n_hidden) for mask in alternating_masks(d, n_layers, seed)]
        super().__init__(layers, torch.zeros(d), torch.full((d,), math.log(length_scale)))
        self.n_atoms, self.dim = int(n_atoms), int(dim)
        self.register_buffer("basis", helmert_basis(n_atoms))

    def to_subspace(self, x: Tensor) -> Tensor:
        """Flattened subspace coordinates of CoM-free x: (batch, n_atoms, dim) -> (batch, (n_atoms - 1) * dim)."""
        return to_helmert(x, self.basis).flatten(1)

    def from_subspace(self, y: Tensor) -> Tensor:
        """Inverse of ``to_subspace``: (batch, (n_atoms - 1) * dim) -> CoM-free (batch, n_atoms, dim)."""
        return from_helmert(y.reshape(y.shape[0], self.n_atoms - 1, self.dim), self.basis)

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x) in nats on the CoM-free subspace, shape (batch,); x: (batch, n_atoms, dim), CoM removed first."""
        x = check_positions(x, self.n_atoms, self.dim, self.basis)
        z, log_det = self(self.to_subspace(x))
        return self.normal_log_prob(z) + log_det

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n CoM-free configurations (n, n_atoms, dim) and their log q (n,), nats; reparameterised."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        z = self.draw_latent(n, generator)
        y, log_det = self.inverse(z)
        return self.from_subspace(y), self.normal_log_prob(z) - log_det

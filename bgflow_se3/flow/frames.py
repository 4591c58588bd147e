"""Equivariant frames and coordinates: centre of mass, shift-CoM, orthonormal frames, spherical coordinates, rotations.

Shapes: positions are ``(..., n_atoms, dim)``; vectors are ``(..., dim)`` with ``dim`` 2 or 3. Every function is
equivariant under rotations (and, where stated, reflections) of its inputs; lengths are in the caller's units.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "FrameMethod",
    "cartesian_from_spherical",
    "centre_on_aug",
    "centre_on_x",
    "frame_gram_min_eig",
    "orthonormal_frame",
    "random_rotation",
    "remove_com",
    "safe_norm",
    "spherical_from_cartesian",
]


def _tiny(t: Tensor) -> float:
    """A norm below which a vector is treated as degenerate: 1e-12 in float64, 1e-6 in float32."""
    return 1e-12 if t.dtype == torch.float64 else 1e-6


def safe_norm(v: Tensor, dim: int = -1, keepdim: bool = False, eps: float | None = None) -> Tensor:
    """Euclidean norm, clamped below at ``eps`` (default: 1e-12 in float64, 1e-6 otherwise).

    Exact above ``eps``; below it the value is ``eps`` and the gradient is zero (never NaN).
    """
    eps = _tiny(v) if eps is None else eps
    return torch.sqrt(torch.clamp_min((v * v).sum(dim=dim, keepdim=keepdim), eps * eps))


def remove_com(x: Tensor) -> Tensor:
    """Subtract the centre of mass (unweighted mean over atoms). x: (..., n_atoms, dim); same shape back."""
    return x - x.mean(dim=-2, keepdim=True)


def centre_on_aug(x: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """Shift-CoM: move the origin to the centre of mass of the first augmented copy.

    x: (batch, n_atoms, dim) with zero CoM; a: (batch, n_aug, n_atoms, dim). Returns (x - c, a - c) with
    c = mean over atoms of a[:, 0]. As a map from {CoM(x) = 0} to {CoM(a[:, 0]) = 0} it is linear with unit
    Jacobian (both hyperplanes with their induced Lebesgue measure); ``centre_on_x`` is its inverse.
    """
    c = a[:, 0].mean(dim=-2, keepdim=True)
    return x - c, a - c.unsqueeze(1)


def centre_on_x(x: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse shift-CoM: move the origin to the CoM of x. Shapes as in ``centre_on_aug``; returns (x - c, a - c)."""
    c = x.mean(dim=-2, keepdim=True)
    return x - c, a - c.unsqueeze(1)


FrameMethod = Literal["loewdin", "gram-schmidt"]


def orthonormal_frame(v1: Tensor, v2: Tensor | None = None, method: FrameMethod = "loewdin") -> Tensor:
    """Right-handed orthonormal frame from reference vectors.

    3D: v1, v2 of shape (..., 3), n = v1 x v2, e3 = e1 x e2.
      "loewdin" (symmetric orthogonalisation, the orthonormal pair nearest to (v1, v2)): (e1; e2) = S^(-1/2) (v1; v2)
      with S the 2 x 2 Gram matrix, in the closed form e1 = (v1 + v2 x n^) / t, e2 = (v2 + n^ x v1) / t,
      n^ = n / |n|, t = sqrt(|v1|^2 + |v2|^2 + 2 |n|).
      "gram-schmidt": e1 = v1 / |v1|, e2 = n x v1 normalised (= v2 minus its e1 part, normalised).
    2D: v1 of shape (..., 2) (v2 ignored); e1 = v1/|v1|, e2 = e1 rotated by +90 degrees.
    Returns shape (..., dim, dim) with rows e1, e2(, e3). Rotation equivariant: frame(R v) = frame(v) R^T.
    Not reflection equivariant (the frame stays right-handed).

    Neither 3D form subtracts nearly equal terms, so the frame is orthonormal to ~1e-15 in float64 down to
    sin(v1, v2) = 1e-8 (Loewdin: 1e-10; the textbook v2 - (v2 . e1) e1 loses digits as 1 / sin^2). Conditioning
    cannot be helped: any equivariant frame turns by up to ~sqrt(2) |dv| / sigma_min under a change dv of the
    vectors, sigma_min^2 = ``frame_gram_min_eig(v1, v2)``, and both methods measure that same worst case; the
    couplings therefore fade their transforms out where sigma_min is small. Exactly parallel or vanishing vectors
    give a finite frame (norms clamped at 1e-12 / 1e-6), not an orthonormal one.
    """
    if v1.shape[-1] == 2:
        e1 = v1 / safe_norm(v1, keepdim=True)
        e2 = torch.stack([-e1[..., 1], e1[..., 0]], dim=-1)
        return torch.stack([e1, e2], dim=-2)
    if v1.shape[-1] != 3 or v2 is None:
        raise ValueError(f"orthonormal_frame needs dim 2, or dim 3 with two vectors; got shape {tuple(v1.shape)}")
    n = torch.linalg.cross(v1, v2, dim=-1)
    if method == "loewdin":
        n_norm = safe_norm(n, keepdim=True)
        t2 = (v1 * v1).sum(-1, keepdim=True) + (v2 * v2).sum(-1, keepdim=True) + 2.0 * n_norm
        inv_t = torch.rsqrt(torch.clamp_min(t2, _tiny(v1) ** 2))
        e1 = (v1 + torch.linalg.cross(v2, n / n_norm, dim=-1)) * inv_t
        e2 = (v2 + torch.linalg.cross(n / n_norm, v1, dim=-1)) * inv_t
    elif method == "gram-schmidt":
        e1 = v1 / safe_norm(v1, keepdim=True)
        u2 = torch.linalg.cross(n, v1, dim=-1)  # v2 minus its v1 part, times |v1|^2: no cancellation
        e2 = u2 / safe_norm(u2, keepdim=True)
    else:
        raise ValueError(f"method must be 'loewdin' or 'gram-schmidt', got {method!r}")
    # rounding leaves n / |n| off perpendicular to v1 by ~1e-16 / sin(v1, v2); e1 x e2 is perpendicular to both
    e3 = torch.linalg.cross(e1, e2, dim=-1)
    return torch.stack([e1, e2, e3], dim=-2)


def frame_gram_min_eig(v1: Tensor, v2: Tensor | None = None) -> Tensor:
    """sigma_min^2: the smallest eigenvalue of the Gram matrix of the frame's reference vectors, length^2.

    3D: v1, v2 of shape (..., 3); 2D: |v1|^2 (one vector). Returns shape (...). The frame of ``orthonormal_frame``
    turns by up to ~sqrt(2) |dv| / sigma_min; zero for parallel or vanishing vectors. Rotation invariant.
    """
    sq1 = (v1 * v1).sum(-1)
    if v1.shape[-1] == 2 or v2 is None:
        return sq1
    trace = sq1 + (v2 * v2).sum(-1)
    det = torch.linalg.cross(v1, v2, dim=-1).pow(2).sum(-1)  # |v1 x v2|^2, no cancellation
    disc = torch.sqrt(torch.clamp_min(trace * trace - 4.0 * det, 0.0))
    return 2.0 * det / torch.clamp_min(trace + disc, _tiny(v1) ** 2)


def spherical_from_cartesian(p: Tensor, frame: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """Spherical (3D) or polar (2D) coordinates of vectors p in a frame.

    p: (..., dim) relative to the origin; frame: (..., dim, dim) rows e1, e2(, e3) from ``orthonormal_frame``.
    3D: returns (r, theta, phi): r = |p|, polar angle theta in [0, pi] from e1, torsion phi in [-pi, pi] from e2
    towards e3. 2D: returns (r, phi, None) with phi the signed angle from e1 in [-pi, pi].
    Volume element: r^2 sin(theta) dr dtheta dphi (3D), r dr dphi (2D).
    """
    c = torch.einsum("...ij,...j->...i", frame, p)
    if p.shape[-1] == 2:
        return safe_norm(c), torch.atan2(c[..., 1], c[..., 0]), None
    rho = safe_norm(c[..., 1:])
    r = safe_norm(c)
    theta = torch.atan2(rho, c[..., 0])
    phi = torch.atan2(c[..., 2], c[..., 1])
    return r, theta, phi


def cartesian_from_spherical(r: Tensor, angle: Tensor, phi: Tensor | None, frame: Tensor) -> Tensor:
    """Inverse of ``spherical_from_cartesian``: (r, theta, phi) in 3D or (r, phi, None) in 2D -> p, shape (..., dim)."""
    if frame.shape[-1] == 2:
        c = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=-1)
    else:
        s = torch.sin(angle)
        c = torch.stack([r * torch.cos(angle), r * s * torch.cos(phi), r * s * torch.sin(phi)], dim=-1)
    return torch.einsum("...ij,...i->...j", frame, c)


def random_rotation(
    dim: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    reflect: bool = False,
) -> Tensor:
    """A uniformly random (Haar) rotation matrix of shape (dim, dim), det +1 (det -1 when ``reflect``), on CPU."""
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q

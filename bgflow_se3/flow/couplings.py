"""Equivariant projection couplings (Midgley et al. 2023, sec. 3.2): Cartesian, spherical and vector projections.

A coupling transforms points ``z`` of shape ``(batch, n_atoms, n_trans, dim)`` (one or more multiplicities per
atom) conditioned on points ``cond`` of shape ``(batch, n_atoms, n_cond, dim)``. An EGNN on ``cond`` gives, per atom
and transformed multiplicity, equivariant reference vectors and invariant spline parameters. Each point is projected
into the invariant coordinates those vectors define, transformed there by rational-quadratic splines, and projected
back. Because the reference vectors rotate, translate and permute with ``cond``, the coupling is SE(3) x S_n
equivariant; the log-determinant is exact.

- ``"cartesian"``: origin ``c + v0``, Loewdin frame from ``v1, v2`` (2D: ``v1`` and its +90 degree turn);
  one spline per local coordinate on ``[-S L, S L]`` with linear tails (or, with ``cartesian_inner="affine"``, a
  softplus-scale affine map). SE(3) (not reflection) equivariant.
- ``"spherical"``: origin ``c + v0``; radius spline on ``[0, S L]``, polar angle on ``[0, pi]``, torsion circular
  (2D: radius and angle). log|det| gains ``(dim - 1) log(r'/r) + log(sin theta' / sin theta)``. SE(3) equivariant.
- ``"vector"``: ``n_vector_transforms`` radial splines in turn, each about the point ``c + v_k``. No frame and no
  cross product, so the coupling is E(3) (reflection) equivariant.

Here ``c`` is the mean over the conditioning multiplicities at the atom, ``L`` the ``length_scale`` and ``S`` the
``spline_range`` (10 in the reference implementation); splines are the identity beyond ``S L``.

Frame gate. Any equivariant frame from two vectors turns by ~|dv| / sigma_min, with sigma_min^2 the smallest
eigenvalue of their Gram matrix (``frame_gram_min_eig``), and is undefined where they are parallel. Networks give
small sigma_min often (13 atoms, weights perturbed by N(0, 0.02^2): median 0.03 L, 0.1 % quantile 0.002 L), and
24 couplings amplified rounding and rotation errors to 300 nats. So the parameters of every transform that reads
the frame (all Cartesian ones; the spherical angles, not the radius) are scaled by
``g = sigma_min^2 / (sigma_min^2 + (F L)^2)``, ``F`` the ``frame_floor``: where the frame is ill-conditioned the
transform fades to the identity, and its dependence on the frame, ~g / sigma_min, stays below 1 / (2 F L).
``g`` is invariant, so equivariance and the exact log-det are kept. 2D frames gate on sigma_min = |v1|.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from .egnn import EGNN
from .frames import (
    FrameMethod,
    cartesian_from_spherical,
    frame_gram_min_eig,
    orthonormal_frame,
    safe_norm,
    spherical_from_cartesian,
)
from .splines import n_spline_params, rational_quadratic_spline

__all__ = ["PROJECTIONS", "Projection", "ProjectionCoupling", "reference_vector_loss"]

Projection = Literal["cartesian", "spherical", "vector"]
PROJECTIONS: tuple[str, ...] = ("cartesian", "spherical", "vector")


def reference_vector_loss(v1: Tensor, v2: Tensor) -> Tensor:
    """Auxiliary loss -log(1 - |cos(v1, v2)|) that keeps two reference vectors from becoming collinear.

    v1, v2: (..., dim). Returns (...), >= 0; clamped at -log(1e-6) where they are (nearly) parallel.
    """
    cos = (v1 * v2).sum(-1) / (safe_norm(v1) * safe_norm(v2))
    return -torch.log(torch.clamp_min(1.0 - cos.abs(), 1e-6))


_SOFTPLUS_ONE = math.log(math.expm1(1.0))  # softplus(_SOFTPLUS_ONE) == 1


def _affine(q: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    """q' = softplus(params[..., 0] + c) * q + params[..., 1], identity at zero params; returns (value, log-det)."""
    scale = torch.nn.functional.softplus(params[..., 0] + _SOFTPLUS_ONE) + 1e-4
    shift = params[..., 1]
    if inverse:
        return (q - shift) / scale, -torch.log(scale)
    return q * scale + shift, torch.log(scale)


class ProjectionCoupling(nn.Module):
    """One equivariant coupling layer with a projection type; see the module docstring.

    Args:
        projection: "cartesian", "spherical" or "vector".
        dim: 2 or 3. n_cond, n_trans: conditioning and transformed multiplicities per atom.
        n_types: number of atom types. hidden, egnn_layers, mlp_blocks: EGNN size.
        n_bins: spline bins. length_scale: L, the unit of the spline intervals and of the EGNN inputs.
        spline_range: S, the half-width of the Cartesian and the radial spline intervals in units of L.
        cartesian_inner: "spline" (default) or "affine", the transform of the Cartesian projection's local coordinates.
        n_vector_transforms: radial transforms of the vector projection.
        frame_method: "loewdin" (default) or "gram-schmidt" orthogonalisation of the frame vectors.
        frame_floor: F, the frame gate's scale in units of L (see the module docstring); 0 turns the gate off.
        compiled: run the coupling (EGNN, splines, projections) as one ``torch.compile``d function, shared by
            all couplings; see ``compiled_transform``. The attribute can be switched at any time.

    ``forward(z, cond, types)`` and ``inverse(y, cond, types)`` return (points, log|det J| of shape (batch,),
    auxiliary loss of shape (batch,)); they are exact inverses and their log-dets sum to zero.
    """

    def __init__(
        self,
        projection: Projection,
        dim: int,
        n_cond: int,
        n_trans: int,
        n_types: int,
        hidden: int = 128,
        egnn_layers: int = 3,
        mlp_blocks: int = 1,
        n_bins: int = 8,
        length_scale: float = 1.0,
        n_vector_transforms: int = 3,
        spline_range: float = 10.0,
        cartesian_inner: Literal["spline", "affine"] = "spline",
        frame_method: FrameMethod = "loewdin",
        frame_floor: float = 0.1,
        compiled: bool = False,
    ) -> None:
        super().__init__()
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        if cartesian_inner not in ("spline", "affine"):
            raise ValueError(f"cartesian_inner must be 'spline' or 'affine', got {cartesian_inner!r}")
        self.affine = projection == "cartesian" and cartesian_inner == "affine"
        if dim not in (2, 3):
            raise ValueError(f"projection couplings support dim 2 or 3, got {dim}")
        self.projection, self.dim, self.n_trans, self.n_bins = projection, dim, n_trans, n_bins
        self.length_scale = float(length_scale)
        self.frame_method, self.frame_floor = frame_method, float(frame_floor)
        self.compiled = bool(compiled)
        self.bound = float(spline_range) * self.length_scale
        lin, bounded, circ = (n_spline_params(n_bins, b) for b in ("linear", "bounded", "circular"))
        if projection == "cartesian":
            self.n_vectors, self._splits = dim, ([2] if self.affine else [lin]) * dim
        elif projection == "spherical":
            self.n_vectors, self._splits = dim, ([lin, bounded, circ] if dim == 3 else [lin, circ])
        else:
            self.n_vectors, self._splits = n_vector_transforms, [lin] * n_vector_transforms
        frame_group = self.n_vectors if projection != "vector" and dim == 3 else None
        self.egnn = EGNN(
            n_types, n_cond, n_trans * self.n_vectors, hidden, egnn_layers, mlp_blocks, frame_group=frame_group
        )
        self.head = nn.Linear(hidden, n_trans * sum(self._splits))
        nn.init.zeros_(self.head.weight)  # every coupling starts as the identity
        nn.init.zeros_(self.head.bias)

    def _condition(self, cond: Tensor, types: Tensor) -> tuple[Tensor, Tensor, list[Tensor], Tensor]:
        """Returns (centre (B, N, 1, d), vectors (B, N, T, V, d), spline params per coordinate, aux (B,))."""
        b, n = cond.shape[:2]
        vec, feat = self.egnn(cond / self.length_scale, types)
        vec = vec.reshape(b, n, self.n_trans, self.n_vectors, self.dim) * self.length_scale
        params = self.head(feat).reshape(b, n, self.n_trans, -1)
        params = list(torch.split(params, self._splits, dim=-1))
        if self.projection != "vector" and self.frame_floor > 0:
            lam = frame_gram_min_eig(vec[..., 1, :], vec[..., 2, :] if self.dim == 3 else None)
            gate = (lam / (lam + (self.frame_floor * self.length_scale) ** 2)).unsqueeze(-1)  # (B, N, T, 1)
            first = 0 if self.projection == "cartesian" else 1  # the spherical radius does not read the frame
            params = params[:first] + [q * gate for q in params[first:]]
        centre = cond.mean(dim=2, keepdim=True)
        if self.projection != "vector" and self.dim == 3:
            aux = reference_vector_loss(vec[..., 1, :], vec[..., 2, :]).mean(dim=(1, 2))
        else:
            aux = torch.zeros(b, dtype=cond.dtype, device=cond.device)
        return centre, vec, params, aux

    def forward(self, z: Tensor, cond: Tensor, types: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z: (B, N, n_trans, dim); cond: (B, N, n_cond, dim); types: (N,). Returns (y, log|det dy/dz|, aux)."""
        return self._transform(z, cond, types, inverse=False)

    def inverse(self, y: Tensor, cond: Tensor, types: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Inverse of ``forward``; returns (z, log|det dz/dy|, aux)."""
        return self._transform(y, cond, types, inverse=True)

    def _transform(self, p: Tensor, cond: Tensor, types: Tensor, inverse: bool) -> tuple[Tensor, Tensor, Tensor]:
        if self.compiled:
            return compiled_transform()(self, _compiled_input(p), _compiled_input(cond), types, inverse)
        return self._eager_transform(p, cond, types, inverse)

    def _eager_transform(self, p: Tensor, cond: Tensor, types: Tensor, inverse: bool) -> tuple[Tensor, Tensor, Tensor]:
        if p.dim() == 3:  # flattened by the compiled path
            p, cond = p.unflatten(2, (-1, self.dim)), cond.unflatten(2, (-1, self.dim))
        centre, vec, params, aux = self._condition(cond, types)
        if self.projection == "cartesian":
            out, logdet = self._cartesian(p, centre, vec, params, inverse)
        elif self.projection == "spherical":
            out, logdet = self._spherical(p, centre, vec, params, inverse)
        else:
            out, logdet = self._vector(p, centre, vec, params, inverse)
        return out, logdet.sum(dim=(1, 2)), aux

    def _frame(self, vec: Tensor) -> Tensor:
        return orthonormal_frame(vec[..., 1, :], vec[..., 2, :] if self.dim == 3 else None, self.frame_method)

    def _cartesian(self, p, centre, vec, params, inverse):
        origin = centre + vec[..., 0, :]
        frame = self._frame(vec)
        local = torch.einsum("...ij,...j->...i", frame, p - origin)
        bound = self.bound
        coords, logdet = [], 0.0
        for i in range(self.dim):
            if self.affine:
                c, ld = _affine(local[..., i], params[i], inverse)
            else:
                c, ld = rational_quadratic_spline(local[..., i], params[i], -bound, bound, "linear", inverse)
            coords.append(c)
            logdet = logdet + ld
        # p plus the displacement: exactly p where the gated transform is the identity, whatever the frame
        out = p + torch.einsum("...ij,...i->...j", frame, torch.stack(coords, dim=-1) - local)
        return out, logdet

    def _spherical(self, p, centre, vec, params, inverse):
        origin = centre + vec[..., 0, :]
        frame = self._frame(vec)
        r, angle, phi = spherical_from_cartesian(p - origin, frame)
        r_new, logdet = rational_quadratic_spline(r, params[0], 0.0, self.bound, "linear", inverse)
        tiny = torch.finfo(p.dtype).tiny
        logdet = logdet + (self.dim - 1) * (torch.log(r_new) - torch.log(r))
        if self.dim == 3:
            theta_new, ld_t = rational_quadratic_spline(angle, params[1], 0.0, math.pi, "bounded", inverse)
            phi_new, ld_p = rational_quadratic_spline(phi, params[2], -math.pi, math.pi, "circular", inverse)
            log_sin = torch.log(torch.sin(theta_new).clamp_min(tiny)) - torch.log(torch.sin(angle).clamp_min(tiny))
            logdet = logdet + ld_t + ld_p + log_sin
            out = origin + cartesian_from_spherical(r_new, theta_new, phi_new, frame)
        else:
            angle_new, ld_a = rational_quadratic_spline(angle, params[1], -math.pi, math.pi, "circular", inverse)
            logdet = logdet + ld_a
            out = origin + cartesian_from_spherical(r_new, angle_new, None, frame)
        return out, logdet

    def _vector(self, p, centre, vec, params, inverse):
        bound = self.bound
        logdet = 0.0
        order = range(self.n_vectors - 1, -1, -1) if inverse else range(self.n_vectors)
        for k in order:
            origin = centre + vec[..., k, :]
            u = p - origin
            r = safe_norm(u, keepdim=True)
            r_new, ld = rational_quadratic_spline(r.squeeze(-1), params[k], 0.0, bound, "linear", inverse)
            ratio = r_new.unsqueeze(-1) / r
            p = origin + u * ratio
            logdet = logdet + ld + (self.dim - 1) * torch.log(ratio.squeeze(-1))
        return p, logdet


def _compiled_input(t: Tensor) -> Tensor:
    """(B, N, M, d) -> a fresh (B, N, M * d) copy that requires grad whenever grad mode is on; only B is dynamic.

    Dynamo guards on the memory layout of a view's base and on requires_grad: without the copy (B x N x M x d
    values) and the uniform requires_grad, one training run compiled 9 graphs and hit the recompile limit.
    Only the batch axis is symbolic: with every axis dynamic, inductor looped over the symbolic M * d = 3 with
    8-wide vector loads and scalar tails, and compiled sampling ran ~1.5x slower.
    """
    t = t.flatten(2).clone()
    if torch.is_grad_enabled() and not t.requires_grad:
        t.requires_grad_()
    torch._dynamo.maybe_mark_dynamic(t, 0)  # a batch of 1 gets its own specialised graph
    torch._dynamo.mark_static(t, [1, 2])
    return t


@functools.cache
def compiled_transform() -> Callable[[ProjectionCoupling, Tensor, Tensor, Tensor, bool], tuple[Tensor, Tensor, Tensor]]:
    """``torch.compile`` of one coupling's transform, (coupling, points, cond, types, inverse) -> (out, log-det, aux).

    One function for every coupling: the parameters are inputs of the compiled graph, so couplings of one shape
    share its code; graphs are compiled per direction, grad mode, projection and dtype (``_compiled_input`` keeps
    layouts and requires_grad uniform). Only the batch axis is dynamic, so batches and sampling chunks of any size
    (but 1) reuse them. Inductor fuses the elementwise passes over the (pairs, batch, hidden) edge tensors and the
    spline arithmetic into a few loops, and without gradients the EGNN's atom/pair moves too (``egnn.Pairs``): on 2
    CPU cores the alanine dipeptide reference flow (float32) ran log q + backward ~1.8x and sampling ~2.5x faster
    than eager. The first calls compile: ~2 min per graph on 2 CPU cores cold, ~20 s with inductor's on-disk cache
    warm; a C++ compiler is needed on CPU. Results agree with eager to rounding (float32: ~1e-5 nats in log q;
    float64: ~1e-14).
    """
    return torch.compile(ProjectionCoupling._eager_transform)

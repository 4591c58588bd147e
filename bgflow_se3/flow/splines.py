"""Monotone rational-quadratic splines (Durkan et al. 2019, arXiv 1906.04032), value and log-derivative together.

A spline with ``K`` bins on ``[lower, upper]`` is given by unconstrained parameters of shape ``(*, n_params)``:
``K`` widths, ``K`` heights and the knot derivatives. Three boundary conditions:

- ``"linear"``: derivative 1 at both ends, identity outside the interval (linear tails); ``3K - 1`` parameters.
- ``"bounded"``: free end derivatives; inputs must lie in the interval (they are clamped); ``3K + 1`` parameters.
- ``"circular"``: one shared end derivative, so the map is a smooth bijection of the circle of circumference
  ``upper - lower`` (Rezende et al. 2020); ``3K`` parameters.

All-zero parameters give the identity map, so zero-initialised networks start every spline as the identity.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Boundary", "n_spline_params", "rational_quadratic_spline"]

Boundary = Literal["linear", "bounded", "circular"]

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3
_DERIVATIVE_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))  # softplus(shift) + MIN_DERIVATIVE == 1


def n_spline_params(n_bins: int, boundary: Boundary) -> int:
    """Number of unconstrained parameters of one spline with ``n_bins`` bins and the given boundary condition."""
    extra = {"linear": -1, "bounded": 1, "circular": 0}
    if boundary not in extra:
        raise ValueError(f"boundary must be 'linear', 'bounded' or 'circular', got {boundary!r}")
    return 3 * n_bins + extra[boundary]


def _knots(unnormalised: Tensor, lower: float, upper: float, min_size: float) -> tuple[Tensor, Tensor]:
    """Knot positions (*, K + 1) from unnormalised bin sizes (*, K); also the bin sizes (*, K)."""
    k = unnormalised.shape[-1]
    sizes = min_size + (1.0 - min_size * k) * torch.softmax(unnormalised, dim=-1)
    cum = torch.cumsum(sizes, dim=-1)
    cum = F.pad(cum, (1, 0), value=0.0)
    cum = lower + (upper - lower) * cum
    cum = torch.cat([cum[..., :1].clamp(lower, lower), cum[..., 1:-1], cum[..., -1:].clamp(upper, upper)], dim=-1)
    return cum, cum[..., 1:] - cum[..., :-1]


def _clamp_keeping_gradient(t: Tensor, lower: float, upper: float) -> Tensor:
    """``t`` clamped to ``[lower, upper]`` with gradient 1 everywhere.

    At an interval end the spline's derivative is its one-sided derivative, which the log-det formula gives;
    ``torch.clamp``'s gradient at the bound itself is 1 in some torch builds and 0 in others (2.14), which would make
    autograd disagree with the log-det there (log 0 = -inf).
    """
    return t + (t.clamp(lower, upper) - t).detach()


def _gather(t: Tensor, idx: Tensor) -> Tensor:
    return torch.gather(t, -1, idx.unsqueeze(-1)).squeeze(-1)


def rational_quadratic_spline(
    x: Tensor,
    params: Tensor,
    lower: float,
    upper: float,
    boundary: Boundary = "linear",
    inverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """Apply a monotone rational-quadratic spline elementwise.

    x: inputs, shape (*). params: unconstrained spline parameters, shape (*, n_spline_params(K, boundary)),
    broadcastable against x's shape plus one trailing axis. Returns (y, log|dy/dx|) both of shape (*); with
    ``inverse=True`` returns (x, log|dx/dy|) of the inverse map, so forward and inverse log-dets sum to zero.
    """
    n_params = params.shape[-1]
    k = {"linear": (n_params + 1) // 3, "bounded": (n_params - 1) // 3, "circular": n_params // 3}[boundary]
    if n_spline_params(k, boundary) != n_params:
        raise ValueError(f"{n_params} parameters do not describe a {boundary!r} spline")
    params = params.expand(*x.shape, n_params)
    uw, uh, ud = params[..., :k], params[..., k : 2 * k], params[..., 2 * k :]
    xk, w = _knots(uw, lower, upper, MIN_BIN_WIDTH)
    yk, h = _knots(uh, lower, upper, MIN_BIN_HEIGHT)
    d = MIN_DERIVATIVE + F.softplus(ud + _DERIVATIVE_SHIFT)
    if boundary == "linear":
        one = torch.ones_like(d[..., :1])
        d = torch.cat([one, d, one], dim=-1)
    elif boundary == "circular":
        d = torch.cat([d, d[..., :1]], dim=-1)

    inside = (x >= lower) & (x <= upper)
    xc = _clamp_keeping_gradient(x, lower, upper)
    knots = yk if inverse else xk
    idx = (xc.unsqueeze(-1) >= knots[..., 1:-1]).sum(dim=-1)
    x_lo, w_b, y_lo, h_b = _gather(xk, idx), _gather(w, idx), _gather(yk, idx), _gather(h, idx)
    d_lo, d_hi = _gather(d, idx), _gather(d, idx + 1)
    s = h_b / w_b
    two_s = d_lo + d_hi - 2.0 * s
    if not inverse:
        xi = _clamp_keeping_gradient((xc - x_lo) / w_b, 0.0, 1.0)
        xi1 = xi * (1.0 - xi)
        denom = s + two_s * xi1
        y = y_lo + h_b * (s * xi * xi + d_lo * xi1) / denom
        logdet = 2.0 * torch.log(s) + torch.log(d_hi * xi * xi + 2.0 * s * xi1 + d_lo * (1.0 - xi) ** 2)
        logdet = logdet - 2.0 * torch.log(denom)
    else:
        dy = xc - y_lo
        qa = h_b * (s - d_lo) + dy * two_s
        qb = h_b * d_lo - dy * two_s
        qc = -s * dy
        disc = torch.clamp_min(qb * qb - 4.0 * qa * qc, 0.0)
        xi = _clamp_keeping_gradient((2.0 * qc) / (-qb - torch.sqrt(disc)), 0.0, 1.0)
        xi1 = xi * (1.0 - xi)
        denom = s + two_s * xi1
        y = x_lo + xi * w_b
        logdet = 2.0 * torch.log(s) + torch.log(d_hi * xi * xi + 2.0 * s * xi1 + d_lo * (1.0 - xi) ** 2)
        logdet = -(logdet - 2.0 * torch.log(denom))
    if boundary == "linear":
        y = torch.where(inside, y, x)
        logdet = torch.where(inside, logdet, torch.zeros_like(logdet))
    return y, logdet

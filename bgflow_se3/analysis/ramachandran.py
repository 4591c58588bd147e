"""Kullback-Leibler divergences between distributions of angles on periodic histograms (Ramachandran, phi).

Angles live on the torus [-pi, pi)^d; every angle is wrapped there first, so phi = pi and phi = -pi fall into the
same bin. Each histogram is normalised to a probability mass function over its bins, a pseudo-count (probability
mass per bin) is added to every bin of both histograms and both are normalised again, so an empty flow bin under
the reference gives a large but finite divergence. Divergences are in nats. The plug-in estimate is biased
upwards by roughly (occupied bins) / (2 n_effective) for each histogram: compare numbers at equal bins and sizes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["histogram_kl", "periodic_histogram", "phi_profile_kl", "ramachandran_kl"]

DEFAULT_PSEUDO_COUNT = 1e-6


def _array(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or inf; drop those samples first")
    return array


def periodic_histogram(angles: Any, bins: int = 64, weights: Any | None = None) -> np.ndarray:
    """Probability mass of angles in ``bins`` equal bins per dimension on [-pi, pi)^d.

    angles: radians, shape (n,) or (n, d) (any real value: wrapped onto [-pi, pi)). weights: optional importance
    weights (not log), non-negative, shape (n,). Returns an array of shape ``(bins,) * d`` summing to 1.
    """
    angles = _array(angles, "angles")
    angles = angles[:, None] if angles.ndim == 1 else angles
    if angles.ndim != 2 or len(angles) == 0:
        raise ValueError(f"angles must have shape (n,) or (n, d) with n > 0, got {angles.shape}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    w = None
    if weights is not None:
        w = _array(weights, "weights")
        if w.shape != (len(angles),):
            raise ValueError(f"weights must have shape ({len(angles)},), got {w.shape}")
        if (w < 0).any() or not w.sum() > 0:
            raise ValueError("weights must be non-negative with a positive sum")
    wrapped = np.mod(angles + np.pi, 2 * np.pi)  # in [0, 2 pi)
    index = np.minimum((wrapped / (2 * np.pi) * bins).astype(np.int64), bins - 1)
    flat = np.ravel_multi_index(tuple(index.T), (bins,) * angles.shape[1])
    mass = np.bincount(flat, weights=w, minlength=bins ** angles.shape[1]).astype(np.float64)
    return (mass / mass.sum()).reshape((bins,) * angles.shape[1])


def histogram_kl(p: Any, q: Any, pseudo_count: float = DEFAULT_PSEUDO_COUNT) -> float:
    """KL(p || q) = sum_k p_k log(p_k / q_k) in nats between two histograms of the same shape.

    p, q: non-negative masses (any normalisation), same shape. Each is normalised, ``pseudo_count`` (probability
    mass) is added to every bin and each is normalised again. With ``pseudo_count = 0``, a bin with p_k > 0 and
    q_k = 0 gives ``math.inf``.
    """
    p, q = _array(p, "p"), _array(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"histograms must have the same shape, got {p.shape} and {q.shape}")
    if (p < 0).any() or (q < 0).any() or not (p.sum() > 0 and q.sum() > 0):
        raise ValueError("histograms must be non-negative with a positive total")
    if not pseudo_count >= 0:
        raise ValueError(f"pseudo_count must be >= 0, got {pseudo_count}")
    p = p / p.sum() + pseudo_count
    q = q / q.sum() + pseudo_count
    p, q = p / p.sum(), q / q.sum()
    support = p > 0
    if (q[support] == 0).any():
        return math.inf
    return float(np.sum(p[support] * (np.log(p[support]) - np.log(q[support]))))


def ramachandran_kl(
    phi_psi_p: Any,
    phi_psi_q: Any,
    bins: int = 64,
    weights_p: Any | None = None,
    weights_q: Any | None = None,
    pseudo_count: float = DEFAULT_PSEUDO_COUNT,
) -> float:
    """KL(p || q) in nats between two (phi, psi) distributions on a periodic ``bins`` x ``bins`` histogram.

    phi_psi_p: samples of the reference p, radians, shape (n_p, 2); phi_psi_q: samples of q (e.g. flow samples),
    shape (n_q, 2). weights_p, weights_q: optional importance weights (not log), shapes (n_p,) and (n_q,), e.g.
    the flow's weights to reweight q to the target. 64 x 64 bins is the convention of the augmented-coupling-flow
    paper. See the module docstring for the pseudo-count and the finite-sample bias.
    """
    p, q = _array(phi_psi_p, "phi_psi_p"), _array(phi_psi_q, "phi_psi_q")
    for name, value in (("phi_psi_p", p), ("phi_psi_q", q)):
        if value.ndim != 2 or value.shape[1] != 2:
            raise ValueError(f"{name} must have shape (n, 2) (phi, psi in radians), got {value.shape}")
    return histogram_kl(
        periodic_histogram(p, bins, weights_p), periodic_histogram(q, bins, weights_q), pseudo_count=pseudo_count
    )


def phi_profile_kl(
    centers: Any,
    f: Any,
    phi_q: Any,
    weights_q: Any | None = None,
    pseudo_count: float = DEFAULT_PSEUDO_COUNT,
) -> float:
    """KL(reference || q) in nats along phi, the reference given as a free-energy profile on equal periodic bins.

    centers: bin centres in radians, shape (m,), equally spaced so that the m bins tile [-pi, pi) (as written by
    ``systems/aldp/umbrella.py``); f: free energy of each bin in kT (any offset; +inf = empty), shape (m,), so the
    reference mass of bin k is proportional to exp(-f_k). phi_q: samples of q, radians, shape (n,); weights_q:
    optional importance weights, shape (n,).
    """
    centers = _array(centers, "centers")
    f = np.asarray(f, dtype=np.float64)
    m = len(centers)
    if centers.ndim != 1 or f.shape != (m,) or m < 2 or np.isnan(f).any() or not np.isfinite(f).any():
        raise ValueError(
            f"centers and f must be 1-D of equal length >= 2 with a finite f, got {centers.shape}, {f.shape}"
        )
    expected = -np.pi + (np.arange(m) + 0.5) * 2 * np.pi / m
    if not np.allclose(np.sort(np.mod(centers + np.pi, 2 * np.pi) - np.pi), expected, atol=1e-6):
        raise ValueError(f"centers must be the midpoints of {m} equal bins tiling [-pi, pi)")
    order = np.argsort(np.mod(centers + np.pi, 2 * np.pi))
    reference = np.exp(-(f[order] - np.min(f[np.isfinite(f)])))
    phi_q = _array(phi_q, "phi_q")
    if phi_q.ndim != 1:
        raise ValueError(f"phi_q must have shape (n,), got {phi_q.shape}")
    return histogram_kl(reference, periodic_histogram(phi_q, m, weights_q), pseudo_count=pseudo_count)

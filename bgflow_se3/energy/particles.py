"""Pure-torch particle targets of the equivariant-flow benchmarks: DW4, LJ13 and LJ55."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Energy, OnError

__all__ = ["DoubleWellEnergy", "LennardJonesEnergy", "pair_distances"]


def pair_distances(x: Tensor) -> Tensor:
    """Distances of the unique pairs i < j (row-major order of ``torch.triu_indices``).

    x: positions, shape (batch, n, dim). Returns shape (batch, n * (n - 1) / 2).
    """
    i, j = torch.triu_indices(x.shape[1], x.shape[1], offset=1, device=x.device)
    # index_select is several times faster than advanced indexing on CPU
    return (x.index_select(1, i) - x.index_select(1, j)).norm(dim=-1)


class DoubleWellEnergy(Energy):
    """DW4 (Köhler, Klein and Noé 2020): 4 particles in 2D with a double-well pair potential.

    u(x) = (1 / tau) * sum over unique pairs i < j of  a (d - d0) + b (d - d0)^2 + c (d - d0)^4,
    d = |x_i - x_j|, with the benchmark constants a = 0, b = -4, c = 0.9, d0 = 4, tau = 1. Translation and
    rotation invariant; reduced units throughout (no temperature).
    """

    def __init__(
        self,
        n_particles: int = 4,
        dim: int = 2,
        a: float = 0.0,
        b: float = -4.0,
        c: float = 0.9,
        d0: float = 4.0,
        tau: float = 1.0,
        on_error: OnError = "inf",
    ) -> None:
        super().__init__(n_particles, dim, temperature=None, on_error=on_error)
        self.a, self.b, self.c, self.d0, self.tau = float(a), float(b), float(c), float(d0), float(tau)

    def _reduced_energy(self, x: Tensor) -> Tensor:
        s = pair_distances(x) - self.d0
        return (self.a * s + self.b * s**2 + self.c * s**4).sum(dim=-1) / self.tau


class LennardJonesEnergy(Energy):
    """Lennard-Jones cluster (LJ13, LJ55) in the convention of the public benchmark data sets.

    u(x) = (1 / tau) * [ eps * sum over **ordered** pairs i != j of ((r_m / d)^12 - 2 (r_m / d)^6)
                         + 0.5 * k * sum_i |x_i - x_com|^2 ]

    The ordered-pair sum is **twice** the textbook unique-pair sum; this is the convention of the data sets and
    papers (Köhler et al. 2020, E-NF, the augmented coupling flow), and NLLs only compare under it. The harmonic
    term (k = ``oscillator_scale`` = 1) keeps the cluster together. eps = r_m = tau = 1; reduced units. At
    equilibrium ``E[x . grad u] = (n_particles - 1) * dim`` on CoM-free samples (virial identity).
    """

    def __init__(
        self,
        n_particles: int = 13,
        dim: int = 3,
        eps: float = 1.0,
        rm: float = 1.0,
        oscillator_scale: float = 1.0,
        tau: float = 1.0,
        on_error: OnError = "inf",
    ) -> None:
        super().__init__(n_particles, dim, temperature=None, on_error=on_error)
        self.eps, self.rm = float(eps), float(rm)
        self.oscillator_scale, self.tau = float(oscillator_scale), float(tau)

    def _reduced_energy(self, x: Tensor) -> Tensor:
        inv6 = (self.rm / pair_distances(x)) ** 6
        lj = 2.0 * self.eps * (inv6**2 - 2.0 * inv6).sum(dim=-1)  # 2 x unique pairs = ordered pairs
        centred = x - x.mean(dim=1, keepdim=True)
        harmonic = 0.5 * self.oscillator_scale * centred.pow(2).sum(dim=(1, 2))
        return (lj + harmonic) / self.tau

"""Pure-torch particle targets of the equivariant-flow benchmarks: DW4, LJ13 and LJ55."""

from __future__ import annotations

from typing import Literal

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
    """Lennard-Jones cluster (LJ13, LJ55) of the equivariant-flow benchmarks.

    u(x) = (1 / tau) * [ c * eps * sum over **ordered** pairs i != j of ((r_m / d)^12 - 2 (r_m / d)^6)
                         + 0.5 * k * sum_i |x_i - x_com|^2 ]

    with c = 1 for ``pair_sum="ordered"`` (the default: bgflow's ``LennardJonesPotential``, our data recipe, the
    LJ13 / LJ55 sets of equivariant flow matching and DEM) and c = 1/2 for ``pair_sum="unique"`` (the textbook sum
    over unique pairs, as E-NF eq. 21 and the augmented-coupling-flow code write it). The two are different
    ensembles: the ordered sum is the unique one at half the temperature of the pair term, and on LJ13 its
    entropy is 22.9 nats lower (thermodynamic integration; see ``systems/lj13/README.md``). The harmonic term
    (k = ``oscillator_scale`` = 1) keeps the cluster together. eps = r_m = tau = 1; reduced units. At
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
        pair_sum: Literal["ordered", "unique"] = "ordered",
        on_error: OnError = "inf",
    ) -> None:
        super().__init__(n_particles, dim, temperature=None, on_error=on_error)
        if pair_sum not in ("ordered", "unique"):
            raise ValueError(f"pair_sum must be 'ordered' or 'unique', got {pair_sum!r}")
        self.pair_sum = pair_sum
        self.eps, self.rm = float(eps), float(rm)
        self.oscillator_scale, self.tau = float(oscillator_scale), float(tau)

    def _reduced_energy(self, x: Tensor) -> Tensor:
        inv6 = (self.rm / pair_distances(x)) ** 6
        factor = 2.0 if self.pair_sum == "ordered" else 1.0  # ordered pairs = 2 x unique pairs
        lj = factor * self.eps * (inv6**2 - 2.0 * inv6).sum(dim=-1)
        centred = x - x.mean(dim=1, keepdim=True)
        harmonic = 0.5 * self.oscillator_scale * centred.pow(2).sum(dim=(1, 2))
        return (lj + harmonic) / self.tau

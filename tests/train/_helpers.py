"""Test doubles for the training tests: an exact augmented Gaussian flow and targets with known normalisers.

``GaussianAugmentedFlow`` implements FLOW_PROTOCOL honestly: x is an isotropic Gaussian on the CoM-free subspace
(k = (n_atoms - 1) * dim degrees of freedom) with learnable mean and log-scale, and a | x = x + mu_a + sigma_a * eps
with learnable elementwise mu_a and log sigma_a. log q(x, a) is exact and samples are reparameterised.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn

from bgflow_se3.energy import Energy

LOG_2PI = math.log(2 * math.pi)


class FlowSample(NamedTuple):
    x: Tensor
    a: Tensor
    log_q: Tensor


def centre(x: Tensor) -> Tensor:
    """Remove the CoM over the atom axis (-2)."""
    return x - x.mean(dim=-2, keepdim=True)


def log_normal_subspace(x: Tensor, mean: Tensor, sigma: Tensor | float, n_atoms: int, dim: int) -> Tensor:
    """Isotropic Gaussian density on the CoM-free subspace, x and mean CoM-free, shape (batch,)."""
    k = (n_atoms - 1) * dim
    sigma = torch.as_tensor(sigma, dtype=x.dtype)
    return -0.5 * k * LOG_2PI - k * torch.log(sigma) - (x - mean).pow(2).sum((-2, -1)) / (2 * sigma**2)


class GaussianAugmentedFlow(nn.Module):
    def __init__(self, n_atoms: int = 3, dim: int = 2, n_aug: int = 1, sigma_pi: float = 0.1, aux_scale: float = 0.0):
        super().__init__()
        self.n_atoms, self.dim, self.n_aug = n_atoms, dim, n_aug
        self.sigma_pi = sigma_pi
        self.aux_scale = aux_scale
        self.mu_x = nn.Parameter(torch.zeros(n_atoms, dim))
        self.log_sigma_x = nn.Parameter(torch.zeros(()))
        self.mu_a = nn.Parameter(torch.zeros(n_aug, n_atoms, dim))
        self.log_sigma_a = nn.Parameter(torch.full((n_aug, n_atoms, dim), math.log(sigma_pi)))

    def sample(self, n: int, generator: torch.Generator | None = None) -> FlowSample:
        p = self.mu_x
        eps_x = torch.randn((n, self.n_atoms, self.dim), generator=generator, dtype=p.dtype, device=p.device)
        eps_a = torch.randn(
            (n, self.n_aug, self.n_atoms, self.dim), generator=generator, dtype=p.dtype, device=p.device
        )
        x = centre(self.mu_x + self.log_sigma_x.exp() * eps_x)
        a = x[:, None] + self.mu_a + self.log_sigma_a.exp() * eps_a
        return FlowSample(x, a, self.log_prob_joint(x, a))

    def log_prob_joint(self, x: Tensor, a: Tensor) -> Tensor:
        c = x.mean(dim=1, keepdim=True)
        x, a = x - c, a - c[:, None]
        log_qx = log_normal_subspace(x, centre(self.mu_x), self.log_sigma_x.exp(), self.n_atoms, self.dim)
        r = (a - x[:, None] - self.mu_a) / self.log_sigma_a.exp()
        log_qa = (-0.5 * LOG_2PI - self.log_sigma_a - 0.5 * r**2).sum((1, 2, 3))
        return log_qx + log_qa

    def log_prob_joint_and_aux(self, x: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        log_q = self.log_prob_joint(x, a)
        aux = self.aux_scale * self.mu_a.pow(2).sum() * torch.ones_like(log_q)
        return log_q, aux

    def sample_aug_target(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn((x.shape[0], self.n_aug, *x.shape[1:]), generator=generator, dtype=x.dtype, device=x.device)
        return x[:, None] + self.sigma_pi * eps

    def log_prob_aug_target(self, a: Tensor, x: Tensor) -> Tensor:
        r = (a - x[:, None]) / self.sigma_pi
        return (-0.5 * LOG_2PI - math.log(self.sigma_pi) - 0.5 * r**2).sum((1, 2, 3))

    def log_prob(self, x: Tensor, n_samples: int = 20) -> Tensor:
        x = centre(x)
        xs = x.repeat_interleave(n_samples, 0)
        a = self.sample_aug_target(xs)
        log_w = (self.log_prob_joint(xs, a) - self.log_prob_aug_target(a, xs)).view(-1, n_samples)
        return torch.logsumexp(log_w, 1) - math.log(n_samples)


class GaussianMixtureEnergy(Energy):
    """u(x) = -log Z - log sum_k pi_k N_sub(x_c; m_k, s_k^2): a mixture on the CoM-free subspace, normaliser Z."""

    def __init__(self, means: Tensor, sigmas: list[float], weights: list[float], log_z: float):
        n_atoms, dim = means.shape[1:]
        super().__init__(n_atoms, dim)
        self.means = centre(means.double())
        self.sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        self.log_weights = torch.log(weights / weights.sum())
        self.log_z = float(log_z)

    def _reduced_energy(self, x: Tensor) -> Tensor:
        x = centre(x)
        comps = [
            lw + log_normal_subspace(x, m.to(x), s, self.n_atoms, self.dim)
            for m, s, lw in zip(self.means, self.sigmas, self.log_weights)
        ]
        return -self.log_z - torch.logsumexp(torch.stack(comps, -1), -1)


class FixedSamples(torch.nn.Module):
    """Returns the given configurations in order with a constant log q (weights are then exp(-u))."""

    n_atoms, dim = 22, 3

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("x", x)
        self.anchor = torch.nn.Parameter(torch.zeros((), dtype=x.dtype), requires_grad=False)
        self.next = 0

    def sample(self, n, generator=None):
        x = self.x[self.next : self.next + n]
        self.next += n
        return x, torch.zeros(len(x), dtype=x.dtype)

    def log_prob(self, x):
        return torch.zeros(len(x), dtype=x.dtype)


@pytest.fixture
def flow() -> GaussianAugmentedFlow:
    """The exact augmented Gaussian flow, float64 (a fixture of the training and sampling tests)."""
    return GaussianAugmentedFlow().double()


@pytest.fixture
def mixture() -> GaussianMixtureEnergy:
    """A three-component Gaussian mixture target with log Z = 2.3 (a fixture of the training and sampling tests)."""
    g = torch.Generator().manual_seed(7)
    means = 1.2 * torch.randn(3, 3, 2, generator=g, dtype=torch.float64)
    return GaussianMixtureEnergy(means, [0.5, 0.6, 0.7], [0.5, 0.3, 0.2], log_z=2.3)

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from bgflow_se3.energy.base import Energy
from bgflow_se3.reweight import free_energy_difference
from bgflow_se3.sampling.state_ais import anneal_to_states

A, B = 2.0, 0.6  # u(x) = A (x0^2 - 1)^2 + B x0 + |x_12|^2 / 2: a tilted double well along x0


class TiltedDoubleWell(Energy):
    def __init__(self) -> None:
        super().__init__(1, 3)

    def _reduced_energy(self, x):
        x0 = x[:, 0, 0]
        return A * (x0**2 - 1) ** 2 + B * x0 + 0.5 * x[:, 0, 1:].pow(2).sum(-1)


class GaussianProposal(torch.nn.Module):
    """A 'flow' N(0, s^2 I) on one atom in 3D; deliberately poor (one broad mode for two wells)."""

    n_atoms, dim = 1, 3

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale, dtype=torch.float64), requires_grad=False)

    def sample(self, n, generator=None):
        x = self.scale * torch.randn(n, 1, 3, generator=generator, dtype=torch.float64)
        return x, self.log_prob(x)

    def log_prob(self, x):
        return -0.5 * (x / self.scale).pow(2).sum((1, 2)) - 3 * math.log(self.scale) - 1.5 * math.log(2 * math.pi)


def exact_delta_f() -> float:
    def density(t):
        return math.exp(-(A * (t * t - 1) ** 2 + B * t))

    return -math.log(quad(density, 0, 10)[0] / quad(density, -10, 0)[0])


@pytest.mark.parametrize("n_intermediate", [0, 6])
def test_state_free_energy_matches_the_exact_value(n_intermediate):
    result = anneal_to_states(
        GaussianProposal(1.2),
        TiltedDoubleWell(),
        4000,
        lambda x: (x[:, 0, 0] > 0).long(),
        allowed=lambda x: x[:, 0, 1] < 5.0,  # harmless restriction: exercises the mask
        n_intermediate=n_intermediate,
        step_size=0.3,
        batch_size=1000,
        generator=torch.Generator().manual_seed(0),
    )
    state, log_w = result.state.numpy(), result.log_w.numpy()
    assert set(np.unique(state)) == {0, 1}
    assert (np.sign(result.x[:, 0, 0].numpy()) == np.where(state == 1, 1, -1)).all()  # chains never left their state
    estimate = free_energy_difference(np.zeros(len(log_w)), -log_w, state == 1, state == 0, method="exp")
    exact = exact_delta_f()
    assert abs(estimate.value - exact) < 4 * estimate.stderr + 0.02, (estimate, exact)
    assert estimate.stderr < 0.1
    if n_intermediate:
        assert (result.acceptance > 0.3).all()
        flow_only = free_energy_difference(np.zeros(len(log_w)), -result.flow_log_w.numpy(), state == 1, state == 0)
        assert estimate.stderr < flow_only.stderr  # annealing improved on the proposal's own weights
    assert result.n_energy_evaluations >= 4000


@pytest.mark.parametrize("start", [5.0, 1e-3])  # 25x too large, 300x too small
def test_step_sizes_are_tuned_into_the_acceptance_band(start):
    """Three rounds of 1.25x could not repair a step size this far off; the tuning runs until every intermediate's
    acceptance is in [0.45, 0.85]."""
    result = anneal_to_states(
        GaussianProposal(1.2),
        TiltedDoubleWell(),
        512,
        lambda x: (x[:, 0, 0] > 0).long(),
        n_intermediate=4,
        step_size=start,
        batch_size=256,
        generator=torch.Generator().manual_seed(0),
    )
    assert ((result.acceptance > 0.35) & (result.acceptance < 0.95)).all(), result.acceptance

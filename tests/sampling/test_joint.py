import math

import torch

from bgflow_se3 import Energy
from bgflow_se3.sampling import TargetDensity


class Table(Energy):
    """u(x) = x[:, 0, 0] (the first coordinate), so tests can ask for any energy value."""

    def __init__(self):
        super().__init__(2, 1)

    def _reduced_energy(self, x):
        return x[:, 0, 0] * 1.0


def as_x(values):
    x = torch.zeros(len(values), 2, 1, dtype=torch.float64)
    x[:, 0, 0] = torch.tensor(values, dtype=torch.float64)
    return x.requires_grad_(True)


def test_lin_log_regularisation_and_counting():
    density = TargetDensity(Table(), energy_cut=100.0, energy_max=1e6)
    x = as_x([-5.0, 50.0, 100.0, 101.0, 1e4, 1e8])
    log_p = density(x)
    expected = -torch.tensor(
        [-5.0, 50.0, 100.0, 100 + math.log(2.0), 100 + math.log1p(1e4 - 100), 100 + math.log1p(1e8 - 100)]
    )
    torch.testing.assert_close(log_p.detach(), expected.double())
    (grad,) = torch.autograd.grad(log_p.sum(), x)
    slope = -grad[:, 0, 0]
    torch.testing.assert_close(
        slope, torch.tensor([1.0, 1.0, 1.0, 0.5, 1 / (1e4 - 99), 1 / (1e8 - 99)], dtype=torch.float64)
    )
    assert density.n_evaluations == 6


def test_failed_evaluations_get_zero_weight():
    density = TargetDensity(Table())
    x = as_x([1.0, 2.0]).detach().clone()
    x[1, 1, 0] = math.nan  # the Energy base gives u = +inf for non-finite coordinates
    log_p = density(x)
    assert log_p[0] == -1.0 and log_p[1] == -math.inf
    exact = TargetDensity(Table(), energy_cut=math.inf, energy_max=math.inf)
    assert exact(as_x([1e12]))[0] == -1e12

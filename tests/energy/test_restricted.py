import math

import torch

from bgflow_se3 import LennardJonesEnergy
from bgflow_se3.energy import RestrictedEnergy


def test_restricted_energy_is_infinite_with_zero_force_outside(generator):
    base = LennardJonesEnergy(4)
    energy = RestrictedEnergy(base, lambda x: x[:, 0, 0] > 0)
    x = torch.randn(64, 4, 3, generator=generator, dtype=torch.float64) * 1.5
    inside = x[:, 0, 0] > 0
    u = energy(x)
    torch.testing.assert_close(u[inside], base(x)[inside])
    assert torch.isinf(u[~inside]).all() and (u[~inside] > 0).all()
    force = energy.force(x)
    assert (force[~inside] == 0).all()
    torch.testing.assert_close(force[inside], base.force(x)[inside])
    u2, f2 = energy.energy_and_force(x)
    torch.testing.assert_close(u2, u)
    torch.testing.assert_close(f2, force)
    assert energy.temperature == base.temperature and not math.isnan(float(u[inside].sum()))

import math

import pytest
import torch

from bgflow_se3 import DoubleWellEnergy, LennardJonesEnergy, NonFiniteInputError
from tests.conftest import random_rotation


def _loop_dw4(x):
    out = []
    for conf in x:
        total = 0.0
        for i in range(4):
            for j in range(i + 1, 4):
                s = float((conf[i] - conf[j]).norm()) - 4.0
                total += -4.0 * s**2 + 0.9 * s**4
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def _loop_lj(x):
    out = []
    for conf in x:
        n = len(conf)
        total = 0.0
        for i in range(n):
            for j in range(n):
                if i != j:
                    d = float((conf[i] - conf[j]).norm())
                    total += d**-12 - 2 * d**-6
        total += 0.5 * float((conf - conf.mean(0)).pow(2).sum())
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def test_dw4_matches_explicit_pair_loop(generator):
    x = 3 * torch.randn(16, 4, 2, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(DoubleWellEnergy()(x), _loop_dw4(x), rtol=1e-12, atol=1e-10)


def test_dw4_pair_has_zero_force_at_its_minima():
    # one pair: u(d) = -4 (d-4)^2 + 0.9 (d-4)^4 has minima at d = 4 +- sqrt(4/1.8), value -4^2/(4*0.9)
    energy = DoubleWellEnergy(n_particles=2)
    for d in (4 + math.sqrt(4 / 1.8), 4 - math.sqrt(4 / 1.8)):
        x = torch.tensor([[[0.0, 0.0], [d, 0.0]]], dtype=torch.float64)
        torch.testing.assert_close(energy.force(x), torch.zeros_like(x), atol=1e-12, rtol=0)
        torch.testing.assert_close(energy(x), torch.tensor([-16 / 3.6], dtype=torch.float64))


def test_lj_uses_ordered_pair_convention(generator):
    x = torch.randn(4, 13, 3, generator=generator, dtype=torch.float64) * 1.2
    torch.testing.assert_close(LennardJonesEnergy(13)(x), _loop_lj(x), rtol=1e-10, atol=1e-8)
    # a dimer at r_m: each ordered pair contributes -1 -> -2 in total, plus the harmonic term 2 * 0.5 * 0.25
    dimer = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0]]], dtype=torch.float64)
    torch.testing.assert_close(LennardJonesEnergy(2)(dimer), torch.tensor([-2.0 + 0.25], dtype=torch.float64))


@pytest.mark.parametrize("energy", [DoubleWellEnergy(), LennardJonesEnergy(13)])
def test_invariance_and_force_by_finite_differences(energy, generator):
    n, dim = energy.event_shape
    x = torch.randn(3, n, dim, generator=generator, dtype=torch.float64) * (1.5 if dim == 3 else 3.0)
    rotation = random_rotation(dim, generator)
    shift = torch.randn(1, 1, dim, generator=generator, dtype=torch.float64)
    perm = torch.randperm(n, generator=generator)
    u = energy(x)
    torch.testing.assert_close(energy(x @ rotation.T + shift), u, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(energy(x[:, perm]), u, rtol=1e-10, atol=1e-9)
    force = energy.force(x)
    h = 1e-6
    for atom, axis in [(0, 0), (n - 1, dim - 1), (1, 1)]:
        e = torch.zeros_like(x)
        e[:, atom, axis] = h
        numeric = -(energy(x + e) - energy(x - e)) / (2 * h)
        torch.testing.assert_close(force[:, atom, axis], numeric, rtol=1e-6, atol=1e-6)


def test_bad_input_is_reported():
    energy = DoubleWellEnergy()
    with pytest.raises(ValueError, match=r"shape \(batch, 4, 2\)"):
        energy(torch.zeros(3, 4, 3))
    with pytest.raises(TypeError, match="float32 or float64"):
        energy(torch.zeros(3, 4, 2, dtype=torch.float16))
    with pytest.raises(TypeError, match="float32 or float64"):
        energy(torch.zeros(3, 4, 2, dtype=torch.int64))
    x = torch.randn(3, 4, 2, dtype=torch.float64)
    x[1, 2, 0] = float("nan")
    u = energy(x)
    assert torch.isinf(u[1]) and u[1] > 0 and torch.isfinite(u[[0, 2]]).all()
    force = energy.force(x)
    assert torch.all(force[1] == 0) and torch.isfinite(force).all()
    with pytest.raises(NonFiniteInputError, match="batch index 1"):
        DoubleWellEnergy(on_error="raise")(x)
    assert energy(x[0]).shape == (1,)

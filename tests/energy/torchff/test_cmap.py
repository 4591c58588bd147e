"""CMAPTorsionTerm: the spline/bicubic construction, and energies and forces against OpenMM's Reference platform."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bgflow_se3.energy.torchff.cmap import CMAPTorsionTerm, cmap_patch_coefficients, periodic_spline_slopes
from tests.energy.torchff._openmm_reference import openmm_energies_and_forces

openmm = pytest.importorskip("openmm")


def test_periodic_spline_slopes_of_a_smooth_function():
    """A periodic spline through 24 samples of sin(2 phi) has nearly its exact slope 2 cos(2 phi) at the knots."""
    angles = np.arange(24) * 2 * math.pi / 24
    slopes = periodic_spline_slopes(np.sin(2 * angles))
    np.testing.assert_allclose(slopes, 2 * np.cos(2 * angles), atol=2e-3)


def test_patches_interpolate_the_grid_and_join_smoothly():
    rng = np.random.default_rng(0)
    size = 8
    energy = rng.normal(size=size * size)
    c = cmap_patch_coefficients(energy, size).reshape(size, size, 4, 4)  # [t, s]: patch s + size * t

    def value(s, t, u, v):
        return sum(c[t, s, a, b] * u**a * v**b for a in range(4) for b in range(4))

    def du(s, t, u, v):
        return sum(a * c[t, s, a, b] * u ** (a - 1) * v**b for a in range(1, 4) for b in range(4))

    for s in range(size):
        for t in range(size):
            assert value(s, t, 0.0, 0.0) == pytest.approx(energy[s + size * t], abs=1e-12)
            nxt = (s + 1) % size
            for v in (0.0, 0.3, 0.9):  # value and slope continuous across the patch edge, periodically
                assert value(s, t, 1.0, v) == pytest.approx(value(nxt, t, 0.0, v), abs=1e-10)
                assert du(s, t, 1.0, v) == pytest.approx(du(nxt, t, 0.0, v), abs=1e-9)


def _system_with_maps(sizes, rng):
    """6 particles, one CMAPTorsionForce with random maps of ``sizes`` on overlapping dihedral pairs."""
    system = openmm.System()
    for _ in range(6):
        system.addParticle(12.0)
    cmap = openmm.CMAPTorsionForce()
    for size in sizes:
        cmap.addMap(size, list(rng.normal(scale=4.0, size=size * size)))
    dihedrals = [(0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (5, 3, 1, 0)]
    for k in range(6):
        a, b = rng.choice(len(dihedrals), size=2, replace=False)
        cmap.addTorsion(k % len(sizes), *dihedrals[a], *dihedrals[b])
    system.addForce(cmap)
    return system


@pytest.mark.parametrize("sizes", [(24,), (4, 9, 15)])
def test_cmap_matches_openmm(sizes):
    rng = np.random.default_rng(len(sizes))
    system = _system_with_maps(sizes, rng)
    positions = rng.normal(scale=0.15, size=(150, 6, 3))
    e_ref, f_ref = openmm_energies_and_forces(system, positions)
    term = CMAPTorsionTerm.from_force(system.getForce(0))
    x = torch.tensor(positions, requires_grad=True)
    energy = term(x)
    (grad,) = torch.autograd.grad(energy.sum(), x)
    np.testing.assert_allclose(energy.detach().numpy(), e_ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(-grad.numpy(), f_ref, rtol=1e-7, atol=1e-7 * np.abs(f_ref).max())


def test_cmap_float32_and_empty_force():
    rng = np.random.default_rng(2)
    system = _system_with_maps((12,), rng)  # the System owns the force: keep it alive while reading it
    term = CMAPTorsionTerm.from_force(system.getForce(0))
    x = torch.tensor(rng.normal(scale=0.15, size=(20, 6, 3)))
    torch.testing.assert_close(term(x.float()).double(), term(x), rtol=1e-4, atol=1e-4)
    empty = CMAPTorsionTerm.from_force(openmm.CMAPTorsionForce())
    assert torch.equal(empty(x), torch.zeros(20, dtype=torch.float64))

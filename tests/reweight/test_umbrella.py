"""Umbrella-sampling analysis on exact, independent samples of biased 1-D periodic distributions."""

import numpy as np
import pytest

from bgflow_se3.errors import LowOverlapWarning
from bgflow_se3.reweight.umbrella import periodic_harmonic_bias, umbrella_free_energy, wrap_angle


def _potential(phi):
    """A phi-like free energy in kT: a deep basin near -2, a shallow one near 1."""
    return 2.0 * np.cos(phi + 0.5) + 1.2 * np.cos(2 * phi) + 1.5 * np.sin(phi)


def _sample(center, kappa, n, rng):
    grid = np.linspace(-np.pi, np.pi, 20001)[:-1]
    log_p = -_potential(grid) - periodic_harmonic_bias(grid, np.array([center]), kappa)[0]
    p = np.exp(log_p - log_p.max())
    cdf = np.cumsum(p) / p.sum()
    return grid[np.searchsorted(cdf, rng.uniform(size=n))] + rng.uniform(0, grid[1] - grid[0], n)


def _exact_delta_f():
    grid = np.linspace(-np.pi, np.pi, 200001)[:-1]
    p = np.exp(-_potential(grid))
    in_a = (grid > 0) & (grid < 2)
    return -np.log(p[in_a].sum() / p[~in_a].sum())


def test_umbrella_analysis_recovers_exact_free_energy():
    rng = np.random.default_rng(0)
    centers = -np.pi + 2 * np.pi * np.arange(18) / 18
    kappa = 15.0
    series = [_sample(c, kappa, 600, rng) for c in centers]
    result = umbrella_free_energy(series, centers, kappa, lambda phi: (phi > 0) & (phi < 2), bins=18, n_blocks=4)
    exact = _exact_delta_f()
    assert abs(result.delta_f.value - exact) < 3 * result.delta_f.stderr + 0.02
    assert abs(result.delta_f.value - exact) < 0.1
    assert abs(result.delta_f.value - exact) < 3 * result.block_stderr + 0.02
    assert result.blocks.shape == (4,) and result.block_stderr > 0
    # profile against the exact bin free energies
    edges = result.profile.edges[0]
    fine = np.linspace(-np.pi, np.pi, 240001)[:-1]
    weights = np.exp(-_potential(fine))
    exact_bins = -np.log(np.histogram(fine, bins=edges, weights=weights)[0])
    exact_bins -= exact_bins[np.argmin(result.profile.f)]
    finite = result.profile.df > 0
    z = (result.profile.f - exact_bins)[finite] / result.profile.df[finite]
    assert np.all(np.abs(z) < 4.5)
    assert np.all(result.statistical_inefficiency == 1.0) or np.all(result.statistical_inefficiency < 3)


def test_umbrella_poor_overlap_warns():
    rng = np.random.default_rng(1)
    centers = -np.pi + 2 * np.pi * np.arange(6) / 6
    series = [wrap_angle(c + 0.05 * rng.normal(size=200)) for c in centers]
    with pytest.warns(LowOverlapWarning, match="overlap"):
        umbrella_free_energy(series, centers, 2000.0, lambda phi: (phi > -0.5) & (phi < 2), n_blocks=2)

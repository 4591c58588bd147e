"""Free-energy surfaces through pymbar.FES against exact bin integrals of a Gaussian target."""

import numpy as np
import pytest
from scipy.stats import norm

from bgflow_se3.errors import NonFiniteInputError
from bgflow_se3.reweight import free_energy_surface


def _exact_bin_free_energy(edges: np.ndarray, k: float) -> np.ndarray:
    """-log P(bin) for x ~ N(0, 1/k)."""
    sd = 1.0 / np.sqrt(k)
    return -np.log(norm.cdf(edges[1:], scale=sd) - norm.cdf(edges[:-1], scale=sd))


def test_fes_1d_matches_exact_bins(problem):
    x = problem.flow_samples(20_000, np.random.default_rng(0))
    edges = np.linspace(-2.5, 2.5, 11)
    fes = free_energy_surface(x[:, 0], problem.log_q(x), problem.u(x), bins=edges)
    exact = _exact_bin_free_energy(edges, problem.k[0])
    exact -= exact[np.argmin(fes.f)]
    assert fes.f.shape == fes.df.shape == fes.counts.shape == (10,)
    np.testing.assert_allclose(fes.centers[0], 0.5 * (edges[1:] + edges[:-1]))
    assert fes.f.min() == 0.0 and fes.df[np.argmin(fes.f)] == 0.0
    others = fes.df > 0
    z = (fes.f - exact)[others] / fes.df[others]
    assert np.all(np.abs(z) < 4)
    assert np.mean(z**2) < 3
    assert np.all(np.abs(fes.f - exact) < 0.15)


def test_fes_2d_unequal_grid_matches_exact_bins(problem):
    """6 x 4 bins: an unequal grid, where pymbar's own 2-D bin labels would collide."""
    x = problem.flow_samples(20_000, np.random.default_rng(1))
    edges0, edges1 = np.linspace(-2.4, 2.4, 7), np.linspace(-1.6, 1.6, 5)
    fes = free_energy_surface(x[:, :2], problem.log_q(x), problem.u(x), bins=[edges0, edges1])
    assert fes.f.shape == (6, 4)
    exact = _exact_bin_free_energy(edges0, problem.k[0])[:, None] + _exact_bin_free_energy(edges1, problem.k[1])
    exact -= exact.flat[np.argmin(fes.f)]
    others = fes.df > 0
    z = (fes.f - exact)[others] / fes.df[others]
    assert np.all(np.abs(z) < 4) and np.mean(z**2) < 3


def test_fes_empty_bins_are_infinite_and_bad_cv_raises(problem):
    x = problem.flow_samples(2000, np.random.default_rng(2))
    fes = free_energy_surface(x[:, 0], problem.log_q(x), problem.u(x), bins=np.linspace(-30, 30, 7))
    assert np.isinf(fes.f[0]) and np.isinf(fes.df[0]) and fes.counts[0] == 0
    assert np.isfinite(fes.f[3])
    cv = x[:, 0].copy()
    cv[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        free_energy_surface(cv, problem.log_q(x), problem.u(x))
    log_q = problem.log_q(x)
    log_q[1] = np.inf
    with pytest.raises(NonFiniteInputError):
        free_energy_surface(x[:, 0], log_q, problem.u(x))


def test_fes_ignores_zero_weight_samples_in_otherwise_empty_bins(problem):
    x = problem.flow_samples(3000, np.random.default_rng(3))
    log_q, u = problem.log_q(x), problem.u(x)
    edges = np.linspace(-3.0, 9.0, 9)
    clean = free_energy_surface(x[:, 0], log_q, u, bins=edges)
    # two failed evaluations (u = +inf): one alone in a bin that no other sample reaches, one off the grid
    cv = np.concatenate([x[:, 0], [8.0, 50.0]])
    fes = free_energy_surface(
        cv, np.concatenate([log_q, [0.0, 0.0]]), np.concatenate([u, [np.inf, np.inf]]), bins=edges
    )
    finite = np.isfinite(clean.f)
    np.testing.assert_allclose(fes.f[finite], clean.f[finite], atol=1e-9)
    np.testing.assert_allclose(fes.df[finite], clean.df[finite], rtol=1e-3)
    assert fes.counts[-1] == 1 and np.isinf(fes.f[-1]) and np.isinf(clean.f[-1])

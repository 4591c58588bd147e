"""Free-energy surfaces through pymbar.FES against exact bin integrals of a Gaussian target."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm

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
    assert np.all(np.abs(fes.f - exact) < 0.25)  # all bins are within 3 kT of the lowest


# a correlated 2-D Gaussian target (no product of 1-D answers) sampled through a wider isotropic "flow"
COV = np.array([[1.0, 0.6], [0.6, 0.8]])
FLOW_SCALE = 1.5


def _u_2d(x: np.ndarray) -> np.ndarray:
    return 0.5 * np.einsum("ni,ij,nj->n", x, np.linalg.inv(COV), x)


def _log_q_2d(x: np.ndarray) -> np.ndarray:
    return multivariate_normal(np.zeros(2), FLOW_SCALE**2 * np.eye(2)).logpdf(x)


def _exact_bin_free_energy_2d(edges0: np.ndarray, edges1: np.ndarray, m: int = 200) -> np.ndarray:
    """-log of the integral of exp(-u) over every bin (midpoint rule, m x m points a bin), up to a constant."""
    f = np.empty((len(edges0) - 1, len(edges1) - 1))
    for i, (a0, a1) in enumerate(zip(edges0[:-1], edges0[1:])):
        a = a0 + (a1 - a0) * (np.arange(m) + 0.5) / m
        for j, (b0, b1) in enumerate(zip(edges1[:-1], edges1[1:])):
            b = b0 + (b1 - b0) * (np.arange(m) + 0.5) / m
            grid = np.stack(np.meshgrid(a, b, indexing="ij"), -1).reshape(-1, 2)
            f[i, j] = -np.log(np.exp(-_u_2d(grid)).mean() * (a1 - a0) * (b1 - b0))
    return f


# odd grids centred on the mode: one bin is clearly the lowest, so the estimate's reference bin is the exact one
EDGES_2D = (np.linspace(-2.5, 2.5, 6), np.linspace(-2.1, 2.1, 8))


def test_fes_2d_correlated_target_is_accurate():
    rng = np.random.default_rng(4)
    x = FLOW_SCALE * rng.normal(size=(20_000, 2))
    fes = free_energy_surface(x, _log_q_2d(x), _u_2d(x), bins=list(EDGES_2D))
    exact = _exact_bin_free_energy_2d(*EDGES_2D)
    exact -= exact.min()
    assert np.argmin(fes.f) == np.argmin(exact)
    likely = exact < 3  # 17 of the 35 bins, reaching 2.3 kT; the correlation makes f(i, j) != f(-i, j)
    assert np.all(np.abs(fes.f - exact)[likely] < 0.25)
    assert np.mean(np.abs(fes.f - exact)[likely]) < 0.1


def _pooled_z(fes_and_exact) -> np.ndarray:
    """(f - exact) / df over all well-filled bins (>= 20 samples) but the reference of many repeats."""
    z = []
    for fes, exact in fes_and_exact:
        exact = exact - exact.flat[np.argmin(fes.f)]
        use = (fes.df > 0) & (fes.counts >= 20)
        z.append((fes.f - exact)[use] / fes.df[use])
    return np.concatenate(z)


def test_fes_error_bars_are_calibrated_1d(problem):
    """Two-sided: the rms z-score over 40 repeats x 10 bins is near 1 (0.93 to 1.14 over seed sets; it is 0.94 here,
    so error bars x 1.5 or / 1.5 fail, as does the x 5 that a one-sided check let through)."""
    edges = np.linspace(-2.75, 2.75, 12)
    exact = _exact_bin_free_energy(edges, problem.k[0])
    runs = []
    for seed in range(40):
        x = problem.flow_samples(1500, np.random.default_rng(100 + seed))
        runs.append((free_energy_surface(x[:, 0], problem.log_q(x), problem.u(x), bins=edges), exact))
    z = _pooled_z(runs)
    assert len(z) >= 250
    assert 0.75 < np.sqrt(np.mean(z**2)) < 1.3, np.sqrt(np.mean(z**2))


def test_fes_error_bars_are_calibrated_2d():
    """As in 1-D, over 12 repeats x 35 bins of the correlated target (rms 0.88 to 1.07 over seed sets)."""
    exact = _exact_bin_free_energy_2d(*EDGES_2D)
    runs = []
    for seed in range(12):
        x = FLOW_SCALE * np.random.default_rng(200 + seed).normal(size=(3000, 2))
        runs.append((free_energy_surface(x, _log_q_2d(x), _u_2d(x), bins=list(EDGES_2D)), exact))
    z = _pooled_z(runs)
    assert len(z) >= 300
    assert 0.75 < np.sqrt(np.mean(z**2)) < 1.3, np.sqrt(np.mean(z**2))


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

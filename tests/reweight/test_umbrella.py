"""Umbrella-sampling analysis on exact, independent samples of biased 1-D periodic distributions; pooling repeats."""

import numpy as np
import pytest

from bgflow_se3.errors import LowOverlapWarning
from bgflow_se3.reweight.umbrella import (
    combine_profiles,
    combine_repeats,
    umbrella_free_energy,
    unbiased_weights,
    wrap_angle,
)


def _potential(phi):
    """A phi-like free energy in kT: a deep basin near -2, a shallow one near 1."""
    return 2.0 * np.cos(phi + 0.5) + 1.2 * np.cos(2 * phi) + 1.5 * np.sin(phi)


def _bias(phi, center, kappa):
    """The windows' bias written out here, independently of the library: kappa/2 (phi - c wrapped)^2, kT."""
    d = np.mod(phi - center + np.pi, 2 * np.pi) - np.pi
    return 0.5 * kappa * d**2


def _sample(center, kappa, n, rng):
    grid = np.linspace(-np.pi, np.pi, 20001)[:-1]
    log_p = -_potential(grid) - _bias(grid, center, kappa)
    p = np.exp(log_p - log_p.max())
    cdf = np.cumsum(p) / p.sum()
    return grid[np.searchsorted(cdf, rng.uniform(size=n))] + rng.uniform(0, grid[1] - grid[0], n)


def _exact_delta_f(state=lambda phi: (phi > 0) & (phi < 2)):
    grid = np.linspace(-np.pi, np.pi, 200001)[:-1]
    p = np.exp(-_potential(grid))
    in_a = state(grid)
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


def test_umbrella_phi_positive_state_recovers_exact_free_energy():
    """F(phi > 0) - F(phi <= 0): the other state definition of the aldp recipe, against the exact value."""
    rng = np.random.default_rng(2)
    centers = -np.pi + 2 * np.pi * np.arange(18) / 18
    kappa = 15.0
    series = [_sample(c, kappa, 400, rng) for c in centers]
    result = umbrella_free_energy(series, centers, kappa, lambda phi: phi > 0, bins=18, n_blocks=4)
    exact = _exact_delta_f(lambda phi: phi > 0)
    assert abs(exact - _exact_delta_f()) > 0.3  # a genuinely different number from the (0, 2) state
    assert abs(result.delta_f.value - exact) < 3 * result.delta_f.stderr + 0.02
    assert abs(result.delta_f.value - exact) < 0.15
    explicit = umbrella_free_energy(
        series, centers, kappa, lambda phi: phi > 0, state_b=lambda phi: phi <= 0, bins=18, n_blocks=4
    )
    assert explicit.delta_f.value == pytest.approx(result.delta_f.value, abs=1e-10)


def test_combine_repeats_numbers():
    agree = combine_repeats([1.0, 1.2], [0.1, 0.1])
    assert agree.mean == pytest.approx(1.1) and agree.stderr == pytest.approx(0.1)  # |1.2 - 1.0| / 2
    assert agree.pooled_stderr == pytest.approx(np.sqrt(0.02) / 2)
    assert agree.chi2 == pytest.approx(0.2**2 / 0.02) and agree.dof == 1  # z^2 with z = 0.2 / sqrt(0.1^2 + 0.1^2)
    assert agree.p_value == pytest.approx(0.1573, abs=1e-4) and agree.agree
    apart = combine_repeats([1.0, 2.0, 1.1], [0.1, 0.1, 0.2])
    weighted = (1.0 / 0.01 + 2.0 / 0.01 + 1.1 / 0.04) / (2 / 0.01 + 1 / 0.04)
    expected = ((1.0 - weighted) ** 2 + (2.0 - weighted) ** 2) / 0.01 + (1.1 - weighted) ** 2 / 0.04
    assert apart.chi2 == pytest.approx(expected) and apart.dof == 2
    assert apart.stderr == pytest.approx(np.std([1.0, 2.0, 1.1], ddof=1) / np.sqrt(3))
    assert apart.p_value < 1e-6 and not apart.agree
    single = combine_repeats([4.1], [0.12])
    assert (single.mean, single.stderr, single.dof, single.n) == (4.1, 0.12, 0, 1)
    assert np.isnan(single.p_value) and single.agree
    with pytest.raises(ValueError, match="one error per value"):
        combine_repeats([1.0, 2.0], [0.1])
    with pytest.raises(ValueError, match="positive"):
        combine_repeats([1.0, 2.0], [0.1, 0.0])


def test_combine_repeats_is_calibrated():
    """Honest errors: about alpha of the sets disagree and stderr^2 averages sigma^2 / n; understated errors: most."""
    rng = np.random.default_rng(3)
    sigma = np.array([0.1, 0.2, 0.15, 0.1])
    draws = [rng.normal(4.0, sigma) for _ in range(4000)]
    honest = [combine_repeats(v, sigma) for v in draws]
    disagree = np.mean([not c.agree for c in honest])
    assert 0.035 < disagree < 0.065
    assert np.mean([c.stderr**2 for c in honest]) == pytest.approx(np.mean(sigma**2) / 4, rel=0.05)
    assert np.mean([c.mean for c in honest]) == pytest.approx(4.0, abs=0.005)
    understated = [combine_repeats(v, sigma / 3) for v in draws[:500]]
    assert np.mean([not c.agree for c in understated]) > 0.75  # P(chi2_3 > 7.81 / 9) = 0.83


def test_combine_profiles_cancels_offsets_and_uses_the_scatter():
    rng = np.random.default_rng(4)
    truth = np.array([0.0, 1.0, 3.0, 0.5, 2.0])
    noise = 0.05 * rng.normal(size=(3, 5))
    f = truth + noise + np.array([[0.0], [7.0], [-2.0]])  # each repeat relative to its own reference
    mean, df = combine_profiles(f, np.full_like(f, 0.3))
    normalised = f + np.log(np.exp(-f).sum(axis=1, keepdims=True))  # the offsets cancel
    expected = normalised.mean(axis=0)
    np.testing.assert_allclose(mean, expected - expected.min())
    np.testing.assert_allclose(df, normalised.std(axis=0, ddof=1) / np.sqrt(3))
    assert mean.min() == 0.0 and np.all(np.abs(mean - truth) < 0.15)
    one, df_one = combine_profiles(f[:1], np.full((1, 5), 0.3))
    np.testing.assert_allclose(one, f[0] - f[0].min())
    np.testing.assert_allclose(df_one, 0.3)
    f[1, 2] = np.inf  # a bin empty in one repeat is empty in the combination
    mean, df = combine_profiles(f, np.full_like(f, 0.3))
    assert np.isinf(mean[2]) and np.isinf(df[2]) and np.isfinite(mean[[0, 1, 3, 4]]).all()


def _psi_mean(phi):
    return 2.5 * np.sin(phi) - 0.5


def test_unbiased_weights_recover_a_joint_phi_psi_histogram():
    """psi ~ von Mises around a phi-dependent mean: the MBAR weights of the windows' samples reproduce the exact
    joint (phi, psi) histogram of the unbiased density; the unweighted samples do not."""
    from bgflow_se3.analysis.ramachandran import histogram_kl, periodic_histogram

    rng = np.random.default_rng(5)
    centers = -np.pi + 2 * np.pi * np.arange(18) / 18
    kappa = 15.0
    phi_windows = [_sample(c, kappa, 800, rng) for c in centers]
    psi_windows = [wrap_angle(rng.vonmises(_psi_mean(phi), 2.0)) for phi in phi_windows]
    keep, weights = unbiased_weights(phi_windows, centers, kappa, discard_fraction=0.25)
    assert keep.shape == (18 * 800,) and keep.sum() == 18 * 600 and weights.shape == (18 * 600,)
    assert np.isclose(weights.sum(), 1.0) and (weights >= 0).all()
    angles = np.stack([np.concatenate(phi_windows), np.concatenate(psi_windows)], 1)[keep]
    estimate = periodic_histogram(angles, 12, weights)
    # exact histogram on a fine grid: p(phi) vonMises(psi; mean(phi), 2)
    fine = -np.pi + (np.arange(720) + 0.5) * 2 * np.pi / 720
    f_phi, f_psi = np.meshgrid(fine, fine, indexing="ij")
    density = np.exp(-_potential(f_phi) + 2.0 * np.cos(f_psi - _psi_mean(f_phi)))
    exact = periodic_histogram(np.stack([f_phi.ravel(), f_psi.ravel()], 1), 12, density.ravel())
    assert histogram_kl(exact, estimate) < 0.02
    unweighted = periodic_histogram(angles, 12)
    assert histogram_kl(exact, unweighted) > 0.1
    # the phi > 0 mass, against the exact one
    assert abs(estimate[6:].sum() - exact[6:].sum()) < 0.02

"""Periodic-histogram KL divergences against exact discrete answers and analytic von Mises divergences."""

import math

import numpy as np
import pytest
from scipy import integrate
from scipy.special import i0e, i1e

from bgflow_se3.analysis import histogram_kl, periodic_histogram, phi_profile_kl, ramachandran_kl

# two products of von Mises densities on the torus: (mu, kappa) per angle
P = ((0.5, 2.0), (-1.0, 1.0))
Q = ((1.2, 4.0), (2.0, 0.5))


def von_mises_kl(a: tuple[float, float], b: tuple[float, float]) -> float:
    """KL(vM(mu_a, k_a) || vM(mu_b, k_b)) = log(I0(k_b) / I0(k_a)) + A(k_a) (k_a - k_b cos(mu_a - mu_b))."""
    (mu_a, k_a), (mu_b, k_b) = a, b
    log_i0 = lambda k: math.log(i0e(k)) + k  # noqa: E731
    return log_i0(k_b) - log_i0(k_a) + i1e(k_a) / i0e(k_a) * (k_a - k_b * math.cos(mu_a - mu_b))


def von_mises_density(x: np.ndarray, mu: float, kappa: float) -> np.ndarray:
    return np.exp(kappa * np.cos(x - mu)) / (2 * np.pi * np.i0(kappa))


def bin_masses(mu: float, kappa: float, bins: int) -> np.ndarray:
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    pairs = zip(edges[:-1], edges[1:])
    return np.array([integrate.quad(von_mises_density, lo, hi, args=(mu, kappa))[0] for lo, hi in pairs])


def discrete_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * np.log(p / q)))


def sample_product(params, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([rng.vonmises(mu, kappa, n) for mu, kappa in params], axis=1)


def test_analytic_von_mises_kl_matches_numerical_integration():
    for a, b in ((P[0], Q[0]), (P[1], Q[1])):
        numeric = integrate.quad(
            lambda x, a=a, b=b: von_mises_density(x, *a) * np.log(von_mises_density(x, *a) / von_mises_density(x, *b)),
            -np.pi,
            np.pi,
        )[0]
        assert von_mises_kl(a, b) == pytest.approx(numeric, abs=1e-10)


def test_exact_on_counts_at_bin_centres_and_periodic():
    bins = 8
    centres = -np.pi + (np.arange(bins) + 0.5) * 2 * np.pi / bins
    counts_p, counts_q = np.arange(1, bins + 1), np.arange(bins, 0, -1) ** 2
    phi_p, phi_q = np.repeat(centres, counts_p), np.repeat(centres, counts_q)
    expected = discrete_kl(counts_p / counts_p.sum(), counts_q / counts_q.sum())
    assert histogram_kl(periodic_histogram(phi_p, bins), periodic_histogram(phi_q, bins), 0.0) == pytest.approx(
        expected, abs=1e-12
    )
    # the 2-D version factorises for independent angles: KL adds up
    grid_p = np.stack([phi_p, np.full_like(phi_p, centres[2])], 1)
    grid_q = np.stack([phi_q, np.full_like(phi_q, centres[2])], 1)
    assert ramachandran_kl(grid_p, grid_q, bins=bins, pseudo_count=0.0) == pytest.approx(expected, abs=1e-12)
    shifted = grid_q + 2 * np.pi * np.array([3, -5])  # whole turns do not move a sample
    assert ramachandran_kl(grid_p, shifted, bins=bins, pseudo_count=0.0) == pytest.approx(expected, abs=1e-9)
    # pi and -pi are the same angle and land in the first bin
    np.testing.assert_array_equal(periodic_histogram(np.array([np.pi, -np.pi]), bins)[0], 1.0)
    # a reference bin that q misses: infinite without a pseudo-count, finite (and large) with one
    assert histogram_kl(np.array([1.0, 1.0]), np.array([1.0, 0.0]), 0.0) == math.inf
    assert 5.0 < histogram_kl(np.array([1.0, 1.0]), np.array([1.0, 0.0]), 1e-6) < 8.0


def test_von_mises_products_match_analytic_kl():
    rng = np.random.default_rng(0)
    bins, n = 32, 200_000
    p, q = sample_product(P, n, rng), sample_product(Q, n, rng)
    analytic = sum(von_mises_kl(a, b) for a, b in zip(P, Q))
    reverse = sum(von_mises_kl(b, a) for a, b in zip(P, Q))
    assert abs(analytic - reverse) > 0.25  # so the direction of the divergence is tested too
    discretised = sum(discrete_kl(bin_masses(*a, bins), bin_masses(*b, bins)) for a, b in zip(P, Q))
    assert discretised == pytest.approx(analytic, abs=0.01)  # 32 bins resolve these densities
    estimate = ramachandran_kl(p, q, bins=bins)
    assert estimate == pytest.approx(discretised, abs=0.02)  # sampling noise + plug-in bias ~ bins^2 / n
    assert ramachandran_kl(q, p, bins=bins) == pytest.approx(reverse, abs=0.03)


def test_importance_weights_reweight_q():
    rng = np.random.default_rng(1)
    bins, n = 32, 400_000
    p = sample_product(P, n, rng)
    uniform = rng.uniform(-np.pi, np.pi, size=(n, 2))
    weights = von_mises_density(uniform[:, 0], *Q[0]) * von_mises_density(uniform[:, 1], *Q[1])
    analytic = sum(von_mises_kl(a, b) for a, b in zip(P, Q))
    assert ramachandran_kl(p, uniform, bins=bins, weights_q=weights) == pytest.approx(analytic, abs=0.03)
    assert abs(ramachandran_kl(p, uniform, bins=bins) - analytic) > 0.3  # unweighted: another distribution


def test_phi_profile_kl_matches_discrete_answer():
    rng = np.random.default_rng(2)
    bins = 36
    centres = -np.pi + (np.arange(bins) + 0.5) * 2 * np.pi / bins
    reference = bin_masses(*P[0], bins)
    f = -np.log(reference) + 7.0  # a profile in kT with an arbitrary offset
    order = rng.permutation(bins)  # the order of the bins does not matter
    phi_q = rng.vonmises(*Q[0], 200_000)
    expected = discrete_kl(reference, bin_masses(*Q[0], bins))
    assert phi_profile_kl(centres[order], f[order], phi_q) == pytest.approx(expected, abs=0.01)
    with pytest.raises(ValueError, match="tiling"):
        phi_profile_kl(centres * 0.9, f, phi_q)


def test_bad_input_is_refused():
    ok = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        ramachandran_kl(np.zeros((4, 3)), ok)
    with pytest.raises(ValueError, match="NaN"):
        ramachandran_kl(np.full((4, 2), np.nan), ok)
    with pytest.raises(ValueError, match="non-negative"):
        ramachandran_kl(ok, ok, weights_q=-np.ones(4))
    with pytest.raises(ValueError, match="same shape"):
        histogram_kl(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="n > 0"):
        periodic_histogram(np.zeros((0, 2)))

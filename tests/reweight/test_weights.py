"""Importance weights, effective sample sizes, expectations and log Z against analytic Gaussian answers."""

import numpy as np
import pytest
import torch
from scipy.stats import norm

from bgflow_se3.errors import EmptyStateError, LowOverlapWarning, NonFiniteInputError
from bgflow_se3.reweight import (
    TargetSamples,
    effective_sample_size,
    expectation,
    forward_effective_sample_size,
    log_importance_weights,
    log_partition_ratio,
)
from bgflow_se3.reweight.pymbar_calls import checked_bar, import_pymbar


def test_log_weights_formula_and_torch_input(problem):
    x = problem.flow_samples(100, np.random.default_rng(0))
    log_q, u = problem.log_q(x), problem.u(x)
    log_p = norm.logpdf(x[:, 0])
    expected = -u + log_p - log_q
    np.testing.assert_allclose(log_importance_weights(log_q, u, log_p), expected, rtol=0, atol=1e-12)
    from_torch = log_importance_weights(torch.from_numpy(log_q), torch.from_numpy(u), torch.from_numpy(log_p))
    np.testing.assert_allclose(from_torch, expected, rtol=0, atol=1e-12)


def test_log_weights_reject_bad_input():
    log_q, u = np.zeros(4), np.ones(4)
    with pytest.raises(NonFiniteInputError, match="log_q"):
        log_importance_weights(np.array([0.0, np.nan, 0.0, 0.0]), u)
    with pytest.raises(NonFiniteInputError, match="log_q"):
        log_importance_weights(np.array([0.0, -np.inf, 0.0, 0.0]), u)
    with pytest.raises(NonFiniteInputError, match="NaN or -inf"):
        log_importance_weights(log_q, np.array([1.0, np.nan, 1.0, 1.0]))
    with pytest.raises(NonFiniteInputError, match="NaN or -inf"):
        log_importance_weights(log_q, np.array([1.0, -np.inf, 1.0, 1.0]))
    with pytest.raises(ValueError, match="entries"):
        log_importance_weights(log_q, np.ones(3))
    with pytest.raises(ValueError, match="1-D"):
        log_importance_weights(np.zeros((4, 1)), u)
    # +inf energy means weight 0, not an error
    log_w = log_importance_weights(log_q, np.array([1.0, np.inf, 1.0, 1.0]))
    assert log_w[1] == -np.inf and np.isfinite(log_w[[0, 2, 3]]).all()
    with pytest.raises(EmptyStateError):
        effective_sample_size(np.full(4, -np.inf))


def test_kish_and_forward_ess_match_gaussian_closed_form():
    """q = N(0, s^2), p = N(0, 1): E_q[(p/q)^2] = E_p[p/q] = s / sqrt(2 - 1/s^2); both ESS fractions are 1/that."""
    rng = np.random.default_rng(1)
    s, n = 1.2, 40_000
    expected = np.sqrt(2 - 1 / s**2) / s
    x = rng.normal(scale=s, size=n)
    reverse = effective_sample_size(norm.logpdf(x) - norm.logpdf(x, scale=s))
    y = rng.normal(size=n)
    forward = forward_effective_sample_size(norm.logpdf(y) - norm.logpdf(y, scale=s))
    assert reverse.fraction == pytest.approx(expected, abs=0.01)
    assert forward.fraction == pytest.approx(expected, abs=0.01)
    assert reverse.count == pytest.approx(reverse.fraction * n)
    equal = effective_sample_size(np.full(10, 3.0))
    assert equal.count == pytest.approx(10.0) and equal.fraction == pytest.approx(1.0)
    assert forward_effective_sample_size(np.array([0.0, -np.inf])).count == 0.0


def test_log_partition_ratio_and_expectation_are_calibrated(problem):
    """Over 20 seeds: within 0.05 of the truth, and z-scores consistent with the reported one-sigma errors."""
    z_log_z, z_mean = [], []
    for seed in range(20):
        x = problem.flow_samples(5000, np.random.default_rng(seed))
        log_q, u = problem.log_q(x), problem.u(x)
        estimate = log_partition_ratio(log_q, u)
        assert estimate.method == "EXP"
        assert abs(estimate.value - problem.log_z) < 0.05
        z_log_z.append((estimate.value - problem.log_z) / estimate.stderr)
        mean, stderr = expectation(log_importance_weights(log_q, u), x[:, 0] ** 2)
        z_mean.append((mean - 1 / problem.k[0]) / stderr)
    for z in (np.array(z_log_z), np.array(z_mean)):
        assert np.mean(np.abs(z) < 2) >= 0.8
        assert 0.3 < np.mean(z**2) < 2.5


def test_log_partition_ratio_with_augmentation(problem):
    """Joint q(x, a) = q(x) N(a; x, 0.3^2) against p(x) pi(a|x) with pi = N(a; x, 0.25^2): log Z unchanged."""
    rng = np.random.default_rng(3)
    x = problem.flow_samples(20_000, rng)
    a = x + 0.3 * rng.normal(size=x.shape)
    log_q = problem.log_q(x) + norm.logpdf(a - x, scale=0.3).sum(1)
    log_p_aug = norm.logpdf(a - x, scale=0.25).sum(1)
    estimate = log_partition_ratio(log_q, problem.u(x), log_p_aug)
    assert abs(estimate.value - problem.log_z) < 3 * estimate.stderr + 0.01


def test_exp_matches_pymbar_and_bar_matches_two_state_mbar(problem):
    rng = np.random.default_rng(4)
    x, y = problem.flow_samples(3000, rng), problem.target_samples(3000, rng)
    log_q, u = problem.log_q(x), problem.u(x)
    exp_estimate = log_partition_ratio(log_q, u)
    pymbar = import_pymbar()
    reference = pymbar.exp(u + log_q)
    assert exp_estimate.value == pytest.approx(-reference["Delta_f"], abs=1e-10)
    assert exp_estimate.stderr == pytest.approx(reference["dDelta_f"], rel=1e-6)

    bar_estimate = log_partition_ratio(log_q, u, reference=TargetSamples(problem.log_q(y), problem.u(y)))
    assert bar_estimate.method == "BAR"
    assert abs(bar_estimate.value - problem.log_z) < 0.05
    u_kn = np.stack([-np.concatenate([log_q, problem.log_q(y)]), np.concatenate([u, problem.u(y)])])
    mbar = pymbar.MBAR(u_kn, np.array([3000, 3000]))
    mbar_result = mbar.compute_free_energy_differences()
    assert bar_estimate.value == pytest.approx(-mbar_result["Delta_f"][0, 1], abs=1e-6)
    assert bar_estimate.stderr == pytest.approx(mbar_result["dDelta_f"][0, 1], rel=1e-3)


def test_no_overlap_warns_or_raises():
    rng = np.random.default_rng(5)
    # a "flow" 6 sigma off the target: a handful of samples carry all the weight
    x = rng.normal(size=2000) + 6.0
    log_q, u = norm.logpdf(x, loc=6.0, scale=0.5), 0.5 * x**2
    with pytest.warns(LowOverlapWarning, match="effective samples"):
        log_partition_ratio(log_q, u)
    # works that cannot be reconciled: BAR must not return a number
    from bgflow_se3.errors import ConvergenceError

    with pytest.raises(ConvergenceError):
        checked_bar(1000.0 + rng.normal(size=100), 1000.0 + rng.normal(size=100))
    with pytest.raises(ConvergenceError):
        checked_bar(np.full(10, np.inf), rng.normal(size=10))

"""State free-energy differences (MBAR, EXP, BAR via pymbar) against the analytic Gaussian/harmonic answer."""

import warnings

import numpy as np
import pytest
import torch

from bgflow_se3.errors import ConvergenceError, EmptyStateError, LowOverlapWarning, NonFiniteInputError
from bgflow_se3.reweight import FreeEnergy, TargetSamples, free_energy_difference


def _flow(problem, n, seed):
    x = problem.flow_samples(n, np.random.default_rng(seed))
    return problem.log_q(x), problem.u(x), problem.in_a(x)


def test_mbar_state_free_energy_is_accurate_and_calibrated(problem):
    z = []
    for seed in range(20):
        log_q, u, in_a = _flow(problem, 5000, seed)
        result = free_energy_difference(log_q, u, in_a, ~in_a)
        assert isinstance(result, FreeEnergy) and result.method == "MBAR"
        assert abs(result.value - problem.delta_f) < 0.1
        z.append((result.value - problem.delta_f) / result.stderr)
    z = np.array(z)
    assert np.mean(np.abs(z) < 2) >= 0.8
    assert 0.3 < np.mean(z**2) < 2.5
    # one large run: within 0.05 kT
    log_q, u, in_a = _flow(problem, 40_000, 99)
    value, stderr = free_energy_difference(log_q, u, in_a, ~in_a)
    assert abs(value - problem.delta_f) < 0.05 and stderr < 0.025


def test_mbar_and_exp_agree_and_accept_torch(problem):
    log_q, u, in_a = _flow(problem, 4000, 1)
    mbar = free_energy_difference(log_q, u, in_a, ~in_a, method="mbar")
    exp = free_energy_difference(
        torch.from_numpy(log_q), torch.from_numpy(u), torch.from_numpy(in_a), torch.from_numpy(~in_a), method="exp"
    )
    assert exp.method == "EXP"
    assert exp.value == pytest.approx(mbar.value, abs=1e-9)
    assert exp.stderr == pytest.approx(mbar.stderr, rel=1e-3)


def test_bar_with_both_sides_agrees_with_mbar(problem):
    rng = np.random.default_rng(2)
    x, y = problem.flow_samples(3000, rng), problem.target_samples(3000, rng)
    reference = TargetSamples(problem.log_q(y), problem.u(y), in_a=problem.in_a(y), in_b=~problem.in_a(y))
    args = (problem.log_q(x), problem.u(x), problem.in_a(x), ~problem.in_a(x))
    mbar = free_energy_difference(*args, reference=reference)
    bar = free_energy_difference(*args, method="bar", reference=reference, n_bootstrap=30, seed=0)
    assert bar.method == "BAR+bootstrap"
    # different estimators on the same data: they agree within the errors
    assert abs(bar.value - mbar.value) < 2 * max(bar.stderr, mbar.stderr)
    assert 0.5 < bar.stderr / mbar.stderr < 2.0
    for result in (mbar, bar):
        assert abs(result.value - problem.delta_f) < 3 * result.stderr
    # the reference samples sharpen MBAR compared with flow samples alone
    assert mbar.stderr < free_energy_difference(*args).stderr


def test_bootstrap_error_matches_asymptotic_error(problem):
    log_q, u, in_a = _flow(problem, 3000, 3)
    asymptotic = free_energy_difference(log_q, u, in_a, ~in_a, method="exp")
    bootstrap = free_energy_difference(log_q, u, in_a, ~in_a, method="exp", n_bootstrap=200, seed=1)
    assert bootstrap.value == asymptotic.value
    assert bootstrap.stderr == pytest.approx(asymptotic.stderr, rel=0.25)


def test_exp_error_survives_states_whose_weights_differ_by_e_to_the_800(problem):
    """Shifting u by -800 on state B moves Delta F by 800 and leaves the error alone; before the fix, exp(log w -
    log S_A) overflowed on B samples, 0 * inf gave NaN and EXP raised ConvergenceError for a valid estimate."""
    log_q, u, in_a = _flow(problem, 4000, 5)
    plain = free_energy_difference(log_q, u, in_a, ~in_a, method="exp")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or invalid-value RuntimeWarning either
        shifted = free_energy_difference(log_q, np.where(in_a, u, u - 800.0), in_a, ~in_a, method="exp")
    assert shifted.value == pytest.approx(plain.value + 800.0, abs=1e-9)
    assert shifted.stderr == pytest.approx(plain.stderr, rel=1e-9)


def test_infinite_energies_get_zero_weight(problem):
    log_q, u, in_a = _flow(problem, 4000, 4)
    clean = free_energy_difference(log_q, u, in_a, ~in_a)
    # add samples with +inf energy (failed evaluations): they carry no weight; the count changes only the error
    log_q2 = np.concatenate([log_q, np.zeros(10)])
    u2 = np.concatenate([u, np.full(10, np.inf)])
    in_a2 = np.concatenate([in_a, np.ones(10, dtype=bool)])
    with_inf = free_energy_difference(log_q2, u2, in_a2, ~in_a2)
    assert with_inf.value == pytest.approx(clean.value, abs=1e-9)


def test_bad_input_raises(problem):
    log_q, u, in_a = _flow(problem, 500, 5)
    bad = log_q.copy()
    bad[3] = np.nan
    with pytest.raises(NonFiniteInputError, match="log_q"):
        free_energy_difference(bad, u, in_a, ~in_a)
    with pytest.raises(EmptyStateError, match="state A"):
        free_energy_difference(log_q, u, np.zeros_like(in_a), ~in_a)
    u_inf = np.where(in_a, np.inf, u)
    with pytest.raises(EmptyStateError, match="weight 0"):
        free_energy_difference(log_q, u_inf, in_a, ~in_a)
    with pytest.raises(TypeError, match="boolean"):
        free_energy_difference(log_q, u, in_a.astype(int), ~in_a)
    with pytest.raises(ValueError, match="shape"):
        free_energy_difference(log_q, u, in_a[:-1], ~in_a)
    with pytest.raises(ValueError, match="reference"):
        free_energy_difference(log_q, u, in_a, ~in_a, method="bar")
    with pytest.raises(ValueError, match="method"):
        free_energy_difference(log_q, u, in_a, ~in_a, method="tpi")


def test_identical_states_raise_and_nested_states_are_estimated(problem):
    log_q, u, in_a = _flow(problem, 600, 5)
    for method in ("mbar", "exp"):
        with pytest.raises(ValueError, match="same samples"):
            free_energy_difference(log_q, u, in_a, in_a.copy(), method=method)
    # masks that differ only on samples of weight 0 (u = +inf) are the same state
    other = in_a.copy()
    flip = np.flatnonzero(~in_a)[:3]
    other[flip] = True
    with pytest.raises(ValueError, match="same samples"):
        free_energy_difference(log_q, np.where(np.isin(np.arange(600), flip), np.inf, u), in_a, other)
    # overlapping states are allowed: A inside everything gives F_A - F_all = -log P(A), written out here
    everything = np.ones_like(in_a)
    log_w = -u - log_q
    expected = -(np.logaddexp.reduce(log_w[in_a]) - np.logaddexp.reduce(log_w))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowOverlapWarning)
        result = free_energy_difference(log_q, u, in_a, everything, method="exp")
    assert result.value == pytest.approx(expected, abs=1e-9) and result.value > 0


def test_poor_overlap_warns(problem):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3000, 3)) * 0.3 + 2.0  # a "flow" far narrower than, and off, the target
    log_q = np.sum(-0.5 * ((x - 2.0) / 0.3) ** 2 - np.log(0.3 * np.sqrt(2 * np.pi)), axis=1)
    in_a = problem.in_a(x)
    in_a[:5] = False  # keep state B non-empty
    with pytest.warns(LowOverlapWarning, match="effective samples"):
        free_energy_difference(log_q, problem.u(x), in_a, ~in_a)


def test_bar_without_reference_samples_in_a_state_is_an_error(problem):
    rng = np.random.default_rng(7)
    x, y = problem.flow_samples(500, rng), problem.target_samples(500, rng)
    reference = TargetSamples(problem.log_q(y), problem.u(y), in_a=np.zeros(500, dtype=bool), in_b=np.ones(500, bool))
    with pytest.raises(EmptyStateError, match="BAR needs target samples"):
        free_energy_difference(
            problem.log_q(x), problem.u(x), problem.in_a(x), ~problem.in_a(x), method="bar", reference=reference
        )


def test_good_overlap_does_not_warn(problem):
    log_q, u, in_a = _flow(problem, 3000, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowOverlapWarning)
        free_energy_difference(log_q, u, in_a, ~in_a)


def test_bootstrap_failures_raise(problem):
    log_q, u, in_a = _flow(problem, 2000, 9)
    rare = np.zeros_like(in_a)
    rare[0] = True  # a state with one sample: most bootstrap resamples leave it empty
    with pytest.raises(ConvergenceError, match="bootstrap"), warnings.catch_warnings():
        warnings.simplefilter("ignore", LowOverlapWarning)
        free_energy_difference(log_q, u, rare, ~rare, n_bootstrap=20, seed=0)

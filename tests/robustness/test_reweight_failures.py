"""Reweighting without overlap, with empty states, with every weight zero or one weight dominating: an error or a
LowOverlapWarning as the library defines them, never a silent 0 +/- 0 or NaN."""

import warnings

import numpy as np
import pytest
import torch

from bgflow_se3.errors import ConvergenceError, EmptyStateError, LowOverlapWarning, NonFiniteInputError
from bgflow_se3.reweight import (
    TargetSamples,
    effective_sample_size,
    expectation,
    forward_effective_sample_size,
    free_energy_difference,
    log_importance_weights,
    log_partition_ratio,
)

N = 100


@pytest.fixture
def data(rng):
    log_q, u = rng.normal(size=N), rng.normal(size=N)
    in_a = np.arange(N) % 2 == 0
    return log_q, u, in_a


@pytest.mark.parametrize("method", ["mbar", "exp"])
@pytest.mark.parametrize(
    "case, match",
    [("no_sample_in_a", "holds none of"), ("all_of_a_inf", "has weight 0"), ("all_inf", "has weight 0")],
)
def test_empty_states_raise_empty_state_error(data, method, case, match):
    log_q, u, in_a = data
    if case == "no_sample_in_a":
        in_a = np.zeros(N, bool)
    elif case == "all_of_a_inf":
        u = np.where(in_a, np.inf, u)
    else:
        u = np.full(N, np.inf)
    with pytest.raises(EmptyStateError, match=match):
        free_energy_difference(log_q, u, in_a, ~in_a, method=method)


def test_all_weights_zero_raise_everywhere(data):
    log_q, _, _ = data
    minus_inf = np.full(N, -np.inf)
    for estimate in (effective_sample_size, forward_effective_sample_size):
        with pytest.raises(EmptyStateError, match="every sample has weight 0"):
            estimate(minus_inf)
    with pytest.raises(EmptyStateError, match="every sample has weight 0"):
        expectation(minus_inf, np.zeros(N))
    with pytest.raises(EmptyStateError, match="log Z cannot be estimated"):
        log_partition_ratio(log_q, np.full(N, np.inf))


def test_one_dominating_log_weight(data):
    log_q, u, in_a = data
    huge = np.r_[1e300, log_q[1:]]
    assert effective_sample_size(huge).count == pytest.approx(1.0)
    ess = effective_sample_size(np.full(N, 1e308))  # 2 log w overflows float64: still exact
    assert ess.fraction == pytest.approx(1.0) and ess.count == pytest.approx(N)
    assert forward_effective_sample_size(huge).fraction == 0.0  # documented: ruined by one sample
    u_huge = np.r_[-1e300, u[1:]]  # sample 0 (in A) dominates: P(A) = 1 up to exp(-1e300)
    with pytest.warns(LowOverlapWarning, match="1.0 effective"):
        result = free_energy_difference(log_q, u_huge, in_a, ~in_a, method="exp")
    assert result.value < -1e299
    with pytest.raises(ConvergenceError, match="MBAR"):
        free_energy_difference(log_q, u_huge, in_a, ~in_a, method="mbar")


def test_no_overlap_with_target_samples(data):
    log_q, u, in_a = data
    far = TargetSamples(log_q=log_q - 1e3, u=u, in_a=in_a, in_b=~in_a)  # target samples where q is ~e^-1000
    with pytest.raises(ConvergenceError, match="do not overlap"):
        log_partition_ratio(log_q, u, reference=TargetSamples(log_q=log_q - 1e4, u=u - 1e4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = free_energy_difference(log_q, u, in_a, ~in_a, method="bar", reference=far, n_bootstrap=0)
    assert any(issubclass(w.category, LowOverlapWarning) for w in caught)
    assert result.stderr > 1e3  # no overlap shows up as an enormous error bar, never 0 +/- 0
    with warnings.catch_warnings():  # the default bootstrap must not hide it (its re-estimates agree on junk)
        warnings.simplefilter("ignore", LowOverlapWarning)
        bootstrapped = free_energy_difference(log_q, u, in_a, ~in_a, method="bar", reference=far, seed=0)
    assert bootstrapped.stderr >= result.stderr
    with pytest.warns(LowOverlapWarning, match="overlap .* below"):
        free_energy_difference(log_q, u, in_a, ~in_a, method="mbar", reference=far)
    with pytest.raises(EmptyStateError, match="reference has none"):
        free_energy_difference(
            log_q, u, in_a, ~in_a, method="bar", reference=TargetSamples(log_q, u, None, np.zeros(N, bool), ~in_a)
        )


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((np.r_[np.nan, np.zeros(N - 1)], np.zeros(N)), NonFiniteInputError, "log_q is not finite"),
        ((np.zeros(N), np.r_[np.nan, np.zeros(N - 1)]), NonFiniteInputError, "NaN or -inf"),
        ((np.zeros(N), np.r_[-np.inf, np.zeros(N - 1)]), NonFiniteInputError, "NaN or -inf"),
        ((np.zeros((N, 1)), np.zeros(N)), ValueError, "1-D"),
        ((np.zeros(N), np.zeros(N - 1)), ValueError, "99 entries"),
        ((np.zeros(0), np.zeros(0)), ValueError, "empty"),
        ((["a"] * 3, np.zeros(3)), TypeError, "must be numbers"),
        ((torch.zeros(3, device="meta"), np.zeros(3)), ValueError, "meta"),
    ],
    ids=["nan_log_q", "nan_u", "minus_inf_u", "2d", "length", "empty", "strings", "meta"],
)
def test_log_importance_weights_refuse_bad_arrays(args, error, match):
    with pytest.raises(error, match=match):
        log_importance_weights(*args)


def test_masks_must_be_boolean(data):
    log_q, u, in_a = data
    with pytest.raises(TypeError, match="boolean mask"):
        free_energy_difference(log_q, u, in_a.astype(int), ~in_a)

"""The Pareto k-hat tail diagnostic: known tails, edge cases, and a proposal that covers part of a state too thinly."""

import math

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import genpareto

from bgflow_se3.reweight import state_pair_free_energy
from bgflow_se3.reweight.tail import generalized_pareto_shape, pareto_k, pareto_k_threshold


@pytest.mark.parametrize("shape", [0.2, 0.5, 0.9])
def test_generalized_pareto_shape_recovers_the_shape(shape):
    x = genpareto.rvs(shape, size=4000, random_state=np.random.default_rng(1))
    assert generalized_pareto_shape(x) == pytest.approx(shape, abs=0.08)


@pytest.mark.parametrize("tail_index", [0.3, 0.6, 1.0])
def test_pareto_k_of_power_law_weights(tail_index):
    """Weights with P(w > t) ~ t^(-1 / k): k-hat comes back as k."""
    rng = np.random.default_rng(2)
    w = rng.pareto(1.0 / tail_index, 20_000) + 1.0
    assert pareto_k(np.log(w)) == pytest.approx(tail_index, abs=0.15)


def test_pareto_k_of_light_tailed_weights_is_small():
    """Bounded weights (a proposal broader than the target) have a negative k-hat."""
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 2.0, 20_000)  # q = N(0, 4), p = N(0, 1): w bounded by 2
    log_w = -0.5 * x**2 - (-0.5 * (x / 2.0) ** 2 - math.log(2.0))
    assert pareto_k(log_w) < 0.0


def test_pareto_k_ignores_zero_weights_and_needs_a_tail():
    rng = np.random.default_rng(4)
    log_w = np.log(rng.pareto(1.0 / 0.6, 5000) + 1.0)
    with_zeros = np.concatenate([log_w, np.full(3000, -np.inf)])
    assert pareto_k(with_zeros) == pytest.approx(pareto_k(log_w))
    assert math.isnan(pareto_k(log_w[:20]))
    assert math.isnan(pareto_k(np.zeros(1000)))  # all weights equal: no tail to fit
    with pytest.raises(ValueError, match="NaN"):
        pareto_k(np.array([0.0, np.nan, 1.0]))


def test_pareto_k_threshold():
    assert pareto_k_threshold(200_000) == 0.7
    assert pareto_k_threshold(100) == pytest.approx(0.5)
    assert pareto_k_threshold(5) == 0.0


def _log_normal(x, mean, std):
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std * math.sqrt(2 * math.pi))


def _double_well_samples(proposal_std_a: float, seed: int = 0, n: int = 20_000):
    """State A (x < 0) has two wells, at -1 (70 % of its mass) and -3 (30 %); state B (x >= 0) one well at +1 with
    1/20 of A's mass, so F_A - F_B = -log 20 exactly. The proposal is half N(-1, proposal_std_a^2), half
    N(1, 0.4^2): narrow, it reaches the well at -3 only with its thin tail."""
    rng = np.random.default_rng(seed)
    in_first = rng.random(n) < 0.5
    x = np.where(in_first, rng.normal(-1.0, proposal_std_a, n), rng.normal(1.0, 0.4, n))
    log_q = np.logaddexp(math.log(0.5) + _log_normal(x, -1.0, proposal_std_a), math.log(0.5) + _log_normal(x, 1, 0.4))
    log_p = logsumexp(
        [
            math.log(0.7) + _log_normal(x, -1.0, 0.3),
            math.log(0.3) + _log_normal(x, -3.0, 0.3),
            math.log(0.05) + _log_normal(x, 1.0, 0.3),
        ],
        axis=0,
    )
    return x, log_q, -log_p


def test_a_proposal_that_covers_part_of_a_state_thinly_is_flagged():
    """The thin cover gives a wrong answer (many error bars off) that passes the effective-sample rule: only the
    tail index sees it, and the pair comes out unreliable."""
    x, log_q, u = _double_well_samples(proposal_std_a=0.5)
    result = state_pair_free_energy(log_q, u, x < 0, x >= 0, n_bootstrap=0)
    exact = -math.log(20.0)
    assert abs(result.value - exact) > 5 * result.stderr  # silently wrong without the diagnostic
    assert min(result.effective_a, result.effective_b) > 50  # the effective-sample rule alone would pass it
    assert result.pareto_k_a > 0.7
    assert result.pareto_k_b < 0.7
    assert not result.reliable
    assert "heavy-tailed" in result.warning and "A" in result.warning


def test_a_proposal_that_covers_the_state_passes():
    x, log_q, u = _double_well_samples(proposal_std_a=1.5)
    result = state_pair_free_energy(log_q, u, x < 0, x >= 0, n_bootstrap=0)
    assert result.pareto_k_a < 0.5 and result.pareto_k_b < 0.5
    assert result.reliable and result.warning == ""
    assert abs(result.value + math.log(20.0)) < 3 * result.stderr

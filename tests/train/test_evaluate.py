"""Evaluation helpers: energies come with the samples, and the FAB scores are exact where q equals the target."""

import math

import numpy as np
import pytest
import torch

from bgflow_se3 import AugmentedCouplingFlow, Energy
from bgflow_se3.train import (
    FABObjective,
    JointFlow,
    TrainResult,
    effective_sample_size,
    fab_scores,
    marginal_nll,
    sample_with_energies,
    training_summary,
)


class CentredGaussian(Energy):
    """u(x) = |x - com|^2 / (2 s^2): the untrained flow's x-marginal when s equals its length scale."""

    def __init__(self, n_atoms: int, dim: int, s: float, nan_above: float = math.inf):
        super().__init__(n_atoms, dim)
        self.s, self.nan_above = s, nan_above

    def _reduced_energy(self, x):
        x = x - x.mean(dim=1, keepdim=True)
        u = x.pow(2).sum((1, 2)) / (2 * self.s**2)
        return torch.where(u > self.nan_above, torch.full_like(u, math.nan), u)


def untrained_flow(length_scale: float = 1.0) -> AugmentedCouplingFlow:
    # zero-initialised heads: every coupling starts as the identity, so q(x, a) is the base distribution
    return AugmentedCouplingFlow(4, dim=2, n_blocks=1, hidden=8, egnn_layers=1, length_scale=length_scale).double()


def test_sample_with_energies_matches_the_energy_and_marks_failures():
    flow, generator = untrained_flow(), torch.Generator().manual_seed(0)
    energy = CentredGaussian(4, 2, 1.0, nan_above=4.0)
    samples = sample_with_energies(flow, energy, 50, generator, batch_size=16)
    assert samples.x.shape == (50, 4, 2) and samples.x.dtype == np.float64
    assert all(v.shape == (50,) for v in (samples.log_q, samples.u, samples.log_p_aug))
    exact = CentredGaussian(4, 2, 1.0)(torch.from_numpy(samples.x)).numpy()
    failed = exact > 4.0
    assert failed.any() and (~failed).any()
    np.testing.assert_allclose(samples.u[~failed], exact[~failed], rtol=1e-12)
    assert np.all(samples.u[failed] == math.inf)  # NaN energies are failures: +inf, zero weight
    # q is the base: log q - log pi is the CoM-free Gaussian of x alone (k = 6 degrees of freedom)
    log_base_x = -0.5 * 6 * math.log(2 * math.pi) - exact
    np.testing.assert_allclose(samples.log_q - samples.log_p_aug, log_base_x, atol=1e-9)


def test_fab_scores_are_one_when_q_is_the_target_and_less_otherwise():
    generator = torch.Generator().manual_seed(1)
    model = JointFlow(untrained_flow(length_scale=1.0))
    exact = FABObjective(CentredGaussian(4, 2, 1.0), batch_size=8, n_intermediate=2, buffer_min_length=64)
    scores = fab_scores(model, exact, 256, generator)
    assert abs(scores["reverse_ess"] - 1.0) < 1e-9
    assert abs(scores["ais_ess_towards_p"] - 1.0) < 1e-9
    wider = FABObjective(CentredGaussian(4, 2, 1.6), batch_size=8, n_intermediate=2, buffer_min_length=64)
    scores = fab_scores(model, wider, 256, generator)
    assert scores["reverse_ess"] < 0.9
    assert 0.0 < scores["ais_ess_towards_p"] <= 1.0
    plain = FABObjective(CentredGaussian(4, 2, 1.0), batch_size=8, n_intermediate=0, buffer_min_length=64)
    assert set(fab_scores(model, plain, 16, generator)) == {"reverse_ess"}


def test_fab_scores_in_chunks_pool_all_weights():
    """Chunked evaluation gives the ESS of all n weights together (not an average of per-chunk values)."""
    model = JointFlow(untrained_flow(length_scale=1.0))
    wider = FABObjective(CentredGaussian(4, 2, 1.6), batch_size=8, n_intermediate=0, buffer_min_length=64)
    scores = fab_scores(model, wider, 200, torch.Generator().manual_seed(3), chunk_size=64)
    generator = torch.Generator().manual_seed(3)
    log_w = []
    with torch.no_grad():
        for size in (64, 64, 64, 8):
            z, log_q = model.sample(size, generator)
            log_w.append(wider.target.joint(model, z) - log_q)
    assert scores["reverse_ess"] == pytest.approx(effective_sample_size(torch.cat(log_w)), abs=1e-12)


def test_training_summary_reports_counters_and_logged_ess():
    history = [{"iteration": i + 1, "ess_flow": 0.1 * (i + 1)} for i in range(12)]
    result = TrainResult(history, 12, 345, 6.5, 1, 2, 0, 3)
    summary = training_summary(result)
    assert summary["iterations"] == 12 and summary["n_target_evaluations"] == 345
    assert summary["wall_time_s_training"] == 6.5
    assert abs(summary["ess_flow_last10"] - np.mean([0.1 * i for i in range(3, 13)])) < 1e-12
    assert "ess_ais_last10" not in summary  # not logged: not reported
    assert (summary["n_skipped_nonfinite"], summary["n_skipped_outlier"], summary["n_masked_samples"]) == (1, 2, 3)


def test_marginal_nll_is_exact_for_the_base_distribution():
    flow, generator = untrained_flow(length_scale=0.7), torch.Generator().manual_seed(3)
    x = torch.randn(10, 4, 2, generator=generator, dtype=torch.float64)
    centred = x - x.mean(dim=1, keepdim=True)
    exact = -0.5 * 6 * math.log(2 * math.pi * 0.7**2) - centred.pow(2).sum((1, 2)) / (2 * 0.7**2)
    # q(x, a) = N_sub(x) pi(a | x), so every importance weight q(x, a) / pi(a | x) is N_sub(x): exact for any draws
    assert abs(marginal_nll(flow, x, generator, batch_size=3) + float(exact.mean())) < 1e-9

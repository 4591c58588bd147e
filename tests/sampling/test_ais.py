"""Unbiasedness of AIS and of the flow's importance weights on targets with known normalisers."""

import math

import pytest
import torch

from bgflow_se3.sampling import AnnealedImportanceSampler, HamiltonianMonteCarlo, JointFlow, TargetDensity
from bgflow_se3.train import effective_sample_size, log_normalizer
from tests.train._helpers import GaussianMixtureEnergy, centre


def broad_flow(flow, sigma_x=1.6, sigma_a=0.12):
    with torch.no_grad():
        flow.log_sigma_x.fill_(math.log(sigma_x))
        flow.log_sigma_a.fill_(math.log(sigma_a))
        flow.mu_a.fill_(0.01)
    return JointFlow(flow)


def make_ais(n_intermediate, alpha, step_size=0.3):
    hmc = HamiltonianMonteCarlo(n_intermediate, step_size=step_size, project=JointFlow.project)
    return AnnealedImportanceSampler(n_intermediate, alpha=alpha, hmc=hmc)


def run(ais, model, density, n, generator):
    with torch.no_grad():
        z, _ = model.sample(n, generator)
    return ais.run(z, model.log_prob, lambda zz: density.joint(model, zz), generator)


def test_flow_importance_weights_estimate_log_z(flow, mixture, generator):
    model, density = broad_flow(flow), TargetDensity(mixture)
    with torch.no_grad():
        z, log_q = model.sample(20000, generator)
        log_w = density.joint(model, z) - log_q
    log_z, stderr = log_normalizer(log_w)
    assert stderr < 0.05
    assert abs(log_z - mixture.log_z) < 4 * stderr, (log_z, stderr)
    assert density.n_evaluations == 20000


def test_ais_estimates_log_z_and_beats_the_flow(flow, mixture, generator):
    model, density = broad_flow(flow), TargetDensity(mixture)
    ais = make_ais(6, alpha=1.0, step_size=0.1)  # a | x has scale sigma_pi = 0.1
    for _ in range(15):  # adapt the step sizes, then freeze them: frozen AIS is exactly unbiased
        run(ais, model, density, 256, generator)
    ais.hmc.freeze()
    result = run(ais, model, density, 4000, generator)
    log_z, stderr = log_normalizer(result.log_w)
    assert stderr < 0.1
    assert abs(log_z - mixture.log_z) < 4 * stderr, (log_z, stderr)
    assert effective_sample_size(result.log_w) > 1.2 * effective_sample_size(result.flow_log_w)
    assert (result.acceptance > 0.3).all()
    # the returned log q / log p belong to the returned states
    torch.testing.assert_close(result.log_q, model.log_prob(result.z).detach())
    torch.testing.assert_close(result.log_p, density.joint(model, result.z).detach())
    assert result.z[:, 0].mean(1).abs().max() < 1e-10  # x stayed CoM-free


def log_integral_sq_over(m1, s1, m2, s2, k):
    """log of int N(y; m1, s1^2)^2 / N(y; m2, s2^2) dy over k dims (isotropic; m1, m2 flat vectors)."""
    a = 2 / s1**2 - 1 / s2**2
    b = 2 * m1 / s1**2 - m2 / s2**2
    c = m1.pow(2).sum() / s1**2 - m2.pow(2).sum() / (2 * s2**2)
    const = -math.log(2 * math.pi * s1**2) + 0.5 * math.log(2 * math.pi * s2**2) + 0.5 * math.log(2 * math.pi / a)
    return k * const + float(b.pow(2).sum()) / (2 * a) - float(c)


def test_log_integral_formula_against_quadrature():
    y = torch.linspace(-30, 30, 200001, dtype=torch.float64)
    m1, s1, m2, s2 = 0.3, 0.8, -0.4, 1.3
    n1 = torch.exp(-0.5 * ((y - m1) / s1) ** 2) / (s1 * math.sqrt(2 * math.pi))
    n2 = torch.exp(-0.5 * ((y - m2) / s2) ** 2) / (s2 * math.sqrt(2 * math.pi))
    quad = float(torch.trapezoid(n1**2 / n2, y))
    assert math.isclose(
        math.log(quad),
        log_integral_sq_over(
            torch.tensor([m1], dtype=torch.float64), s1, torch.tensor([m2], dtype=torch.float64), s2, 1
        ),
        rel_tol=1e-9,
    )


def test_ais_towards_p_squared_over_q_is_unbiased(flow, generator):
    """alpha = 2: E[w_AIS] = int p~^2 pi^2 / q, in closed form for a Gaussian target and the Gaussian flow."""
    n_atoms, dim, k = 3, 2, 4
    m_p = centre(torch.tensor([[0.3, 0.0], [-0.2, 0.5], [0.1, -0.4]], dtype=torch.float64))
    target = GaussianMixtureEnergy(m_p[None], [0.7], [1.0], log_z=1.1)
    model = broad_flow(flow, sigma_x=1.0, sigma_a=0.12)
    m_q = centre(flow.mu_x.detach())
    log_zg = 2 * target.log_z
    log_zg += log_integral_sq_over(m_p.flatten(), 0.7, m_q.flatten(), 1.0, k)
    log_zg += log_integral_sq_over(torch.zeros(n_atoms * dim), 0.1, flow.mu_a.detach().flatten(), 0.12, n_atoms * dim)
    density = TargetDensity(target)
    # plain importance sampling with alpha = 2 (no intermediates) and AIS with frozen HMC both estimate Z_g
    plain = run(AnnealedImportanceSampler(0, alpha=2.0), model, density, 20000, generator)
    ais = make_ais(4, alpha=2.0, step_size=0.1)
    for _ in range(10):
        run(ais, model, density, 256, generator)
    ais.hmc.freeze()
    annealed = run(ais, model, density, 4000, generator)
    for result in (plain, annealed):
        log_z, stderr = log_normalizer(result.log_w)
        assert stderr < 0.1
        assert abs(log_z - log_zg) < 4 * stderr, (log_z, stderr, log_zg)


def test_zero_intermediates_is_importance_sampling(flow, mixture, generator):
    model, density = broad_flow(flow), TargetDensity(mixture)
    result = run(AnnealedImportanceSampler(0, alpha=2.0), model, density, 64, generator)
    torch.testing.assert_close(result.log_w, 2.0 * result.flow_log_w)


def test_chunked_evaluation_gives_the_same_annealing(flow, mixture, generator):
    """chunk_size only bounds memory: with the same random numbers, chunked and whole-batch AIS agree exactly."""
    model, density = broad_flow(flow), TargetDensity(mixture)
    with torch.no_grad():
        z, _ = model.sample(50, generator)
    results = []
    for chunk_size in (None, 16):
        hmc = HamiltonianMonteCarlo(3, step_size=0.3, project=JointFlow.project)
        ais = AnnealedImportanceSampler(3, alpha=2.0, hmc=hmc, chunk_size=chunk_size)
        gen = torch.Generator().manual_seed(7)
        results.append(ais.run(z, model.log_prob, lambda zz: density.joint(model, zz), gen))
    whole, chunked = results
    torch.testing.assert_close(chunked.z, whole.z, atol=1e-12, rtol=0)
    torch.testing.assert_close(chunked.log_w, whole.log_w, atol=1e-12, rtol=0)
    torch.testing.assert_close(chunked.acceptance, whole.acceptance)
    with pytest.raises(ValueError, match="chunk_size"):
        AnnealedImportanceSampler(3, chunk_size=0)

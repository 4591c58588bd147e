import math

import torch
from scipy.stats import truncnorm

from bgflow_se3.sampling import HamiltonianMonteCarlo, JointFlow, autograd_log_density

MEAN = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
STD = torch.tensor([0.5, 1.0, 2.0, 0.3], dtype=torch.float64)


def gaussian(z):
    return -0.5 * ((z - MEAN) / STD).pow(2).sum(-1)


def run_chains(hmc, z, n_steps, generator, log_prob=gaussian):
    fn = autograd_log_density(log_prob)
    point = hmc.evaluate(z, fn)
    rates = []
    for _ in range(n_steps):
        point, rate = hmc.step(point, fn, 0, generator)
        rates.append(rate)
    return point, rates


def assert_moments(z, mean, std, n):
    # z-scores of the sample mean and variance (generous: 5 sigma over a handful of coordinates)
    assert ((z.mean(0) - mean).abs() / (std / math.sqrt(n)) < 5).all(), (z.mean(0), mean)
    var_se = std**2 * math.sqrt(2 / n)
    assert ((z.var(0) - std**2).abs() / var_se < 5).all(), (z.var(0), std**2)


def test_hmc_leaves_gaussian_invariant_and_moves(generator):
    n = 20000
    z0 = MEAN + STD * torch.randn(n, 4, generator=generator, dtype=torch.float64)
    hmc = HamiltonianMonteCarlo(1, step_size=0.25, n_leapfrog=4)
    hmc.freeze()
    point, rates = run_chains(hmc, z0, 10, generator)
    assert float(hmc.step_sizes[0]) == 0.25  # frozen
    assert 0.3 < sum(rates) / len(rates) < 1.0
    assert (point.z - z0).abs().max(1).values.median() > 0.1  # chains moved
    assert_moments(point.z, MEAN, STD, n)
    torch.testing.assert_close(point.log_prob, gaussian(point.z))


def test_hmc_converges_from_a_wrong_start(generator):
    n = 4000
    z0 = (MEAN + 4.0).expand(n, 4).clone()
    hmc = HamiltonianMonteCarlo(1, step_size=0.2, n_leapfrog=4)
    point, _ = run_chains(hmc, z0, 150, generator)
    assert_moments(point.z, MEAN, STD, n // 4)  # chains are autocorrelated: a looser z-score


def test_step_size_adapts_towards_target_acceptance(generator):
    n = 512
    z0 = MEAN + STD * torch.randn(n, 4, generator=generator, dtype=torch.float64)
    small = HamiltonianMonteCarlo(1, step_size=1e-3)
    run_chains(small, z0, 30, generator)
    assert math.isclose(float(small.step_sizes[0]), 1e-3 * 1.05**30, rel_tol=1e-12)  # grew every step
    large = HamiltonianMonteCarlo(1, step_size=20.0)
    run_chains(large, z0, 30, generator)
    assert float(large.step_sizes[0]) < 20.0 / 1.05**20
    adapted = HamiltonianMonteCarlo(1, step_size=0.01)
    _, rates = run_chains(adapted, z0, 300, generator)
    assert abs(sum(rates[-100:]) / 100 - 0.65) < 0.1


def test_step_sizes_are_per_distribution(generator):
    hmc = HamiltonianMonteCarlo(3, step_size=0.1)
    fn = autograd_log_density(gaussian)
    point = hmc.evaluate(MEAN + torch.zeros(64, 4, dtype=torch.float64), fn)
    hmc.step(point, fn, 1, generator)
    assert float(hmc.step_sizes[0]) == float(hmc.step_sizes[2]) == 0.1 != float(hmc.step_sizes[1])
    state = hmc.state_dict()
    other = HamiltonianMonteCarlo(3)
    other.load_state_dict(state)
    torch.testing.assert_close(other.step_sizes, hmc.step_sizes)


def test_projected_hmc_keeps_the_centre_of_mass_and_samples_the_subspace(generator):
    # joint state (batch, 1 + n_aug, n_atoms, dim): standard Gaussian on the CoM-free x and on a
    n, n_atoms, dim = 20000, 3, 2

    def log_prob(z):
        return -0.5 * z.pow(2).sum((1, 2, 3))

    z0 = torch.randn(n, 2, n_atoms, dim, generator=generator, dtype=torch.float64)
    z0[:, 0] -= z0[:, 0].mean(1, keepdim=True)
    hmc = HamiltonianMonteCarlo(1, step_size=0.5, project=JointFlow.project)
    hmc.freeze()
    point, _ = run_chains(hmc, z0, 10, generator, log_prob)
    assert point.z[:, 0].mean(1).abs().max() < 1e-12
    # on the CoM-free subspace, E|x|^2 = (n_atoms - 1) * dim; a is unconstrained: E|a|^2 = n_atoms * dim
    sq_x = point.z[:, 0].pow(2).sum((1, 2))
    sq_a = point.z[:, 1].pow(2).sum((1, 2))
    assert abs(float(sq_x.mean()) - (n_atoms - 1) * dim) < 5 * math.sqrt(2 * (n_atoms - 1) * dim / n)
    assert abs(float(sq_a.mean()) - n_atoms * dim) < 5 * math.sqrt(2 * n_atoms * dim / n)


def test_non_finite_density_is_rejected_and_gradients_clamped(generator):
    # a standard Gaussian truncated by a wall (-inf beyond z_0 > 2), plus a ripple that changes log p by at most
    # 1e-6 but has gradients up to 100: unclamped, every leapfrog kick is ~eps * 100, the kinetic energy explodes and
    # every proposal is rejected (the chains never move); clamped at max_grad = 2, HMC still mixes, and the
    # Metropolis test keeps the truncated Gaussian invariant.
    def log_prob(z):
        lp = -0.5 * z.pow(2).sum(-1) + 1e-6 * torch.sin(1e8 * z).sum(-1)
        return torch.where(z[:, 0] > 2.0, torch.full_like(lp, -math.inf), lp)

    n, wall = 20000, 2.0
    z0 = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    z0[:, 0] = torch.as_tensor(truncnorm.rvs(-math.inf, wall, size=n, random_state=1))
    hmc = HamiltonianMonteCarlo(1, step_size=0.3, max_grad=2.0)
    hmc.freeze()
    point, rates = run_chains(hmc, z0, 10, generator, log_prob)
    assert torch.isfinite(point.z).all() and torch.isfinite(point.log_prob).all()
    assert (point.z[:, 0] <= wall).all()
    assert min(rates) > 0.2, rates  # unclamped: < 1e-4
    assert (point.z - z0).abs().max(1).values.median() > 0.5  # chains moved
    mean = torch.tensor([truncnorm.mean(-math.inf, wall), 0.0], dtype=torch.float64)
    std = torch.tensor([truncnorm.std(-math.inf, wall), 1.0], dtype=torch.float64)
    assert_moments(point.z, mean, std, n)

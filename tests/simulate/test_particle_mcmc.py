import math

import numpy as np
import pytest
import torch

from bgflow_se3.energy import DoubleWellEnergy, LennardJonesEnergy
from bgflow_se3.errors import ConvergenceError
from bgflow_se3.simulate.particle_mcmc import (
    ParticleDataConfig,
    check_equilibrium,
    integrated_autocorrelation_time,
    load_particle_data,
    make_particle_data,
    metropolis_chains,
    remove_com,
)


def test_autocorrelation_time_of_ar1_process(generator):
    phi, n_steps, n_chains = 0.8, 4000, 64
    noise = torch.randn(n_steps, n_chains, generator=generator, dtype=torch.float64)
    series = torch.empty_like(noise)
    series[0] = noise[0] / math.sqrt(1 - phi**2)
    for t in range(1, n_steps):
        series[t] = phi * series[t - 1] + noise[t]
    expected = (1 + phi) / (1 - phi)  # 9
    assert integrated_autocorrelation_time(series) == pytest.approx(expected, rel=0.1)
    white = torch.randn(n_steps, n_chains, generator=generator, dtype=torch.float64)
    assert integrated_autocorrelation_time(white) == pytest.approx(1.0, abs=0.1)
    with pytest.raises(ConvergenceError):
        # too short for the window rule: a random walk (tau ~ its length) over 100 steps
        integrated_autocorrelation_time(noise[:100].cumsum(dim=0))


@pytest.fixture(scope="module")
def dw4_chains():
    energy = DoubleWellEnergy().double()
    gen = torch.Generator().manual_seed(5)
    x0 = remove_com(2.0 * torch.randn(400, 4, 2, generator=gen, dtype=torch.float64))
    burn = metropolis_chains(energy, x0, 600, 0.3, gen, thin=600, tune=True)
    run = metropolis_chains(energy, burn.final, 2000, burn.step_size, gen, thin=50)
    return energy, run


def test_metropolis_stays_com_free_and_tunes_acceptance(dw4_chains):
    _, run = dw4_chains
    assert run.samples.shape == (40, 400, 4, 2)
    assert run.samples.mean(dim=2).abs().max() < 1e-12
    assert 0.3 < run.acceptance < 0.5


def test_dw4_chains_pass_virial_and_energy_checks(dw4_chains):
    energy, run = dw4_chains
    tau = integrated_autocorrelation_time(run.energies)  # in units of kept samples
    check = check_equilibrium(energy, run.samples, tau=tau)
    assert check.passed, check
    assert check.virial_expected == 6.0
    assert abs(check.virial - 6.0) < 4 * check.virial_stderr


def test_equilibrium_check_rejects_out_of_equilibrium_samples(dw4_chains):
    energy, run = dw4_chains
    # squeezed configurations (a wrong temperature) violate the virial identity
    assert not check_equilibrium(energy, 0.9 * run.samples, tau=2.0).passed
    # one group of chains stuck at its start: energies of the groups disagree
    stuck = run.samples.clone()
    stuck[:, :100] = stuck[:1, :100]
    assert not check_equilibrium(energy, stuck, tau=2.0).passed


def test_hmc_samples_lj_cluster_at_equilibrium():
    energy = LennardJonesEnergy(6, 3).double()
    gen = torch.Generator().manual_seed(3)
    sites = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float64)
    x0 = remove_com(0.8 * sites + 0.05 * torch.randn(200, 6, 3, generator=gen, dtype=torch.float64))
    burn = metropolis_chains(energy, x0, 150, 0.02, gen, thin=150, n_leapfrog=5, tune=True, target_acceptance=0.65)
    run = metropolis_chains(energy, burn.final, 400, burn.step_size, gen, thin=10, n_leapfrog=5)
    assert run.samples.mean(dim=2).abs().max() < 1e-10
    assert 0.5 < run.acceptance < 0.8
    check = check_equilibrium(energy, run.samples, tau=integrated_autocorrelation_time(run.energies))
    assert check.passed, check


def test_make_and_load_particle_data(tmp_path):
    config = ParticleDataConfig(
        n_chains=64, n_train=200, n_val=50, n_test=50, init_spacing=4.0, tune_steps=300, pilot_steps=800
    )
    folder = make_particle_data("dw4", cache_dir=tmp_path, config=config, progress=False)
    train = load_particle_data("dw4", "train", cache_dir=tmp_path, make_if_missing=False, dtype=torch.float64)
    test = load_particle_data("dw4", "test", cache_dir=tmp_path, make_if_missing=False)
    assert train.shape == (200, 4, 2) and train.dtype == torch.float64
    assert test.shape == (50, 4, 2) and test.dtype == torch.float32
    assert train.mean(dim=1).abs().max() < 1e-12
    # splits are disjoint and the files are the ones on disk
    val = np.load(folder / "val.npy")
    assert not np.isin(val[:, 0, 0], train[:, 0, 0].numpy()).any()
    with pytest.raises(FileNotFoundError, match="particles_make_data"):
        load_particle_data("lj13", "train", cache_dir=tmp_path, make_if_missing=False)
    with pytest.raises(ValueError, match="unknown split"):
        load_particle_data("dw4", "training", cache_dir=tmp_path)

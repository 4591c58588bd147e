import math

import pytest
import torch

from bgflow_se3.energy.base import Energy, kT_in_kJ_per_mol
from bgflow_se3.sampling import langevin_dynamics, minimise


class Harmonic(Energy):
    """u = k |x - 1|^2 / 2 (reduced), per atom stiffness k in kT/nm^2."""

    def __init__(self, n_atoms: int, k: float) -> None:
        super().__init__(n_atoms, 3, temperature=300.0)
        self.k = k

    def _reduced_energy(self, x):
        return 0.5 * self.k * (x - 1.0).pow(2).sum((1, 2))


def test_langevin_samples_the_boltzmann_distribution():
    """Equipartition: <u> = d / 2 and per-coordinate variance 1 / k, with unequal masses."""
    energy = Harmonic(2, k=400.0)
    masses = torch.tensor([1.0, 12.0], dtype=torch.float64)
    x0 = torch.ones(512, 2, 3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    run = langevin_dynamics(
        energy, x0, masses, 3000, timestep_ps=0.002, friction_per_ps=5.0, save_every=50, generator=gen
    )
    frames, u = run.frames[10:], run.u[10:]  # skip equilibration
    assert frames.shape == (50, 512, 2, 3)
    mean_u = u.mean().item()
    err = u.std().item() / math.sqrt(u.numel() / 5)  # frames are correlated: be generous
    assert abs(mean_u - 3.0) < 4 * err + 0.05, mean_u
    var = (frames - 1.0).pow(2).mean().item()
    assert abs(var * energy.k - 1.0) < 0.05, var * energy.k
    assert energy.kT == pytest.approx(kT_in_kJ_per_mol(300.0))


def test_minimise_lowers_the_energy_and_bad_input_is_refused():
    energy = Harmonic(3, k=100.0)
    x = torch.randn(4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert (energy(minimise(energy, x, 400, max_displacement=0.05, step=1e-3)) < 1e-3 * energy(x)).all()
    with pytest.raises(ValueError, match="masses"):
        langevin_dynamics(energy, x, torch.ones(2, dtype=torch.float64), 10)
    with pytest.raises(ValueError, match="timestep"):
        langevin_dynamics(energy, x, torch.ones(3, dtype=torch.float64), 10, timestep_ps=0.0)


def test_an_exploding_integration_is_reported():
    energy = Harmonic(1, k=1e8)
    x = torch.full((2, 1, 3), 1.1, dtype=torch.float64)
    with pytest.raises(FloatingPointError, match="timestep"):
        langevin_dynamics(energy, x, torch.ones(1, dtype=torch.float64), 400, timestep_ps=0.01, save_every=100)

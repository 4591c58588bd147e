"""energy_for_device picks OpenMM on the CPU and TorchForceField on CUDA (energies are checked in their own tests)."""

import pytest
import torch

from bgflow_se3.energy import OpenMMEnergy, TorchForceField, energy_for_device
from bgflow_se3.systems import load_aldp


def test_cpu_gives_openmm_energy():
    energy, name = energy_for_device(load_aldp("vacuum").system, 300.0, "cpu", n_workers=1)
    try:
        assert isinstance(energy, OpenMMEnergy) and name == "OpenMMEnergy(1 workers)"
    finally:
        energy.close()


@pytest.mark.gpu
def test_cuda_gives_torch_forcefield_on_the_gpu():
    aldp = load_aldp("vacuum")
    energy, name = energy_for_device(aldp.system, 300.0, "cuda")
    assert isinstance(energy, TorchForceField) and name == "TorchForceField"
    x = torch.from_numpy(aldp.positions_nm[None]).to("cuda", torch.float64)
    u = energy(x)
    assert u.device.type == "cuda" and torch.isfinite(u).all()

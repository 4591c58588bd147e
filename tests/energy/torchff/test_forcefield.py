"""TorchForceField against OpenMM's Reference platform, force group by force group, plus its error policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgflow_se3 import TorchForceField, UnsupportedForceError, UnsupportedSystemError
from bgflow_se3.energy.base import MOLAR_GAS_CONSTANT
from bgflow_se3.systems import load_aldp
from tests.energy.torchff._openmm_reference import assert_groups_match_openmm, one_group_per_force, openmm_by_group

openmm = pytest.importorskip("openmm")

N_ALDP_CONFIGS = 1000


def _perturbed_configurations(system, start: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` configurations (nm) spanning typical to very high energies.

    Half are snapshots of 800 K Langevin dynamics (many backbone conformations) with small noise, a quarter
    carry large Gaussian displacements (0.02 to 0.05 nm per coordinate), and a quarter have a near-clash: an
    atom moved to 0.08-0.2 nm from a random other atom.
    """
    rng = np.random.default_rng(seed)
    integrator = openmm.LangevinMiddleIntegrator(800.0, 5.0, 0.001)
    integrator.setRandomNumberSeed(seed)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(start)
    openmm.LocalEnergyMinimizer.minimize(context, maxIterations=200)
    n_md = n // 2
    snapshots = np.empty((n_md, *start.shape))
    for s in range(n_md):
        integrator.step(20)
        snapshots[s] = context.getState(getPositions=True).getPositions(asNumpy=True)._value
    md = snapshots + rng.normal(scale=0.005, size=snapshots.shape)
    n_large = n // 4
    scales = rng.uniform(0.02, 0.05, size=(n_large, 1, 1))
    large = snapshots[rng.integers(n_md, size=n_large)] + scales * rng.normal(size=(n_large, *start.shape))
    n_clash = n - n_md - n_large
    clash = snapshots[rng.integers(n_md, size=n_clash)].copy()
    n_atoms = start.shape[0]
    for c in range(n_clash):
        i, j = rng.choice(n_atoms, size=2, replace=False)
        direction = rng.normal(size=3)
        clash[c, i] = clash[c, j] + rng.uniform(0.08, 0.2) * direction / np.linalg.norm(direction)
    return np.concatenate([md, large, clash])


@pytest.fixture(scope="module", params=["vacuum", "implicit"])
def aldp_case(request):
    """(TorchForceField, System with one group per force, positions (1000, 22, 3), OpenMM per-group results)."""
    aldp = load_aldp(request.param)
    system = one_group_per_force(aldp.system)
    positions = _perturbed_configurations(system, aldp.positions_nm, N_ALDP_CONFIGS, seed=7)
    return TorchForceField.from_system(system), system, positions, openmm_by_group(system, positions)


def test_aldp_matches_openmm_per_force_group(aldp_case):
    ff, system, positions, reference = aldp_case
    assert_groups_match_openmm(ff, system, positions, reference)


def test_aldp_configurations_include_high_energies(aldp_case):
    _, _, positions, reference = aldp_case
    total = sum(e for e, _ in reference.values())
    assert len(positions) >= 1000
    assert total.max() > 1e5, "the test set must contain near-clashes with very high energies"
    assert np.isfinite(total).all()


def test_aldp_reduced_energy_and_force_match_openmm_total(aldp_case):
    ff, _, positions, reference = aldp_case
    kT = MOLAR_GAS_CONSTANT * 300.0
    x = torch.tensor(positions[:200])
    e_ref = sum(e for e, _ in reference.values())[:200]
    f_ref = sum(f for _, f in reference.values())[:200]
    torch.testing.assert_close(ff(x), torch.tensor(e_ref / kT), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ff.force(x), torch.tensor(f_ref / kT), rtol=1e-5, atol=1e-4)
    assert ff.kT == pytest.approx(kT)


def test_float32_error_against_float64(aldp_case):
    """Float32 in, float32 out; its energies stay within 1e-4 relative (measured ~1e-6) of float64."""
    ff, _, positions, reference = aldp_case
    x64 = torch.tensor(positions[:500])
    e_ref = np.abs(sum(e for e, _ in reference.values())[:500])
    u32 = ff(x64.float())
    assert u32.dtype == torch.float32 and ff.force(x64.float()).dtype == torch.float32
    rel = (u32.double() - ff(x64)).abs().numpy() * ff.kT / np.maximum(e_ref, 1.0)
    assert rel.max() < 1e-4


def test_parameters_stay_float64_under_module_casts():
    system = load_aldp("implicit").system
    ff = TorchForceField.from_system(system)
    x = torch.tensor(load_aldp("implicit").positions_nm)[None] + 0.01
    before = ff(x)
    ff.float()
    assert all(b.dtype in (torch.float64, torch.int64) for b in ff.buffers())
    assert torch.equal(ff(x), before)
    assert ff.to("cpu")(x).device.type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    aldp = load_aldp("implicit")
    ff = TorchForceField.from_system(aldp.system)
    x = torch.tensor(aldp.positions_nm)[None] + 0.01 * torch.randn(64, 22, 3, dtype=torch.float64)
    u_cpu, f_cpu = ff(x), ff.force(x)
    ff.to("cuda")
    torch.testing.assert_close(ff(x.cuda()).cpu(), u_cpu, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ff.force(x.cuda()).cpu(), f_cpu, rtol=1e-9, atol=1e-9)


def _testsystem(name: str, **kwargs):
    from openmmtools import testsystems

    return getattr(testsystems, name)(**kwargs)


@pytest.mark.parametrize("name", ["TolueneImplicitOBC2", "TolueneVacuum", "HostGuestImplicitOBC2"])
def test_other_systems_match_openmm(name):
    """Amber/GAFF small molecules from openmmtools' prmtop files (OBC2 gives a GBSAOBCForce, plus a
    CMMotionRemover that must be ignored); the host-guest complex has 156 atoms."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test_system = _testsystem(name, constraints=None)
    system = one_group_per_force(test_system.system)
    start = np.asarray(test_system.positions._value)
    n = 40 if name.startswith("HostGuest") else 100
    positions = _perturbed_configurations(system, start, n, seed=3)
    assert_groups_match_openmm(TorchForceField.from_system(system), system, positions)


def test_lennard_jones_cluster_as_nonbonded_force():
    """openmmtools' LJ cluster without its CustomExternalForce restraint: a charge-free NonbondedForce."""
    system = _testsystem("LennardJonesCluster").system
    for k in reversed(range(system.getNumForces())):
        if type(system.getForce(k)).__name__ != "NonbondedForce":
            system.removeForce(k)
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3) * 0.38
    positions = grid + rng.normal(scale=0.03, size=(50, 27, 3))
    assert_groups_match_openmm(TorchForceField.from_system(system), system, positions)


def test_torsion_sign_convention_with_arbitrary_phases():
    """Amber phases are 0 or pi, which hide the dihedral's sign; random phases expose it."""
    rng = np.random.default_rng(1)
    system = openmm.System()
    for _ in range(6):
        system.addParticle(12.0)
    torsions = openmm.PeriodicTorsionForce()
    for a, b, c, d in [(0, 1, 2, 3), (1, 2, 3, 4), (5, 3, 2, 0), (4, 3, 1, 0)]:
        for n in (1, 2, 3):
            torsions.addTorsion(a, b, c, d, n, rng.uniform(-np.pi, np.pi), rng.uniform(0.5, 5.0))
    angles = openmm.HarmonicAngleForce()
    angles.addAngle(0, 1, 2, 1.9, 300.0)
    angles.addAngle(5, 3, 4, 2.5, 200.0)
    system.addForce(torsions)
    system.addForce(angles)
    system = one_group_per_force(system)
    positions = rng.normal(scale=0.15, size=(100, 6, 3))
    assert_groups_match_openmm(TorchForceField.from_system(system), system, positions)


@pytest.mark.parametrize("solvent", ["vacuum", "implicit"])
def test_non_finite_configuration_gets_infinite_energy_and_zero_force(solvent):
    aldp = load_aldp(solvent)
    ff = TorchForceField.from_system(aldp.system)
    x = torch.tensor(aldp.positions_nm).repeat(2, 1, 1)
    x[1, 3, 0] = float("nan")
    u = ff(x)
    assert torch.isfinite(u[0]) and u[1] == float("inf")
    assert torch.all(ff.force(x)[1] == 0) and torch.isfinite(ff.force(x)).all()


# --- errors -------------------------------------------------------------------------------------------------


def test_unsupported_custom_force_is_named_in_the_error():
    system = load_aldp("vacuum").system
    system.addForce(openmm.CustomManyParticleForce(3, "distance(p1, p2)"))
    with pytest.raises(UnsupportedForceError, match="CustomManyParticleForce") as info:
        TorchForceField.from_system(system)
    assert isinstance(info.value, NotImplementedError)
    assert "CustomGBForce" in str(info.value) and "HarmonicBondForce" in str(info.value)


def _nonbonded(system):
    return next(f for f in system.getForces() if type(f).__name__ == "NonbondedForce")


def test_cutoff_raises():
    system = load_aldp("vacuum").system
    _nonbonded(system).setNonbondedMethod(openmm.NonbondedForce.CutoffNonPeriodic)
    with pytest.raises(UnsupportedSystemError, match="NoCutoff"):
        TorchForceField.from_system(system)


def test_gbsa_cutoff_raises():
    system = load_aldp("implicit").system
    next(f for f in system.getForces() if type(f).__name__ == "GBSAOBCForce").setNonbondedMethod(
        openmm.GBSAOBCForce.CutoffNonPeriodic
    )
    with pytest.raises(UnsupportedSystemError, match="GBSAOBCForce.*NoCutoff"):
        TorchForceField.from_system(system)


def test_periodic_system_raises():
    system = load_aldp("vacuum").system
    _nonbonded(system).setNonbondedMethod(openmm.NonbondedForce.PME)
    with pytest.raises(UnsupportedSystemError, match="periodic"):
        TorchForceField.from_system(system)


def test_constraints_raise():
    system = load_aldp("vacuum").system
    system.addConstraint(0, 1, 0.109)
    with pytest.raises(UnsupportedSystemError, match="constraints"):
        TorchForceField.from_system(system)


def test_virtual_sites_raise():
    system = load_aldp("vacuum").system
    system.setVirtualSite(3, openmm.TwoParticleAverageSite(1, 2, 0.5, 0.5))
    with pytest.raises(UnsupportedSystemError, match="virtual site"):
        TorchForceField.from_system(system)


def test_other_force_classes_raise_naming_the_class():
    system = load_aldp("vacuum").system
    system.addForce(openmm.RBTorsionForce())
    with pytest.raises(UnsupportedForceError, match="RBTorsionForce"):
        TorchForceField.from_system(system)


def test_cmmotion_remover_is_ignored():
    system = load_aldp("vacuum").system
    n_terms = len(TorchForceField.from_system(system).terms)
    system.addForce(openmm.CMMotionRemover())
    assert len(TorchForceField.from_system(system).terms) == n_terms


def test_bad_positions_are_rejected():
    ff = TorchForceField.from_system(load_aldp("vacuum").system)
    with pytest.raises(ValueError, match="shape"):
        ff(torch.zeros(4, 21, 3, dtype=torch.float64))
    with pytest.raises(TypeError):
        ff(torch.zeros(4, 22, 3, dtype=torch.float16))


def test_analytic_gradient_equals_autograd(aldp_case):
    """The fused analytic pass (every term) against plain autograd through the torchff.kernels formulas (float64)."""
    ff, system, positions, _ = aldp_case
    autograd_ff = TorchForceField.from_system(system, analytic_gradient=False)
    x = torch.tensor(positions)
    torch.testing.assert_close(ff(x), autograd_ff(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ff.force(x), autograd_ff.force(x), rtol=1e-10, atol=1e-9)


def test_double_backward_needs_autograd_path():
    aldp = load_aldp("implicit")
    x = torch.tensor(aldp.positions_nm)[None].requires_grad_(True)
    autograd_ff = TorchForceField.from_system(aldp.system, analytic_gradient=False)
    (grad,) = torch.autograd.grad(autograd_ff(x).sum(), x, create_graph=True)
    (hessian_row,) = torch.autograd.grad(grad[0, 0, 0], x)
    assert torch.isfinite(hessian_row).all() and hessian_row.abs().sum() > 0
    analytic_ff = TorchForceField.from_system(aldp.system)
    with pytest.raises(RuntimeError, match="analytic_gradient=False"):
        torch.autograd.grad(analytic_ff(x).sum(), x, create_graph=True)


def test_cpu_chunking_gives_the_same_result():
    aldp = load_aldp("implicit")
    x = torch.tensor(aldp.positions_nm) + 0.01 * torch.randn(50, 22, 3, dtype=torch.float64)
    whole = TorchForceField.from_system(aldp.system, cpu_chunk_size=None)
    chunked = TorchForceField.from_system(aldp.system, cpu_chunk_size=7)
    torch.testing.assert_close(chunked(x), whole(x), rtol=1e-14, atol=1e-12)
    torch.testing.assert_close(chunked.force(x), whole.force(x), rtol=1e-13, atol=1e-11)
    with pytest.raises(ValueError, match="cpu_chunk_size"):
        TorchForceField.from_system(aldp.system, cpu_chunk_size=0)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    """``compile=True`` (minutes of compilation on CPU) gives the eager energies and forces."""
    aldp = load_aldp("implicit")
    x = torch.tensor(aldp.positions_nm) + 0.02 * torch.randn(300, 22, 3, dtype=torch.float64)
    eager = TorchForceField.from_system(aldp.system)
    compiled = TorchForceField.from_system(aldp.system, compile=True)
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(compiled.force(x), eager.force(x), rtol=1e-10, atol=1e-8)


def test_gpu_batches_are_chunked_to_the_free_memory(monkeypatch):
    # the planning of non-CPU devices, exercised on CPU tensors: whole batch when it fits, chunks when not, a
    # clear error when not even one configuration fits
    import bgflow_se3.energy.torchff.forcefield as tff
    from bgflow_se3.errors import InsufficientMemoryError

    aldp = load_aldp("implicit")
    ff = TorchForceField.from_system(aldp.system, 300.0)
    x = torch.zeros(100, 22, 3, dtype=torch.float64)
    per_config = tff._BYTES_PER_PAIR * 22**2 * 8
    monkeypatch.setattr(tff, "available_bytes", lambda device: 1000 * per_config)
    assert ff._device_chunk(x) is None
    monkeypatch.setattr(tff, "available_bytes", lambda device: 60 * per_config)
    assert ff._device_chunk(x) == 30
    monkeypatch.setattr(tff, "available_bytes", lambda device: per_config)
    with pytest.raises(InsufficientMemoryError, match="would need about"):
        ff._device_chunk(x)

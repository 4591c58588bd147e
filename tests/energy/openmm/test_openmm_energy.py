"""OpenMMEnergy in-process (n_workers=1): agreement with a direct OpenMM loop, autograd, failure policy, systems."""

import copy

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

from bgflow_se3 import (
    EnergyEvaluationError,
    LennardJonesEnergy,
    NonFiniteInputError,
    OpenMMEnergy,
    UnsupportedSystemError,
    WorkerError,
)
from bgflow_se3.energy import MOLAR_GAS_CONSTANT
from bgflow_se3.energy.openmm.worker import _read_state, _read_state_public, evaluate_batch
from bgflow_se3.systems import lennard_jones_system, load_aldp


@pytest.fixture(scope="module", params=["vacuum", "implicit"])
def aldp(request):
    return load_aldp(request.param)


@pytest.fixture(scope="module")
def aldp_energy(aldp):
    with OpenMMEnergy(aldp.system, temperature=300.0) as energy:
        yield energy


def perturbed(aldp, n, scale=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.from_numpy(aldp.positions_nm)
    return x0 + scale * torch.randn(n, *x0.shape, generator=g, dtype=torch.float64)


def direct_loop(system, x):
    """Energies (kJ/mol) and forces (kJ/mol/nm) through OpenMM's public API, one Context, one config at a time."""
    context = openmm.Context(system, openmm.VerletIntegrator(1.0), openmm.Platform.getPlatformByName("Reference"))
    energies, forces = [], []
    for conf in x.numpy():
        context.setPositions(conf * unit.nanometer)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    return torch.tensor(energies, dtype=torch.float64), torch.from_numpy(np.stack(forces))


def test_matches_direct_openmm_loop(aldp, aldp_energy):
    x = perturbed(aldp, 16)
    e_ref, f_ref = direct_loop(aldp.system, x)
    kT = MOLAR_GAS_CONSTANT * 300.0
    assert aldp_energy.kT == pytest.approx(kT, rel=1e-15)
    u, f = aldp_energy.energy_and_force(x)
    assert u.shape == (16,) and f.shape == (16, 22, 3)
    assert e_ref.std() > 1.0  # the batch really differs from row to row
    torch.testing.assert_close(u, e_ref / kT, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(f, f_ref / kT, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(aldp_energy(x), u, rtol=0, atol=0)
    torch.testing.assert_close(aldp_energy.force(x), f, rtol=0, atol=0)


def test_fast_state_reader_equals_public_api(aldp):
    context = openmm.Context(aldp.system, openmm.VerletIntegrator(1.0), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(perturbed(aldp, 1)[0].numpy())
    state = context.getState(getEnergy=True, getForces=True)
    fast, public = np.empty((22, 3)), np.empty((22, 3))
    assert _read_state(state, fast) == _read_state_public(state, public)
    np.testing.assert_array_equal(fast, public)


def test_public_api_fallback_gives_the_same_results(aldp, aldp_energy, monkeypatch):
    import bgflow_se3.energy.openmm.worker as worker

    x = perturbed(aldp, 3)
    fast = aldp_energy.energy_and_force(x)
    monkeypatch.setattr(worker, "_FAST_READERS", [None])  # as on an OpenMM without the raw accessors
    slow = aldp_energy.energy_and_force(x)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])


def test_autograd_gradient_is_minus_force(aldp, aldp_energy, generator):
    x = perturbed(aldp, 6).requires_grad_(True)
    weights = torch.rand(6, generator=generator, dtype=torch.float64)
    (aldp_energy(x) * weights).sum().backward()
    torch.testing.assert_close(x.grad, -weights[:, None, None] * aldp_energy.force(x.detach()), rtol=0, atol=0)


def test_force_agrees_with_finite_differences(aldp, aldp_energy, generator):
    x = perturbed(aldp, 2, seed=3)
    force = aldp_energy.force(x)
    h = 1e-5  # nm; central differences are accurate to O(h^2) relative to the force scale
    for atom, axis in [(0, 0), (7, 1), (14, 2), (21, 0)]:
        step = torch.zeros_like(x)
        step[:, atom, axis] = h
        fd = -(aldp_energy(x + step) - aldp_energy(x - step)) / (2 * h)
        torch.testing.assert_close(fd, force[:, atom, axis], rtol=1e-4, atol=1e-3)


def test_float32_input_gives_float32_output(aldp, aldp_energy):
    x = perturbed(aldp, 4)
    u32 = aldp_energy(x.float())
    assert u32.dtype == torch.float32 and aldp_energy.force(x.float()).dtype == torch.float32
    torch.testing.assert_close(u32.double(), aldp_energy(x.float().double()), rtol=1e-6, atol=1e-5)


def test_temperature_as_quantity(aldp):
    energy = OpenMMEnergy(aldp.system, temperature=310.0 * unit.kelvin)
    assert energy.temperature == 310.0 and energy.kT == pytest.approx(MOLAR_GAS_CONSTANT * 310.0)
    with pytest.raises(ValueError, match="kelvin"):
        OpenMMEnergy(aldp.system, temperature=300.0 * unit.nanometer)
    with pytest.raises(ValueError, match="temperature"):
        OpenMMEnergy(aldp.system, temperature=-1.0)


def test_nan_coordinates_give_inf_and_zero_force(aldp, aldp_energy):
    x = perturbed(aldp, 5)
    x_bad = x.clone()
    x_bad[1, 3, 0] = float("nan")
    x_bad[3, 0, 2] = float("inf")
    u, f = aldp_energy.energy_and_force(x_bad)
    good = [0, 2, 4]
    assert torch.isposinf(u[[1, 3]]).all() and (f[[1, 3]] == 0).all()
    torch.testing.assert_close(u[good], aldp_energy(x[good]), rtol=0, atol=0)
    x_bad.requires_grad_(True)
    aldp_energy(x_bad).sum().backward()
    assert torch.isfinite(x_bad.grad).all() and (x_bad.grad[[1, 3]] == 0).all()
    strict = OpenMMEnergy(aldp.system, on_error="raise")
    with pytest.raises(NonFiniteInputError, match="batch index 1"):
        strict(x_bad.detach())


def test_wrong_shape_or_dtype_is_refused(aldp_energy):
    with pytest.raises(ValueError, match=r"shape \(batch, 22, 3\)"):
        aldp_energy(torch.zeros(4, 21, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        aldp_energy(torch.zeros(4, 22 * 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        aldp_energy(torch.zeros(4, 22, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        aldp_energy(np.zeros((4, 22, 3)))


def test_single_configuration_is_a_batch_of_one(aldp, aldp_energy):
    x = perturbed(aldp, 1)
    assert aldp_energy(x[0]).shape == (1,)
    torch.testing.assert_close(aldp_energy(x[0]), aldp_energy(x), rtol=0, atol=0)


def _lj_pair(d: float, dtype=torch.float64):
    return torch.tensor([[[0.0, 0.0, 0.0], [d, 0.0, 0.0]]], dtype=dtype)


def test_failed_evaluation_is_inf_never_zero():
    lj = lennard_jones_system(2)
    energy = OpenMMEnergy(lj.system, lj.temperature)
    u, f = energy.energy_and_force(_lj_pair(0.0))  # coincident particles: OpenMM returns NaN/inf
    assert torch.isposinf(u).all() and (f == 0).all()
    with pytest.raises(EnergyEvaluationError, match="batch index 0.*non-finite"):
        OpenMMEnergy(lj.system, lj.temperature, on_error="raise")(_lj_pair(0.0))


def test_overflow_of_float32_is_a_failure():
    lj = lennard_jones_system(2)
    energy = OpenMMEnergy(lj.system, lj.temperature)
    assert torch.isfinite(energy(_lj_pair(1e-4))).all()  # 2 * 2 * 1e48: finite in float64
    assert torch.isposinf(energy(_lj_pair(1e-4, torch.float32))).all()
    assert (energy.force(_lj_pair(1e-4, torch.float32)) == 0).all()
    with pytest.raises(EnergyEvaluationError, match="overflows torch.float32"):
        OpenMMEnergy(lj.system, lj.temperature, on_error="raise")(_lj_pair(1e-4, torch.float32))


def test_openmm_exception_is_reported_per_configuration():
    class Exploding:
        def setPositions(self, positions):
            if positions[0, 0] > 0:
                raise RuntimeError("boom")

        def getState(self, **kwargs):
            raise AssertionError("unreachable in this test")

    energies, forces, failures = evaluate_batch(Exploding(), np.ones((2, 3, 3)))
    assert set(failures) == {0, 1} and "RuntimeError: boom" in failures[0]
    assert np.isnan(energies).all() and (forces == 0).all()


def _with_constraint(system):
    system = copy.deepcopy(system)
    system.addConstraint(0, 1, 0.109)
    return system


def test_constrained_system_is_refused_unless_allowed(aldp, aldp_energy):
    with pytest.raises(UnsupportedSystemError, match="1 distance constraints.*constraints=None"):
        OpenMMEnergy(_with_constraint(aldp.system))
    allowed = OpenMMEnergy(_with_constraint(aldp.system), allow_constraints=True)
    x = perturbed(aldp, 3)
    torch.testing.assert_close(allowed(x), aldp_energy(x), rtol=0, atol=0)  # evaluated as given, not projected


def test_periodic_system_is_refused_unless_allowed():
    aldp = load_aldp("vacuum")
    system = copy.deepcopy(aldp.system)
    system.setDefaultPeriodicBoxVectors(openmm.Vec3(3, 0, 0), openmm.Vec3(0, 3, 0), openmm.Vec3(0, 0, 3))
    for force in system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            force.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    with pytest.raises(UnsupportedSystemError, match=r"periodic boundary conditions \(forces .*NonbondedForce"):
        OpenMMEnergy(system)
    energy = OpenMMEnergy(system, allow_periodic=True)
    assert torch.isfinite(energy(perturbed(aldp, 2))).all()


def _system_with_virtual_site():
    """Particles 0 and 1 on a harmonic bond; particle 2 is their midpoint, held near (0, 0, 1) by an external force."""
    system = openmm.System()
    for mass in (1.0, 1.0, 0.0):
        system.addParticle(mass)
    system.setVirtualSite(2, openmm.TwoParticleAverageSite(0, 1, 0.5, 0.5))
    bond = openmm.HarmonicBondForce()
    bond.addBond(0, 1, 0.3, 100.0)
    system.addForce(bond)
    pull = openmm.CustomExternalForce("50*(x^2 + y^2 + (z-1)^2)")
    pull.addParticle(2, [])
    system.addForce(pull)
    return system


def test_virtual_sites_are_refused_unless_allowed(generator):
    system = _system_with_virtual_site()
    with pytest.raises(UnsupportedSystemError, match="virtual sites.*particle 2"):
        OpenMMEnergy(system)
    energy = OpenMMEnergy(system, temperature=300.0, allow_virtual_sites=True)
    x = torch.randn(3, 3, 3, generator=generator, dtype=torch.float64)
    moved = x.clone()
    moved[:, 2] += 5.0  # the site's input coordinates are ignored: it is rebuilt from particles 0 and 1
    torch.testing.assert_close(energy(moved), energy(x), rtol=0, atol=0)
    force = energy.force(x)
    assert (force[:, 2] == 0).all()
    h = 1e-6
    step = torch.zeros_like(x)
    step[:, 0, 2] = h
    fd = -(energy(x + step) - energy(x - step)) / (2 * h)
    torch.testing.assert_close(fd, force[:, 0, 2], rtol=1e-5, atol=1e-4)  # the site's force reaches its parents


def test_not_a_system_and_bad_options(aldp):
    with pytest.raises(TypeError, match="openmm.System"):
        OpenMMEnergy("vacuum.xml")
    with pytest.raises(ValueError, match="n_workers"):
        OpenMMEnergy(aldp.system, n_workers=0)
    with pytest.raises(ValueError, match="on_error"):
        OpenMMEnergy(aldp.system, on_error="zero")
    with pytest.raises(ValueError, match="no platform 'Nope'.*Reference"):
        OpenMMEnergy(aldp.system, platform="Nope")


def test_copy_and_pickle_are_refused_with_a_clear_error(aldp_energy):
    import pickle

    with pytest.raises(TypeError, match="cannot be pickled or deep-copied"):
        copy.deepcopy(aldp_energy)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(aldp_energy)


def test_closed_energy_refuses_to_evaluate(aldp):
    energy = OpenMMEnergy(aldp.system)
    energy.close()
    energy.close()  # idempotent
    with pytest.raises(WorkerError, match="closed"):
        energy(perturbed(aldp, 1))


@pytest.mark.parametrize("n_particles", [13, 55])
def test_lennard_jones_system_equals_torch_target(n_particles, generator):
    lj = lennard_jones_system(n_particles)
    assert MOLAR_GAS_CONSTANT * lj.temperature == pytest.approx(1.0, rel=1e-15)
    # jittered cubic lattice with spacing ~ r_m: a realistic, overlap-free cluster
    side = int(np.ceil(n_particles ** (1 / 3)))
    grid = torch.cartesian_prod(*[torch.arange(side, dtype=torch.float64)] * 3)[:n_particles] * 1.1
    x = grid + 0.1 * torch.randn(8, n_particles, 3, generator=generator, dtype=torch.float64)
    x = x + torch.randn(8, 1, 3, generator=generator, dtype=torch.float64)  # not centred: the restraint must be
    openmm_energy = OpenMMEnergy(lj.system, lj.temperature)
    torch_energy = LennardJonesEnergy(n_particles)
    torch.testing.assert_close(openmm_energy(x), torch_energy(x), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(openmm_energy.force(x), torch_energy.force(x), rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_results_follow_a_cuda_input(aldp, aldp_energy):
    x = perturbed(aldp, 4)
    xc = x.cuda().requires_grad_(True)
    u = aldp_energy(xc)
    assert u.device == xc.device and u.dtype == torch.float64
    u.sum().backward()
    assert xc.grad.device == xc.device
    torch.testing.assert_close(u.cpu(), aldp_energy(x), rtol=0, atol=0)
    torch.testing.assert_close(xc.grad.cpu(), -aldp_energy.force(x), rtol=0, atol=0)

"""The fused analytic pass of TorchForceField (torchff.fused) against autograd through torchff.kernels and OpenMM."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bgflow_se3 import TorchForceField
from bgflow_se3.energy.torchff import fused as analytic
from bgflow_se3.energy.torchff import kernels
from bgflow_se3.systems import load_aldp

openmm = pytest.importorskip("openmm")


def _autograd(energy_fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    energy = energy_fn(x)
    (grad,) = torch.autograd.grad(energy.sum(), x)
    return energy.detach(), grad


def _analytic(term_fn, x: torch.Tensor, parameters) -> tuple[torch.Tensor, torch.Tensor]:
    X = x.permute(1, 2, 0).contiguous()
    grad = torch.zeros_like(X)
    energy = term_fn(X, parameters, grad)
    return energy, grad.permute(2, 0, 1)


def _assert_same(analytic, reference, rtol=1e-10):
    (e, g), (e_ref, g_ref) = analytic, reference
    torch.testing.assert_close(e, e_ref, rtol=1e-12, atol=1e-12 * float(e_ref.abs().max()))
    err = (g - g_ref).flatten(1).norm(dim=1) / g_ref.flatten(1).norm(dim=1)
    assert err.max() < rtol, f"gradient relative error {err.max():.2e}"


@pytest.fixture(scope="module")
def random_molecule():
    """Eight atoms at random positions (nm, float64, batch 64) with random bonded parameters."""
    g = torch.Generator().manual_seed(11)
    x = 0.3 * torch.randn(64, 8, 3, generator=g, dtype=torch.float64)
    return x, g


def test_bonds_angles_torsions_match_autograd(random_molecule):
    x, g = random_molecule
    atoms4 = torch.stack([torch.randperm(8, generator=g)[:4] for _ in range(12)])
    k, r0 = torch.rand(12, generator=g, dtype=torch.float64) * 500, torch.rand(12, generator=g, dtype=torch.float64)
    theta0 = torch.rand(12, generator=g, dtype=torch.float64) * 3.0
    n = torch.randint(1, 5, (12,), generator=g).double()
    phase = (torch.rand(12, generator=g, dtype=torch.float64) - 0.5) * 2 * np.pi
    col = lambda v: v.reshape(-1, 1)  # noqa: E731

    bonds = analytic.BondParameters(atoms4[:, :2].T.contiguous(), col(r0), col(k))
    reference = _autograd(lambda y: kernels.harmonic_bond_energy(y, atoms4[:, :2], r0, k), x)
    _assert_same(_analytic(analytic.bond_energy_and_gradient, x, bonds), reference)

    angles = analytic.AngleParameters(atoms4[:, :3].T.contiguous(), col(theta0), col(k))
    reference = _autograd(lambda y: kernels.harmonic_angle_energy(y, atoms4[:, :3], theta0, k), x)
    _assert_same(_analytic(analytic.angle_energy_and_gradient, x, angles), reference)

    # Two terms share each dihedral, as PeriodicTorsionTerm stores them.
    dihedral_index = torch.arange(12) // 2
    torsions = analytic.TorsionParameters(atoms4[::2].T.contiguous(), col(n), col(phase), col(k * 0.01), dihedral_index)
    reference = _autograd(
        lambda y: kernels.periodic_torsion_energy(y, atoms4[::2], n, phase, k * 0.01, dihedral_index), x
    )
    _assert_same(_analytic(analytic.torsion_energy_and_gradient, x, torsions), reference)


def _aldp_configurations(solvent: str, n: int, scale: float, seed: int) -> torch.Tensor:
    aldp = load_aldp(solvent)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.tensor(aldp.positions_nm)
    return x0 + scale * torch.randn(n, *x0.shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("solvent", ["vacuum", "implicit"])
def test_fused_force_equals_autograd_force(solvent):
    """energy_and_force, force and autograd through ff(x) against plain autograd over every term (float64)."""
    system = load_aldp(solvent).system
    fused = TorchForceField.from_system(system, cpu_chunk_size=48)
    autograd = TorchForceField.from_system(system, analytic_gradient=False)
    x = _aldp_configurations(solvent, 200, 0.03, seed=5)
    u_ref, force_ref = autograd.energy_and_force(x)
    u, force = fused.energy_and_force(x)
    torch.testing.assert_close(u, u_ref, rtol=1e-12, atol=1e-12)
    err = (force - force_ref).flatten(1).norm(dim=1) / force_ref.flatten(1).norm(dim=1)
    assert err.max() < 1e-10
    torch.testing.assert_close(fused.force(x), force, rtol=0, atol=0)
    _assert_same(_autograd(fused, x), (u_ref, -force_ref))


def test_fused_pass_covers_obc_rare_branches():
    """Near-coincident atoms put an atom inside another's scaled sphere (HCT 'inside' term) or out of its reach
    (pair skipped); the fused pass must agree with OpenMM's GBSAOBCForce there too."""
    aldp = load_aldp("implicit")
    system = copy.deepcopy(aldp.system)
    for k, force in enumerate(system.getForces()):
        force.setForceGroup(k)
    gb_group = next(f.getForceGroup() for f in system.getForces() if type(f).__name__ == "GBSAOBCForce")
    ff = TorchForceField.from_system(system)
    obc = ff.fused_parameters(frozenset({gb_group}), torch.float64, torch.device("cpu")).pairs.obc[0]
    x = _aldp_configurations("implicit", 8, 0.005, seed=2)
    pairs = ff.fused_parameters(frozenset({gb_group}), torch.float64, torch.device("cpu")).pairs.atoms
    inside_pair = int(obc.inside_below.squeeze(-1).max(dim=0).values.argmax())
    inactive_pair = int(obc.active_above.squeeze(-1).max(dim=0).values.argmax())
    for row, (pair, distance) in enumerate([(inside_pair, 0.3), (inactive_pair, 0.7)] * 4):
        i, j = pairs[:, pair]
        limit = obc.inside_below[:, pair] if distance == 0.3 else obc.active_above[:, pair]
        direction = torch.nn.functional.normalize(torch.randn(3, dtype=torch.float64), dim=0)
        x[row, j] = x[row, i] + distance * float(limit.max()) * direction
    r = (x[:, pairs[0]] - x[:, pairs[1]]).norm(dim=-1)
    assert (r < obc.inside_below.squeeze(-1).unsqueeze(1)).any(), "no atom inside a scaled sphere"
    assert (r <= obc.active_above.squeeze(-1).unsqueeze(1)).any(), "no pair out of reach"

    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    x.requires_grad_(True)
    energy = ff.potential_energy(x, groups={gb_group})
    (grad,) = torch.autograd.grad(energy.sum(), x)
    energy = energy.detach()
    for s in range(len(x)):
        context.setPositions(x[s].detach().numpy())
        state = context.getState(getEnergy=True, getForces=True, groups={gb_group})
        e_ref = state.getPotentialEnergy()._value
        f_ref = state.getForces(asNumpy=True)._value
        assert abs(energy[s].item() - e_ref) <= 1e-6 * abs(e_ref)
        assert np.linalg.norm(-grad[s].numpy() - f_ref) <= 1e-5 * np.linalg.norm(f_ref)


def test_several_nonbonded_forces_add_pair_by_pair():
    """Two NonbondedForces (different groups) fold into one pair list whose coefficients add up."""
    system = load_aldp("vacuum").system
    nonbonded = next(f for f in system.getForces() if type(f).__name__ == "NonbondedForce")
    nonbonded.setForceGroup(3)
    second = copy.deepcopy(nonbonded)
    second.setForceGroup(5)
    system.addForce(second)
    ff = TorchForceField.from_system(system)
    x = _aldp_configurations("vacuum", 20, 0.02, seed=4)
    u_one = ff.potential_energy(x, groups={3})
    u_two = ff.potential_energy(x, groups={5})
    torch.testing.assert_close(u_one, u_two, rtol=1e-14, atol=0)
    autograd = TorchForceField.from_system(system, analytic_gradient=False)
    _assert_same(
        _autograd(lambda y: ff.potential_energy(y, groups={3, 5}), x),
        _autograd(lambda y: autograd.potential_energy(y, groups={3, 5}), x),
    )


def test_float32_fused_pass_stays_close_to_float64():
    ff = TorchForceField.from_system(load_aldp("implicit").system)
    x = _aldp_configurations("implicit", 100, 0.02, seed=8)
    u64, f64 = ff.energy_and_force(x)
    u32, f32 = ff.energy_and_force(x.float())
    assert u32.dtype == f32.dtype == torch.float32
    assert ((u32.double() - u64).abs() / u64.abs().clamp_min(1.0)).max() < 1e-5
    assert ((f32.double() - f64).flatten(1).norm(dim=1) / f64.flatten(1).norm(dim=1)).max() < 1e-4


def test_module_moves_rebuild_the_cached_parameters():
    ff = TorchForceField.from_system(load_aldp("vacuum").system)
    x = _aldp_configurations("vacuum", 4, 0.02, seed=1)
    before = ff(x)
    assert ff._fused_cache
    ff.to(torch.float32)
    assert not ff._fused_cache
    torch.testing.assert_close(ff(x), before, rtol=0, atol=0)


def test_a_degenerate_row_leaves_the_other_rows_alone():
    # A row with every atom at one point (the stand-in of non-finite rows) is NaN inside the OBC pass; the OBC
    # rare-case checks run over the whole batch, and a NaN there once disabled them for every row (1e-3 kT off).
    aldp = load_aldp("implicit")
    ff = TorchForceField.from_system(aldp.system, 300.0)
    g = torch.Generator().manual_seed(1)
    x = torch.from_numpy(aldp.positions_nm) + 0.01 * torch.randn(3, 22, 3, generator=g, dtype=torch.float64)
    with_degenerate = x.clone()
    with_degenerate[1] = 0.0
    assert torch.equal(ff(with_degenerate)[[0, 2]], ff(x)[[0, 2]])
    assert ff(with_degenerate)[1] == float("inf")

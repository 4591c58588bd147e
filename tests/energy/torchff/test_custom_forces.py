"""TorchForceField on Systems with custom forces and CMAP against OpenMM's Reference platform, per force group.

Amber14 + OBC2 / GBn2 (``CustomGBForce``), openmmtools' implicit alanine dipeptide, CHARMM36 (CMAP,
``CustomNonbondedForce`` NBFIX tables, ``CustomBondForce`` 1-4s), ff19SB (CMAP) and an umbrella bias
(``CustomTorsionForce``), on perturbed configurations including near-clashes; float64 tolerances 1e-6 (energies)
and 1e-5 (forces) relative. Plus float32 sanity, both gradient paths, and the refusals of cutoffs and periodicity.
"""

from __future__ import annotations

import copy
import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bgflow_se3 import OpenMMEnergy, TorchForceField, UnsupportedForceError, UnsupportedSystemError
from bgflow_se3.simulate.umbrella_windows import add_torsion_bias
from bgflow_se3.systems import load_aldp
from tests.energy.torchff._openmm_reference import assert_groups_match_openmm, one_group_per_force, openmm_by_group

openmm = pytest.importorskip("openmm")
app = pytest.importorskip("openmm.app")

#: charmm36_2024.xml on the shipped aldp topology (NoCutoff, constraints=None, no CMMotionRemover), serialized:
#: building it takes about a minute (the force field is large); test_shipped_charmm_system_is_the_rebuilt_one checks it.
CHARMM_XML = Path(__file__).parent / "data" / "aldp_charmm36_2024.xml.gz"
N_CONFIGS = 60


@pytest.fixture(scope="module")
def aldp_configurations() -> np.ndarray:
    """(N_CONFIGS, 22, 3) nm: half 800 K vacuum MD snapshots with 0.005 nm noise, a quarter with 0.02-0.05 nm
    Gaussian displacements, a quarter with a near-clash (an atom 0.08-0.2 nm from another atom)."""
    aldp = load_aldp("vacuum")
    rng = np.random.default_rng(11)
    integrator = openmm.LangevinMiddleIntegrator(800.0, 5.0, 0.001)
    integrator.setRandomNumberSeed(11)
    context = openmm.Context(aldp.system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(aldp.positions_nm)
    openmm.LocalEnergyMinimizer.minimize(context, maxIterations=100)
    n_md = N_CONFIGS // 2
    snapshots = np.empty((n_md, 22, 3))
    for s in range(n_md):
        integrator.step(50)
        snapshots[s] = context.getState(getPositions=True).getPositions(asNumpy=True)._value
    md = snapshots + rng.normal(scale=0.005, size=snapshots.shape)
    n_large = N_CONFIGS // 4
    large = snapshots[rng.integers(n_md, size=n_large)]
    large = large + rng.uniform(0.02, 0.05, size=(n_large, 1, 1)) * rng.normal(size=large.shape)
    clash = snapshots[rng.integers(n_md, size=N_CONFIGS - n_md - n_large)].copy()
    for c in range(len(clash)):
        i, j = rng.choice(22, size=2, replace=False)
        direction = rng.normal(size=3)
        clash[c, i] = clash[c, j] + rng.uniform(0.08, 0.2) * direction / np.linalg.norm(direction)
    return np.concatenate([md, large, clash])


def _forcefield_system(*files: str):
    topology = load_aldp("vacuum").topology
    forcefield = app.ForceField(*files)
    return forcefield.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None, removeCMMotion=False)


def _charmm_system():
    return openmm.XmlSerializer.deserialize(gzip.decompress(CHARMM_XML.read_bytes()).decode())


def _openmmtools_implicit():
    from openmmtools import testsystems

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return testsystems.AlanineDipeptideImplicit(constraints=None).system


SYSTEMS = {
    "amber14_obc2": lambda: _forcefield_system("amber14-all.xml", "implicit/obc2.xml"),
    "amber14_gbn2": lambda: load_aldp("gbn2").system,
    "openmmtools_implicit": _openmmtools_implicit,
    "charmm36_cmap": _charmm_system,
    "amber19_cmap": lambda: _forcefield_system("amber19-all.xml"),
}


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_system_matches_openmm_per_force_group(name, aldp_configurations):
    system = one_group_per_force(SYSTEMS[name]())
    kinds = {type(f).__name__ for f in system.getForces()}
    assert kinds & {"CustomGBForce", "CMAPTorsionForce"}, "each case must exercise a custom force or CMAP"
    reference = openmm_by_group(system, aldp_configurations)
    total = sum(e for e, _ in reference.values())
    assert np.isfinite(total).all() and total.max() > 1e4, "the set must contain near-clashes"
    assert_groups_match_openmm(TorchForceField.from_system(system), system, aldp_configurations, reference)


def test_charmm_system_has_the_custom_forces_it_is_meant_to_test():
    kinds = [type(f).__name__ for f in SYSTEMS["charmm36_cmap"]().getForces()]
    assert {"CMAPTorsionForce", "CustomNonbondedForce", "CustomBondForce"} <= set(kinds)


@pytest.mark.slow
def test_shipped_charmm_system_is_the_rebuilt_one(aldp_configurations):
    """tests/energy/data/aldp_charmm36_2024.xml.gz is charmm36_2024.xml applied now (same per-force energies)."""
    shipped = one_group_per_force(_charmm_system())
    rebuilt = one_group_per_force(_forcefield_system("charmm36_2024.xml"))
    assert [type(f).__name__ for f in rebuilt.getForces()] == [type(f).__name__ for f in shipped.getForces()]
    x = aldp_configurations[:10]
    for (e, f), (e_ref, f_ref) in zip(openmm_by_group(rebuilt, x).values(), openmm_by_group(shipped, x).values()):
        np.testing.assert_allclose(e, e_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(f, f_ref, rtol=1e-10, atol=1e-8)


def test_umbrella_bias_on_gbn2_matches_openmm(aldp_configurations):
    """``add_torsion_bias`` (a CustomTorsionForce with global parameters) on phi and psi, with a wrapped centre."""
    aldp = load_aldp("gbn2")
    system = aldp.system
    add_torsion_bias(system, (4, 6, 8, 14), 500.0, 2.9)
    psi_bias = openmm.CustomTorsionForce("0.5*k_psi*min(d, 6.283185307179586-d)^2; d=abs(theta-psi0)")
    psi_bias.addGlobalParameter("psi0", -1.2)
    psi_bias.addGlobalParameter("k_psi", 120.0)
    psi_bias.addTorsion(6, 8, 14, 16, [])
    system.addForce(psi_bias)
    system = one_group_per_force(system)
    assert_groups_match_openmm(TorchForceField.from_system(system), system, aldp_configurations[::3])


def test_random_cmap_maps_match_openmm(aldp_configurations):
    """Random maps of two sizes on overlapping dihedral pairs (both orders), on top of amber14 in vacuum."""
    system = _forcefield_system("amber14-all.xml")
    cmap = openmm.CMAPTorsionForce()
    rng = np.random.default_rng(5)
    cmap.addMap(10, list(rng.normal(scale=5.0, size=100)))
    cmap.addMap(7, list(rng.normal(scale=3.0, size=49)))
    cmap.addTorsion(0, 4, 6, 8, 14, 6, 8, 14, 16)
    cmap.addTorsion(1, 6, 8, 14, 16, 4, 6, 8, 14)
    cmap.addTorsion(1, 1, 4, 6, 8, 8, 14, 16, 18)
    system.addForce(cmap)
    system = one_group_per_force(system)
    assert_groups_match_openmm(TorchForceField.from_system(system), system, aldp_configurations)


def test_openmm_energy_and_torch_forcefield_agree_on_gbn2(aldp_configurations):
    aldp = load_aldp("gbn2")
    x = torch.tensor(aldp_configurations[:24])
    with OpenMMEnergy(aldp.system, 300.0, n_workers=1) as reference:
        u_ref, f_ref = reference(x), reference.force(x)
    ff = TorchForceField.from_system(aldp.system, 300.0)
    u, f = ff.energy_and_force(x)
    torch.testing.assert_close(u, u_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(f, f_ref, rtol=1e-5, atol=1e-4 * float(f_ref.abs().max()))


@pytest.mark.parametrize("analytic_gradient", [True, False])
def test_all_entry_points_agree(analytic_gradient, aldp_configurations):
    """``ff(x)`` + autograd, ``force``, ``energy_and_force`` and ``potential_energy`` on both gradient paths,
    with CPU chunking across the batch."""
    system = SYSTEMS["charmm36_cmap"]()
    gbn2 = load_aldp("gbn2").system  # keep the owner alive while its force is copied
    system.addForce(copy.deepcopy(_first(gbn2, "CustomGBForce")))
    ff = TorchForceField.from_system(system, analytic_gradient=analytic_gradient, cpu_chunk_size=16)
    whole = TorchForceField.from_system(system, analytic_gradient=False, cpu_chunk_size=None)
    x = torch.tensor(aldp_configurations[:40], requires_grad=True)
    u = ff(x)
    (grad,) = torch.autograd.grad(u.sum(), x)
    u2, force = ff.energy_and_force(x.detach())
    torch.testing.assert_close(u2, u.detach(), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(force, -grad, rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(ff.force(x.detach()), force, rtol=0, atol=0)
    torch.testing.assert_close(u.detach(), whole(x.detach()), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(ff.potential_energy(x.detach()) / ff.kT, u.detach(), rtol=1e-12, atol=1e-10)


def test_double_backward_through_custom_terms():
    aldp = load_aldp("gbn2")
    ff = TorchForceField.from_system(aldp.system, analytic_gradient=False)
    x = torch.tensor(aldp.positions_nm)[None].requires_grad_(True)
    (grad,) = torch.autograd.grad(ff(x).sum(), x, create_graph=True)
    (hessian_row,) = torch.autograd.grad(grad[0, 3, 1], x)
    assert torch.isfinite(hessian_row).all() and hessian_row.abs().sum() > 0


@pytest.mark.parametrize("name", ["amber14_gbn2", "charmm36_cmap"])
def test_float32_follows_float64(name, aldp_configurations):
    """Float32 in, float32 out; energies within 1e-4 of |E| (at least 1 kJ/mol) of float64, finite forces."""
    ff = TorchForceField.from_system(SYSTEMS[name]())
    x64 = torch.tensor(aldp_configurations)
    u32, f32 = ff.energy_and_force(x64.float())
    assert u32.dtype == torch.float32 and f32.dtype == torch.float32 and torch.isfinite(f32).all()
    u64, f64 = ff.energy_and_force(x64)
    rel = (u32.double() - u64).abs() / u64.abs().clamp_min(1.0 / ff.kT)
    assert rel.max() < 1e-4
    force_rel = (f32.double() - f64).flatten(1).norm(dim=1) / f64.flatten(1).norm(dim=1)
    assert force_rel.max() < 1e-3


def test_non_finite_rows_get_infinite_energy_and_zero_force():
    aldp = load_aldp("gbn2")
    ff = TorchForceField.from_system(aldp.system)
    x = torch.tensor(aldp.positions_nm).repeat(3, 1, 1)
    x[1, 5, 2] = float("nan")
    u, force = ff.energy_and_force(x)
    assert torch.isfinite(u[[0, 2]]).all() and u[1] == float("inf")
    assert torch.isfinite(force).all() and torch.all(force[1] == 0)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ff(xg)[[0, 2]].sum(), xg)
    assert torch.isfinite(grad).all()


# --- refusals ------------------------------------------------------------------------------------------------


def _first(system, kind: str):
    return next(f for f in system.getForces() if type(f).__name__ == kind)


def test_custom_gb_cutoff_is_refused():
    system = load_aldp("gbn2").system
    _first(system, "CustomGBForce").setNonbondedMethod(openmm.CustomGBForce.CutoffNonPeriodic)
    with pytest.raises(UnsupportedSystemError, match="CustomGBForce.*CutoffNonPeriodic.*NoCutoff"):
        TorchForceField.from_system(system)


def test_custom_nonbonded_cutoff_is_refused():
    system = SYSTEMS["charmm36_cmap"]()
    force = _first(system, "CustomNonbondedForce")
    force.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffNonPeriodic)
    force.setUseSwitchingFunction(True)
    with pytest.raises(UnsupportedSystemError, match="CustomNonbondedForce.*CutoffNonPeriodic.*switching"):
        TorchForceField.from_system(system)


def test_periodic_custom_forces_are_refused():
    system = SYSTEMS["charmm36_cmap"]()
    _first(system, "CustomNonbondedForce").setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
    with pytest.raises(UnsupportedSystemError, match="periodic"):
        TorchForceField.from_system(system)
    system = SYSTEMS["charmm36_cmap"]()
    _first(system, "CMAPTorsionForce").setUsesPeriodicBoundaryConditions(True)
    with pytest.raises(UnsupportedSystemError, match="periodic"):
        TorchForceField.from_system(system)


def test_unsupported_custom_force_names_itself():
    system = load_aldp("vacuum").system
    system.addForce(openmm.CustomHbondForce("r"))
    with pytest.raises(UnsupportedForceError, match="CustomHbondForce"):
        TorchForceField.from_system(system)


def test_a_force_field_with_custom_terms_survives_torch_save(tmp_path, aldp_configurations):
    # compiled expressions hold closures: they pickle as their source and compile again on load
    ff = TorchForceField.from_system(load_aldp("gbn2").system, 300.0)
    torch.save(ff, tmp_path / "ff.pt")
    loaded = torch.load(tmp_path / "ff.pt", weights_only=False)
    x = torch.as_tensor(aldp_configurations[:4])
    torch.testing.assert_close(loaded(x), ff(x), rtol=0, atol=0)

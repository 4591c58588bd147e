"""Two coincident atoms: TorchForceField gives what OpenMM's Reference platform gives, force group by force group.

OpenMM skips excluded pairs, gives a bond at r = 0 the energy 0.5 k r0^2 and no force, a degenerate dihedral
phi = pi/2, an angle with a zero-length arm NaN, and an OBC pair at r = 0 nothing (or NaN when the scaled sphere
reaches the other atom). Where OpenMM's energy is finite ours must equal it; where OpenMM's forces are finite ours
must be finite and equal; where OpenMM's energy is not finite (a real Coulomb overlap) ours is not either.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgflow_se3 import TorchForceField
from bgflow_se3.systems import load_aldp
from tests.energy.torchff._openmm_reference import (
    ENERGY_RTOL,
    FORCE_RTOL,
    one_group_per_force,
    openmm_by_group,
    openmm_energies_and_forces,
)

openmm = pytest.importorskip("openmm")


def coincident_pairs(system) -> list[tuple[int, int]]:
    """Every excluded or 1-4 pair of the NonbondedForce (bonded, 1-3, 1-4) and five pairs that interact fully."""
    nonbonded = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    exceptions = {tuple(sorted(nonbonded.getExceptionParameters(e)[:2])) for e in range(nonbonded.getNumExceptions())}
    n = system.getNumParticles()
    others = [(i, j) for i in range(n) for j in range(i + 1, n) if (i, j) not in exceptions][:5]
    return sorted(exceptions) + others


@pytest.fixture(scope="module", params=["implicit", "vacuum"])
def reference(request):
    """(system with one force per group, pairs, configurations (n, 22, 3) nm with atom j moved onto atom i,
    OpenMM by group, OpenMM total (energies, forces))."""
    system = one_group_per_force(load_aldp(request.param).system)
    positions = load_aldp(request.param).positions_nm
    pairs = coincident_pairs(system)
    x = np.repeat(positions[None], len(pairs), axis=0)
    for k, (i, j) in enumerate(pairs):
        x[k, j] = x[k, i]
    return system, pairs, x, openmm_by_group(system, x), openmm_energies_and_forces(system, x)


def assert_like_openmm(energy: np.ndarray, grad: np.ndarray, e_ref: np.ndarray, f_ref: np.ndarray, what: str, pairs):
    """Energies (n,) kJ/mol and gradients (n, atoms, 3) against OpenMM's energies and forces, pair by pair."""
    for k, pair in enumerate(pairs):
        where = f"{what}, atoms {pair} coincident"
        if not np.isfinite(e_ref[k]):
            assert not np.isfinite(energy[k]), f"{where}: OpenMM {e_ref[k]}, ours {energy[k]}"
            continue
        assert abs(energy[k] - e_ref[k]) <= ENERGY_RTOL * max(abs(e_ref[k]), 1.0), f"{where}: {energy[k]} vs {e_ref[k]}"
        if np.isfinite(f_ref[k]).all():
            assert np.isfinite(grad[k]).all(), f"{where}: OpenMM's force is finite, ours is not"
            error = np.linalg.norm(-grad[k] - f_ref[k]) / max(np.linalg.norm(f_ref[k]), 1e-8)
            assert error <= FORCE_RTOL, f"{where}: force relative error {error:.2e}"


@pytest.mark.parametrize("analytic_gradient", [True, False], ids=["fused", "autograd"])
def test_coincident_atoms_match_openmm_by_group_and_in_total(reference, analytic_gradient):
    system, pairs, x, by_group, total = reference
    ff = TorchForceField.from_system(system, 300.0, analytic_gradient=analytic_gradient)
    for group, (e_ref, f_ref) in [*by_group.items(), (None, total)]:
        xt = torch.tensor(x, requires_grad=True)
        energy = ff.potential_energy(xt, groups=None if group is None else {group})
        (grad,) = torch.autograd.grad(energy.sum(), xt)
        what = "all forces" if group is None else type(system.getForce(group)).__name__
        assert_like_openmm(energy.detach().numpy(), grad.numpy(), e_ref, f_ref, what, pairs)


def test_coincident_1_3_atoms_give_openmms_finite_reduced_energy(reference):
    """The methyl hydrogens 2 and 3 on top of each other: OpenMM gives about 175 kT in implicit solvent (the OBC
    pair is out of reach at r = 0), TorchForceField gave +inf (0 * inf = NaN in the HCT integral)."""
    system, pairs, x, _, (e_ref, f_ref) = reference
    k = pairs.index((2, 3))
    assert np.isfinite(e_ref[k]) and np.isfinite(f_ref[k]).all()
    ff = TorchForceField.from_system(system, 300.0)
    u, force = ff.energy_and_force(torch.tensor(x[k : k + 1]))
    torch.testing.assert_close(u, torch.tensor([e_ref[k]]) / ff.kT, rtol=ENERGY_RTOL, atol=0)
    assert torch.isfinite(force).all()


def test_coincident_atoms_in_custom_bond_angle_and_torsion_forces_match_openmm():
    system = openmm.System()
    for _ in range(4):
        system.addParticle(12.0)
    bond = openmm.CustomBondForce("0.5*1000*(r-0.15)^2")
    bond.addBond(0, 1, [])
    angle = openmm.CustomAngleForce("0.5*100*(theta-2.0)^2")
    angle.addAngle(0, 1, 2, [])
    torsion = openmm.CustomTorsionForce("10*(1+cos(2*theta-0.3))")
    torsion.addTorsion(0, 1, 2, 3, [])
    for group, force in enumerate((bond, angle, torsion)):
        force.setForceGroup(group)
        system.addForce(force)
    positions = np.array([[0.0, 0.0, 0.0], [0.15, 0.0, 0.0], [0.2, 0.15, 0.0], [0.3, 0.2, 0.1]])
    pairs = [(0, 1), (0, 2), (1, 2), (1, 3), (0, 3)]
    x = np.repeat(positions[None], len(pairs), axis=0)
    for k, (i, j) in enumerate(pairs):
        x[k, j] = x[k, i]
    ff = TorchForceField.from_system(system, 300.0)
    for group, (e_ref, f_ref) in openmm_by_group(system, x).items():
        xt = torch.tensor(x, requires_grad=True)
        energy = ff.potential_energy(xt, groups={group})
        (grad,) = torch.autograd.grad(energy.sum(), xt)
        what = type(system.getForce(group)).__name__
        assert_like_openmm(energy.detach().numpy(), grad.numpy(), e_ref, f_ref, what, pairs)

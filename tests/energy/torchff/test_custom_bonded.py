"""Custom bonded forces (CustomBond/Angle/Torsion/External/CompoundBondForce) against OpenMM's Reference platform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgflow_se3.energy.torchff.custom_bonded import (
    CustomBondTerm,
    CustomCentroidBondTerm,
    CustomCompoundBondTerm,
    CustomExternalTerm,
)
from bgflow_se3.energy.torchff.registry import TERMS
from bgflow_se3.errors import UnsupportedForceError, UnsupportedSystemError
from tests.energy.torchff._openmm_reference import openmm_energies_and_forces

openmm = pytest.importorskip("openmm")

N_ATOMS = 8
ENERGY_RTOL = 1e-6
FORCE_RTOL = 1e-5


def _bond_force(rng: np.random.Generator):
    force = openmm.CustomBondForce("k*(r-r0)^2 + eps*((s/r)^12 - (s/r)^6) + a*step(r-rc)*(r-rc)^2")
    force.addGlobalParameter("a", 40.0)
    force.addGlobalParameter("rc", 0.2)
    for name in ("k", "r0", "s", "eps"):
        force.addPerBondParameter(name)
    for i, j in [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (0, 7), (2, 5)]:
        force.addBond(i, j, [rng.uniform(100, 500), rng.uniform(0.1, 0.2), rng.uniform(0.05, 0.1), rng.uniform(0, 1)])
    return force


def _angle_force(rng: np.random.Generator):
    force = openmm.CustomAngleForce(
        "0.5*k*(theta-theta0)^2 + b*cos(theta)^2 + select(step(theta-2.5), c*(theta-2.5)^3, 0)"
    )
    force.addGlobalParameter("b", 3.0)
    force.addGlobalParameter("c", 10.0)
    force.addPerAngleParameter("k")
    force.addPerAngleParameter("theta0")
    for i in range(N_ATOMS - 2):
        force.addAngle(i, i + 1, i + 2, [rng.uniform(50, 200), rng.uniform(1.8, 2.2)])
    force.addAngle(7, 0, 3, [80.0, 1.0])
    return force


def _torsion_force(rng: np.random.Generator):
    force = openmm.CustomTorsionForce(
        "k*(1+cos(n*theta-phase)) + w*min(dtheta, 2*pi-dtheta)^2; dtheta = abs(theta-theta0); pi = 3.141592653589793"
    )
    force.addGlobalParameter("w", 5.0)
    for name in ("k", "n", "phase", "theta0"):
        force.addPerTorsionParameter(name)
    for i in range(N_ATOMS - 3):
        force.addTorsion(i, i + 1, i + 2, i + 3, [rng.uniform(1, 10), rng.integers(1, 4), rng.uniform(-3, 3), 1.0])
    force.addTorsion(7, 0, 1, 6, [2.0, 2, 0.3, -2.0])
    return force


def _external_force(rng: np.random.Generator):
    force = openmm.CustomExternalForce("k*((x-x0)^2+(y-y0)^2+(z-z0)^2) + g*z")
    force.addGlobalParameter("g", -1.5)
    for name in ("k", "x0", "y0", "z0"):
        force.addPerParticleParameter(name)
    for i in (0, 2, 3, 6):
        force.addParticle(i, [rng.uniform(10, 100), *rng.uniform(-0.5, 0.5, size=3)])
    return force


def _compound_force(rng: np.random.Generator):
    force = openmm.CustomCompoundBondForce(
        4,
        "kd*(distance(p1,p2)-d0)^2 + ka*(angle(p1,p2,p3)-a0)^2 + kt*cos(dihedral(p1,p2,p3,p4)) + f(distance(p3,p4))"
        " + h*x1*z4 + pointdistance(x1,y1,z1,x3,y3,z3) + pointangle(x4,y4,z4,x1,y1,z1,x2,y2,z2)"
        " + sin(pointdihedral(x4,y4,z4,x3,y3,z3,x2,y2,z2,x1,y1,z1))",
    )
    force.addGlobalParameter("h", 2.0)
    for name in ("kd", "d0", "ka", "a0", "kt"):
        force.addPerBondParameter(name)
    force.addTabulatedFunction("f", openmm.Continuous1DFunction(list(rng.normal(size=12)), 0.0, 0.6))
    for atoms in ([0, 1, 2, 3], [4, 5, 6, 7], [7, 2, 5, 0]):
        force.addBond(atoms, [rng.uniform(100, 300), 0.15, rng.uniform(10, 50), 1.9, rng.uniform(1, 5)])
    return force


def _centroid_force(rng: np.random.Generator):
    """Groups with explicit weights (overlapping, one of a single particle), three groups per bond."""
    force = openmm.CustomCentroidBondForce(
        3,
        "kd*(distance(g1,g2)-d0)^2 + ka*(angle(g1,g2,g3)-a0)^2 + h*x1*z3 + pointdistance(x2,y2,z2,x3,y3,z3)",
    )
    force.addGlobalParameter("h", 2.0)
    for name in ("kd", "d0", "ka", "a0"):
        force.addPerBondParameter(name)
    for particles in ([0, 1, 2], [3, 4], [5, 6, 7], [2, 5], [1]):
        force.addGroup(particles, list(rng.uniform(0.5, 2.0, size=len(particles))))
    for groups in ([0, 1, 2], [3, 2, 4], [4, 0, 1]):
        force.addBond(groups, [rng.uniform(100, 300), 0.15, rng.uniform(10, 50), 1.9])
    return force


FORCES = {
    "CustomCentroidBondForce": _centroid_force,
    "CustomBondForce": _bond_force,
    "CustomAngleForce": _angle_force,
    "CustomTorsionForce": _torsion_force,
    "CustomExternalForce": _external_force,
    "CustomCompoundBondForce": _compound_force,
}


def _system_and_term(kind: str, seed: int = 0):
    """A System holding one random force of ``kind`` and its torch term (built while the force is alive)."""
    force = FORCES[kind](np.random.default_rng(seed))
    term = TERMS[kind].from_force(force, 0)
    system = openmm.System()
    for _ in range(N_ATOMS):
        system.addParticle(12.0)
    system.addForce(force)
    return system, term


def _configurations(seed: int = 0, n: int = 6) -> np.ndarray:
    """Configurations (nm), shape (n + 2, N_ATOMS, 3): a random 0.15 nm chain with 0.01-0.04 nm noise, plus two
    with near-collinear triples 0-1-2 (theta = pi - 1e-4) and 3-4-5 (theta = 2e-3)."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(N_ATOMS, 3))
    steps *= 0.15 / np.linalg.norm(steps, axis=1, keepdims=True)
    chain = np.cumsum(steps, axis=0)
    noisy = chain + rng.normal(size=(n, N_ATOMS, 3)) * rng.uniform(0.01, 0.04, size=(n, 1, 1))
    straight, folded = chain.copy(), chain.copy()
    straight[2] = _at_angle(chain[0], chain[1], np.pi - 1e-4, rng)
    folded[5] = _at_angle(chain[3], chain[4], 2e-3, rng)
    return np.concatenate([noisy, straight[None], folded[None]])


def _at_angle(a: np.ndarray, vertex: np.ndarray, theta: float, rng: np.random.Generator) -> np.ndarray:
    """A point 0.14 nm from ``vertex`` making the angle ``theta`` with ``a`` at ``vertex``."""
    u = (a - vertex) / np.linalg.norm(a - vertex)
    v = np.cross(u, rng.normal(size=3))
    v /= np.linalg.norm(v)
    return vertex + 0.14 * (np.cos(theta) * u + np.sin(theta) * v)


def _reference(system, positions: np.ndarray, globals_: dict[str, float] | None = None):
    """OpenMM energies (kJ/mol, (n,)) and forces (kJ/mol/nm, (n, atoms, 3))."""
    return openmm_energies_and_forces(system, positions, globals_)


def _ours(term, positions: np.ndarray, dtype=torch.float64):
    x = torch.tensor(positions, dtype=dtype, requires_grad=True)
    energy = term(x)
    assert energy.shape == (len(positions),) and energy.dtype == dtype
    (grad,) = torch.autograd.grad(energy.sum(), x)
    return energy.detach().double().numpy(), -grad.double().numpy()


def _assert_close(ours, reference, rtol_energy: float, rtol_force: float) -> None:
    (energy, force), (ref_energy, ref_force) = ours, reference
    np.testing.assert_allclose(energy, ref_energy, rtol=rtol_energy, atol=rtol_energy * np.abs(ref_energy).max())
    scale = np.abs(ref_force).max(axis=(1, 2), keepdims=True)  # per configuration
    np.testing.assert_array_less(np.abs(force - ref_force), rtol_force * (np.abs(ref_force) + scale))


@pytest.mark.parametrize("kind", sorted(FORCES))
def test_matches_openmm(kind):
    system, term = _system_and_term(kind)
    positions = _configurations()
    _assert_close(_ours(term, positions), _reference(system, positions), ENERGY_RTOL, FORCE_RTOL)


@pytest.mark.parametrize("kind", sorted(FORCES))
def test_float32_is_close(kind):
    system, term = _system_and_term(kind, seed=1)
    positions = _configurations(seed=1)[:6]  # float32 cannot resolve the near-collinear angles to 1e-4
    term = term.float()
    assert term.term_parameters.dtype == torch.float64  # parameters stay float64, cast per call
    _assert_close(_ours(term, positions, torch.float32), _reference(system, positions), 1e-4, 1e-3)


@pytest.mark.parametrize(
    "kind", ["CustomBondForce", "CustomExternalForce", "CustomCompoundBondForce", "CustomCentroidBondForce"]
)
def test_set_global_parameter(kind):
    system, term = _system_and_term(kind, seed=2)
    name = term.global_names[0]
    term.set_global_parameter(name, 0.25)
    assert term.global_parameters[name] == 0.25
    positions = _configurations(seed=2)
    _assert_close(_ours(term, positions), _reference(system, positions, {name: 0.25}), ENERGY_RTOL, FORCE_RTOL)
    with pytest.raises(KeyError, match="no global parameter"):
        term.set_global_parameter("nope", 1.0)


def test_periodic_force_is_refused():
    force = openmm.CustomBondForce("r^2")
    force.addBond(0, 1, [])
    force.setUsesPeriodicBoundaryConditions(True)
    with pytest.raises(UnsupportedSystemError, match="periodic"):
        CustomBondTerm.from_force(force, 3)


def test_periodicdistance_is_refused_by_name():
    force = openmm.CustomExternalForce("periodicdistance(x, y, z, 0, 0, 0)^2")
    force.addParticle(0, [])
    with pytest.raises(UnsupportedForceError, match="periodicdistance"):
        CustomExternalTerm.from_force(force, 0)


def test_unknown_function_is_named():
    force = openmm.CustomCompoundBondForce(2, "foo(distance(p1, p2))")
    force.addBond([0, 1], [])
    with pytest.raises(UnsupportedForceError, match="'foo'"):
        CustomCompoundBondTerm.from_force(force, 0)


def test_unknown_variable_is_named():
    force = openmm.CustomBondForce("k * r")
    force.addBond(0, 1, [])
    with pytest.raises(UnsupportedForceError, match=r"unknown variables \['k'\]"):
        CustomBondTerm.from_force(force, 0)


def test_empty_force_gives_zero():
    force = openmm.CustomBondForce("r^2")
    term = CustomBondTerm.from_force(force, 0)
    assert torch.equal(term(torch.zeros(3, 2, 3)), torch.zeros(3))


def _assert_torch_forcefield_matches_openmm(system, temperature: float, positions: np.ndarray) -> None:
    """TorchForceField.from_system(system): energies (kJ/mol) and forces against OpenMM at ``positions`` (nm)."""
    from bgflow_se3 import TorchForceField

    ff = TorchForceField.from_system(system, temperature=temperature)
    ref_energy, ref_force = _reference(system, positions)
    x = torch.tensor(positions)
    np.testing.assert_allclose(ff.potential_energy(x).numpy(), ref_energy, rtol=ENERGY_RTOL)
    _, force = ff.energy_and_force(x)
    np.testing.assert_allclose((force * ff.kT).numpy(), ref_force, rtol=FORCE_RTOL, atol=1e-6)


def test_torch_forcefield_sums_all_custom_forces():
    """The six custom bonded forces together in one System, through TorchForceField, against OpenMM."""
    system = openmm.System()
    for _ in range(N_ATOMS):
        system.addParticle(12.0)
    for k, kind in enumerate(sorted(FORCES)):
        system.addForce(FORCES[kind](np.random.default_rng(k)))
    _assert_torch_forcefield_matches_openmm(system, 300.0, _configurations(seed=3))


def test_centroid_groups_without_weights_are_mass_weighted():
    """OpenMM weights a group given without weights by the particle masses; TorchForceField passes them."""
    force = openmm.CustomCentroidBondForce(2, "k*distance(g1, g2)^2 + x1")
    force.addGlobalParameter("k", 300.0)
    force.addGroup([0, 1, 2])  # masses 1, 2, 3
    force.addGroup([4, 6], [1.0, 1.0])
    force.addBond([0, 1], [])
    system = openmm.System()
    for i in range(N_ATOMS):
        system.addParticle(1.0 + i)
    system.addForce(force)
    positions = _configurations(seed=4)
    _assert_torch_forcefield_matches_openmm(system, 300.0, positions)
    uniform = positions[:, [0, 1, 2]].mean(axis=1)  # what equal weights would give: not what OpenMM computes
    weighted = (positions[:, [0, 1, 2]] * np.array([1.0, 2.0, 3.0])[:, None]).sum(axis=1) / 6.0
    assert np.abs(uniform - weighted).max() > 1e-3
    with pytest.raises(UnsupportedForceError, match="group 0 has no weights"):
        CustomCentroidBondTerm.from_force(force, 0)  # no masses to weight by


def test_lennard_jones_system_compiles_to_torch():
    """The LJ cluster System (CustomNonbondedForce pairs + CustomCentroidBondForce centre restraint) in torch."""
    from bgflow_se3.systems.lennard_jones import lennard_jones_system

    lj = lennard_jones_system(6, oscillator_scale=0.5)
    rng = np.random.default_rng(5)
    grid = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)[:6] * 1.1
    positions = grid + rng.normal(scale=0.05, size=(4, 6, 3)) + rng.normal(size=(4, 1, 3))  # off-centre
    _assert_torch_forcefield_matches_openmm(lj.system, lj.temperature, positions)

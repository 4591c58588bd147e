"""CustomNonbondedForce and CustomGBForce terms against OpenMM's Reference platform on random small systems.

Asymmetric expressions (``a1 * b2``) expose which particle is particle 1; exclusions are added in both index
orders; interaction groups overlap; every CustomGBForce computed-value and energy-term kind is used, with
coordinates in single-particle expressions. Configurations include near-clashes (two atoms 0.05-0.1 nm apart).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgflow_se3 import TorchForceField
from bgflow_se3.energy.torchff.custom_nonbonded import CustomGBTerm, CustomNonbondedTerm, interaction_group_pairs
from tests.energy.torchff._openmm_reference import assert_matches_openmm, openmm_energies_and_forces

openmm = pytest.importorskip("openmm")

N = 12


def _reference(force, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenMM Reference energies (kJ/mol, (n,)) and forces (kJ/mol/nm, (n, N, 3)) of ``force`` alone."""
    system = openmm.System()
    for _ in range(N):
        system.addParticle(1.0)
    system.addForce(force)
    return openmm_energies_and_forces(system, positions)


def _check(term, force, positions: np.ndarray) -> None:
    x = torch.tensor(positions, requires_grad=True)
    energy = term(x)
    (grad,) = torch.autograd.grad(energy.sum(), x)
    assert_matches_openmm(energy, grad, *_reference(force, positions))


@pytest.fixture(scope="module")
def positions() -> np.ndarray:
    """(40, N, 3) nm: atoms spread over a 1.2 nm box, the second half with a near-clash (0.05-0.1 nm)."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0.0, 1.2, size=(40, N, 3))
    for c in range(20, 40):
        i, j = rng.choice(N, size=2, replace=False)
        direction = rng.normal(size=3)
        x[c, i] = x[c, j] + rng.uniform(0.05, 0.1) * direction / np.linalg.norm(direction)
    return x


def _random_exclusions(rng: np.random.Generator, n_exclusions: int = 10) -> list[tuple[int, int]]:
    """Distinct pairs, half of them given as (larger, smaller)."""
    pairs = set()
    while len(pairs) < n_exclusions:
        i, j = sorted(rng.choice(N, size=2, replace=False).tolist())
        pairs.add((i, j))
    return [(j, i) if k % 2 else (i, j) for k, (i, j) in enumerate(sorted(pairs))]


NONBONDED_EXPRESSIONS = {
    "lennard_jones_coulomb": "4*eps*((sig/r)^12-(sig/r)^6) + 138.935456*q1*q2/r; sig=0.5*(s1+s2); eps=sqrt(e1*e2)",
    "asymmetric": "a1*exp(-b2*r) + kr*(r-a2)^2 + select(step(r-cut), 0, w1*w2*(cut-r)^2)",
    "tabulated": "scale*tab(r) + pairtab(t1, t2)/r^6 + 0.1*min(r, a1) + max(a2, r)^2",
    "computed_value": "c1*c2*erfc(r/s1) + c2*a1/r",
}


def _nonbonded_force(expression: str, groups: bool, seed: int):
    rng = np.random.default_rng(seed)
    force = openmm.CustomNonbondedForce(expression)
    for name in ("q", "s", "e", "a", "b", "w", "t"):
        force.addPerParticleParameter(name)
    force.addGlobalParameter("kr", 3.0)
    force.addGlobalParameter("cut", 0.4)
    force.addGlobalParameter("scale", 0.7)
    force.addTabulatedFunction("tab", openmm.Continuous1DFunction(list(rng.normal(size=40)), 0.0, 3.0))
    force.addTabulatedFunction("pairtab", openmm.Discrete2DFunction(3, 3, list(rng.uniform(0, 1e-3, size=9))))
    if "c1" in expression:
        force.addComputedValue("c", "sqrt(a)+b^2")
    for _ in range(N):
        q, s, e = rng.normal(scale=0.5), rng.uniform(0.15, 0.3), rng.uniform(0.1, 1.0)
        a, b, w, t = rng.uniform(0.2, 1.0), rng.uniform(0.5, 3.0), rng.normal(), float(rng.integers(3))
        force.addParticle([q, s, e, a, b, w, t])
    for i, j in _random_exclusions(rng):
        force.addExclusion(i, j)
    if groups:
        force.addInteractionGroup([0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8, 9])  # 3, 4, 5 are in both sets
        force.addInteractionGroup([10, 11, 2], [0, 11, 4])  # 11 in both; pairs (2, 4) and (11, 4) overlap
        force.addInteractionGroup([9], [1, 3])  # a > b within one group
    return force


@pytest.mark.parametrize("groups", [False, True], ids=["all_pairs", "interaction_groups"])
@pytest.mark.parametrize("name", list(NONBONDED_EXPRESSIONS))
def test_custom_nonbonded_matches_openmm(name, groups, positions):
    force = _nonbonded_force(NONBONDED_EXPRESSIONS[name], groups, seed=len(name))
    _check(CustomNonbondedTerm.from_force(force), force, positions)


def test_switching_and_long_range_correction_are_ignored_without_cutoff(positions):
    """As in OpenMM: both only act with a cutoff (charmm36 sets the long-range correction with NoCutoff)."""
    force = _nonbonded_force(NONBONDED_EXPRESSIONS["lennard_jones_coulomb"], False, seed=1)
    force.setUseSwitchingFunction(True)
    force.setSwitchingDistance(0.3)
    force.setUseLongRangeCorrection(True)
    _check(CustomNonbondedTerm.from_force(force), force, positions)


def test_interaction_group_pairs_follow_openmm_order():
    """Particle 1 comes from set1; a pair whose atoms are in both sets is listed once, lower index first."""
    pairs = interaction_group_pairs([([0, 3], [3, 1, 0]), ([2], [0, 1])], exclusions={(0, 1)})
    assert pairs.T.tolist() == [[0, 3], [3, 1], [2, 0], [2, 1]]


def _gb_force(first_kind: int, seed: int, exclude: bool = True):
    """Computed values: a pair value of ``first_kind``, two single-particle values (coordinates, earlier values);
    energy terms of every kind, asymmetric in particles 1 and 2."""
    rng = np.random.default_rng(seed)
    gb = openmm.CustomGBForce()
    for name in ("q", "rad", "s"):
        gb.addPerParticleParameter(name)
    gb.addGlobalParameter("g", 1.3)
    gb.addTabulatedFunction("damp", openmm.Continuous1DFunction(list(np.exp(-np.linspace(0, 4, 30))), 0.0, 4.0))
    gb.addComputedValue("I", "s2*exp(-r^2/(rad1+rad2)) + 0.1*q1*damp(r) + 0.01*rad2/r", first_kind)
    gb.addComputedValue("B", "rad + 0.1*tanh(I) + 0.01*x^2 + 0.005*z", openmm.CustomGBForce.SingleParticle)
    gb.addComputedValue("C", "B*I + q*y", openmm.CustomGBForce.SingleParticle)
    gb.addEnergyTerm("-0.5*g*q^2/B + 0.1*C + 0.001*x*y", openmm.CustomGBForce.SingleParticle)
    gb.addEnergyTerm(
        "-g*q1*q2/sqrt(r^2+B1*B2*exp(-r^2/(4*B1*B2))) + 0.01*C1*r + 0.02*I2", openmm.CustomGBForce.ParticlePair
    )
    gb.addEnergyTerm("0.05*q1*I2*exp(-r) + 0.01*B1/r", openmm.CustomGBForce.ParticlePairNoExclusions)
    for _ in range(N):
        gb.addParticle([rng.normal(scale=0.5), rng.uniform(0.15, 0.25), rng.uniform(0.5, 1.5)])
    exclusions = _random_exclusions(rng)
    for i, j in exclusions if exclude else ():
        gb.addExclusion(i, j)
    return gb


@pytest.mark.parametrize(
    "first_kind", [1, 2], ids=["ParticlePair_value", "ParticlePairNoExclusions_value"]
)  # openmm.CustomGBForce.ParticlePair, .ParticlePairNoExclusions
def test_custom_gb_every_kind_matches_openmm(first_kind, positions):
    gb = _gb_force(first_kind, seed=first_kind)
    _check(CustomGBTerm.from_force(gb), gb, positions)


def test_custom_gb_exclusions_matter(positions):
    """Guard against a vacuous pass: the same force without its exclusions has other energies."""
    x = torch.tensor(positions[:5])
    with_exclusions = CustomGBTerm.from_force(_gb_force(1, seed=1))(x)
    assert not torch.allclose(with_exclusions, CustomGBTerm.from_force(_gb_force(1, seed=1, exclude=False))(x))


def test_custom_forces_in_a_torch_forcefield(positions):
    """Both custom forces in one System, through TorchForceField's entry points."""
    system = openmm.System()
    for _ in range(N):
        system.addParticle(1.0)
    system.addForce(_nonbonded_force(NONBONDED_EXPRESSIONS["asymmetric"], True, seed=4))
    system.addForce(_gb_force(1, seed=5))
    system.getForce(1).setForceGroup(1)
    ff = TorchForceField.from_system(system)
    x = torch.tensor(positions[:8])
    u, force = ff.energy_and_force(x)
    e0, f0 = _reference(_nonbonded_force(NONBONDED_EXPRESSIONS["asymmetric"], True, seed=4), positions[:8])
    e1, f1 = _reference(_gb_force(1, seed=5), positions[:8])
    np.testing.assert_allclose(u.numpy() * ff.kT, e0 + e1, rtol=1e-9)
    np.testing.assert_allclose(force.numpy() * ff.kT, f0 + f1, rtol=1e-7, atol=1e-7 * np.abs(f0 + f1).max())
    np.testing.assert_allclose(ff.potential_energy(x, groups={1}).numpy(), e1, rtol=1e-9)

"""Periodic boxes, constraints, virtual sites, cutoffs and unsupported forces: a clear error naming the feature, or
the documented opt-in (OpenMMEnergy's allow_* flags) giving OpenMM's own energy."""

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

from bgflow_se3.energy import OpenMMEnergy, TorchForceField, check_system
from bgflow_se3.errors import UnsupportedForceError, UnsupportedSystemError

X = torch.tensor([[[0.0, 0.0, 0.0], [0.35, 0.0, 0.0], [0.0, 0.4, 0.1], [0.3, 0.3, 0.3]]], dtype=torch.float64)


def _system(method=openmm.NonbondedForce.NoCutoff, periodic=False) -> openmm.System:
    system = openmm.System()
    force = openmm.NonbondedForce()
    for q in (0.2, -0.2, 0.1, -0.1):
        system.addParticle(12.0)
        force.addParticle(q, 0.3, 0.5)
    force.setNonbondedMethod(method)
    if periodic:
        system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*(3.0 * np.eye(3)[i])) for i in range(3)))
    system.addForce(force)
    return system


def _constrained():
    system = _system()
    system.addConstraint(0, 1, 0.35)
    return system


def _virtual_site():
    system = _system()
    system.setParticleMass(3, 0.0)
    system.setVirtualSite(3, openmm.TwoParticleAverageSite(0, 1, 0.5, 0.5))
    return system


def _with(force):
    system = _system()
    system.addForce(force)
    return system


def _rb():
    force = openmm.RBTorsionForce()
    force.addTorsion(0, 1, 2, 3, 1, 1, 1, 1, 1, 1)
    return _with(force)


def _cv():
    bond = openmm.CustomBondForce("r")
    bond.addBond(0, 1, [])
    force = openmm.CustomCVForce("2 * d")
    force.addCollectiveVariable("d", bond)
    return _with(force)


SYSTEMS = {
    "periodic_pme": (lambda: _system(openmm.NonbondedForce.PME, True), "periodic", "allow_periodic"),
    "constraints": (_constrained, "constraints", "allow_constraints"),
    "virtual_site": (_virtual_site, "virtual sites", "allow_virtual_sites"),
    "empty": (openmm.System, "no particles", None),
}


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_openmm_energy_refuses_unless_allowed_then_matches_openmm(name):
    make, match, flag = SYSTEMS[name]
    system = make()
    with pytest.raises(UnsupportedSystemError, match=match):
        OpenMMEnergy(system)
    with pytest.raises(UnsupportedSystemError, match=match):
        TorchForceField.from_system(system, 300.0)
    if flag is None:
        return
    with OpenMMEnergy(system, **{flag: True}) as energy:
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(X[0].numpy())
        if name == "virtual_site":
            context.computeVirtualSites()
        kt = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin) * 300.0
        expected = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / kt
        assert float(energy(X)[0]) == pytest.approx(expected, rel=1e-12)
        if name == "virtual_site":  # documented: the site's input coordinates are ignored and get zero force
            assert (energy.force(X)[0, 3] == 0).all()


def test_cutoffs_and_unsupported_forces_are_named():
    cutoff = _system(openmm.NonbondedForce.CutoffNonPeriodic)
    check_system(cutoff)  # OpenMMEnergy documents CutoffNonPeriodic support
    with OpenMMEnergy(cutoff) as energy:
        assert torch.isfinite(energy(X)).all()
    with pytest.raises(UnsupportedSystemError, match="NoCutoff"):
        TorchForceField.from_system(cutoff, 300.0)
    for system, force_name in ((_rb(), "RBTorsionForce"), (_cv(), "CustomCVForce")):
        with pytest.raises(UnsupportedForceError, match=f"force 1 \\({force_name}\\) has no torch version"):
            TorchForceField.from_system(system, 300.0)
        with OpenMMEnergy(system) as energy:  # OpenMM evaluates any force
            assert torch.isfinite(energy(X)).all()
    with pytest.raises(TypeError, match="openmm.System"):
        check_system("system.xml")

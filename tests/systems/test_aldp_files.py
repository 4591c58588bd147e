"""The shipped alanine dipeptide files (aldp.pdb, vacuum.xml, implicit.xml, gbn2.xml) are what systems/aldp/build.py
makes."""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bgflow_se3.systems import load_aldp

BUILD = Path(__file__).resolve().parents[2] / "systems" / "aldp" / "build.py"


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    """The files written by ``python systems/aldp/build.py --out DIR`` now, with the installed OpenMM."""
    out = tmp_path_factory.mktemp("aldp")
    argv = sys.argv
    sys.argv = [str(BUILD), "--out", str(out)]
    try:
        runpy.run_path(str(BUILD), run_name="__main__")
    finally:
        sys.argv = argv
    return out


def _configurations(positions: np.ndarray) -> np.ndarray:
    """The shipped structure and four perturbed copies (0.01 nm noise), shape (5, 22, 3), nm."""
    rng = np.random.default_rng(0)
    return np.stack([positions] + [positions + 0.01 * rng.normal(size=positions.shape) for _ in range(4)])


def _per_force(system, x: np.ndarray) -> np.ndarray:
    """Energy of every force (kJ/mol), shape (n_conf, n_forces), and total forces (kJ/mol/nm), (n_conf, 22, 3)."""
    import copy

    import openmm
    import openmm.unit as unit

    system = copy.deepcopy(system)
    for i, force in enumerate(system.getForces()):
        force.setForceGroup(i)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    energies = np.empty((len(x), system.getNumForces()))
    forces = np.empty((len(x), system.getNumParticles(), 3))
    for n, xn in enumerate(x):
        context.setPositions(xn)
        for i in range(system.getNumForces()):
            state = context.getState(getEnergy=True, groups={i})
            energies[n, i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        state = context.getState(getForces=True)
        forces[n] = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    return energies, forces


def test_shipped_pdb_is_the_rebuilt_one(rebuilt):
    import openmm.app as app
    import openmm.unit as unit

    shipped = load_aldp("vacuum")
    pdb = app.PDBFile(str(rebuilt / "aldp.pdb"))
    atoms = [(a.name, a.element.symbol, a.residue.name) for a in pdb.topology.atoms()]
    assert atoms == [(a.name, a.element.symbol, a.residue.name) for a in shipped.topology.atoms()]
    bonds = {tuple(sorted((a.index, b.index))) for a, b in pdb.topology.bonds()}
    assert bonds == {tuple(sorted((a.index, b.index))) for a, b in shipped.topology.bonds()}
    np.testing.assert_allclose(pdb.positions.value_in_unit(unit.nanometer), shipped.positions_nm, atol=1e-4)


@pytest.mark.parametrize("solvent", ["vacuum", "implicit", "gbn2"])
def test_shipped_system_is_the_rebuilt_one(rebuilt, solvent):
    """Same forces, masses and constraints, and per-force energies and forces equal to 1e-6 relative."""
    import openmm
    import openmm.unit as unit

    shipped = load_aldp(solvent).system
    system = openmm.XmlSerializer.deserialize((rebuilt / f"{solvent}.xml").read_text())
    names = [type(f).__name__ for f in system.getForces()]
    assert names == [type(f).__name__ for f in shipped.getForces()]
    assert ("GBSAOBCForce" in names or "CustomGBForce" in names) == (solvent != "vacuum")
    assert ("CustomGBForce" in names) == (solvent == "gbn2")
    assert "CMMotionRemover" not in names and system.getNumConstraints() == shipped.getNumConstraints() == 0
    masses = [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())]
    assert masses == [shipped.getParticleMass(i).value_in_unit(unit.dalton) for i in range(shipped.getNumParticles())]
    x = _configurations(load_aldp(solvent).positions_nm)
    energies, forces = _per_force(system, x)
    shipped_energies, shipped_forces = _per_force(shipped, x)
    np.testing.assert_allclose(energies, shipped_energies, rtol=1e-6, atol=1e-6)
    scale = np.abs(shipped_forces).max()
    np.testing.assert_allclose(forces, shipped_forces, rtol=0, atol=1e-6 * scale)


def test_load_aldp_names_the_choices():
    with pytest.raises(ValueError, match="gbn2"):
        load_aldp("explicit")


def test_gbn2_is_amber14_with_gbn2_on_the_shipped_topology():
    """The GBn2 System has the shipped topology, amber14 parameters (not amber99sbildn) and GBn2's neck tables."""
    aldp = load_aldp("gbn2")
    assert aldp.solvent == "gbn2" and aldp.system.getNumParticles() == 22
    gb = next(f for f in aldp.system.getForces() if type(f).__name__ == "CustomGBForce")
    assert sorted(gb.getTabulatedFunctionName(i) for i in range(gb.getNumTabulatedFunctions())) == ["getd0", "getm0"]
    assert gb.getNonbondedMethod() == gb.NoCutoff


def test_building_the_files_prints_nothing_of_pymbar(tmp_path):
    """openmmtools imports pymbar, whose import prints a JAX banner and a timeseries caveat; the builder imports
    openmmtools inside ``quiet_pymbar_import``, so a fresh process running build.py prints neither."""
    root = BUILD.parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, str(BUILD), "--out", str(tmp_path)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert "wrote" in done.stdout
    for text in ("JAX", "timeseries", "PyMBAR", "pymbar"):
        assert text not in output, output

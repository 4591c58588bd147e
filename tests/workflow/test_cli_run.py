"""``bgflow-se3 run``: the contract command at smoke sizes, and each bad input as one line (exit 1), no traceback,
no output folder touched."""

from __future__ import annotations

import json
import subprocess
import sys

import openmm
import openmm.app as app
import openmm.unit as unit
import pytest

from bgflow_se3.cli import main
from bgflow_se3.systems import load_aldp


def _run(xml, pdb, out, *extra):
    return main(["run", "--system-xml", str(xml), "--pdb", str(pdb), "--out", str(out), "--no-progress", *extra])


def test_run_prints_each_residue_and_writes_the_contract(aldp_files, tmp_path, capsys):
    assert _run(*aldp_files, tmp_path / "out", "--smoke", "--torsion", "phi1", "--torsion", "psi1") == 0
    printed = capsys.readouterr().out
    assert "phi1 [4, 6, 8, 14]: F(> 0) - F(<= 0) =" in printed and "psi1 [6, 8, 14, 16]" in printed
    table = json.loads((tmp_path / "out" / "results.json").read_text())["torsion_free_energies"]
    assert [e["name"] for e in table] == ["phi1", "psi1"]


def test_strict_exits_3_when_an_estimate_is_unreliable(aldp_files, tmp_path, capsys):
    assert _run(*aldp_files, tmp_path / "out", "--smoke", "--strict") == 3  # smoke sizes are never reliable
    assert (tmp_path / "out" / "results.json").is_file()  # everything written first
    assert "--strict: not every estimate is reliable" in capsys.readouterr().err


def test_named_states_and_pairs(aldp_files, tmp_path, capsys):
    state_a = "alpha=phi1:-3.1416:0&psi1:-2.2:1"
    state_b = "rest=phi1:0:3.1416|-3.1416:-3.1"
    assert _run(*aldp_files, tmp_path / "out", "--smoke", "--state", state_a, "--state", state_b) == 0
    (entry,) = json.loads((tmp_path / "out" / "results.json").read_text())["state_free_energies"]
    assert (entry["state_a"], entry["state_b"]) == ("alpha", "rest")
    assert "F(alpha) - F(rest) =" in capsys.readouterr().out


def _periodic(aldp):
    aldp.system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) for row in 3.0 * __import__("numpy").eye(3)))
    for force in aldp.system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            force.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
        if isinstance(force, openmm.GBSAOBCForce):
            force.setNonbondedMethod(openmm.GBSAOBCForce.CutoffPeriodic)


def _constrained(aldp):
    aldp.system.addConstraint(0, 1, 0.109)


def _ring(aldp):
    atoms = list(aldp.topology.atoms())
    aldp.topology.addBond(atoms[1], atoms[6])


def _missing_atom(aldp):
    return "drop"


@pytest.mark.parametrize(
    ("defect", "message"),
    [
        (_periodic, "periodic box"),
        (_constrained, "1 distance constraint"),
        (_ring, "ring"),
        (_missing_atom, "does not match the System"),
    ],
)
def test_bad_input_is_one_line_and_touches_nothing(tmp_path, write_inputs, defect, message):
    aldp = load_aldp("implicit")
    positions = aldp.positions_nm
    if defect(aldp) == "drop":
        modeller = app.Modeller(aldp.topology, positions * unit.nanometer)
        modeller.delete([list(aldp.topology.atoms())[-1]])
        xml, _ = write_inputs(tmp_path / "a", aldp.system, aldp.topology, positions)
        _, pdb = write_inputs(
            tmp_path / "b", aldp.system, modeller.topology, modeller.positions.value_in_unit(unit.nanometer)
        )
    else:
        xml, pdb = write_inputs(tmp_path / "in", aldp.system, aldp.topology, positions)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        _run(xml, pdb, out, "--smoke")
    assert str(info.value).startswith("bgflow-se3 run: ") and message in str(info.value)
    assert "\n" not in str(info.value) and not out.exists()


def test_unreached_state_stops_before_training(aldp_files, tmp_path):
    with pytest.raises(SystemExit, match="UnreachedStateError: .*'edge'"):
        _run(*aldp_files, tmp_path / "out", "--smoke", "--state", "edge=phi1:3.1415:3.1416", "--state", "x=phi1:0:1")
    assert not (tmp_path / "out" / "ml").exists()


def test_unknown_torsion_and_bad_specs(aldp_files, tmp_path, capsys):
    with pytest.raises(SystemExit, match="no such named torsion .*phi1, psi1"):
        _run(*aldp_files, tmp_path / "out", "--smoke", "--torsion", "phi7")
    for bad in (["--torsion", "chi=1,2,3"], ["--state", "s=phi1:0"], ["--pair", "ab"]):
        with pytest.raises(SystemExit) as info:
            _run(*aldp_files, tmp_path / "out", *bad)
        assert info.value.code == 2  # argparse: usage and one line, before anything runs
    assert not (tmp_path / "out").exists()


def test_no_traceback_in_a_real_process(tmp_path, write_inputs):
    aldp = load_aldp("implicit")
    _constrained(aldp)
    xml, pdb = write_inputs(tmp_path / "in", aldp.system, aldp.topology, aldp.positions_nm)
    command = [sys.executable, "-m", "bgflow_se3.cli", "run", "--system-xml", str(xml), "--pdb", str(pdb)]
    done = subprocess.run([*command, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and done.stderr.strip().startswith("bgflow-se3 run: UnsupportedSystemError")

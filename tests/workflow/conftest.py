"""Fixtures of the workflow tests: a System XML + PDB pair on disk, and finished umbrella caches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest

from bgflow_se3.systems import load_aldp


def _write(folder: Path, system, topology, positions_nm) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "system.xml").write_text(openmm.XmlSerializer.serialize(system))
    with open(folder / "molecule.pdb", "w") as handle:
        app.PDBFile.writeFile(topology, positions_nm * unit.nanometer, handle)
    return folder / "system.xml", folder / "molecule.pdb"


@pytest.fixture
def write_inputs():
    """write_inputs(folder, system, topology, positions_nm) -> (system.xml, molecule.pdb) paths."""
    return _write


@pytest.fixture
def aldp_files(tmp_path):
    """The shipped alanine dipeptide (implicit solvent) as system.xml + molecule.pdb."""
    aldp = load_aldp("implicit")
    return _write(tmp_path / "inputs", aldp.system, aldp.topology, aldp.positions_nm)


def _umbrella_cache(folder: Path, value=3.7, stderr=0.05, atoms=(4, 6, 8, 14), profile=True) -> Path:
    (folder / "seed_0").mkdir(parents=True)
    entry = {"combined": value, "stderr": stderr, "per_repeat": [value - 0.02, value + 0.02], "stderr_source": "s"}
    (folder / "summary.json").write_text(json.dumps({"ns_per_window": 0.5, "delta_f_phi_positive_kT": entry}))
    (folder / "seed_0" / "config.json").write_text(json.dumps({"torsion": list(atoms), "seed": 0}))
    if profile:
        centers = np.linspace(-math.pi, math.pi, 36, endpoint=False) + math.pi / 36
        np.savez(folder / "profile.npz", centers=centers, f=2.0 + 2.0 * np.sin(centers))
    return folder


@pytest.fixture
def umbrella_cache():
    """umbrella_cache(folder, value=3.7, stderr=0.05, atoms=aldp's phi, profile=True) -> folder: a finished cache of
    systems/aldp/umbrella.py (the files the loader reads: summary.json, profile.npz, seed_0/config.json)."""
    return _umbrella_cache

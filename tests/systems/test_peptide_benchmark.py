"""The peptide benchmark recipe: the acceptance rule of a row, reference commands for every phi, and a smoke run
of the tetrapeptide through the workflow with a (fake) reference cache."""

import json
import runpy
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "systems" / "peptides" / "benchmark.py"


@pytest.fixture(scope="module")
def recipe():
    return runpy.run_path(str(RECIPE), run_name="benchmark_recipe")


def test_reference_commands_name_every_phi(recipe, tmp_path):
    commands = recipe["reference_commands"]("ala4", tmp_path)
    assert [c.split("--torsion ")[1].split()[0] for c in commands] == ["phi1", "phi2", "phi3"]
    assert all(f"--cache {tmp_path / 'ala4'}" in c for c in commands)


def test_smoke_run_of_the_tetrapeptide_writes_the_table(tmp_path, monkeypatch, capsys):
    references = tmp_path / "refs"
    (references / "ala4" / "phi2").mkdir(parents=True)
    summary = {"delta_f_phi_positive_kT": {"combined": 2.5, "stderr": 0.1, "per_repeat": [2.4, 2.6]}}
    (references / "ala4" / "phi2" / "summary.json").write_text(json.dumps(summary))
    argv = [str(RECIPE), "--peptide", "ala4", "--out", str(tmp_path / "run"), "--reference-dir", str(references)]
    monkeypatch.setattr(sys, "argv", [*argv, "--smoke", "--no-progress"])
    runpy.run_path(str(RECIPE), run_name="__main__")
    table = json.loads((tmp_path / "run" / "benchmark.json").read_text())
    assert [r["name"] for r in table["residues"]] == ["phi1", "phi2", "phi3"]
    assert table["residues"][1]["reference"]["dF_kT"] == 2.5 and table["residues"][0]["reference"] is None
    assert table["n_atoms"] == 42 and table["settings"] == "smoke"
    assert "no reference cached" in capsys.readouterr().out

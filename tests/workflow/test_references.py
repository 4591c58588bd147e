"""Umbrella references in the workflow: reading a cache, the acceptance rule, refusing a reference made for other
atoms, and ``bgflow-se3 run --reference`` drawing and comparing one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bgflow_se3.cli import main
from bgflow_se3.workflow import UmbrellaReference, compare_with_reference, load_umbrella_reference

PHI = [4, 6, 8, 14]  # alanine dipeptide's phi1


def _reference(value=3.7, stderr=0.05, atoms=None) -> UmbrellaReference:
    return UmbrellaReference(value, stderr, "s", 4, 1.0, atoms, None, None, Path("ref"))


def _entry(value, error, reliable=True):
    return {
        "name": "phi1",
        "atoms": PHI,
        "dF_positive_minus_negative_kT": value,
        "stderr_kT": error,
        "reliable": reliable,
    }


def test_load_umbrella_reference_reads_value_profile_and_atoms(tmp_path, umbrella_cache):
    ref = load_umbrella_reference(umbrella_cache(tmp_path / "ref"))
    assert (ref.dF_kT, ref.stderr_kT, ref.n_repeats, ref.ns_per_window) == (3.7, 0.05, 2, 0.5)
    assert ref.atoms == tuple(PHI)
    centers, f = ref.profile
    assert centers.shape == f.shape == (36,)
    assert json.dumps(ref.as_dict())  # JSON-ready
    bare = load_umbrella_reference(umbrella_cache(tmp_path / "bare", profile=False))
    assert bare.profile is None


def test_a_missing_or_broken_cache_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no umbrella reference.*umbrella.py"):
        load_umbrella_reference(tmp_path / "nothing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text(json.dumps({"something": 1}))
    with pytest.raises(ValueError, match="not an umbrella summary"):
        load_umbrella_reference(tmp_path / "broken")


def test_the_acceptance_rule_needs_reliable_within_a_fifth_of_kT_and_two_sigma():
    ref = _reference()
    assert compare_with_reference(_entry(3.8, 0.05), ref)["within_tolerance"]  # 0.1 kT, 1.4 sigma
    assert not compare_with_reference(_entry(3.95, 0.1), ref)["within_tolerance"]  # 0.25 kT
    assert not compare_with_reference(_entry(3.8, 0.01), _reference(stderr=0.01))["within_tolerance"]  # 7 sigma
    assert not compare_with_reference(_entry(3.8, 0.05, reliable=False), ref)["within_tolerance"]
    row = compare_with_reference(_entry(3.8, 0.05), ref)
    assert row["difference_kT"] == pytest.approx(0.1) and row["difference_sigma"] == pytest.approx(
        0.1 / math.hypot(0.05, 0.05)
    )


def test_a_reference_for_other_atoms_is_refused():
    with pytest.raises(ValueError, match=r"biased the torsion of atoms \[6, 8, 14, 16\].*phi1"):
        compare_with_reference(_entry(3.8, 0.05), _reference(atoms=(6, 8, 14, 16)))


def _run(xml, pdb, out, *extra):
    return main(["run", "--system-xml", str(xml), "--pdb", str(pdb), "--out", str(out), "--no-progress", *extra])


def test_run_with_a_reference_compares_and_draws_it(aldp_files, tmp_path, capsys, umbrella_cache):
    cache = umbrella_cache(tmp_path / "ref")
    assert _run(*aldp_files, tmp_path / "out", "--smoke", "--reference", f"phi1={cache}") == 0
    (entry,) = json.loads((tmp_path / "out" / "results.json").read_text())["torsion_free_energies"]
    assert entry["reference"]["dF_kT"] == 3.7 and entry["reference"]["atoms"] == PHI
    assert entry["difference_kT"] == pytest.approx(entry["dF_positive_minus_negative_kT"] - 3.7)
    assert entry["within_tolerance"] is False  # smoke sizes are never reliable
    assert "reference 3.700 +/- 0.050 kT (2 repeats x 0.5 ns per window)" in capsys.readouterr().out
    assert (tmp_path / "out" / "torsion_profiles.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("phi1={missing}", "--reference phi1: no umbrella reference"),
        ("psi1={wrong}", "reference for 'psi1', which is not a reported torsion"),
        ("phi1={wrong}", r"biased the torsion of atoms \[6, 8, 14, 16\], but phi1"),
    ],
)
def test_a_bad_reference_is_one_line_before_anything_runs(aldp_files, tmp_path, umbrella_cache, spec, message):
    wrong = umbrella_cache(tmp_path / "wrong", atoms=[6, 8, 14, 16])
    spec = spec.format(missing=tmp_path / "missing", wrong=wrong)
    with pytest.raises(SystemExit, match=message) as stop:
        _run(*aldp_files, tmp_path / "out", "--smoke", "--reference", spec)
    assert str(stop.value).count("\n") == 0
    assert not (tmp_path / "out").exists()

"""Independent umbrella repeats: per-window seeds never collide across runs, and the aldp recipe pools repeats of
both state definitions (combined numbers, WARNING on disagreement, profile.npz that existing readers load)."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from bgflow_se3.simulate.umbrella_windows import window_seed
from bgflow_se3.systems.aldp_references import load_profile

RECIPE = Path(__file__).resolve().parents[2] / "systems" / "aldp" / "umbrella.py"


@pytest.fixture(scope="module")
def recipe():
    return runpy.run_path(str(RECIPE), run_name="umbrella_recipe")  # the functions, without running main


def test_window_seeds_are_distinct_nonzero_and_reproducible():
    seeds = {(s, k, r): window_seed(s, k, r) for s in range(6) for k in range(40) for r in range(3)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(1 <= v < 2**31 - 1 for v in seeds.values())  # OpenMM reads 0 as "pick at random"
    assert window_seed(1, 0) != window_seed(0, 1)  # repeat seed + 1 does not replay window k + 1 of repeat seed
    assert window_seed(3, 7, 2) == window_seed(3, 7, 2)


def _record(seed, values, block, f):
    """A fake per-repeat record as the recipe's analyse_repeat makes it (states: phi > 0, phi in (0, 2))."""
    keys = ["delta_f_phi_positive_kT", "delta_f_phi_0_2_kT"]
    record = {"seed": seed, "ns_per_window": 0.5, "total_ns": 18.0}
    for key, value, error in zip(keys, values, block):
        record[key] = {"value": value, "mbar_stderr": 0.1, "block_stderr": error, "blocks": [value] * 5}
    centers = np.linspace(-np.pi, np.pi, 7)[:-1] + np.pi / 6
    record["profile"] = {"centers": centers, "f": np.asarray(f, dtype=float), "df": np.full(6, 0.2)}
    return record


def test_recipe_combines_repeats_and_writes_readable_outputs(recipe, tmp_path):
    f = np.array([0.0, 1.0, 4.0, 3.0, 1.5, 0.5])
    records = [
        _record(0, [1.0, 4.10], [0.12, 0.12], f),
        _record(1, [1.2, 4.02], [0.17, 0.17], f + 3.0 + 0.1 * np.arange(6)),
    ]
    summary = recipe["combine"](records)
    a, positive = summary["delta_f_phi_0_2_kT"], summary["delta_f_phi_positive_kT"]
    assert a["per_repeat"] == [4.10, 4.02] and a["combined"] == pytest.approx(4.06)
    assert a["stderr"] == pytest.approx(0.04) and a["repeats_agree"] and a["dof"] == 1
    assert positive["combined"] == pytest.approx(1.1) and positive["stderr"] == pytest.approx(0.1)
    # +/-0.1 kT from the scatter: one repeat (18 ns) has std sqrt(2) * 0.1, so 18 * 2 = 36 ns in total
    assert positive["ns_total_for_0.1kT"] == pytest.approx(36.0)
    assert summary["total_ns"] == 36.0 and summary["seeds"] == [0, 1]
    lines = recipe["report_lines"](summary)
    assert not any(line.startswith("WARNING") for line in lines)
    assert any("4.060 +/- 0.040 kT" in line for line in lines)

    profile_path, out = recipe["write_outputs"](summary, records, tmp_path)
    centers, f_loaded = load_profile(tmp_path)  # the reader of examples/ and bgflow_se3.analysis
    np.testing.assert_allclose(centers, records[0]["profile"]["centers"])
    assert f_loaded.min() == 0.0 and f_loaded.shape == (6,)
    stored = np.load(profile_path)  # the keys bgflow_se3/cli.py reads
    assert float(stored["delta_f"]) == pytest.approx(4.06) and float(stored["block_stderr"]) == pytest.approx(0.04)
    assert float(stored["ns_per_window"]) == 0.5 and stored["df"].shape == (6,)
    assert float(stored["delta_f_phi_positive"]) == pytest.approx(1.1) and int(stored["n_repeats"]) == 2
    written = json.loads(out.read_text())
    assert written["delta_f_phi_positive_kT"]["per_repeat"] == [1.0, 1.2]
    assert [r["seed"] for r in written["repeats"]] == [0, 1] and "profile" not in written["repeats"][0]


def test_recipe_warns_when_repeats_disagree_and_flags_a_single_repeat(recipe):
    f = np.zeros(6)
    apart = recipe["combine"]([_record(0, [1.0, 4.5], [0.1, 0.1], f), _record(1, [1.05, 3.9], [0.1, 0.1], f)])
    assert apart["delta_f_phi_0_2_kT"]["repeats_agree"] is False
    assert apart["delta_f_phi_positive_kT"]["repeats_agree"] is True
    warnings = [line for line in recipe["report_lines"](apart) if line.startswith("WARNING")]
    assert len(warnings) == 1 and "F(phi in (0, 2))" in warnings[0]
    single = recipe["combine"]([_record(0, [1.0, 4.1], [0.1, 0.12], f)])
    assert single["delta_f_phi_0_2_kT"]["stderr"] == 0.12 and single["delta_f_phi_0_2_kT"]["repeats_agree"] is None
    assert single["delta_f_phi_0_2_kT"]["ns_total_for_0.1kT"] == pytest.approx(18.0 * 1.44)
    assert any("ONE repeat" in line for line in recipe["report_lines"](single))


def test_recipe_takes_your_own_molecule_and_a_named_torsion(recipe, tmp_path):
    import argparse

    import openmm
    import openmm.app as app
    import openmm.unit as unit

    from bgflow_se3.systems import load_aldp

    aldp = load_aldp("implicit")
    xml, pdb = tmp_path / "system.xml", tmp_path / "molecule.pdb"
    xml.write_text(openmm.XmlSerializer.serialize(aldp.system))
    with open(pdb, "w") as handle:
        app.PDBFile.writeFile(aldp.topology, aldp.positions_nm * unit.nanometer, handle)
    parser = argparse.ArgumentParser()

    def args(torsion, cache=tmp_path / "cache"):
        return argparse.Namespace(system_xml=xml, pdb=pdb, torsion=torsion, cache=cache)

    assert recipe["own_molecule"](parser, argparse.Namespace(system_xml=None, pdb=None, torsion=None)) is None
    chosen = recipe["own_molecule"](parser, args("phi1"))
    assert chosen == {"torsion": (4, 6, 8, 14), "record_torsion": (6, 8, 14, 16)}  # phi paired with its psi
    assert recipe["own_molecule"](parser, args("1,4,6,8")) == {"torsion": (1, 4, 6, 8), "record_torsion": None}
    for bad in ("phi9", "1,2,3", "1,4,6,99"):
        with pytest.raises(SystemExit):
            recipe["own_molecule"](parser, args(bad))
    with pytest.raises(SystemExit):  # --cache is required for your own molecule
        recipe["own_molecule"](parser, args("phi1", cache=None))

"""The examples run end to end with their tiniest settings (--smoke) and write finite, in-range results."""

import json
import math
import runpy
import sys
from pathlib import Path

import mdtraj
import numpy as np
import pytest

from bgflow_se3.simulate import run_aldp_md

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, args: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *args, "--no-progress", "--device", "cpu"])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """A few frames of MD and flat umbrella phi and (phi, psi) references, so every KL path runs."""
    folder = tmp_path_factory.mktemp("references")
    md = run_aldp_md("implicit", 0.005, folder / "md", save_every_ps=0.1, equilibration_ps=0.2)
    umbrella = folder / "umbrella"
    umbrella.mkdir()
    centers = -np.pi + (np.arange(36) + 0.5) * 2 * np.pi / 36
    np.savez(umbrella / "profile.npz", centers=centers, f=np.zeros(36))
    np.savez(umbrella / "ramachandran.npz", p=np.full((64, 64), 1 / 64**2))  # flat (phi, psi) reference
    return md, umbrella


def run_dipeptide_example(name: str, out: Path, references, monkeypatch) -> dict:
    """Run an alanine dipeptide example against the small references; check and return its results."""
    md, umbrella = references
    run_example(name, ["--smoke", "--out", str(out), "--md-data", str(md), "--umbrella", str(umbrella)], monkeypatch)
    results = json.loads((out / "results.json").read_text())
    for key in ("dF_phi_positive_minus_negative_kT", "dF_stderr_kT", "dF_reliable", "reverse_ess"):
        assert key in results, key
    for name in ("samples.dcd", "topology.pdb", "samples.npz", "ramachandran.png", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0, name
    trajectory = mdtraj.load(str(out / "samples.dcd"), top=str(out / "topology.pdb"))
    assert trajectory.n_frames == results["n_samples"] - results["n_nonfinite_samples"] and trajectory.n_atoms == 22
    assert 0.0 < results["reverse_ess"] <= 1.0
    assert 0.0 <= results["d_chirality_fraction"] <= 1.0
    for key in ("kl_md", "kl_phi_umbrella"):
        assert 0.0 <= results[key] < 30.0, key  # finite: the pseudo-count bounds it by about log(1 / 1e-6)
        reweighted = results[f"{key}_reweighted"]
        assert reweighted is None or 0.0 <= reweighted < 30.0  # NaN (no weights) is written as null
    # a smoke-sized flow has a handful of effective samples: the phi-state dF must be flagged, never look valid
    assert results["reverse_ess"] * results["n_samples"] < 50
    assert results["dF_reliable"] is False
    assert results["dF_error"] or results["dF_warning"]
    return results


def test_aldp_ml_smoke(tmp_path, references, monkeypatch):
    out = tmp_path / "out"
    results = run_dipeptide_example("aldp_ml.py", out, references, monkeypatch)
    assert results["mode"] == "smoke" and results["iterations"] == 4
    assert math.isfinite(results["val_nll_nats"]) and math.isfinite(results["train_nll_nats"])
    curve = [json.loads(line) for line in (out / "validation_nll.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in curve] == [1, 2, 3, 4]
    assert (out / "validation_nll.png").stat().st_size > 0


def test_aldp_fab_smoke(tmp_path, references, monkeypatch):
    results = run_dipeptide_example("aldp_fab.py", tmp_path / "out", references, monkeypatch)
    assert results["mode"] == "smoke" and results["iterations"] == 3 and results["n_target_evaluations"] > 0
    assert results["flow"] == "InternalCoordinateFlow" and results["restricted_to_l"] is True
    # the shipped flow: D samples are rare and the effective samples are split over both phi states
    assert results["d_chirality_fraction"] < 0.1
    assert results["effective_samples_phi_positive"] >= 0 and results["effective_samples_phi_negative"] >= 0


def _icosahedra(radii: np.ndarray, generator: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """LJ13 icosahedra (centre + 12 vertices at circumradius r), randomly rotated, CoM-free: shape (n, 13, 3), and
    their reduced energies written out from the geometry (ordered-pair LJ with eps = r_m = 1, harmonic tether k = 1).
    """
    golden = (1 + np.sqrt(5)) / 2
    base = np.array([[0, s1, s2 * golden] for s1 in (-1, 1) for s2 in (-1, 1)], dtype=np.float64)
    vertices = np.concatenate([np.roll(base, shift, axis=1) for shift in range(3)])  # edge 2, circumradius |base|
    vertices /= np.linalg.norm(vertices[0])
    x, u = [], []
    for r in radii:
        q, _ = np.linalg.qr(generator.normal(size=(3, 3)))
        x.append(np.concatenate([np.zeros((1, 3)), r * vertices]) @ q.T)
        edge = 2 * r / np.sqrt(1 + golden**2)

        def pair(d):
            return d**-12 - 2 * d**-6

        # 78 unique pairs: 12 centre-vertex, 30 edges, 30 second neighbours (edge x golden), 6 antipodes (2 r)
        unique = 12 * pair(r) + 30 * pair(edge) + 30 * pair(golden * edge) + 6 * pair(2 * r)
        u.append(2 * unique + 0.5 * 12 * r**2)
    return np.asarray(x), np.asarray(u)


def test_lj13_fab_smoke(tmp_path, monkeypatch):
    # a tiny LJ13 "test" split in a private cache, so that the reference branch (energy of the reference data, NLL)
    # runs in CI too, against energies known from the geometry
    x_ref, u_ref = _icosahedra(np.linspace(0.9, 1.2, 8), np.random.default_rng(0))
    (tmp_path / "cache" / "lj13").mkdir(parents=True)
    np.save(tmp_path / "cache" / "lj13" / "test.npy", x_ref)
    monkeypatch.setenv("BGFLOW_SE3_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    run_example("lj13_fab.py", ["--smoke", "--out", str(out)], monkeypatch)
    results = json.loads((out / "results.json").read_text())
    assert (out / "checkpoint.pt").exists() and (out / "metrics.jsonl").exists()
    assert results["iterations"] == 3 and results["n_target_evaluations"] > 0
    assert 0.0 < results["reverse_ess"] <= 1.0 and 0.0 < results["ais_ess_towards_p"] <= 1.0
    assert math.isfinite(results["mean_energy_flow_reweighted"]) and math.isfinite(results["median_energy_flow"])
    assert -85.0 < u_ref.min() < u_ref.max() < 0.0  # near the LJ13 minimum (2 x -44.33, + the tether)
    assert results["mean_energy_reference"] == pytest.approx(u_ref.mean(), rel=1e-9)
    assert results["mean_energy_reference_stderr"] == pytest.approx(u_ref.std(ddof=1) / np.sqrt(8), rel=1e-9)
    assert math.isfinite(results["reference_nll_nats"])

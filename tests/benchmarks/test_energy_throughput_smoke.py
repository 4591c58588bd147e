"""benchmarks/energy_throughput.py on tiny batches of the custom-force systems: it runs, agrees with OpenMM, and
writes its JSON."""

import json
import runpy
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "energy_throughput.py"


def test_energy_throughput_on_custom_force_systems(tmp_path, monkeypatch):
    out = tmp_path / "energy.json"
    argv = ["energy_throughput.py", "--batch-sizes", "8", "--repeats", "1", "--out", str(out)]
    argv += ["--backends", "TorchForceField(float64)", "--systems", "aldp_amber14_gbn2", "aldp_amber19_cmap"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(SCRIPT), run_name="__main__")
    report = json.loads(out.read_text())
    rows = report["results"]
    assert {(r["system"], r["backend"]) for r in rows} == {
        (system, backend)
        for system in ("aldp_amber14_gbn2", "aldp_amber19_cmap")
        for backend in ("openmm_loop", "TorchForceField(float64)")
    }
    assert all(r["max_rel_diff_vs_loop"] < 1e-6 and r["evals_per_s"] > 0 for r in rows)

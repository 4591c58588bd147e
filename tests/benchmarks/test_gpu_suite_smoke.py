"""benchmarks/gpu_suite.py end to end in its tiny CPU mode: every section runs and the JSON holds its numbers."""

import json
import math
import runpy
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_suite.py"


def test_gpu_suite_tiny_mode_writes_every_section(tmp_path, monkeypatch):
    out = tmp_path / "gpu_suite.json"
    monkeypatch.setattr(sys, "argv", ["gpu_suite.py", "--tiny", "--device", "cpu", "--out", str(out)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    report = json.loads(out.read_text())
    assert report["tiny"] is True
    loop = report["energy"]["openmm_loop"]
    assert loop["evaluations_per_s"] > 0 and loop["platform"] in ("CPU", "Reference")
    eager = [row for row in report["energy"]["torchforcefield"] if row["mode"] == "eager"]
    assert {(row["dtype"], row["batch"]) for row in eager} == {(d, b) for d in ("float32", "float64") for b in (8, 32)}
    for row in eager:
        assert row["evaluations_per_s"] > 0
        assert math.isclose(row["x_openmm_loop"], row["evaluations_per_s"] / loop["evaluations_per_s"])
    (flow,) = report["flow"]
    assert flow["log_q_backward_configurations_per_s"] > 0 and flow["sample_configurations_per_s"] > 0
    training = report["training"]
    assert training["iterations"] >= 2 and training["n_target_evaluations"] > 0
    assert 0 < training["ess_flow_last10"] <= 1

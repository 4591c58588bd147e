"""benchmarks/flow_speed.py in its quick mode, and against a baseline tree (this tree again: ratios near 1)."""

import json
import runpy
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "flow_speed.py"


def test_flow_speed_quick_and_against_a_baseline_tree(tmp_path, monkeypatch):
    out = tmp_path / "speed.json"
    argv = ["flow_speed.py", "--size", "tiny", "--batches", "4", "--repeats", "1", "--min-seconds", "0"]
    argv += ["--baseline", str(SCRIPT.parents[1]), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(SCRIPT), run_name="__main__")
    report = json.loads(out.read_text())
    (row,) = report["table"]
    assert row["this_log_q_backward_configurations_per_s"] > 0 and row["this_sample_configurations_per_s"] > 0
    assert row["this_saved_mb_per_configuration"] > 0
    # the same tree on both sides: identical memory, and the same flow (same parameter count)
    assert row["ratio_saved_mb_per_configuration"] == 1.0
    assert report["n_parameters"]["this"] == report["n_parameters"]["baseline"]

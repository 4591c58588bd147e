"""benchmarks/thread_policy.py in its smoke mode: fresh interpreters, a busy neighbour started and killed, JSON."""

import json
import runpy
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "thread_policy.py"


def test_thread_policy_smoke(tmp_path, monkeypatch):
    out = tmp_path / "thread_policy.json"
    monkeypatch.setattr(sys, "argv", ["thread_policy.py", "--smoke", "--out", str(out)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    report = json.loads(out.read_text())
    rows = {(r["k"], r["threads"], r["neighbour"]): r for r in report["rows"]}
    assert set(rows) == {(0, "policy", True)}
    for row in rows.values():
        assert row["iterations_per_s"] > 0 and row["torch_threads"] >= 1
        assert "usable cores" in row["plan_reason"]  # the policy chose: no thread variable reached the worker


def test_ratios_pair_the_arms_of_each_configuration():
    benchmark = runpy.run_path(str(SCRIPT))
    rows = [
        {"k": 0, "neighbour": False, "threads": "policy", "iterations_per_s": 3.0},
        {"k": 0, "neighbour": False, "threads": "default", "iterations_per_s": 2.0},
        {"k": 1, "neighbour": True, "threads": "policy", "iterations_per_s": 1.0},
    ]
    assert benchmark["ratios"](rows) == [{"k": 0, "neighbour": False, "policy_over_default": 1.5}]

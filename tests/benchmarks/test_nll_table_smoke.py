"""benchmarks/nll_table.py end to end on tiny DW4 data: JSON + Markdown, and an external test file in the peers'
layout ((n, n_atoms * dim), CoM not removed) gives the same NLL as the same configurations from our cache."""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from bgflow_se3.simulate.particle_mcmc import ParticleDataConfig, load_particle_data, make_particle_data

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "nll_table.py"


def test_nll_table_runs_and_reads_peer_test_files(tmp_path, monkeypatch):
    config = ParticleDataConfig(
        n_chains=64, n_train=100, n_val=20, n_test=40, init_spacing=4.0, tune_steps=300, pilot_steps=800
    )
    make_particle_data("dw4", cache_dir=tmp_path / "cache", config=config, progress=False)
    test = load_particle_data("dw4", "test", cache_dir=tmp_path / "cache", make_if_missing=False).double().numpy()
    shift = np.random.default_rng(0).normal(size=(len(test), 1, 2)) * 3.0  # the peers' files keep a CoM
    peer_file = tmp_path / "dw4_test.npy"
    np.save(peer_file, (test + shift).reshape(len(test), -1))
    out = tmp_path / "nll.json"
    argv = ["nll_table.py", "--quick", "--systems", "dw4", "--models", "kernel", "--steps", "3", "--n-train", "100"]
    argv += ["--cache", str(tmp_path / "cache"), "--test-file", str(peer_file), "--out", str(out), "--no-progress"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(SCRIPT), run_name="__main__")

    payload = json.loads(out.read_text())
    rows = {row["test_set"]: row for row in payload["results"]}
    assert set(rows) == {"ours", str(peer_file)}
    ours, peer = rows["ours"], rows[str(peer_file)]
    assert ours["model"] == "kernel" and ours["n_test"] == peer["n_test"] == len(test)
    assert np.isfinite(ours["test_nll"]) and 0 < ours["test_nll"] < 30
    assert peer["test_nll"] == pytest.approx(ours["test_nll"], abs=1e-4)  # translation invariance, same configs
    assert "| dw4 |" in out.with_suffix(".md").read_text()

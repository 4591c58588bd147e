"""The free-energy CLI on broken samples files: missing keys, NaN, wrong shapes, empty or non-npz files give a
one-line error and a non-zero exit, no traceback; a valid file still works."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bgflow_se3.cli import main


def _rotate_phi(x: np.ndarray, angle: float) -> np.ndarray:
    """Rotate the ACE cap and the amide H (atoms 0-5, 7) of alanine dipeptide about N-CA: phi changes by angle."""
    n, ca = x[6], x[8]
    axis = (ca - n) / np.linalg.norm(ca - n)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    moved = [0, 1, 2, 3, 4, 5, 7]
    y = x.copy()
    y[moved] = (x[moved] - n) @ (np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k).T + n
    return y


@pytest.fixture(scope="module")
def good(aldp):
    """x (200, 22, 3): about a third near a phi in (0, 2) copy of the shipped structure; log_q and mild weights."""
    rng = np.random.default_rng(0)
    base = np.where(
        (rng.uniform(size=200) < 0.3)[:, None, None], _rotate_phi(aldp.positions_nm, np.pi - 1.0), aldp.positions_nm
    )
    x = base + 0.002 * rng.normal(size=(200, 22, 3))
    log_q = rng.normal(size=200)
    return {"x": x, "log_q": log_q, "u": -log_q + 0.1 * rng.normal(size=200), "log_p_aug": np.zeros(200)}


def _write(tmp_path, arrays, name="samples.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


CASES = {
    "missing_log_q": (lambda d: {"x": d["x"], "u": d["u"]}, r"lacks \['log_q'\]"),
    "missing_x": (lambda d: {"log_q": d["log_q"], "u": d["u"]}, r"lacks \['x'\]"),
    "nan_in_u": (lambda d: {**d, "u": np.where(np.arange(200) == 7, np.nan, d["u"])}, "NaN or -inf"),
    "nan_in_log_q": (lambda d: {**d, "log_q": np.where(np.arange(200) == 3, np.nan, d["log_q"])}, "not finite"),
    "nan_in_x": (lambda d: {**d, "x": np.where(np.arange(200)[:, None, None] == 1, np.nan, d["x"])}, "NaN or inf"),
    "short_u": (lambda d: {**d, "u": d["u"][:-1]}, r"u in .* must have shape \(200,\)"),
    "2d_log_q": (lambda d: {**d, "log_q": d["log_q"][:, None]}, r"log_q in .* must have shape \(200,\)"),
    "x_wrong_atoms": (lambda d: {**d, "x": d["x"][:, :-1]}, "21 atoms per sample but the topology has 22"),
    "x_2d": (lambda d: {**d, "x": d["x"][:, :, 0]}, r"shape \(n, n_atoms, 3\)"),
    "no_samples": (lambda d: {k: v[:0] for k, v in d.items()}, "n >= 1"),
    "all_weights_zero": (lambda d: {**d, "u": np.full(200, np.inf)}, "EmptyStateError"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_samples_exit_with_a_one_line_message(tmp_path, good, case, capsys):
    make, match = CASES[case]
    path = _write(tmp_path, make(good))
    with pytest.raises(SystemExit, match=match) as exit_info:
        main(["free-energy", str(path)])
    assert exit_info.value.code not in (0, None)


@pytest.mark.parametrize("content", [b"", b"x,log_q\n1,2\n", b"PK\x03\x04 truncated zip"], ids=["empty", "csv", "zip"])
def test_unreadable_files_exit_with_a_one_line_message(tmp_path, content):
    path = tmp_path / "samples.npz"
    path.write_bytes(content)
    with pytest.raises(SystemExit, match="cannot read .* as an .npz of samples"):
        main(["free-energy", str(path)])
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(SystemExit, match="cannot read"):
        main(["free-energy", str(tmp_path / "single.npy")])
    with pytest.raises(SystemExit, match="cannot read"):
        main(["free-energy", str(tmp_path / "missing.npz")])


def test_valid_samples_still_work_and_a_bad_file_gives_no_traceback_in_a_subprocess(tmp_path, good):
    path = _write(tmp_path, good)
    assert main(["free-energy", str(path), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_samples"] == 200 and np.isfinite(summary["delta_f_kT"]) and summary["delta_f_stderr_kT"] > 0
    bad = _write(tmp_path, {**good, "u": np.full(200, np.nan)}, "bad.npz")
    run = subprocess.run(
        [sys.executable, "-m", "bgflow_se3.cli", "free-energy", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "NaN or -inf" in run.stderr and len(run.stderr.strip().splitlines()) == 1

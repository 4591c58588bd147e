"""The bgflow-se3 CLI: free-energy subcommand end to end on saved samples whose answer is known."""

import json

import numpy as np
import pytest

from bgflow_se3.analysis import phi_psi
from bgflow_se3.cli import build_parser, main
from bgflow_se3.systems import load_aldp


def _rotate_phi(x: np.ndarray, angle: float) -> np.ndarray:
    """Rotate the ACE cap and the amide H (atoms 0-5, 7) about the N-CA bond: changes phi by `angle`."""
    n, ca = x[6], x[8]
    axis = (ca - n) / np.linalg.norm(ca - n)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    y = x.copy()
    moved = [0, 1, 2, 3, 4, 5, 7]
    y[moved] = (x[moved] - n) @ rotation.T + n
    return y


def test_free_energy_subcommand(tmp_path):
    aldp = load_aldp("implicit")
    base = aldp.positions_nm
    other = _rotate_phi(base, np.pi - 1.0)
    phi_other, _ = phi_psi(aldp.topology, other)
    assert 0.0 < phi_other[0] < 2.0
    rng = np.random.default_rng(0)
    which = rng.uniform(size=400) < 0.3
    x = np.where(which[:, None, None], other, base) + 0.002 * rng.normal(size=(400, 22, 3))
    log_q = rng.normal(size=400)
    # u = -log q: every importance weight is equal, so Delta F = -log(n_A / n_B) exactly
    np.savez(tmp_path / "samples.npz", x=x, log_q=log_q, u=-log_q)
    centers = np.linspace(-np.pi, np.pi, 37)[:-1] + np.pi / 36
    np.savez(
        tmp_path / "profile.npz",
        centers=centers,
        f=1 + np.cos(centers),
        df=np.full(36, 0.1),
        delta_f=4.1,
        delta_f_stderr=0.15,
        block_stderr=0.12,
        ns_per_window=0.5,
    )  # an umbrella reference as systems/aldp/umbrella.py writes it
    args = ["free-energy", str(tmp_path / "samples.npz"), "--out", str(tmp_path / "out")]
    assert main([*args, "--umbrella-cache", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["umbrella_delta_f_kT"] == 4.1 and summary["umbrella_block_stderr_kT"] == 0.12
    phi, _ = phi_psi(aldp.topology, x)
    n_a = np.sum((phi > 0) & (phi < 2))
    assert n_a == which.sum()
    assert summary["delta_f_kT"] == pytest.approx(-np.log(n_a / (400 - n_a)), abs=1e-9)
    assert summary["ess_fraction"] == pytest.approx(1.0)
    for name in ("phi_profile.png", "ramachandran_flow.png", "ramachandran_reweighted.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000


def test_parser_requires_a_subcommand_and_checks_samples(tmp_path):
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 22, 3)))
    with pytest.raises(SystemExit, match="log_q"):
        main(["free-energy", str(tmp_path / "bad.npz")])

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


def _samples(aldp, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """x (n, 22, 3) nm: about 30 % near a phi in (0, 2) copy of the shipped structure, the rest near it; and which."""
    base = aldp.positions_nm
    other = _rotate_phi(base, np.pi - 1.0)
    phi_other, _ = phi_psi(aldp.topology, other)
    assert 0.0 < phi_other[0] < 2.0
    which = rng.uniform(size=n) < 0.3
    x = np.where(which[:, None, None], other, base) + 0.002 * rng.normal(size=(n, 22, 3))
    return x, which


def _expected(log_w: np.ndarray, in_a: np.ndarray) -> tuple[float, float]:
    """Delta F = -log(sum_A w / sum_B w) and the ESS fraction (sum w)^2 / (n sum w^2), written out here."""
    w = np.exp(log_w - log_w.max())
    return float(-np.log(w[in_a].sum() / w[~in_a].sum())), float(w.sum() ** 2 / (len(w) * np.sum(w**2)))


def test_free_energy_subcommand(tmp_path):
    aldp = load_aldp("implicit")
    rng = np.random.default_rng(0)
    x, which = _samples(aldp, 400, rng)
    log_q = rng.normal(size=400)
    log_p_aug = rng.normal(size=400)
    # unequal, known weights: log w = -u + log_p_aug - log_q = -s, with state B down-weighted by e^-0.7 on average
    s = 0.5 * rng.normal(size=400) + np.where(which, 0.0, 0.7)
    u = -log_q + log_p_aug + s
    u[3] = np.inf  # a failed evaluation: weight 0
    np.savez(tmp_path / "samples.npz", x=x, log_q=log_q, u=u, log_p_aug=log_p_aug)
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
    in_a = (phi > 0) & (phi < 2)
    assert np.array_equal(in_a, which)
    delta_f, ess_fraction = _expected(np.where(np.isinf(u), -np.inf, -s), in_a)
    unweighted = -np.log(in_a.sum() / (~in_a).sum())
    assert abs(delta_f - unweighted) > 0.5  # the weights matter
    assert summary["delta_f_kT"] == pytest.approx(delta_f, abs=1e-9)
    assert summary["ess_fraction"] == pytest.approx(ess_fraction, rel=1e-9)
    assert ess_fraction < 0.9 and summary["n_infinite_energy"] == 1
    for name in ("phi_profile.png", "ramachandran_flow.png", "ramachandran_reweighted.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000


def test_free_energy_subcommand_evaluates_u_with_the_system(tmp_path):
    """Without u in the samples the CLI computes u = E / kT with OpenMM at --temperature; checked here through
    log q = -u_true + s, so that the weights are exp(-s) exactly when the CLI's u equals u_true."""
    import openmm
    import openmm.unit as unit

    aldp = load_aldp("vacuum")
    rng = np.random.default_rng(1)
    x, which = _samples(aldp, 240, rng)
    temperature = 350.0
    kt = (unit.MOLAR_GAS_CONSTANT_R * temperature * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
    context = openmm.Context(
        aldp.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    u_true = np.empty(len(x))
    for i, xi in enumerate(x):
        context.setPositions(xi)
        state = context.getState(getEnergy=True)
        u_true[i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / kt
    assert np.ptp(u_true) > 5  # a wrong temperature or unit would change the weights by far more than 1e-6
    s = 0.3 * rng.normal(size=len(x)) + np.where(which, 0.0, 0.7)
    np.savez(tmp_path / "samples.npz", x=x, log_q=-u_true + s)
    argv = ["free-energy", str(tmp_path / "samples.npz"), "--system", "aldp-vacuum"]
    assert main([*argv, "--temperature", str(temperature), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    delta_f, ess_fraction = _expected(-s, which)
    assert summary["delta_f_kT"] == pytest.approx(delta_f, abs=1e-6)
    assert summary["ess_fraction"] == pytest.approx(ess_fraction, rel=1e-6)
    assert summary["n_infinite_energy"] == 0


def test_parser_requires_a_subcommand_and_checks_samples(tmp_path):
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 22, 3)))
    with pytest.raises(SystemExit, match="log_q"):
        main(["free-energy", str(tmp_path / "bad.npz")])

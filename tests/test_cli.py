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


def _openmm_u(system, x: np.ndarray, temperature: float) -> np.ndarray:
    """u = E / kT (n,) of configurations x (n, n_atoms, 3) nm with OpenMM's Reference platform, written out here."""
    import openmm
    import openmm.unit as unit

    kt = (unit.MOLAR_GAS_CONSTANT_R * temperature * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    u = np.empty(len(x))
    for i, xi in enumerate(x):
        context.setPositions(xi)
        u[i] = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / kt
    return u


def _strict_json(path) -> dict:
    """json.loads that refuses NaN and Infinity, as parsers outside Python do."""

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


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
    assert {"pareto_k_phi_in_0_2", "pareto_k_rest", "pareto_k_limit"} <= set(summary)
    for name in ("phi_profile.png", "ramachandran_flow.png", "ramachandran_reweighted.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000


def test_free_energy_subcommand_evaluates_u_with_the_system(tmp_path):
    """Without u in the samples the CLI computes u = E / kT with OpenMM at --temperature; checked here through
    log q = -u_true + s, so that the weights are exp(-s) exactly when the CLI's u equals u_true."""
    aldp = load_aldp("vacuum")
    rng = np.random.default_rng(1)
    x, which = _samples(aldp, 240, rng)
    temperature = 350.0
    u_true = _openmm_u(aldp.system, x, temperature)
    assert np.ptp(u_true) > 5  # a wrong temperature or unit would change the weights by far more than 1e-6
    s = 0.3 * rng.normal(size=len(x)) + np.where(which, 0.0, 0.7)
    np.savez(tmp_path / "samples.npz", x=x, log_q=-u_true + s, augmented=False)  # declared: no log_p_aug needed
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


def _with_mirrors(aldp, n: int, n_mirror: int, rng: np.random.Generator):
    """x (n + n_mirror, 22, 3): L samples as ``_samples`` and mirror images (x -> -x, D) of n_mirror of them;
    which (n,) of the L samples lie near phi in (0, 2); index of the mirrored L samples."""
    x_l, which = _samples(aldp, n, rng)
    mirrored = rng.choice(n, n_mirror, replace=False)
    return np.concatenate([x_l, -x_l[mirrored]]), which, mirrored


def test_mirror_samples_get_weight_0_when_the_cli_computes_u(tmp_path, capsys):
    """An E(3)-invariant flow also samples D-alanine, which the force field scores like L; the target is L, so the
    CLI gives mirror images u = +inf. Here they would otherwise carry weights e^1 each (log q = -u - 1)."""
    aldp = load_aldp("vacuum")
    rng = np.random.default_rng(2)
    x, which, mirrored = _with_mirrors(aldp, 120, 60, rng)
    u_l = _openmm_u(aldp.system, x[:120], 300.0)
    s_l = 0.3 * rng.normal(size=120) + np.where(which, 0.0, 0.7)
    log_q = np.concatenate([-u_l + s_l, -u_l[mirrored] - 1.0])
    np.savez(tmp_path / "samples.npz", x=x, log_q=log_q, log_p_aug=np.zeros(180))
    argv = ["free-energy", str(tmp_path / "samples.npz"), "--system", "aldp-vacuum", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    delta_f, _ = _expected(-s_l, which)  # the L samples alone
    assert summary["delta_f_kT"] == pytest.approx(delta_f, abs=1e-6)
    phi, _ = phi_psi(aldp.topology, x)
    with_mirrors, _ = _expected(np.concatenate([-s_l, np.ones(60)]), (phi > 0) & (phi < 2))
    assert abs(with_mirrors - delta_f) > 1.0  # what counting the mirror images would give
    assert summary["n_mirror_samples"] == 60 and summary["mirror_fraction"] == pytest.approx(1 / 3)
    assert summary["restrict_chirality"] is True and summary["n_chiral_centres"] == 1
    assert summary["n_infinite_energy"] == 0
    assert "mirror images of the given structure (D for alanine dipeptide): 60 of 180" in capsys.readouterr().out


def test_mirror_samples_with_finite_u_in_the_file_get_weight_0_and_a_warning(tmp_path):
    aldp = load_aldp("implicit")
    rng = np.random.default_rng(3)
    x, which, mirrored = _with_mirrors(aldp, 200, 50, rng)
    log_q = rng.normal(size=250)
    s = np.concatenate([0.5 * rng.normal(size=200) + np.where(which, 0.0, 0.7), np.full(50, -1.0)])
    np.savez(tmp_path / "samples.npz", x=x, log_q=log_q, u=-log_q + s, log_p_aug=np.zeros(250))
    argv = ["free-energy", str(tmp_path / "samples.npz")]
    with pytest.warns(UserWarning, match="gives 50 mirror-image samples .* a finite energy; they get weight 0"):
        assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["delta_f_kT"] == pytest.approx(_expected(-s[:200], which)[0], abs=1e-9)
    assert summary["mirror_fraction"] == pytest.approx(0.2)
    # --no-restrict-chirality keeps them (reported, not removed): every sample with its own phi
    assert main([*argv, "--no-restrict-chirality", "--out", str(tmp_path / "all")]) == 0
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    phi, _ = phi_psi(aldp.topology, x)
    assert summary["delta_f_kT"] == pytest.approx(_expected(-s, (phi > 0) & (phi < 2))[0], abs=1e-9)
    assert summary["restrict_chirality"] is False and summary["mirror_fraction"] == pytest.approx(0.2)


def test_the_pdb_structure_sets_the_target_handedness(tmp_path):
    """--system-xml + --pdb: a D structure makes D the target, and L samples the mirror images."""
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    aldp = load_aldp("vacuum")
    (tmp_path / "system.xml").write_text(openmm.XmlSerializer.serialize(aldp.system))
    with open(tmp_path / "d.pdb", "w") as f:
        app.PDBFile.writeFile(aldp.topology, -aldp.positions_nm * unit.nanometer, f)
    rng = np.random.default_rng(4)
    phi_minus_1 = _rotate_phi(aldp.positions_nm, np.pi + 1.0)  # its mirror image has phi = +1
    which = rng.uniform(size=150) < 0.3
    x_d = -(np.where(which[:, None, None], phi_minus_1, aldp.positions_nm) + 0.002 * rng.normal(size=(150, 22, 3)))
    x = np.concatenate([x_d, _samples(aldp, 50, rng)[0]])  # 150 D samples, 50 L
    log_q = rng.normal(size=200)
    s = 0.5 * rng.normal(size=200)
    np.savez(tmp_path / "samples.npz", x=x, log_q=log_q, u=-log_q + s, log_p_aug=np.zeros(200))
    argv = ["free-energy", str(tmp_path / "samples.npz"), "--system-xml", str(tmp_path / "system.xml")]
    with pytest.warns(UserWarning, match="gives 50 mirror-image samples"):
        assert main([*argv, "--pdb", str(tmp_path / "d.pdb"), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    phi, _ = phi_psi(aldp.topology, x_d)
    assert np.array_equal((phi > 0) & (phi < 2), which)
    assert summary["delta_f_kT"] == pytest.approx(_expected(-s[:150], which)[0], abs=1e-9)
    assert summary["n_mirror_samples"] == 50


def test_samples_that_may_be_augmented_need_log_p_aug(tmp_path):
    """Without log pi(a | x) an augmented flow's weights are wrong and nothing else shows it: the file must hold
    log_p_aug or declare augmented=False (or --not-augmented)."""
    aldp = load_aldp("implicit")
    rng = np.random.default_rng(5)
    x, _ = _samples(aldp, 200, rng)
    log_q = rng.normal(size=200)
    arrays = {"x": x, "log_q": log_q, "u": -log_q + 0.3 * rng.normal(size=200)}
    a = np.zeros((200, 1, 22, 3))

    def run(name: str, *options: str, **extra) -> int:
        np.savez(tmp_path / name, **arrays, **extra)
        return main(["free-energy", str(tmp_path / name), *options, "--out", str(tmp_path / name[:-4])])

    with pytest.raises(SystemExit, match=r"has no log_p_aug: .* augmented=False in the file .*--not-augmented"):
        run("plain.npz")
    with pytest.raises(SystemExit, match="holds augmented variables a but no log_p_aug"):
        run("with_a.npz", a=a)
    with pytest.raises(SystemExit, match="says augmented=False but holds augmented variables a"):
        run("contradiction.npz", a=a, augmented=False)
    with pytest.raises(SystemExit, match="says augmented=True, but --not-augmented was given"):
        run("augmented.npz", "--not-augmented", augmented=True)
    # declared non-augmented (in the file or on the command line): the same answer as log_p_aug = 0
    assert run("zeros.npz", log_p_aug=np.zeros(200)) == 0
    assert run("declared.npz", augmented=False) == 0
    assert run("flag.npz", "--not-augmented") == 0
    values = [
        json.loads((tmp_path / n / "summary.json").read_text())["delta_f_kT"] for n in ("zeros", "declared", "flag")
    ]
    assert values[0] == values[1] == values[2]


def test_options_are_checked_before_any_work(tmp_path, capsys):
    aldp = load_aldp("implicit")
    x, _ = _samples(aldp, 100, np.random.default_rng(6))
    log_q = np.zeros(100)
    np.savez(tmp_path / "samples.npz", x=x, log_q=log_q, u=np.zeros(100), log_p_aug=np.zeros(100))
    (tmp_path / "a_file").write_text("")
    cases = {
        ("--out", str(tmp_path / "a_file")): "is an existing file, not a directory",
        ("--bins", "0"): "must be a positive integer, got 0",
        ("--umbrella-cache", str(tmp_path / "missing")): "does not exist",
        ("--umbrella-cache", str(tmp_path)): "has no profile.npz",
        ("--n-bootstrap", "1"): "0 (no bootstrap) or at least 2",
    }
    for option, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            main(["free-energy", str(tmp_path / "samples.npz"), *option])
        assert exit_info.value.code == 2  # argparse's usage error, before anything is computed
        err = capsys.readouterr().err
        assert f"argument {option[0]}: " in err and message in err, err


def test_summary_json_is_strict_json_when_a_number_is_nan(tmp_path):
    aldp = load_aldp("implicit")
    rng = np.random.default_rng(7)
    x, _ = _samples(aldp, 200, rng)
    log_q = rng.normal(size=200)
    np.savez(tmp_path / "samples.npz", x=x, log_q=log_q, u=-log_q, log_p_aug=np.zeros(200))
    centers = np.linspace(-np.pi, np.pi, 37)[:-1] + np.pi / 36
    nan = np.nan  # an umbrella cache whose combined error is undefined (one repeat)
    flat = np.zeros(36)
    np.savez(
        tmp_path / "profile.npz", centers=centers, f=flat, df=flat, delta_f=4.0, block_stderr=nan, ns_per_window=1.0
    )
    argv = ["free-energy", str(tmp_path / "samples.npz"), "--umbrella-cache", str(tmp_path)]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    summary = _strict_json(tmp_path / "out" / "summary.json")
    assert summary["umbrella_block_stderr_kT"] is None and summary["umbrella_delta_f_kT"] == 4.0

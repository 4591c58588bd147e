"""Torsions, states and the torsion free-energy table of bgflow_se3.workflow.states."""

from __future__ import annotations

import math
import warnings

import mdtraj
import numpy as np
import pytest
import torch

from bgflow_se3.analysis import evaluate_dipeptide
from bgflow_se3.analysis.dihedrals import phi_psi
from bgflow_se3.energy.base import Energy
from bgflow_se3.geometry import set_torsion, torsion_angle
from bgflow_se3.systems import load_aldp
from bgflow_se3.systems.aldp import PHI_ATOMS, PSI_ATOMS
from bgflow_se3.workflow import (
    Torsion,
    TorsionState,
    all_of,
    peptide_torsions,
    resolve_torsion,
    state_free_energies,
    torsion_free_energies,
    torsion_values,
)
from tests.train._helpers import FixedSamples

CHAIN_BONDS = [(0, 1), (1, 2), (2, 3), (3, 4)]
T1, T2 = Torsion("t1", (0, 1, 2, 3)), Torsion("t2", (1, 2, 3, 4))


@pytest.fixture(scope="module")
def aldp():
    return load_aldp("implicit")


def _aldp_with_torsions(aldp, phi, psi):
    bonds = [(a.index, b.index) for a, b in aldp.topology.bonds()]
    x0 = torch.tensor(aldp.positions_nm, dtype=torch.float64)[None].repeat(len(phi), 1, 1)
    x = set_torsion(x0, bonds, PHI_ATOMS, torch.as_tensor(phi, dtype=torch.float64))
    return set_torsion(x, bonds, PSI_ATOMS, torch.as_tensor(psi, dtype=torch.float64))


def _chain(t1, t2):
    """A five-atom chain (nm) with torsions t1 (atoms 0-3) and t2 (atoms 1-4) set, shape (n, 5, 3)."""
    base = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [1.0, 0.0, 2.0]])
    x = base.double()[None].repeat(len(t1), 1, 1) * 0.15
    x = set_torsion(x, CHAIN_BONDS, T1.atoms, torch.as_tensor(t1, dtype=torch.float64))
    return set_torsion(x, CHAIN_BONDS, T2.atoms, torch.as_tensor(t2, dtype=torch.float64))


def test_peptide_torsions_of_aldp_are_its_phi_and_psi(aldp):
    expected = [Torsion("phi1", PHI_ATOMS), Torsion("psi1", PSI_ATOMS)]
    assert peptide_torsions(aldp.topology) == expected
    assert peptide_torsions(mdtraj.Topology.from_openmm(aldp.topology)) == expected


def test_a_topology_without_backbone_asks_for_torsions_by_hand():
    top = mdtraj.Topology()
    residue = top.add_residue("MOL", top.add_chain())
    for i in range(4):
        top.add_atom(f"C{i}", mdtraj.element.carbon, residue)
    with pytest.raises(ValueError, match=r"Torsion\("):
        peptide_torsions(top)


def test_torsion_values_have_mdtraj_sign_on_aldp(aldp):
    rng = np.random.default_rng(1)
    phi, psi = rng.uniform(-3.1, 3.1, 16), rng.uniform(-3.1, 3.1, 16)
    x = _aldp_with_torsions(aldp, phi, psi)
    values = torsion_values(x, peptide_torsions(aldp.topology))
    md_phi, md_psi = phi_psi(aldp.topology, x)
    np.testing.assert_allclose(values, np.stack([phi, psi], 1), atol=1e-9)
    np.testing.assert_allclose(values, np.stack([md_phi, md_psi], 1), atol=1e-5)


def test_ranges_wrap_across_pi_and_minus_pi_is_pi():
    wrap = TorsionState(T1, ((2.5, -2.5),))
    angles = np.array([-math.pi, -3.0, -2.5, -2.4, 0.0, 2.5, 2.6, math.pi])
    assert wrap.contains(angles).tolist() == [True, True, True, False, False, False, True, True]
    union = TorsionState(T1, ((-1.0, 0.0), (1.0, 2.0)))
    assert union.contains(np.array([-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.1])).tolist() == [
        False,
        True,
        True,
        False,
        False,
        True,
        True,
        False,
    ]
    whole = TorsionState(T1, ((-math.pi, math.pi),))
    assert whole.contains(angles).all()
    with pytest.raises(ValueError):
        TorsionState(T1, ((1.0, 1.0),))
    with pytest.raises(ValueError):
        TorsionState(T1, ((0.0, 4.0),))
    # called on coordinates, and combined
    x = _chain([0.5, -0.5, 2.8], [0.3, 0.3, -0.3])
    assert wrap(x).tolist() == [False, False, True]
    positive_t2 = TorsionState(T2, ((0.0, math.pi),))
    assert all_of(TorsionState(T1, ((0.0, math.pi),)), positive_t2)(x).tolist() == [True, False, False]


def _uniform_chain_samples(n, a, b, seed=0):
    """Torsion t1 uniform on the circle (constant log q), u = a where t1 > 0 and b elsewhere: exact dF = a - b.
    t2 stays in (0.5, 2): its state t2 <= 0 holds no sample."""
    rng = np.random.default_rng(seed)
    t1, t2 = rng.uniform(-math.pi, math.pi, n), rng.uniform(0.5, 2.0, n)
    x = _chain(t1, t2).numpy()
    u = np.where(t1 > 0, a, b)
    return x, np.full(n, -math.log(2 * math.pi)), u


def test_torsion_free_energy_matches_the_analytic_value_and_keeps_unreached_torsions():
    a, b = 1.3, 0.2
    x, log_q, u = _uniform_chain_samples(4000, a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t1, t2 = torsion_free_energies(x, log_q, u, [T1, T2], n_bootstrap=50)
    assert t1["name"] == "t1" and t1["atoms"] == [0, 1, 2, 3]
    assert t1["stderr_kT"] > 0
    assert abs(t1["dF_positive_minus_negative_kT"] - (a - b)) < 3 * t1["stderr_kT"]
    assert t1["reliable"] and not t1["warning"] and not t1["error"]
    assert t1["effective_samples_positive"] > 1000 and t1["effective_samples_negative"] > 1000
    assert math.isnan(t1["pareto_k_positive"]) and math.isnan(t1["pareto_k_negative"])  # equal weights: no tail
    # t2 <= 0 is never reached: reliable False, an error naming the torsion and the state, no exception
    assert t2["reliable"] is False and math.isnan(t2["dF_positive_minus_negative_kT"])
    assert "t2" in t2["error"] and "t2 <= 0" in t2["error"]
    assert t2["effective_samples_negative"] == 0.0


def test_state_free_energies_for_named_states_and_pairs():
    x, log_q, u = _uniform_chain_samples(2000, 0.7, 0.0, seed=3)
    states = {
        "up": TorsionState(T1, ((0.0, math.pi),)),
        "down": TorsionState(T1, ((-math.pi, 0.0),)),
        "never": TorsionState(T2, ((-math.pi, 0.0),)),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = state_free_energies(x, log_q, u, states, n_bootstrap=20)
        same = torsion_free_energies(x, log_q, u, [T1], n_bootstrap=20)[0]
    assert [(e["state_a"], e["state_b"]) for e in table] == [("up", "down"), ("up", "never"), ("down", "never")]
    assert table[0]["dF_kT"] == same["dF_positive_minus_negative_kT"] and table[0]["reliable"]
    assert not table[1]["reliable"] and "'never'" in table[1]["error"]
    with pytest.raises(ValueError, match="unknown state"):
        state_free_energies(x, log_q, u, states, pairs=[("up", "sideways")])


class PhiStep(Energy):
    """u = 2 where phi > 0, 0 elsewhere, plus a small psi term: a target the flagship evaluation can score."""

    def __init__(self) -> None:
        super().__init__(22, 3, on_error="inf")

    def _reduced_energy(self, x):
        phi, psi = torsion_angle(x, PHI_ATOMS), torsion_angle(x, PSI_ATOMS)
        return torch.where(phi > 0, 2.0, 0.0).to(x.dtype) + 0.3 * torch.cos(psi)


@pytest.mark.parametrize("n", [600, 120])  # enough samples (reliable), and too few (the warning)
def test_phi_entry_equals_the_flagship_evaluation(aldp, tmp_path, n):
    rng = np.random.default_rng(n)
    x = _aldp_with_torsions(aldp, rng.uniform(-3.1, 3.1, n), rng.uniform(-3.1, 3.1, n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flagship = evaluate_dipeptide(FixedSamples(x), PhiStep(), aldp.topology, n, tmp_path, n_bootstrap=30)
        saved = np.load(tmp_path / "samples.npz")
        phi = torsion_free_energies(x, saved["log_q"], saved["u"], peptide_torsions(aldp.topology), n_bootstrap=30)[0]
    assert phi["name"] == "phi1"
    assert phi["dF_positive_minus_negative_kT"] == flagship["dF_phi_positive_minus_negative_kT"]
    assert phi["stderr_kT"] == flagship["dF_stderr_kT"]
    assert phi["reliable"] == flagship["dF_reliable"]
    assert phi["effective_samples_positive"] == flagship["effective_samples_phi_positive"]
    assert phi["effective_samples_negative"] == flagship["effective_samples_phi_negative"]
    assert phi["pareto_k_positive"] == flagship["pareto_k_phi_positive"]
    assert phi["pareto_k_negative"] == flagship["pareto_k_phi_negative"]
    assert bool(phi["warning"]) == bool(flagship["dF_warning"])
    assert flagship["dF_reliable"] == (n == 600)


def test_resolve_torsion_takes_a_name_or_atoms(aldp):
    assert resolve_torsion("phi1", aldp.topology) == Torsion("phi1", (4, 6, 8, 14))
    assert resolve_torsion("chi=1,4,6,8", aldp.topology) == Torsion("chi", (1, 4, 6, 8))
    assert resolve_torsion(" 1, 4, 6, 8 ", aldp.topology, 22).atoms == (1, 4, 6, 8)
    with pytest.raises(ValueError, match="no such named torsion .*named: phi1, psi1"):
        resolve_torsion("phi7", aldp.topology)
    with pytest.raises(ValueError, match="four 0-based integers"):
        resolve_torsion("chi=1,2,3", aldp.topology)
    with pytest.raises(ValueError, match="four distinct"):
        resolve_torsion("1,1,2,3", aldp.topology)
    with pytest.raises(ValueError, match="names atom 40, but the molecule has 22"):
        resolve_torsion("x=1,2,3,40", aldp.topology, 22)

"""D samples must not enter the L molecule's phi states: a 'flow' that makes both enantiomers."""

import json
import math
import warnings

import numpy as np
import torch

from bgflow_se3.analysis import evaluate_dipeptide
from bgflow_se3.analysis.ramachandran import periodic_histogram
from bgflow_se3.cli import main
from bgflow_se3.energy import TorchForceField
from bgflow_se3.sampling import minimise
from bgflow_se3.sampling.torsion_setting import set_torsion, torsion_angle
from bgflow_se3.systems import load_aldp
from bgflow_se3.systems.aldp import PHI_ATOMS, PSI_ATOMS, is_l_form
from tests.train._helpers import FixedSamples


def test_d_samples_are_excluded_from_the_l_free_energy(tmp_path):
    aldp = load_aldp("implicit")
    energy = TorchForceField.from_system(aldp.system, 300.0)
    bonds = [(a.index, b.index) for a, b in aldp.topology.bonds()]
    x0 = torch.tensor(aldp.positions_nm)[None]
    gen = torch.Generator().manual_seed(0)
    starts = [(phi, psi) for phi in (-2.6, -1.4, 1.0) for psi in (-0.7, 2.7)]
    l_form = torch.cat([set_torsion(set_torsion(x0, bonds, PHI_ATOMS, a), bonds, PSI_ATOMS, b) for a, b in starts])
    l_form = minimise(energy, l_form.repeat(5, 1, 1), 50) + 0.002 * torch.randn(30, 22, 3, generator=gen)
    d_form = -l_form  # mirror images: equal energies, phi of the opposite sign
    x = torch.cat([l_form, d_form])
    assert is_l_form(l_form).all() and not is_l_form(d_form).any()
    u = energy(x).numpy()
    phi = torsion_angle(x, PHI_ATOMS).numpy()
    is_l = is_l_form(x).numpy()

    def delta_f(mask):
        pos, neg = mask & (phi > 0), mask & (phi <= 0)
        return -(np.logaddexp.reduce(-u[pos]) - np.logaddexp.reduce(-u[neg]))

    # a reference (phi, psi) histogram equal to the reweighted L samples': its reweighted KL must vanish
    psi = torsion_angle(x, PSI_ATOMS).numpy()
    reference = periodic_histogram(np.stack([phi, psi], 1)[is_l], 16, np.exp(-(u[is_l] - u[is_l].min())))
    results = {}
    for restrict in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results[restrict] = evaluate_dipeptide(
                FixedSamples(x),
                energy,
                aldp.topology,
                len(x),
                tmp_path / str(restrict),
                n_bootstrap=0,
                restrict_to_l=restrict,
                min_effective_samples=1.0,
                umbrella_ramachandran=reference,
            )
    assert results[True]["d_chirality_fraction"] == 0.5
    # samples.npz says the flow is not augmented, and the CLI reads it with the same L restriction
    saved = np.load(tmp_path / "True" / "samples.npz")
    assert saved["augmented"].shape == () and not saved["augmented"] and not saved["log_p_aug"].any()
    assert np.isinf(saved["u"][~is_l]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["free-energy", str(tmp_path / "True" / "samples.npz"), "--out", str(tmp_path / "cli")]) == 0
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["mirror_fraction"] == 0.5 and summary["n_infinite_energy"] == 0
    assert abs(results[True]["kl_ramachandran_umbrella_reweighted"]) < 1e-9
    assert results[False]["kl_ramachandran_umbrella_reweighted"] > 0.05  # the D copies sit at mirrored angles
    assert results[True]["kl_ramachandran_umbrella"] > 0.05  # unweighted: every sample counts alike
    assert math.isclose(results[True]["dF_phi_positive_minus_negative_kT"], delta_f(is_l), abs_tol=1e-6)
    # counted with their own phi, the D copies pull the estimate towards 0 (mirror: phi -> -phi)
    assert math.isclose(results[False]["dF_phi_positive_minus_negative_kT"], delta_f(np.ones_like(is_l)), abs_tol=1e-6)
    assert (
        abs(results[True]["dF_phi_positive_minus_negative_kT"] - results[False]["dF_phi_positive_minus_negative_kT"])
        > 1.0
    )

"""The whole workflow at smoke sizes: the results.json contract, the run folder (no overwrite, resume, mismatch),
an unreached state refused before training, and the handedness restriction of the evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bgflow_se3.analysis.stereo import same_handedness
from bgflow_se3.energy import TorchForceField
from bgflow_se3.errors import RunFolderError, UnreachedStateError
from bgflow_se3.systems import load_aldp
from bgflow_se3.workflow import TorsionState, check_molecule, peptide_torsions
from bgflow_se3.workflow.evaluation import evaluate_molecule
from bgflow_se3.workflow.pipeline import run_workflow
from bgflow_se3.workflow.settings import WorkflowSettings, flow_config
from tests.train._helpers import FixedSamples

CONTRACT_KEYS = {"name", "atoms", "dF_positive_minus_negative_kT", "stderr_kT", "reliable"}


@pytest.fixture(scope="module")
def aldp_molecule():
    aldp = load_aldp("implicit")
    return check_molecule(aldp.system, aldp.topology, aldp.positions_nm)


@pytest.fixture(scope="module")
def smoke_run(aldp_molecule, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    results = run_workflow(aldp_molecule, out, settings=WorkflowSettings.smoke(), progress=False, say=lambda _: None)
    return out, results


def test_results_keep_the_contract(smoke_run):
    out, results = smoke_run
    saved = json.loads((out / "results.json").read_text())
    (entry,) = saved["torsion_free_energies"]  # aldp: one residue, its phi
    assert CONTRACT_KEYS <= set(entry)
    assert entry["name"] == "phi1" and entry["atoms"] == [4, 6, 8, 14]
    assert isinstance(entry["reliable"], bool) and isinstance(entry["dF_positive_minus_negative_kT"], float)
    assert saved["coverage"]["seeded_torsions"] == ["phi1", "psi1"]
    assert saved["coverage"]["frames_per_state"]["phi1 > 0"] > 0
    assert math.isfinite(saved["ml_train_nll"]) and math.isfinite(saved["ml_validation_nll"])
    for name in ("samples.npz", "samples.dcd", "topology.pdb", "torsion_profiles.png", "ramachandran.png"):
        assert (out / name).is_file(), name
    for stage in ("ml", "fab"):
        assert (out / stage / "checkpoint.pt").is_file()
    assert results["torsion_free_energies"][0]["atoms"] == entry["atoms"]


def test_a_folder_holding_a_run_is_not_overwritten(smoke_run, aldp_molecule):
    out, _ = smoke_run
    before = (out / "results.json").read_bytes()
    with pytest.raises(RunFolderError, match="already holds a run"):
        run_workflow(aldp_molecule, out, settings=WorkflowSettings.smoke(), progress=False, say=lambda _: None)
    with pytest.raises(RunFolderError, match="ml_iterations: 20 in the folder, 21 now"):
        settings = WorkflowSettings.smoke(ml_iterations=21)
        run_workflow(aldp_molecule, out, settings=settings, resume=True, progress=False, say=lambda _: None)
    assert (out / "results.json").read_bytes() == before


def test_resume_reuses_finished_stages_and_reproduces_the_run(smoke_run, aldp_molecule, tmp_path):
    out, first = smoke_run
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(out, copy)
    (copy / "results.json").unlink()
    (copy / "fab" / "checkpoint.pt").unlink()  # as if killed before FAB wrote a checkpoint
    frames_before = (copy / "coverage" / "frames.npy").stat().st_mtime_ns
    again = run_workflow(
        aldp_molecule, copy, settings=WorkflowSettings.smoke(), resume=True, progress=False, say=lambda _: None
    )
    assert (copy / "coverage" / "frames.npy").stat().st_mtime_ns == frames_before  # loaded, not recomputed
    a, b = np.load(out / "samples.npz"), np.load(copy / "samples.npz")
    assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["log_q"], b["log_q"])
    assert again["torsion_free_energies"][0]["dF_positive_minus_negative_kT"] == pytest.approx(
        first["torsion_free_energies"][0]["dF_positive_minus_negative_kT"], nan_ok=True
    )


def test_a_state_no_replica_reaches_is_refused_before_training(aldp_molecule, tmp_path):
    phi = peptide_torsions(aldp_molecule.topology)[0]
    nowhere = TorsionState(phi, ((3.1415, math.pi),), label="phi1 at the eclipsed edge")
    with pytest.raises(UnreachedStateError, match="'nowhere'"):
        run_workflow(
            aldp_molecule,
            tmp_path,
            states={"nowhere": nowhere, "all": TorsionState(phi, ((-math.pi, math.pi),))},
            settings=WorkflowSettings.smoke(),
            progress=False,
            say=lambda _: None,
        )
    assert not (tmp_path / "ml").exists()


def test_evaluation_gives_the_other_handedness_weight_zero(aldp_molecule, tmp_path):
    x = torch.tensor(np.array(aldp_molecule.positions_nm))[None]
    x = x - x.mean(1, keepdim=True)
    samples = torch.cat([x.repeat(8, 1, 1), (-x).repeat(8, 1, 1)])  # mirror images: same force-field energy
    energy = TorchForceField.from_system(aldp_molecule.system, 300.0)
    scores = evaluate_molecule(
        FixedSamples(samples),
        energy,
        aldp_molecule.topology,
        same_handedness(aldp_molecule.topology, aldp_molecule.positions_nm),
        peptide_torsions(aldp_molecule.topology)[:1],
        tmp_path,
        16,
        n_bootstrap=0,
    )
    assert scores["other_handedness_fraction"] == 0.5
    saved = np.load(tmp_path / "samples.npz")
    assert np.isfinite(saved["u"][:8]).all() and np.isinf(saved["u"][8:]).all()
    assert scores["effective_samples"] == pytest.approx(8.0)


def test_flow_width_follows_the_molecule():
    assert [flow_config(n)["hidden"] for n in (22, 42, 62, 400)] == [128, 256, 384, 512]
    assert WorkflowSettings(hidden=64).flow_config(62)["hidden"] == 64
    assert WorkflowSettings(n_bins=16).flow_config(42)["n_bins"] == 16 and flow_config(42)["n_bins"] == 8
    with pytest.raises(ValueError, match="n_bins=1"):
        WorkflowSettings(n_bins=1)
    with pytest.raises(ValueError, match="ml_iterations=0"):
        WorkflowSettings(ml_iterations=0)
    with pytest.raises(ValueError, match="fab_buffer_batches"):
        WorkflowSettings(fab_buffer_batches=2, fab_updates=4)

"""The cached MD recipe: frames of the right shape, readable by mdtraj, and a clear error when data are missing."""

import mdtraj
import numpy as np
import pytest

from bgflow_se3.simulate import load_aldp_md, run_aldp_md


def test_run_and_load_md(tmp_path):
    out = run_aldp_md("vacuum", 0.002, tmp_path / "md", save_every_ps=0.5, equilibration_ps=0.2)
    frames = load_aldp_md(folder=out)
    assert frames.shape == (4, 22, 3) and frames.dtype == np.float32 and np.isfinite(frames).all()
    trajectory = mdtraj.load(str(out / "trajectory.dcd"), top=str(out / "topology.pdb"))
    np.testing.assert_allclose(trajectory.xyz, frames, atol=1e-3)
    gaps = np.linalg.norm(frames[:, 1:] - frames[:, :-1], axis=-1)
    assert gaps.min() > 0.05  # nm: no two atoms collapsed onto each other
    with pytest.raises(FileNotFoundError, match="systems/aldp/md.py"):
        load_aldp_md(folder=tmp_path / "missing")

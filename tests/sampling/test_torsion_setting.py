import mdtraj
import numpy as np
import pytest
import torch

from bgflow_se3.sampling.torsion_setting import moving_side, set_torsion, torsion_angle
from bgflow_se3.systems import load_aldp
from bgflow_se3.systems.aldp import CHIRAL_CENTRE_ATOMS, PHI_ATOMS, PSI_ATOMS, is_l_form


@pytest.fixture(scope="module")
def aldp():
    return load_aldp("implicit")


def test_backbone_indices_match_mdtraj(aldp):
    traj = mdtraj.Trajectory(aldp.positions_nm[None], aldp.mdtraj_topology)
    assert tuple(mdtraj.compute_phi(traj)[0][0]) == PHI_ATOMS
    assert tuple(mdtraj.compute_psi(traj)[0][0]) == PSI_ATOMS
    names = [aldp.mdtraj_topology.atom(i).name for i in CHIRAL_CENTRE_ATOMS]
    assert names == ["N", "CA", "C", "CB"]


def test_set_torsion_sets_phi_and_psi_and_keeps_the_covalent_geometry(aldp):
    bonds = [(a.index, b.index) for a, b in aldp.topology.bonds()]
    x = torch.tensor(aldp.positions_nm)[None].repeat(3, 1, 1)
    targets = torch.tensor([1.0, -1.4, 3.0], dtype=torch.float64)
    y = set_torsion(set_torsion(x, bonds, PHI_ATOMS, targets), bonds, PSI_ATOMS, -targets)
    traj = mdtraj.Trajectory(y.numpy(), aldp.mdtraj_topology)
    np.testing.assert_allclose(mdtraj.compute_phi(traj)[1][:, 0], targets.numpy(), atol=1e-6)
    np.testing.assert_allclose(mdtraj.compute_psi(traj)[1][:, 0], -targets.numpy(), atol=1e-6)
    i, j = torch.tensor(bonds).T
    torch.testing.assert_close((y[:, i] - y[:, j]).norm(dim=-1), (x[:, i] - x[:, j]).norm(dim=-1))
    torch.testing.assert_close(torsion_angle(y, PHI_ATOMS), targets)
    assert is_l_form(y).all() and not is_l_form(-y).any()  # a rotation keeps the chirality, a mirror flips it


def test_moving_side_refuses_ring_bonds():
    assert moving_side(4, [(0, 1), (1, 2), (2, 3)], 1, 2) == [2, 3]
    with pytest.raises(ValueError, match="ring"):
        moving_side(4, [(0, 1), (1, 2), (2, 3), (3, 0)], 1, 2)

"""phi/psi through mdtraj against an independent numpy dihedral formula on the shipped alanine dipeptide."""

import numpy as np
import pytest
import torch

from bgflow_se3.analysis import backbone_dihedrals, dihedral_angles, phi_psi
from bgflow_se3.systems import load_aldp


def _numpy_dihedral(x: np.ndarray, i: int, j: int, k: int, l: int) -> np.ndarray:
    """IUPAC dihedral of atoms i-j-k-l, radians: atan2(|b2| b1 . (b2 x b3), (b1 x b2) . (b2 x b3))."""
    b1, b2, b3 = x[:, j] - x[:, i], x[:, k] - x[:, j], x[:, l] - x[:, k]
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    y = np.linalg.norm(b2, axis=-1) * np.sum(b1 * n2, axis=-1)
    return np.arctan2(y, np.sum(n1 * n2, axis=-1))


@pytest.fixture(scope="module")
def aldp():
    return load_aldp("vacuum")


@pytest.fixture
def perturbed(aldp):
    rng = np.random.default_rng(0)
    return aldp.positions_nm[None] + 0.03 * rng.normal(size=(64, 22, 3))


def test_phi_psi_match_numpy_formula(aldp, perturbed):
    phi, psi = phi_psi(aldp.topology, perturbed)
    # alanine dipeptide: phi = C(ACE) - N - CA - C, psi = N - CA - C - N(NME)
    names = {(a.residue.name, a.name): a.index for a in aldp.topology.atoms()}
    c0, n, ca, c, n2 = (names[k] for k in [("ACE", "C"), ("ALA", "N"), ("ALA", "CA"), ("ALA", "C"), ("NME", "N")])
    for ours, exact in (
        (phi, _numpy_dihedral(perturbed, c0, n, ca, c)),
        (psi, _numpy_dihedral(perturbed, n, ca, c, n2)),
    ):
        assert np.all(np.abs(ours) <= np.pi + 1e-6)
        np.testing.assert_allclose(np.angle(np.exp(1j * (ours - exact))), 0.0, atol=1e-4)  # equal modulo 2 pi
    assert phi.shape == psi.shape == (64,) and phi.std() > 0.05  # the test sees varied angles


def test_topologies_and_tensor_input_agree(aldp, perturbed):
    phi, psi = phi_psi(aldp.topology, perturbed)
    phi_t, psi_t = phi_psi(aldp.mdtraj_topology, torch.from_numpy(perturbed))
    np.testing.assert_allclose(phi_t, phi, atol=1e-6)
    np.testing.assert_allclose(psi_t, psi, atol=1e-6)
    both = backbone_dihedrals(aldp.topology, perturbed)
    np.testing.assert_allclose(dihedral_angles(perturbed, both.phi_atoms, aldp.topology)[:, 0], phi, atol=1e-6)


def test_bad_coordinates_raise(aldp):
    with pytest.raises(ValueError, match="shape"):
        phi_psi(aldp.topology, np.zeros((3, 21, 3)))
    x = aldp.positions_nm[None].copy()
    x[0, 3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        phi_psi(aldp.topology, x)
    with pytest.raises(TypeError, match="topology"):
        phi_psi("not a topology", aldp.positions_nm)

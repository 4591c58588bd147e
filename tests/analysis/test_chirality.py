"""Alpha-carbon chirality: the shipped L-alanine is L, its mirror image is D, rotations and shifts change nothing."""

import numpy as np
import pytest
import torch

from bgflow_se3.analysis import chiral_centres, chirality_mismatch, chirality_signs, d_chirality_fraction
from bgflow_se3.systems import load_aldp
from tests.conftest import random_rotation


@pytest.fixture(scope="module")
def aldp():
    return load_aldp("vacuum")


def test_l_alanine_is_l_and_its_mirror_is_d(aldp):
    names = {(a.residue.name, a.name): a.index for a in aldp.topology.atoms()}
    expected = [names[("ALA", name)] for name in ("N", "CA", "C", "CB")]
    np.testing.assert_array_equal(chiral_centres(aldp.topology), [expected])
    rng = np.random.default_rng(0)
    x = aldp.positions_nm[None] + 0.01 * rng.normal(size=(32, 22, 3))
    rotation = random_rotation(3, torch.Generator().manual_seed(0)).numpy()
    moved = x @ rotation.T + np.array([1.0, -2.0, 0.5])
    mirrored = x * np.array([-1.0, 1.0, 1.0])  # a reflection: the D enantiomer
    assert d_chirality_fraction(aldp.topology, x) == 0.0
    assert d_chirality_fraction(aldp.mdtraj_topology, torch.from_numpy(moved)) == 0.0
    assert d_chirality_fraction(aldp.topology, mirrored) == 1.0
    mixed = np.concatenate([x[:24], mirrored[24:]])
    assert d_chirality_fraction(aldp.topology, mixed) == pytest.approx(0.25)
    np.testing.assert_array_equal(chirality_signs(aldp.topology, mixed)[:, 0], [1.0] * 24 + [-1.0] * 8)


def test_bad_input_is_refused(aldp):
    with pytest.raises(ValueError, match="shape"):
        chirality_signs(aldp.topology, aldp.positions_nm)


def test_chirality_mismatch_is_relative_to_the_reference_structure(aldp):
    rng = np.random.default_rng(1)
    x = aldp.positions_nm[None] + 0.01 * rng.normal(size=(8, 22, 3))
    mixed = np.concatenate([x[:6], -x[6:]])  # 6 L, 2 D
    expected = np.arange(8) >= 6
    np.testing.assert_array_equal(chirality_mismatch(aldp.topology, mixed), expected)  # None: L
    np.testing.assert_array_equal(chirality_mismatch(aldp.topology, mixed, aldp.positions_nm), expected)
    np.testing.assert_array_equal(chirality_mismatch(aldp.topology, mixed, -aldp.positions_nm), ~expected)
    planar = aldp.positions_nm.copy()
    planar[10] = planar[8]  # CB on CA: no handedness (signed volume exactly 0)
    with pytest.raises(ValueError, match="planar at a chiral centre"):
        chirality_mismatch(aldp.topology, mixed, planar)

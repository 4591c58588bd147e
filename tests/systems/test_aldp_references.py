"""The cached umbrella profile loads back, and a missing one is an error naming the recipe (or None on request)."""

import numpy as np
import pytest

from bgflow_se3.simulate import load_aldp_md
from bgflow_se3.systems.aldp_references import load_profile


def test_load_profile_round_trip_and_missing(tmp_path):
    centers, f = np.linspace(-3.0, 3.0, 6), np.arange(6.0)
    np.savez(tmp_path / "profile.npz", centers=centers, f=f, delta_f=4.0)
    loaded = load_profile(tmp_path)
    np.testing.assert_array_equal(loaded[0], centers)
    np.testing.assert_array_equal(loaded[1], f)
    with pytest.raises(FileNotFoundError, match="umbrella.py"):
        load_profile(tmp_path / "missing")
    with pytest.warns(UserWarning, match="umbrella.py"):
        assert load_profile(tmp_path / "missing", missing_ok=True) is None
    with pytest.warns(UserWarning, match="md.py"):
        assert load_aldp_md(folder=tmp_path / "missing", missing_ok=True) is None


def test_the_shipped_profile_is_a_usable_reference(tmp_path):
    from bgflow_se3.systems.aldp_references import reference_profile, shipped_profile

    centers, f = shipped_profile("implicit")
    assert centers.shape == f.shape == (36,) and np.isfinite(f).all() and f.min() == 0.0
    alpha_l = f[(centers > 0.5) & (centers < 1.5)].min()
    assert 1.0 < alpha_l < 6.0  # the phi > 0 basin lies a few kT above the phi < 0 minimum
    fallback = reference_profile(tmp_path)  # an empty cache falls back to the shipped profile
    np.testing.assert_array_equal(fallback[1], f)
    with pytest.raises(FileNotFoundError):
        shipped_profile("vacuum")


def test_the_shipped_ramachandran_reference_is_a_usable_reference(tmp_path):
    """A normalised 64 x 64 (phi, psi) histogram whose phi > 0 mass agrees with the shipped profile's."""
    from bgflow_se3.systems.aldp_references import reference_ramachandran, shipped_profile, shipped_ramachandran

    p = shipped_ramachandran("implicit")
    assert p.shape == (64, 64) and (p >= 0).all() and np.isclose(p.sum(), 1.0)
    phi = -np.pi + (np.arange(64) + 0.5) * 2 * np.pi / 64
    positive = p[phi > 0].sum()
    assert 0.005 < positive < 0.1  # alpha_L and its neighbours: a few kT above the phi < 0 basins
    # the C7eq / beta basin (phi < 0, psi > 0) holds most of the mass, as every force field of this family has it
    psi = phi
    assert p[np.ix_(phi < 0, psi > 0)].sum() > 0.5
    centers, f = shipped_profile("implicit")
    profile_positive = np.exp(-f[centers > 0]).sum() / np.exp(-f).sum()
    assert abs(np.log(positive / profile_positive)) < 0.1  # the same run, binned two ways
    np.testing.assert_array_equal(reference_ramachandran(tmp_path), p)  # an empty cache falls back to it
    with pytest.raises(FileNotFoundError):
        shipped_ramachandran("vacuum")

"""The LJ pair conventions (bgflow's ordered sum, E-NF eq. 21's unique sum) by hand; stale caches are caught."""

import json

import numpy as np
import pytest
import torch

from bgflow_se3.energy import LennardJonesEnergy
from bgflow_se3.simulate.particle_mcmc import (
    load_particle_data,
    particle_energy,
    stale_cache_reason,
    target_signature,
)


def _by_hand(x, pair_factor):
    """pair_factor * sum_{i != j} ((r_m/d)^12 - 2 (r_m/d)^6) + 0.5 sum_i |x_i - com|^2, eps = r_m = tau = 1.

    pair_factor 1: bgflow's LennardJonesPotential (ordered pairs); 1/2: E-NF eq. 21 (eps / (2 tau) sum_{i,j}).
    """
    out = []
    for conf in x:
        n = len(conf)
        pair_sum = 0.0
        for i in range(n):
            for j in range(n):
                if i != j:
                    d = float((conf[i] - conf[j]).norm())
                    pair_sum += d**-12 - 2 * d**-6
        out.append(pair_factor * pair_sum + 0.5 * float((conf - conf.mean(0)).pow(2).sum()))
    return torch.tensor(out, dtype=torch.float64)


def test_lj_targets_match_the_reference_formulas(generator):
    x = 1.2 * torch.randn(2, 13, 3, generator=generator, dtype=torch.float64) + 5.0  # off-centre on purpose
    # the benchmark data's target is bgflow's convention; pair_sum="unique" is E-NF eq. 21
    torch.testing.assert_close(particle_energy("lj13")(x), _by_hand(x, 1.0), rtol=1e-10, atol=1e-8)
    unique = LennardJonesEnergy(13, pair_sum="unique")
    torch.testing.assert_close(unique(x), _by_hand(x, 0.5), rtol=1e-10, atol=1e-8)
    # a dimer at r_m is one bond of depth eps: -1 once (unique) or twice (ordered), plus 2 * 0.5 * 0.5^2
    dimer = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0]]], dtype=torch.float64)
    u = LennardJonesEnergy(2, pair_sum="unique")(dimer)
    torch.testing.assert_close(u, torch.tensor([-1.0 + 0.25], dtype=torch.float64))
    torch.testing.assert_close(LennardJonesEnergy(2)(dimer), torch.tensor([-2.0 + 0.25], dtype=torch.float64))
    assert particle_energy("lj55").pair_sum == "ordered"
    with pytest.raises(ValueError, match="pair_sum"):
        LennardJonesEnergy(13, pair_sum="both")


def test_openmm_lj_system_follows_the_pair_convention(generator):
    from bgflow_se3.energy import OpenMMEnergy
    from bgflow_se3.systems.lennard_jones import lennard_jones_system

    grid = torch.cartesian_prod(*[torch.arange(3, dtype=torch.float64)] * 3)[:13] * 1.1
    x = grid + 0.1 * torch.randn(4, 13, 3, generator=generator, dtype=torch.float64)
    lj = lennard_jones_system(13, pair_sum="unique")
    openmm_energy = OpenMMEnergy(lj.system, lj.temperature)
    try:
        torch.testing.assert_close(openmm_energy(x), LennardJonesEnergy(13, pair_sum="unique")(x), rtol=1e-6, atol=1e-9)
    finally:
        openmm_energy.close()


def _fake_cache(root, name, meta):
    folder = root / name
    folder.mkdir(parents=True)
    n, dim = {"dw4": (4, 2), "lj13": (13, 3)}[name]
    for split in ("train", "val", "test"):
        np.save(folder / f"{split}.npy", np.zeros((2, n, dim)))
    (folder / "meta.json").write_text(json.dumps(meta))


def test_cache_made_for_another_target_is_stale(tmp_path):
    # caches written before the target was recorded count as made with the default (ordered) targets
    _fake_cache(tmp_path, "lj13", {"system": "lj13"})
    _fake_cache(tmp_path, "dw4", {"system": "dw4"})
    assert stale_cache_reason("lj13", tmp_path) is None
    assert stale_cache_reason("dw4", tmp_path) is None
    assert load_particle_data("dw4", "test", cache_dir=tmp_path, make_if_missing=False).shape == (2, 4, 2)
    # a cache made for another target (here the unique-pair sum) is not used silently
    other = {"system": "lj13", "target": target_signature(LennardJonesEnergy(13, pair_sum="unique"))}
    (tmp_path / "lj13" / "meta.json").write_text(json.dumps(other))
    assert "unique" in stale_cache_reason("lj13", tmp_path)
    with pytest.raises(FileNotFoundError, match="made for the target"):
        load_particle_data("lj13", "test", cache_dir=tmp_path, make_if_missing=False)
    current = {"system": "lj13", "target": target_signature(particle_energy("lj13"))}
    (tmp_path / "lj13" / "meta.json").write_text(json.dumps(current))
    assert load_particle_data("lj13", "test", cache_dir=tmp_path, make_if_missing=False).shape == (2, 13, 3)

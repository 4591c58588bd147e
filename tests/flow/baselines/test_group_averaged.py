"""GroupAveragedFlow: exact E(d) x S_n invariance, the canonical-frame Jacobian, normalisation and the sampler."""

import math

import pytest
import torch

from bgflow_se3.flow import GroupAveragedFlow, com_free_gaussian_log_prob, sample_com_free_gaussian
from bgflow_se3.flow.baselines.noneq import random_rotations


def perturbed(n_atoms, dim, scale=0.1, seed=0, **kwargs):
    """A flow whose couplings are not the identity (zero-initialised heads would hide errors)."""
    torch.manual_seed(seed)
    flow = GroupAveragedFlow(n_atoms, dim, n_layers=4, hidden=16, **kwargs).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn_like(p))
    return flow


def reflect_some(rotations):
    """Turn the first half of a batch of rotations into improper ones (a reflection of the first axis)."""
    rotations = rotations.clone()
    rotations[: len(rotations) // 2, :, 0] *= -1
    return rotations


@pytest.mark.parametrize("dim,n_atoms", [(2, 4), (3, 4)])
def test_log_prob_is_invariant_under_rotations_reflections_permutations_and_translations(dim, n_atoms):
    flow = perturbed(n_atoms, dim, length_scale=1.5)
    with torch.no_grad():
        x, log_q = flow.sample(64)
        rot = reflect_some(random_rotations(64, dim, dtype=torch.float64))
        moved = torch.einsum("bde,bne->bnd", rot, x)[:, torch.randperm(n_atoms)] + torch.randn(64, 1, dim)
        torch.testing.assert_close(flow.log_prob(moved), log_q, atol=1e-8, rtol=0)


def test_a_permutation_subgroup_gives_invariance_under_that_subgroup_only():
    """Two identical pairs (0 1)(2 3): swaps within a pair leave log q unchanged, swapping across pairs does not."""
    swaps = torch.tensor([[0, 1, 2, 3], [1, 0, 2, 3], [0, 1, 3, 2], [1, 0, 3, 2]])
    flow = perturbed(4, 2, scale=0.3, permutations=swaps)
    assert flow.group_size == 8
    with torch.no_grad():
        x, log_q = flow.sample(64)
        torch.testing.assert_close(flow.log_prob(x[:, [1, 0, 3, 2]]), log_q, atol=1e-8, rtol=0)
        assert (flow.log_prob(x[:, [2, 1, 0, 3]]) - log_q).abs().max() > 1e-2


def test_without_reflections_a_chiral_density_tells_mirror_images_apart():
    flow = perturbed(4, 3, scale=0.3, reflections=False)
    with torch.no_grad():
        x, log_q = flow.sample(64)
        rot = random_rotations(64, 3, dtype=torch.float64)
        torch.testing.assert_close(flow.log_prob(torch.einsum("bde,bne->bnd", rot, x)), log_q, atol=1e-8, rtol=0)
        mirrored = x * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
        assert (flow.log_prob(mirrored) - log_q).abs().max() > 1e-2


@pytest.mark.parametrize("dim,n_atoms", [(2, 4), (3, 4)])
def test_internal_coordinates_round_trip(dim, n_atoms):
    flow = perturbed(n_atoms, dim)
    u = torch.randn(32, flow.n_internal, dtype=torch.float64)
    rot = random_rotations(32, dim, dtype=torch.float64)
    x = flow.from_internal(u, rot)
    torch.testing.assert_close(x.mean(1), torch.zeros(32, dim, dtype=torch.float64), atol=1e-12, rtol=0)
    back, _ = flow.internal_coordinates(x)
    torch.testing.assert_close(back, u, atol=1e-10, rtol=0)


def test_canonical_frame_jacobian_against_autograd_2d():
    """2D: (u, angle) -> subspace coordinates y has |det J| = r^2 (u holds log r): the flow's log-Jacobian."""
    flow = perturbed(4, 2)
    for seed in range(3):
        torch.manual_seed(seed)
        params = torch.randn(flow.n_internal + 1, dtype=torch.float64)

        def to_subspace(p):
            c, s = torch.cos(p[-1]), torch.sin(p[-1])
            rot = torch.stack([torch.stack([c, -s]), torch.stack([s, c])])[None]
            x = flow.from_internal(p[None, :-1], rot)[0]
            return (flow.basis.T @ x).flatten()

        jac = torch.autograd.functional.jacobian(to_subspace, params)
        _, log_jac = flow.internal_coordinates(flow.from_internal(params[None, :-1], torch.eye(2)[None].double()))
        torch.testing.assert_close(torch.linalg.slogdet(jac)[1], log_jac[0], atol=1e-10, rtol=0)


def test_spline_flow_inverts_and_its_log_det_matches_autograd():
    flow = perturbed(4, 2, scale=0.3)
    z = 1.5 * torch.randn(16, flow.n_internal, dtype=torch.float64)
    u, log_det_inv = flow.inverse(z)
    back, log_det = flow(u)
    torch.testing.assert_close(back, z, atol=1e-9, rtol=0)
    torch.testing.assert_close(log_det, -log_det_inv, atol=1e-9, rtol=0)
    for row in u[:4]:
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], row)
        torch.testing.assert_close(torch.linalg.slogdet(jac)[1], flow(row[None])[1][0], atol=1e-9, rtol=0)


@pytest.mark.parametrize("dim,n_atoms", [(2, 3), (3, 3)])
def test_density_is_normalised_and_is_the_density_of_the_samples(dim, n_atoms):
    """E_p[q / p] = 1 under a wide CoM-free Gaussian p (normalisation, independent of the sampler) and
    E_q[p / q] = 1 for a narrow one (the samples follow log_prob); each to 4 standard errors."""
    flow = perturbed(n_atoms, dim, length_scale=1.0)
    generator = torch.Generator().manual_seed(1)
    m = 20000

    def gaussian_log_prob(x, sigma):
        return com_free_gaussian_log_prob(x / sigma) - (n_atoms - 1) * dim * math.log(sigma)

    with torch.no_grad():
        wide = 3.0 * sample_com_free_gaussian(m, n_atoms, dim, generator, dtype=torch.float64)
        w = torch.exp(flow.log_prob(wide) - gaussian_log_prob(wide, 3.0))
        assert abs(w.mean().item() - 1) < 4 * w.std().item() / math.sqrt(m) + 1e-3
        x, log_q = flow.sample(m, generator)
        w = torch.exp(gaussian_log_prob(x, 0.7) - log_q)
        assert abs(w.mean().item() - 1) < 4 * w.std().item() / math.sqrt(m) + 1e-3


def test_group_size_and_bad_input():
    assert GroupAveragedFlow(4, 2).group_size == 48
    assert GroupAveragedFlow(4, 3, reflections=False, permutations=None).group_size == 1
    with pytest.raises(ValueError, match="dim must be 2 or 3"):
        GroupAveragedFlow(4, 4)
    with pytest.raises(ValueError, match="n_atoms >= 3"):
        GroupAveragedFlow(2, 2)
    with pytest.raises(ValueError, match="permutations"):
        GroupAveragedFlow(13, 3)
    with pytest.raises(ValueError, match="permutations must be"):
        GroupAveragedFlow(4, 2, permutations=torch.arange(3)[None])
    with pytest.raises(ValueError, match="shape"):
        GroupAveragedFlow(4, 2).log_prob(torch.zeros(3, 4, 3))

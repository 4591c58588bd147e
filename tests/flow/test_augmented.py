import math

import pytest
import torch

from bgflow_se3 import AugmentedCouplingFlow, FlowSample, NonFiniteInputError
from bgflow_se3.flow.frames import random_rotation, remove_com
from tests.flow.test_couplings import randomise

PROJECTIONS = ("cartesian", "spherical", "vector")
TYPES = [0, 1, 0, 0, 1]


def tiny_flow(projection="spherical", dim=3, n_aug=1, n_blocks=2, types=TYPES, scale=0.2):
    torch.manual_seed(2)
    flow = AugmentedCouplingFlow(
        len(types), dim, types, n_aug=n_aug, projection=projection, n_blocks=n_blocks, hidden=8, egnn_layers=1, n_bins=4
    ).double()
    randomise(flow, scale)
    return flow


def data(flow, batch, generator):
    x = remove_com(torch.randn(batch, flow.n_atoms, flow.dim, generator=generator, dtype=torch.float64))
    a = x.unsqueeze(1) + 0.3 * torch.randn(
        batch, flow.n_aug, flow.n_atoms, flow.dim, generator=generator, dtype=torch.float64
    )
    return x, a


@pytest.mark.parametrize("projection", PROJECTIONS)
@pytest.mark.parametrize("dim,n_aug", [(3, 2), (2, 1)])
def test_flow_inverts(projection, dim, n_aug, generator):
    flow = tiny_flow(projection, dim, n_aug)
    x, a = data(flow, 4, generator)
    zx, za, ld_inv, aux = flow.inverse_with_log_det(x, a)
    assert (zx - x).abs().max() > 1e-2
    x_back, a_back, ld, _ = flow.forward_with_log_det(zx, za)
    torch.testing.assert_close(x_back, x, atol=1e-8, rtol=0)
    torch.testing.assert_close(a_back, a, atol=1e-8, rtol=0)
    torch.testing.assert_close(ld, -ld_inv, atol=1e-8, rtol=0)
    assert aux.shape == (4,) and (aux >= 0).all()


def _com_free_basis(n, dim):
    constraint = torch.zeros(dim, n * dim, dtype=torch.float64)
    for d in range(dim):
        constraint[d, d::dim] = 1.0
    return torch.linalg.svd(constraint)[2][dim:].T  # (n * dim, (n - 1) * dim), orthonormal columns


@pytest.mark.parametrize("projection,n_aug", [(p, 1) for p in PROJECTIONS] + [("spherical", 2)])
def test_block_logdet_matches_autograd_on_the_joint_state(projection, n_aug, generator):
    """Whole blocks, including shift-CoM: x on its (n - 1) * dim subspace and a flattened jointly."""
    flow = tiny_flow(projection, 3, n_aug=n_aug, n_blocks=1, types=[0, 1, 0, 1])
    zx, za = data(flow, 2, generator)
    x, a, ld, _ = flow.forward_with_log_det(zx, za)
    q = _com_free_basis(4, 3)

    def f(v):
        u, av = v[: q.shape[1]], v[q.shape[1] :]
        xo, ao, _, _ = flow.forward_with_log_det((q @ u).reshape(1, 4, 3), av.reshape(1, n_aug, 4, 3))
        return torch.cat([q.T @ xo.reshape(-1), ao.reshape(-1)])

    for b in range(2):
        jac = torch.autograd.functional.jacobian(f, torch.cat([q.T @ zx[b].reshape(-1), za[b].reshape(-1)]))
        torch.testing.assert_close(ld[b], torch.linalg.slogdet(jac)[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_log_prob_joint_invariances(projection, generator):
    flow = tiny_flow(projection, 3, n_aug=2)
    x, a = data(flow, 4, generator)
    lq = flow.log_prob_joint(x, a)
    rot, t = random_rotation(3, generator), torch.randn(3, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(flow.log_prob_joint(x @ rot.T + t, a @ rot.T + t), lq, atol=1e-6, rtol=0)
    perm = [3, 1, 0, 2, 4]  # permutes the type-0 atoms 0, 2, 3
    torch.testing.assert_close(flow.log_prob_joint(x[:, perm], a[:, :, perm]), lq, atol=1e-6, rtol=0)
    # permuting atoms of different types is not a symmetry
    swap = [1, 0, 2, 3, 4]
    assert (flow.log_prob_joint(x[:, swap], a[:, :, swap]) - lq).abs().max() > 1e-3
    refl = random_rotation(3, generator, reflect=True)
    lq_m = flow.log_prob_joint(x @ refl.T, a @ refl.T)
    if projection == "vector":  # E(3): mirror images have the same density
        torch.testing.assert_close(lq_m, lq, atol=1e-6, rtol=0)
    else:  # SE(3): a mirror image changes log q
        assert (lq_m - lq).abs().max() > 1e-3


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_rotating_the_latent_rotates_the_sample(projection, generator):
    flow = tiny_flow(projection, 3, n_aug=1)
    zx, za = data(flow, 3, generator)
    x, a, ld, _ = flow.forward_with_log_det(zx, za)
    rot = random_rotation(3, generator)
    x_r, a_r, ld_r, _ = flow.forward_with_log_det(zx @ rot.T, za @ rot.T)
    torch.testing.assert_close(x_r, x @ rot.T, atol=1e-9, rtol=0)
    torch.testing.assert_close(a_r, a @ rot.T, atol=1e-9, rtol=0)
    torch.testing.assert_close(ld_r, ld, atol=1e-9, rtol=0)


def test_samples_are_com_free_and_log_q_consistent(generator):
    flow = tiny_flow("spherical", 3, n_aug=2)
    s = flow.sample(16, generator=generator)
    assert isinstance(s, FlowSample)
    assert s.x.shape == (16, 5, 3) and s.a.shape == (16, 2, 5, 3) and s.log_q.shape == (16,)
    assert s.x.mean(dim=1).abs().max() < 1e-12
    torch.testing.assert_close(flow.log_prob_joint(s.x, s.a), s.log_q, atol=1e-8, rtol=0)
    s2 = flow.sample(16, generator=torch.Generator().manual_seed(1234))
    torch.testing.assert_close(s2.x, s.x)  # seeded through the generator, not global state
    s.log_q.sum().backward()  # reparameterised: gradients reach the parameters
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())


def test_log_prob_is_exact_for_the_identity_flow(generator):
    """With zero-initialised heads the flow is the identity and q(x, a) / pi(a | x) = N(x): IS is exact."""
    flow = AugmentedCouplingFlow(4, 2, n_aug=2, n_blocks=1, hidden=8, egnn_layers=1, sigma_aug=0.2).double()
    x = remove_com(torch.randn(6, 4, 2, generator=generator, dtype=torch.float64)) + 3.0  # CoM is removed
    expected = -0.5 * remove_com(x).pow(2).sum((1, 2)) - 0.5 * 6 * math.log(2 * math.pi)
    torch.testing.assert_close(flow.log_prob(x, n_samples=3, generator=generator), expected, atol=1e-10, rtol=0)
    a = flow.sample_aug_target(x, generator)
    assert a.shape == (6, 2, 4, 2)
    lp = flow.log_prob_aug_target(a, x)
    expected_pi = -0.5 * ((a - x[:, None]) / 0.2).pow(2).sum((1, 2, 3)) - 16 * math.log(0.2 * math.sqrt(2 * math.pi))
    torch.testing.assert_close(lp, expected_pi)


def test_marginal_log_prob_is_the_importance_sampling_estimate(generator):
    flow = tiny_flow("spherical", 3, scale=0.05)
    x = flow.sample(3, generator=generator).x.detach() + 1.0  # the CoM is removed
    lp = flow.log_prob(x, n_samples=7, generator=torch.Generator().manual_seed(3))
    a = flow.sample_aug_target(remove_com(x).repeat_interleave(7, 0), torch.Generator().manual_seed(3))
    x_rep = x.repeat_interleave(7, 0)
    x_rep = remove_com(x_rep)
    log_w = (flow.log_prob_joint(x_rep, a) - flow.log_prob_aug_target(a, x_rep)).view(3, 7)
    expected = torch.logsumexp(log_w, dim=1) - math.log(7)
    torch.testing.assert_close(lp, expected, atol=1e-10, rtol=0)
    assert (log_w.std(dim=1) > 1e-3).all()  # q(a | x) differs from pi(a | x): the average is not trivial


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_float32_matches_float64(projection):
    flow64 = tiny_flow(projection, 3, n_aug=1, scale=0.02)
    flow = tiny_flow(projection, 3, n_aug=1, scale=0.02).float()
    s = flow.sample(64, generator=torch.Generator().manual_seed(0))
    assert s.x.dtype == torch.float32 and torch.isfinite(s.log_q).all()
    lq, aux = flow.log_prob_joint_and_aux(s.x, s.a)
    assert torch.isfinite(aux).all()
    lq64 = flow64.log_prob_joint(s.x.double(), s.a.double())
    # float32 is self-consistent (sampling and density evaluation agree) ...
    torch.testing.assert_close(s.log_q, lq, atol=5e-2, rtol=0)
    # ... and close to the float64 density; the gap comes from float32 reference frames built from short,
    # nearly parallel EGNN vectors of this random network, amplified by 1 / sigma_aug^2 in the base density
    torch.testing.assert_close(lq.double(), lq64, atol=0.1, rtol=0)


def test_bad_input_raises_clear_errors(generator):
    flow = tiny_flow("vector", 3)
    x, a = data(flow, 2, generator)
    with pytest.raises(ValueError, match="x must have shape"):
        flow.log_prob_joint(x[:, :4], a)
    with pytest.raises(ValueError, match="a must have shape"):
        flow.log_prob_joint(x, a[:, :, :4])
    with pytest.raises(TypeError, match="dtype"):
        flow.log_prob_joint(x.float(), a.float())
    x[0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteInputError):
        flow.log_prob(x)
    with pytest.raises(ValueError, match="atom_types"):
        AugmentedCouplingFlow(3, atom_types=[0, 1])
    with pytest.raises(ValueError, match="at least 2 atoms"):
        AugmentedCouplingFlow(1)


def test_for_topology_uses_elements_without_openmm_in_the_flow():
    from bgflow_se3.systems import load_aldp

    aldp = load_aldp("vacuum")
    for top in (aldp.topology, aldp.mdtraj_topology):
        flow = AugmentedCouplingFlow.for_topology(top, n_blocks=1, hidden=8, egnn_layers=1)
        assert flow.n_atoms == 22 and flow.dim == 3
        symbols = [atom.element.symbol for atom in aldp.mdtraj_topology.atoms]
        order = sorted(set(symbols))  # C, H, N, O
        assert flow.atom_types.tolist() == [order.index(s) for s in symbols]
    fine = AugmentedCouplingFlow.for_topology(aldp.topology, type_by="name", n_blocks=1, hidden=8, egnn_layers=1)
    assert int(fine.atom_types.max()) + 1 > 4


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    flow = tiny_flow("spherical", 3, n_aug=2, scale=0.02)
    s = flow.sample(64, generator=torch.Generator().manual_seed(0))  # CPU generator, CPU flow
    cuda_flow = tiny_flow("spherical", 3, n_aug=2, scale=0.02).cuda()
    s_cuda = cuda_flow.sample(64, generator=torch.Generator().manual_seed(0))  # CPU generator, CUDA flow
    assert s_cuda.x.device.type == "cuda"
    torch.testing.assert_close(s_cuda.x.cpu(), s.x, atol=1e-8, rtol=0)
    torch.testing.assert_close(s_cuda.log_q.cpu(), s.log_q, atol=1e-8, rtol=0)
    lq = cuda_flow.log_prob(s.x.cuda(), n_samples=4, generator=torch.Generator(device="cuda").manual_seed(1))
    assert lq.device.type == "cuda" and torch.isfinite(lq).all()

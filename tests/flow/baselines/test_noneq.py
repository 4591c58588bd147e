import pytest
import torch

from bgflow_se3.flow import NonEquivariantFlow, com_free_gaussian_log_prob, random_rotations
from bgflow_se3.flow.baselines.noneq import helmert_basis


def _perturbed_flow(generator, n_atoms=4, dim=2):
    flow = NonEquivariantFlow(n_atoms, dim, n_layers=4, hidden=16).double()
    for p in flow.parameters():
        p.data += 0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype)
    return flow


def test_helmert_basis_is_orthonormal_and_zero_sum():
    b = helmert_basis(5)
    torch.testing.assert_close(b.T @ b, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    assert b.sum(dim=0).abs().max() < 1e-12


def test_invertibility_and_log_det_vs_autograd_jacobian(generator):
    flow = _perturbed_flow(generator)
    y = torch.randn(3, 6, generator=generator, dtype=torch.float64)
    z, log_det = flow(y)
    y_back, log_det_inv = flow.inverse(z)
    torch.testing.assert_close(y_back, y, atol=1e-10, rtol=0)
    torch.testing.assert_close(log_det_inv, -log_det, atol=1e-10, rtol=0)
    for k in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], y[k])
        assert torch.linalg.slogdet(jac).logabsdet.item() == pytest.approx(log_det[k].item(), abs=1e-9)
    assert log_det.abs().max() > 0.1


def test_sample_log_prob_consistency_and_com_handling(generator):
    flow = _perturbed_flow(generator)
    x, log_q = flow.sample(5, generator=generator)
    assert x.shape == (5, 4, 2) and x.mean(dim=1).abs().max() < 1e-12
    torch.testing.assert_close(flow.log_prob(x), log_q, atol=1e-10, rtol=0)
    torch.testing.assert_close(flow.log_prob(x + 3.0), log_q, atol=1e-10, rtol=0)  # CoM removed
    # an identity-initialised flow is exactly the CoM-free Gaussian on the subspace
    fresh = NonEquivariantFlow(4, 2).double()
    torch.testing.assert_close(fresh.log_prob(x), com_free_gaussian_log_prob(x), atol=1e-12, rtol=0)


def test_not_rotation_invariant_but_rotations_are_proper(generator):
    flow = _perturbed_flow(generator)
    x = torch.randn(4, 4, 2, generator=generator, dtype=torch.float64)
    rot = random_rotations(4, 2, generator, dtype=torch.float64)
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(2, dtype=torch.float64).expand(4, 2, 2))
    torch.testing.assert_close(torch.det(rot), torch.ones(4, dtype=torch.float64))
    x_rot = torch.einsum("bij,bnj->bni", rot, x)
    assert (flow.log_prob(x_rot) - flow.log_prob(x)).abs().max() > 1e-3  # the baseline is not equivariant


def test_shape_errors():
    with pytest.raises(ValueError, match="shape"):
        NonEquivariantFlow(4, 2).log_prob(torch.zeros(2, 3, 2))

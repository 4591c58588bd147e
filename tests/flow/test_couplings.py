import pytest
import torch

from bgflow_se3.flow.couplings import ProjectionCoupling, reference_vector_loss
from bgflow_se3.flow.frames import random_rotation

CASES = [(p, d) for p in ("cartesian", "cartesian-affine", "spherical", "vector") for d in (2, 3)]


def randomise(module: torch.nn.Module, scale: float, seed: int = 0) -> None:
    """Perturb every parameter so that zero-initialised heads no longer make the layer the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def make_coupling(projection, dim, n_cond, n_trans):
    torch.manual_seed(1)
    inner = "affine" if projection.endswith("-affine") else "spline"
    layer = ProjectionCoupling(
        projection.removesuffix("-affine"),
        dim,
        n_cond,
        n_trans,
        2,
        hidden=8,
        egnn_layers=1,
        n_bins=5,
        cartesian_inner=inner,
    )
    layer = layer.double()
    randomise(layer, 0.3)
    return layer


TYPES = torch.tensor([0, 1, 0, 1])


@pytest.mark.parametrize("projection,dim", CASES)
@pytest.mark.parametrize("n_cond,n_trans", [(1, 2), (2, 1)])
def test_coupling_inverts_and_logdet_matches_autograd(projection, dim, n_cond, n_trans, generator):
    layer = make_coupling(projection, dim, n_cond, n_trans)
    z = torch.randn(3, 4, n_trans, dim, generator=generator, dtype=torch.float64)
    cond = torch.randn(3, 4, n_cond, dim, generator=generator, dtype=torch.float64)
    y, ld, aux = layer(z, cond, TYPES)
    assert (y - z).abs().max() > 1e-2  # the layer is not the identity
    z_back, ld_inv, _ = layer.inverse(y, cond, TYPES)
    torch.testing.assert_close(z_back, z, atol=1e-8, rtol=0)
    torch.testing.assert_close(ld_inv, -ld, atol=1e-8, rtol=0)
    assert aux.shape == (3,) and (aux >= 0).all()
    for b in range(2):
        jac = torch.autograd.functional.jacobian(
            lambda v, b=b: layer(v.reshape(1, *z.shape[1:]), cond[b : b + 1], TYPES)[0].reshape(-1),
            z[b].reshape(-1),
        )
        torch.testing.assert_close(ld[b], torch.linalg.slogdet(jac)[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("projection,dim", CASES)
def test_coupling_is_equivariant_and_reflection_as_documented(projection, dim, generator):
    layer = make_coupling(projection, dim, 1, 2)
    z = torch.randn(3, 4, 2, dim, generator=generator, dtype=torch.float64)
    cond = torch.randn(3, 4, 1, dim, generator=generator, dtype=torch.float64)
    y, ld, _ = layer(z, cond, TYPES)
    rot, t = random_rotation(dim, generator), torch.randn(dim, generator=generator, dtype=torch.float64)
    y_r, ld_r, _ = layer(z @ rot.T + t, cond @ rot.T + t, TYPES)
    torch.testing.assert_close(y_r, y @ rot.T + t, atol=1e-9, rtol=0)
    torch.testing.assert_close(ld_r, ld, atol=1e-9, rtol=0)
    refl = random_rotation(dim, generator, reflect=True)
    y_m, ld_m, _ = layer(z @ refl.T, cond @ refl.T, TYPES)
    if projection == "vector":  # E(3): reflections commute with the layer
        torch.testing.assert_close(y_m, y @ refl.T, atol=1e-9, rtol=0)
    else:  # SE(3) only
        assert (y_m - y @ refl.T).abs().max() > 1e-4


def test_zero_initialised_coupling_is_identity(generator):
    for projection in ("cartesian", "spherical", "vector"):
        layer = ProjectionCoupling(projection, 3, 1, 1, n_types=1, hidden=8, egnn_layers=1).double()
        z = torch.randn(2, 5, 1, 3, generator=generator, dtype=torch.float64)
        cond = torch.randn(2, 5, 1, 3, generator=generator, dtype=torch.float64)
        y, ld, _ = layer(z, cond, torch.zeros(5, dtype=torch.long))
        torch.testing.assert_close(y, z, atol=1e-10, rtol=0)
        torch.testing.assert_close(ld, torch.zeros_like(ld), atol=1e-10, rtol=0)


def test_reference_vector_loss():
    e = torch.eye(3, dtype=torch.float64)
    assert reference_vector_loss(e[0], e[1]) == 0
    assert reference_vector_loss(e[0], e[0] + 1e-3 * e[1]) > 10
    assert torch.isfinite(reference_vector_loss(e[0], -e[0]))
    with pytest.raises(ValueError, match="projection"):
        ProjectionCoupling("polar", 3, 1, 1, n_types=1)


def test_auxiliary_loss_gradient_separates_reference_vectors(generator):
    """Adam steps on the auxiliary loss alone move the EGNN reference vectors apart.

    100 steps: since the EGNN keeps the neighbour-average vector weight (a component common to all output vectors),
    separating them takes more steps than the 30 that sufficed when that weight was subtracted.
    """
    torch.manual_seed(3)
    layer = ProjectionCoupling("spherical", 3, 1, 1, n_types=1, hidden=16, egnn_layers=1).double()
    cond = torch.randn(16, 6, 1, 3, generator=generator, dtype=torch.float64)
    z = torch.randn(16, 6, 1, 3, generator=generator, dtype=torch.float64)
    types = torch.zeros(6, dtype=torch.long)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    first = layer(z, cond, types)[2].mean().item()
    for _ in range(100):
        aux = layer(z, cond, types)[2].mean()
        opt.zero_grad()
        aux.backward()
        opt.step()
    assert aux.item() < 0.6 * first, (first, aux.item())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_spherical_and_vector_projections_are_finite_at_the_origin_and_the_poles(dtype, generator):
    """Points exactly on the origin or on the polar axis (r = 0, theta = 0 or pi) give finite values and grads."""
    for projection in ("spherical", "vector"):
        layer = make_coupling(projection, 3, 1, 1).to(dtype)
        centre = torch.zeros(1, 3, 1, 3, dtype=dtype)
        vec = torch.randn(1, 3, 1, layer.n_vectors, 3, generator=generator, dtype=torch.float64).to(dtype)
        params = [0.5 * torch.randn(1, 3, 1, k, generator=generator).to(dtype) for k in layer._splits]
        axis = vec[..., 1, :] / vec[..., 1, :].norm(dim=-1, keepdim=True)
        p = torch.stack([vec[0, 0, :, 0], vec[0, 1, :, 0] + 0.7 * axis[0, 1], vec[0, 2, :, 0] - 0.3 * axis[0, 2]])
        p = p.reshape(1, 3, 1, 3).clone().requires_grad_(True)  # at the origin, on the axis, opposite the axis
        transform = layer._spherical if projection == "spherical" else layer._vector
        y, logdet = transform(p, centre, vec, params, False)
        assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
        (grad,) = torch.autograd.grad(y.sum() + logdet.sum(), p)
        assert torch.isfinite(grad).all()
        back, _ = transform(y.detach(), centre, vec, params, True)
        torch.testing.assert_close(back, p.detach(), atol=1e-4 if dtype == torch.float32 else 1e-9, rtol=0)

import math

import pytest
import torch

from bgflow_se3.flow.frames import (
    cartesian_from_spherical,
    centre_on_aug,
    centre_on_x,
    orthonormal_frame,
    random_rotation,
    remove_com,
    spherical_from_cartesian,
)


def _subspace_basis(n_atoms, dim, n_aug, constrained):
    """Orthonormal basis (columns) of {(x, a): CoM of `constrained` (0 = x, 1 = a[:, 0]) is zero}."""
    total = (1 + n_aug) * n_atoms * dim
    constraint = torch.zeros(dim, total, dtype=torch.float64)
    for d in range(dim):
        for i in range(n_atoms):
            constraint[d, (constrained * n_atoms + i) * dim + d] = 1.0
    _, _, vh = torch.linalg.svd(constraint)
    return vh[dim:].T  # null space of the constraints


@pytest.mark.parametrize("n_aug", [1, 3])
def test_shift_com_has_unit_jacobian_and_inverts(n_aug, generator):
    n, dim = 5, 3
    total = (1 + n_aug) * n * dim

    def shift(flat):
        x, a = flat[: n * dim].reshape(1, n, dim), flat[n * dim :].reshape(1, n_aug, n, dim)
        xs, as_ = centre_on_aug(x, a)
        return torch.cat([xs.reshape(-1), as_.reshape(-1)])

    matrix = torch.stack([shift(e) for e in torch.eye(total, dtype=torch.float64)], dim=1)
    q_in, q_out = _subspace_basis(n, dim, n_aug, 0), _subspace_basis(n, dim, n_aug, 1)
    restricted = q_out.T @ matrix @ q_in
    assert abs(abs(torch.linalg.det(restricted).item()) - 1.0) < 1e-10
    x = remove_com(torch.randn(2, n, dim, generator=generator, dtype=torch.float64))
    a = torch.randn(2, n_aug, n, dim, generator=generator, dtype=torch.float64)
    xs, as_ = centre_on_aug(x, a)
    torch.testing.assert_close(as_[:, 0].mean(1), torch.zeros(2, dim, dtype=torch.float64))
    xb, ab = centre_on_x(xs, as_)
    torch.testing.assert_close(xb, x)
    torch.testing.assert_close(ab, a)


@pytest.mark.parametrize("dim", [2, 3])
def test_frame_is_orthonormal_right_handed_and_equivariant(dim, generator):
    v1 = torch.randn(50, dim, generator=generator, dtype=torch.float64)
    v2 = torch.randn(50, dim, generator=generator, dtype=torch.float64)
    f = orthonormal_frame(v1, v2)
    eye = torch.eye(dim, dtype=torch.float64).expand(50, dim, dim)
    torch.testing.assert_close(f @ f.transpose(-1, -2), eye)
    torch.testing.assert_close(torch.linalg.det(f), torch.ones(50, dtype=torch.float64))
    rot = random_rotation(dim, generator)
    torch.testing.assert_close(orthonormal_frame(v1 @ rot.T, v2 @ rot.T), f @ rot.T)
    # a reflection does not commute with the frame: it stays right-handed
    refl = random_rotation(dim, generator, reflect=True)
    assert (orthonormal_frame(v1 @ refl.T, v2 @ refl.T) - f @ refl.T).abs().max() > 0.1


@pytest.mark.parametrize("dim", [2, 3])
def test_spherical_round_trip_including_poles(dim, generator):
    frame = orthonormal_frame(*torch.randn(2, 64, dim, generator=generator, dtype=torch.float64))
    p = torch.randn(64, dim, generator=generator, dtype=torch.float64)
    p[0] = 2.5 * frame[0, 0]  # theta = 0
    p[1] = -0.5 * frame[1, 0]  # theta = pi
    r, angle, phi = spherical_from_cartesian(p, frame)
    torch.testing.assert_close(r, p.norm(dim=-1))
    torch.testing.assert_close(cartesian_from_spherical(r, angle, phi, frame), p, atol=1e-12, rtol=0)
    if dim == 3:
        assert angle[0] < 1e-11 and abs(angle[1] - math.pi) < 1e-11
        assert ((angle >= 0) & (angle <= math.pi)).all()
    assert ((angle >= -math.pi) & (angle <= math.pi)).all()


def test_tiny_and_zero_vectors_stay_finite():
    v = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    f = orthonormal_frame(v, v)
    r, theta, phi = spherical_from_cartesian(v, f)
    (r.sum() + theta.sum() + phi.sum() + f.sum()).backward()
    assert torch.isfinite(v.grad).all()


def test_random_rotation_determinant(generator):
    for dim in (2, 3):
        assert abs(torch.det(random_rotation(dim, generator)) - 1) < 1e-12
        assert abs(torch.det(random_rotation(dim, generator, reflect=True)) + 1) < 1e-12

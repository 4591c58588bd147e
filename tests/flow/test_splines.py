import math

import pytest
import torch

from bgflow_se3.flow.splines import n_spline_params, rational_quadratic_spline

CASES = [("linear", -3.0, 3.0), ("bounded", 0.0, math.pi), ("circular", -math.pi, math.pi)]


def _inputs(boundary, lower, upper, generator):
    x = lower + (upper - lower) * torch.rand(200, generator=generator, dtype=torch.float64)
    if boundary == "linear":  # include the tails
        x = torch.cat([x, torch.tensor([lower - 2.0, upper + 1.5, lower, upper], dtype=torch.float64)])
    else:
        x = torch.cat([x, torch.tensor([lower, upper], dtype=torch.float64)])
    return x


@pytest.mark.parametrize("boundary,lower,upper", CASES)
def test_spline_inverts_and_logdet_matches_autograd(boundary, lower, upper, generator):
    x = _inputs(boundary, lower, upper, generator)
    params = 1.5 * torch.randn(x.shape[0], n_spline_params(8, boundary), generator=generator, dtype=torch.float64)
    y, ld = rational_quadratic_spline(x, params, lower, upper, boundary)
    x_back, ld_inv = rational_quadratic_spline(y, params, lower, upper, boundary, inverse=True)
    torch.testing.assert_close(x_back, x, atol=1e-9, rtol=0)
    torch.testing.assert_close(ld_inv, -ld, atol=1e-9, rtol=0)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(rational_quadratic_spline(xg, params, lower, upper, boundary)[0].sum(), xg)
    torch.testing.assert_close(ld, grad.log(), atol=1e-9, rtol=0)
    assert ((y >= lower - 1e-12) & (y <= upper + 1e-12) | (x < lower) | (x > upper)).all()


@pytest.mark.parametrize("boundary,lower,upper", CASES)
def test_logdet_at_interval_ends_is_the_one_sided_derivative(boundary, lower, upper, generator):
    """At ``lower`` the log-det is the right derivative, at ``upper`` the left one (central differences would straddle
    the end), and autograd gives the same slope whatever gradient the torch build gives ``clamp`` at its bounds."""
    ends = torch.tensor([lower, upper], dtype=torch.float64)
    params = 1.5 * torch.randn(2, n_spline_params(8, boundary), generator=generator, dtype=torch.float64)
    _, ld = rational_quadratic_spline(ends, params, lower, upper, boundary)
    inward = torch.tensor([1e-6, -1e-6], dtype=torch.float64)
    y0, y1, y2 = (rational_quadratic_spline(ends + k * inward, params, lower, upper, boundary)[0] for k in range(3))
    one_sided = (-3.0 * y0 + 4.0 * y1 - y2) / (2.0 * inward)  # second order, from inside the interval only
    torch.testing.assert_close(ld, one_sided.log(), atol=1e-6, rtol=0)
    xg = ends.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(rational_quadratic_spline(xg, params, lower, upper, boundary)[0].sum(), xg)
    torch.testing.assert_close(grad.log(), ld, atol=1e-12, rtol=0)


def test_linear_tails_are_identity_and_zero_params_identity(generator):
    x = torch.tensor([-7.0, -3.5, 3.2, 9.0], dtype=torch.float64)
    params = torch.randn(4, n_spline_params(5, "linear"), generator=generator, dtype=torch.float64)
    y, ld = rational_quadratic_spline(x, params, -3.0, 3.0, "linear")
    torch.testing.assert_close(y, x)
    assert (ld == 0).all()
    for boundary, lower, upper in CASES:
        z = _inputs(boundary, lower, upper, generator)
        y, ld = rational_quadratic_spline(
            z, torch.zeros(n_spline_params(8, boundary), dtype=torch.float64), lower, upper, boundary
        )
        torch.testing.assert_close(y, z, atol=1e-12, rtol=0)
        torch.testing.assert_close(ld, torch.zeros_like(ld), atol=1e-12, rtol=0)


def test_circular_spline_is_smooth_across_the_seam(generator):
    params = torch.randn(n_spline_params(6, "circular"), generator=generator, dtype=torch.float64)
    x = torch.tensor([-math.pi, math.pi], dtype=torch.float64)
    y, ld = rational_quadratic_spline(x, params, -math.pi, math.pi, "circular")
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(ld[0], ld[1])  # same slope on both sides of the seam


def test_wrong_parameter_count_raises():
    with pytest.raises(ValueError, match="parameters"):
        rational_quadratic_spline(torch.zeros(3), torch.zeros(3, 7), 0.0, 1.0, "circular")

import math

import pytest
import torch

from bgflow_se3 import regularize_energy


def test_identity_below_threshold_and_log_above():
    u = torch.tensor([-50.0, 0.0, 999.0, 1000.0, 1001.0, 1e4, 1e8], dtype=torch.float64)
    out = regularize_energy(u, linear_max=1e3, hard_max=1e9)
    expected = [-50.0, 0.0, 999.0, 1000.0, 1000.0 + math.log(2.0), 1000 + math.log1p(9e3), 1000 + math.log1p(1e8 - 1e3)]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-15, atol=0)


def test_non_finite_and_huge_values_map_to_the_cap():
    cap = 1e3 + math.log1p(1e9 - 1e3)
    u = torch.tensor([1e9, 1e300, float("inf"), float("-inf"), float("nan")], dtype=torch.float64, requires_grad=True)
    out = regularize_energy(u)
    torch.testing.assert_close(out, torch.full((5,), cap, dtype=torch.float64), rtol=1e-15, atol=0)
    out.sum().backward()
    assert (u.grad == 0).all()


def test_gradient_is_continuous_and_matches_autograd_of_the_formula():
    u = torch.tensor([10.0, 999.999, 1000.001, 5e3], dtype=torch.float64, requires_grad=True)
    regularize_energy(u).sum().backward()
    expected = torch.tensor([1.0, 1.0, 1 / (1 + 0.001), 1 / (1 + 4e3)], dtype=torch.float64)
    torch.testing.assert_close(u.grad, expected, rtol=1e-9, atol=0)


def test_monotone_and_finite_on_a_wide_range():
    u = torch.logspace(-3, 12, 2000, dtype=torch.float64)
    out = regularize_energy(torch.cat([-u.flip(0), u]))
    assert torch.isfinite(out).all() and (out.diff() >= 0).all()


def test_keeps_dtype_and_refuses_bad_arguments():
    assert regularize_energy(torch.tensor([1e5], dtype=torch.float32)).dtype == torch.float32
    with pytest.raises(ValueError, match="linear_max < hard_max"):
        regularize_energy(torch.zeros(2), linear_max=10.0, hard_max=5.0)
    with pytest.raises(TypeError, match="floating point"):
        regularize_energy(torch.zeros(2, dtype=torch.int64))

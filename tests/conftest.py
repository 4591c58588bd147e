"""Shared fixtures: fixed seeds, float64 helpers, random rotations."""

import pytest
import torch


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded CPU generator; tests take randomness from it, never from global state."""
    return torch.Generator().manual_seed(1234)


def random_rotation(dim: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """A uniformly random proper rotation matrix (det +1), shape (dim, dim), via QR of a Gaussian matrix."""
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q

"""Shared fixtures of the robustness suite: small systems, a hang guard and a /proc scan for child processes."""

import numpy as np
import pytest
import torch
from _robustness_helpers import children, wait_for_no_children

from bgflow_se3.systems import load_aldp


@pytest.fixture(scope="session")
def aldp():
    return load_aldp("implicit")


@pytest.fixture
def x_aldp(aldp) -> torch.Tensor:
    """Three perturbed alanine dipeptide configurations, float64, nm, shape (3, 22, 3)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.from_numpy(aldp.positions_nm)
    return x0 + 0.01 * torch.randn(3, *x0.shape, generator=g, dtype=torch.float64)


@pytest.fixture
def no_leaked_processes():
    """Fails the test if it leaves a child process (alive or zombie) behind."""
    before = children()
    yield
    leaked = wait_for_no_children(before)
    assert not leaked, f"leaked child processes {leaked}"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)

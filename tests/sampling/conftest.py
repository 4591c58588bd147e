"""Fixtures for the sampling tests that use the training test doubles (``tests/train/_helpers.py``), as the training
tests' fixtures (``tests/train/conftest.py``) give them."""

import pytest
import torch

from tests.train._helpers import GaussianAugmentedFlow, GaussianMixtureEnergy


@pytest.fixture
def flow() -> GaussianAugmentedFlow:
    return GaussianAugmentedFlow().double()


@pytest.fixture
def mixture() -> GaussianMixtureEnergy:
    g = torch.Generator().manual_seed(7)
    means = 1.2 * torch.randn(3, 3, 2, generator=g, dtype=torch.float64)
    return GaussianMixtureEnergy(means, [0.5, 0.6, 0.7], [0.5, 0.3, 0.2], log_z=2.3)

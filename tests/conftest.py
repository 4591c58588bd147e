"""Shared fixtures: fixed seeds, float64 helpers, random rotations; every test starts from the same global state."""

import random

import numpy as np
import pytest
import torch

import bgflow_se3.threads as thread_policy


@pytest.fixture(autouse=True)
def same_global_state_for_every_test():
    """Each test sees the same global RNG states and torch thread count whatever ran before it, and leaves the thread
    policy as it found it: a training run elsewhere in the suite applies the thread policy (1 or 2 threads, by the
    load at that moment), and float32 training results differ with the thread count."""
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 (the legacy global state, for code that still draws from it)
    random.seed(0)
    threads = torch.get_num_threads()
    policy = (thread_policy._user_threads, thread_policy._applied)
    yield
    torch.set_num_threads(threads)
    thread_policy._user_threads, thread_policy._applied = policy


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

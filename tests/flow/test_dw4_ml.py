"""Maximum likelihood on DW4 samples lowers the test NLL (issue 4, test 6)."""

import pytest
import torch

from bgflow_se3 import AugmentedCouplingFlow, DoubleWellEnergy
from bgflow_se3.flow.geometry import remove_com


def dw4_samples(n: int, steps: int, seed: int = 0) -> torch.Tensor:
    """Parallel Metropolis chains on DW4 (one sample per chain after `steps` steps), CoM-free, float64."""
    g = torch.Generator().manual_seed(seed)
    energy = DoubleWellEnergy()
    x = 2.0 * torch.randn(n, 4, 2, generator=g, dtype=torch.float64)
    u = energy(x)
    for _ in range(steps):
        proposal = x + 0.5 * torch.randn(x.shape, generator=g, dtype=torch.float64)
        u_prop = energy(proposal)
        accept = torch.rand(n, generator=g, dtype=torch.float64).log() < u - u_prop
        x = torch.where(accept[:, None, None], proposal, x)
        u = torch.where(accept, u_prop, u)
    return remove_com(x)


def fit_ml(flow, data, n_steps, batch=64, lr=3e-3, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    for _ in range(n_steps):
        x = data[torch.randint(len(data), (batch,), generator=g)]
        a = flow.sample_aug_target(x, g)
        log_q, aux = flow.log_prob_joint_and_aux(x, a)
        loss = -(log_q - flow.log_prob_aug_target(a, x)).mean() + 0.1 * aux.mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
        opt.step()


def _run(projection: str, n_steps: int) -> tuple[float, float]:
    """Test NLL (nats, marginal by importance sampling) before and after `n_steps` of ML training, float32."""
    data = dw4_samples(1024, 300).float()
    train, test = data[:512], data[512:]
    torch.manual_seed(0)
    flow = AugmentedCouplingFlow(
        4,
        2,
        n_aug=1,
        projection=projection,
        n_blocks=2,
        hidden=16,
        egnn_layers=1,
        n_bins=6,
        length_scale=2.0,
        sigma_aug=0.5,
        spline_range=2.0,
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        before = -flow.log_prob(test, n_samples=10, generator=g).mean().item()
    fit_ml(flow, train, n_steps, lr=5e-3)
    with torch.no_grad():
        after = -flow.log_prob(test, n_samples=10, generator=g).mean().item()
    return before, after


def test_dw4_maximum_likelihood_lowers_test_nll():
    before, after = _run("vector", 100)
    # at initialisation the flow is its base (a CoM-free Gaussian, NLL 12.8); the equivariant flow must learn
    # the pair-distance structure of DW4 to do clearly better
    assert after < before - 1.8, (before, after)  # measured 12.81 -> 10.29 (11.70 before the EGNN fix)


@pytest.mark.slow
@pytest.mark.parametrize("projection", ["cartesian", "spherical", "vector"])
def test_dw4_maximum_likelihood_longer_run(projection):
    before, after = _run(projection, 600)
    assert after < before - 2.0, (before, after)  # measured: spherical 12.81 -> 9.91 (11.63 before the EGNN fix)

"""Maximum likelihood on DW4 samples lowers the test NLL (issue 4, test 6)."""

import contextlib
import copy
import functools

import pytest
import torch

from bgflow_se3 import AugmentedCouplingFlow, DoubleWellEnergy
from bgflow_se3.flow.frames import remove_com


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


@contextlib.contextmanager
def _one_torch_thread():
    """float32 training is chaotic: 100 Adam steps from the same seed end 0.3 nats apart on 1 and 2 threads (other
    reduction orders), so the learning tests train on one thread whatever the machine and the suite did before."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run(projection: str, n_steps: int, flow_out: list | None = None) -> tuple[float, float]:
    """Test NLL (nats, marginal by importance sampling) before and after `n_steps` of ML training, float32, on one
    torch thread. The trained flow is appended to ``flow_out`` when given."""
    with _one_torch_thread():
        return _run_on_this_thread(projection, n_steps, flow_out)


def _run_on_this_thread(projection: str, n_steps: int, flow_out: list | None) -> tuple[float, float]:
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
        egnn_layers=2,
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
    if flow_out is not None:
        flow_out.append(flow)
    return before, after


@functools.cache
def _trained(projection: str) -> tuple[float, float, AugmentedCouplingFlow]:
    """_run(projection, 100) once per session: (test NLL before, after, the trained float32 flow)."""
    trained: list = []
    before, after = _run(projection, 100, trained)
    return before, after, trained[0]


def test_dw4_maximum_likelihood_lowers_test_nll():
    before, after, _ = _trained("vector")
    # at initialisation the flow is its base (a CoM-free Gaussian, NLL 12.8); the equivariant flow must learn
    # the pair-distance structure of DW4 to do clearly better. 100 float32 Adam steps at lr 5e-3 are chaotic: the
    # gain is a draw from a wide distribution, and another torch build or thread count is another draw. Measured on
    # one thread, flow and minibatch seeds 0-5: torch 2.13.0+cpu 1.56-2.16 nats (seed 0: 2.16), 2.14.1+cu130
    # 1.26-2.25 (seed 0: 1.80); 2 threads, seed 0: 2.46 (2.13) and 1.36 (2.14). The margin sits below all of them.
    assert after < before - 1.0, (before, after)


@pytest.mark.slow
@pytest.mark.parametrize("projection", ["cartesian", "spherical", "vector"])
def test_dw4_maximum_likelihood_longer_run(projection):
    before, after = _run(projection, 600)
    assert after < before - 2.0, (before, after)  # measured: spherical 12.81 -> 9.91 (11.63 before the EGNN fix)


@pytest.mark.parametrize("projection", ["cartesian", "spherical", "vector"])
def test_trained_flow_float32_log_q_matches_float64(projection):
    """Importance weights are only as good as log q: for a trained flow, float32 and float64 log q(x, a) must agree
    to 0.01 nats on 99.9 % of the flow's samples and of data (x, a ~ pi(a | x)). The float32-trained weights are
    evaluated in both precisions."""
    before, after, flow32 = _trained(projection)
    assert after < before - 1.0, (before, after)  # it did learn: this is a trained flow, not the identity
    flow64 = copy.deepcopy(flow32).double()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        s = flow64.sample(4096, generator=g)
        x = dw4_samples(1024, 300, seed=7)
        a = flow64.sample_aug_target(x, g)
        for x64, a64 in ((s.x, s.a), (x, a)):
            gap = (flow64.log_prob_joint(x64, a64) - flow32.log_prob_joint(x64.float(), a64.float()).double()).abs()
            assert torch.isfinite(gap).all()
            assert gap.quantile(0.999) < 0.01, (projection, gap.quantile(0.999).item(), gap.max().item())

"""The compiled path of the augmented flow (``compile=True``): the same numbers as eager.

The fast tests check the wiring with ``torch.compile`` replaced by the identity (the compiled function takes flat
(B, N, M * d) points); the slow test compiles for real (minutes on 2 CPU cores, cold).
"""

from __future__ import annotations

import pytest
import torch

from bgflow_se3.flow import AugmentedCouplingFlow
from bgflow_se3.flow import couplings as couplings_module


def _flow(projection: str, compile: bool = False) -> AugmentedCouplingFlow:
    torch.manual_seed(0)
    flow = AugmentedCouplingFlow(
        5, 3, n_blocks=2, hidden=8, egnn_layers=1, projection=projection, compile=compile
    ).double()
    with torch.no_grad():  # off the identity, so that every coupling does something
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return flow


def _log_q_and_grads(flow: AugmentedCouplingFlow, x: torch.Tensor, a: torch.Tensor):
    log_q = flow.log_prob_joint(x, a)
    grads = torch.autograd.grad(log_q.sum(), list(flow.parameters()))
    return log_q.detach(), grads


def _assert_compiled_matches_eager(flow: AugmentedCouplingFlow, n: int, atol: float, grad_rtol: float = 0.0):
    """Switch ``flow`` to compiled and compare log q and its parameter gradients on n samples with eager's.

    Returns the samples (drawn eagerly with seed 1)."""
    with torch.no_grad():
        sample = flow.sample(n, generator=torch.Generator().manual_seed(1))
    eager = _log_q_and_grads(flow, sample.x, sample.a)
    flow.compiled = True
    compiled = _log_q_and_grads(flow, sample.x, sample.a)
    torch.testing.assert_close(compiled[0], eager[0], rtol=0, atol=atol)
    for g_compiled, g_eager in zip(compiled[1], eager[1]):
        torch.testing.assert_close(g_compiled, g_eager, rtol=grad_rtol, atol=atol)
    return sample


@pytest.fixture
def identity_compile(monkeypatch):
    """torch.compile -> identity for the coupling's compiled function, and a fresh cache around the test."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    couplings_module.compiled_transform.cache_clear()
    yield
    couplings_module.compiled_transform.cache_clear()


def test_compiled_flag_reaches_every_coupling_and_can_be_switched():
    flow = _flow("vector", compile=True)
    assert flow.compiled and all(c.compiled for c in [*flow.couplings_a, *flow.couplings_x])
    flow.compiled = False
    assert not flow.compiled and not any(c.compiled for c in [*flow.couplings_a, *flow.couplings_x])


@pytest.mark.parametrize("projection", ["vector", "cartesian", "spherical"])
def test_compiled_path_gives_eager_results(projection, identity_compile):
    flow = _flow(projection)
    sample = _assert_compiled_matches_eager(flow, 7, atol=1e-12)
    with torch.no_grad():
        again = flow.sample(7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again.x, sample.x, rtol=0, atol=1e-12)
    torch.testing.assert_close(again.log_q, sample.log_q, rtol=0, atol=1e-12)


def test_memory_measurement_runs_eager(monkeypatch):
    """graph_bytes_per_configuration never triggers a compilation, and leaves the flag as it was."""

    def refuse():
        raise AssertionError("the memory measurement must not compile")

    monkeypatch.setattr(couplings_module, "compiled_transform", refuse)
    flow = _flow("vector", compile=True)
    assert flow.graph_bytes_per_configuration() > 0
    assert flow.compiled


@pytest.mark.slow
@pytest.mark.parametrize("projection", ["vector"])
def test_torch_compile_matches_eager_in_float64(projection):
    """Real inductor compilation (cold: minutes on 2 CPU cores): log q, its gradients and samples agree with eager."""
    couplings_module.compiled_transform.cache_clear()
    flow = _flow(projection)
    _assert_compiled_matches_eager(flow, 6, atol=1e-10, grad_rtol=1e-8)
    with torch.no_grad():
        again = flow.sample(9, generator=torch.Generator().manual_seed(1))
    with torch._dynamo.config.patch(error_on_recompile=True):  # only the batch axis is dynamic: no new graphs
        flow.log_prob_joint(again.x, again.a).sum().backward()
        with torch.no_grad():
            flow.sample(13)
    with torch.no_grad():
        z = flow.inverse_with_log_det(again.x, again.a)
        back = flow.forward_with_log_det(z[0], z[1])
    torch.testing.assert_close(back[0], again.x, rtol=0, atol=1e-10)
    torch.testing.assert_close(z[2] + back[2], torch.zeros_like(z[2]), rtol=0, atol=1e-10)

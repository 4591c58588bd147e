import functools
import math

import pytest
import torch

from bgflow_se3.flow.baselines.cnf import (
    ContinuousFlow,
    com_free_gaussian_log_prob,
    exact_divergence,
    hutchinson_divergence,
    rk4_integrate,
    sample_com_free_gaussian,
)
from bgflow_se3.flow.baselines.enf import ENFlow
from bgflow_se3.flow.baselines.environment_cnf import EnvironmentKernelFlow
from bgflow_se3.flow.baselines.kernel_cnf import KernelFlow
from tests.conftest import random_rotation

# the environment flow with only the pair's own environments (no total environment G)
LocalEnvironmentFlow = functools.partial(EnvironmentKernelFlow, global_env=False)


def test_com_free_gaussian_is_normalised_on_the_subspace(generator):
    # for n_atoms = 2, dim = 1 the subspace is the line x = (-s, s) / sqrt(2) * ... ; integrate numerically
    s = torch.linspace(-10, 10, 20001, dtype=torch.float64)
    x = torch.stack([-s / math.sqrt(2), s / math.sqrt(2)], dim=1)[:, :, None]  # unit-speed parametrisation
    density = com_free_gaussian_log_prob(x).exp()
    assert torch.trapezoid(density, s).item() == pytest.approx(1.0, abs=1e-8)
    z = sample_com_free_gaussian(20000, 5, 3, generator, dtype=torch.float64)
    assert z.mean(dim=1).abs().max() < 1e-12
    # the squared norm of a standard Gaussian on (n - 1) * dim = 12 dimensions has mean 12
    assert z.pow(2).sum(dim=(1, 2)).mean().item() == pytest.approx(12.0, rel=0.02)


def test_identity_flow_with_length_scale_is_the_scaled_subspace_gaussian(generator):
    flow = KernelFlow(3, 2, length_scale=2.5, n_steps=2).double()  # zero kernel weights: the identity map
    x, log_q = flow.sample(2000, generator=generator)
    assert x.pow(2).sum(dim=(1, 2)).mean().item() == pytest.approx(4 * 2.5**2, rel=0.05)
    expected = com_free_gaussian_log_prob(x / 2.5) - 4 * math.log(2.5)
    torch.testing.assert_close(log_q, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(flow.log_prob(x), expected, atol=1e-12, rtol=0)


def test_rk4_is_fourth_order_on_linear_ode():
    x0 = torch.ones(1, 1, 1, dtype=torch.float64)

    def func(t, x):
        return -x, -torch.ones(1, dtype=x.dtype)

    errors = [abs(rk4_integrate(func, x0, 0.0, 1.0, n)[0].item() - math.exp(-1)) for n in (8, 16)]
    assert errors[0] / errors[1] == pytest.approx(16, rel=0.1)
    assert rk4_integrate(func, x0, 0.0, 1.0, 4)[1].item() == pytest.approx(-1.0)


@pytest.mark.parametrize("flow_cls", [ENFlow, KernelFlow, EnvironmentKernelFlow, LocalEnvironmentFlow])
def test_divergences_agree_with_dense_autograd_jacobian(flow_cls, generator):
    torch.manual_seed(0)
    flow = flow_cls(4, 2).double()
    for p in flow.parameters():  # move away from the identity initialisation
        p.data += 0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype)
    x = sample_com_free_gaussian(3, 4, 2, generator, dtype=torch.float64) * 2
    t = torch.tensor(0.3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda y: flow.dynamics(t, y.reshape(1, 4, 2)).flatten(), x[0].flatten())
    xr = x.clone().requires_grad_(True)
    f = flow.dynamics(t, xr)
    exact = exact_divergence(f, xr, create_graph=False)
    assert exact[0].item() == pytest.approx(torch.trace(jac).item(), abs=1e-10)
    if hasattr(flow.dynamics, "divergence"):
        f2, closed = flow.dynamics.divergence(t, x)
        torch.testing.assert_close(closed, exact, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(f2, f.detach(), atol=1e-12, rtol=0)
    # Hutchinson: unbiased; the mean over many CoM-free probes approaches the exact trace
    probes = sample_com_free_gaussian(4000, 4, 2, generator, dtype=torch.float64)
    xs = x[:1].expand(4000, 4, 2).clone().requires_grad_(True)
    est = hutchinson_divergence(flow.dynamics(t, xs), xs, probes, create_graph=False)
    assert abs(est.mean().item() - exact[0].item()) < 5 * est.std().item() / math.sqrt(4000) + 1e-9


@pytest.mark.parametrize("flow_cls", [ENFlow, KernelFlow, EnvironmentKernelFlow, LocalEnvironmentFlow])
def test_dynamics_equivariance_and_log_prob_invariance(flow_cls, generator):
    torch.manual_seed(1)
    flow = flow_cls(5, 3, n_steps=2).double()
    for p in flow.parameters():
        p.data += 0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype)
    x = sample_com_free_gaussian(4, 5, 3, generator, dtype=torch.float64) * 1.5
    rot = random_rotation(3, generator)
    perm = torch.randperm(5, generator=generator)
    shift = torch.randn(1, 1, 3, generator=generator, dtype=torch.float64)
    t = torch.tensor(0.7, dtype=torch.float64)
    f = flow.dynamics(t, x)
    torch.testing.assert_close(flow.dynamics(t, x @ rot.T), f @ rot.T, atol=1e-10, rtol=0)
    torch.testing.assert_close(flow.dynamics(t, x[:, perm]), f[:, perm], atol=1e-10, rtol=0)
    torch.testing.assert_close(flow.dynamics(t, x + shift), f, atol=1e-10, rtol=0)
    assert f.sum(dim=1).abs().max() < 1e-10  # the CoM does not move
    lp = flow.log_prob(x, trace="exact")
    for y in (x @ rot.T, x[:, perm], x + shift):
        torch.testing.assert_close(flow.log_prob(y, trace="exact"), lp, atol=1e-9, rtol=1e-12)
    assert (lp - com_free_gaussian_log_prob(x)).abs().max() > 1e-3  # the flow is not the identity


@pytest.mark.parametrize("flow_cls", [ENFlow, KernelFlow, EnvironmentKernelFlow])
def test_sample_then_log_prob_agree_and_invert(flow_cls, generator):
    torch.manual_seed(2)
    flow = flow_cls(4, 2, n_steps=16).double()
    for p in flow.parameters():
        p.data += 0.05 * torch.randn(p.shape, generator=generator, dtype=p.dtype)
    with torch.no_grad():
        _check_sample_then_log_prob(flow, generator)


def _check_sample_then_log_prob(flow, generator):
    x, log_q = flow.sample(6, generator=generator)
    assert x.shape == (6, 4, 2) and log_q.shape == (6,)
    assert x.mean(dim=1).abs().max() < 1e-12
    # forward and backward RK4 solves differ by the O(h^4) error of the solver (~1e-4 here, vs log-dets > 0.05)
    torch.testing.assert_close(flow.log_prob(x, trace="exact"), log_q, atol=1e-3, rtol=0)
    z, log_det = flow.forward_with_log_det(x, trace="exact")
    assert log_det.abs().max() > 0.05  # a non-trivial map
    x_back, _ = flow._integrate(z, 1.0, 0.0, "exact", None)  # x -> z -> x round trip
    torch.testing.assert_close(x_back, x, atol=1e-4, rtol=0)


@pytest.mark.parametrize("flow_cls", [KernelFlow, EnvironmentKernelFlow, LocalEnvironmentFlow])
def test_closed_form_divergence_trains_like_the_exact_one(flow_cls, generator):
    """Parameter gradients of the NLL through the closed-form divergence equal those through the exact autograd
    trace: the closed form is right along the whole solve (where x(t) depends on the parameters), not only at t."""
    torch.manual_seed(3)
    flow = flow_cls(4, 2, n_steps=3).double()
    for p in flow.parameters():
        p.data += 0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype)
    x = sample_com_free_gaussian(5, 4, 2, generator, dtype=torch.float64) * 2
    grads = {}
    for trace in ("analytic", "exact"):
        flow.zero_grad()
        (-flow.log_prob(x, trace=trace).mean()).backward()
        grads[trace] = torch.cat([p.grad.flatten() for p in flow.parameters()])
    assert grads["exact"].abs().max() > 1e-3
    torch.testing.assert_close(grads["analytic"], grads["exact"], atol=1e-9, rtol=1e-7)


def test_training_gradients_flow_through_the_solver(generator):
    flow = ENFlow(4, 2, n_steps=2).double()
    x = sample_com_free_gaussian(5, 4, 2, generator, dtype=torch.float64)
    (-flow.log_prob(x).mean()).backward()
    grads = [p.grad for p in flow.parameters()]
    assert all(g is not None for g in grads), "a parameter does not influence log q"
    assert sum(g.abs().sum() for g in grads) > 0
    x_s, log_q = flow.sample(3, generator=generator)
    flow.zero_grad()
    log_q.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())


def test_solver_log_prob_error_flags_a_stiff_field(generator):
    """Tiny for a gentle field at its training step count; large when the same field is made stiff."""
    torch.manual_seed(4)
    flow = EnvironmentKernelFlow(4, 2, n_steps=8).double()
    x = sample_com_free_gaussian(16, 4, 2, generator, dtype=torch.float64) * 2
    last = flow.dynamics.out
    last.weight.data = 0.01 * torch.randn(last.weight.shape, generator=generator, dtype=torch.float64)
    gentle = flow.solver_log_prob_error(x)
    last.weight.data *= 300.0
    stiff = flow.solver_log_prob_error(x)
    assert gentle.max() < 1e-3 < 0.5 < stiff.max(), (gentle.max().item(), stiff.max().item())
    assert flow.n_steps == 8  # restored
    with pytest.raises(ValueError, match="refine"):
        flow.solver_log_prob_error(x, refine=1)


def test_continuous_flow_input_checks():
    flow = KernelFlow(4, 2)
    with pytest.raises(ValueError, match="shape"):
        flow.log_prob(torch.zeros(3, 5, 2))
    with pytest.raises(ValueError, match="NaN"):
        flow.log_prob(torch.full((1, 4, 2), float("nan")))
    with pytest.raises(ValueError, match="closed-form"):
        ContinuousFlow(torch.nn.Linear(2, 2), 4, 2, trace="analytic")


class _Contraction(torch.nn.Module):
    """dx/dt = -a x: x(t) = x(0) exp(-a t), so int_0^1 |f|^2 dt = a |x(0)|^2 (1 - exp(-2 a)) / 2."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, t, x):
        return -self.a * x


def test_kinetic_regulariser_integrates_the_squared_speed(generator):
    from bgflow_se3.train import JointFlow

    a, weight = 0.7, 0.25
    flow = ContinuousFlow(_Contraction(a), 4, 2, n_steps=16, trace="exact", kinetic_weight=weight)
    x = sample_com_free_gaussian(5, 4, 2, generator, dtype=torch.float64)
    log_q, aux = flow.log_prob_and_aux(x)
    expected = weight * a * x.pow(2).sum(dim=(1, 2)) * (1 - math.exp(-2 * a)) / 2
    torch.testing.assert_close(aux, expected, atol=0, rtol=1e-6)  # RK4 error at 16 steps: ~1e-7
    torch.testing.assert_close(log_q, flow.log_prob(x), atol=1e-12, rtol=0)
    # the training objectives see it through JointFlow; without a weight the aux loss is zero
    torch.testing.assert_close(JointFlow(flow).log_prob_and_aux(x[:, None])[1], aux)
    assert JointFlow(flow).has_aux  # so reverse KL adds it too
    flow.kinetic_weight = 0.0
    assert flow.log_prob_and_aux(x)[1].abs().max() == 0 and not JointFlow(flow).has_aux
    with pytest.raises(ValueError, match="kinetic_weight"):
        ContinuousFlow(_Contraction(a), 4, 2, kinetic_weight=-1.0)


def test_a_solve_with_gradients_that_cannot_fit_raises_before_it_allocates(monkeypatch):
    import bgflow_se3.memory as memory
    from bgflow_se3.errors import InsufficientMemoryError

    torch.manual_seed(0)
    flow = KernelFlow(4, 2, n_kernels=4, n_time=2, n_steps=2).double()
    monkeypatch.setattr(memory, "available_memory", lambda device: memory.FreeMemory(1000, "a test limit"))
    x = torch.randn(64, 4, 2, dtype=torch.float64)
    with pytest.raises(InsufficientMemoryError, match="CNF solve of 64 configurations"):
        flow.log_prob(x)
    with torch.no_grad():  # no graph: no guard
        assert flow.log_prob(x).shape == (64,)
    monkeypatch.undo()
    assert flow.log_prob(x).shape == (64,)  # fits in the real memory

import math

import pytest
import torch

from bgflow_se3.train import (
    FABObjective,
    JointFlow,
    fab_loss,
    maximum_likelihood_loss,
    reverse_kl_loss,
)
from tests.train._helpers import GaussianAugmentedFlow, GaussianMixtureEnergy, centre, log_normal_subspace

MEAN = centre(torch.tensor([[0.5, 0.0], [-0.3, 0.8], [0.2, -0.1]], dtype=torch.float64))


def exact_flow(sigma_x=0.7):
    """The test-double flow set to q(x) = N_sub(MEAN, sigma_x^2) and q(a | x) = pi(a | x)."""
    flow = GaussianAugmentedFlow().double()
    with torch.no_grad():
        flow.mu_x.copy_(MEAN)
        flow.log_sigma_x.fill_(math.log(sigma_x))
    return flow


def test_fab_loss_weights_and_gradient():
    log_q = torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64, requires_grad=True)
    log_q_old = torch.tensor([-1.5, -2.0, 2.0], dtype=torch.float64)
    loss = fab_loss(log_q, log_q_old, alpha=2.0, max_weight=10.0)
    weight = torch.tensor([math.exp(-0.5), 1.0, 10.0], dtype=torch.float64)  # exp(-(log q - log q_old)), clipped
    torch.testing.assert_close(loss, -weight * log_q.detach())
    loss.sum().backward()
    torch.testing.assert_close(log_q.grad, -weight)  # the weight is not differentiated


def test_reverse_kl_is_minus_log_z_when_the_flow_is_the_target(generator):
    target = GaussianMixtureEnergy(MEAN[None], [0.7], [1.0], log_z=1.7)
    terms = reverse_kl_loss(exact_flow(0.7), target, 64, generator, aux_weight=0.0)
    torch.testing.assert_close(terms.loss, torch.full((64,), -1.7, dtype=torch.float64))
    terms.loss.mean().backward()  # differentiable through the reparameterised samples


def test_ml_loss_is_the_marginal_nll_when_q_a_equals_pi(generator):
    flow = exact_flow(0.7)
    x = centre(torch.randn(32, 3, 2, generator=generator, dtype=torch.float64))
    terms = maximum_likelihood_loss(flow, x + 5.0, generator, aux_weight=0.0)  # CoM is removed
    torch.testing.assert_close(terms.loss, -log_normal_subspace(x, MEAN, 0.7, 3, 2))
    # a is drawn fresh: the joint log q differs between calls, the bound does not here
    other = maximum_likelihood_loss(flow, x, generator, aux_weight=0.0)
    assert not torch.allclose(other.log_q, terms.log_q)


def test_fab_objective_adds_the_aux_loss_and_retargets_the_buffer(generator):
    flow = GaussianAugmentedFlow(aux_scale=1.0).double()
    with torch.no_grad():
        flow.mu_a.fill_(0.1)
    target = GaussianMixtureEnergy(MEAN[None], [0.7], [1.0], log_z=0.0)
    objective = FABObjective(
        target, batch_size=16, n_intermediate=2, n_updates=2, buffer_max_length=64, buffer_min_length=32, aux_weight=3.0
    )
    model = JointFlow(flow)
    objective.setup(model, generator)
    assert len(objective.buffer) == 32 and objective.n_target_evaluations > 32
    batches = objective.batches(model, generator)
    assert len(batches) == 2 and len(objective.buffer) == 48
    ((weight, terms),) = objective.losses(model, batches[0], generator)
    expected_aux = 3.0 * 0.1**2 * 6  # aux_scale * |mu_a|^2, n_aug * n_atoms * dim = 6 entries
    torch.testing.assert_close(terms.aux, torch.full((16,), expected_aux / 3.0, dtype=torch.float64))
    torch.testing.assert_close(terms.loss, fab_loss(terms.log_q, batches[0].log_q_old) + expected_aux)
    with torch.no_grad():  # change q, then retarget: log w += -(log q_new - log q_old)
        flow.mu_x.add_(0.1)
    log_q_new = model.log_prob(model.pack(batches[0].x, batches[0].a))
    objective.after_update(model, batches[0], [(1.0, terms._replace(log_q=log_q_new))])
    idx = batches[0].indices
    torch.testing.assert_close(
        objective.buffer.log_w[idx], batches[0].log_w - (log_q_new.detach() - batches[0].log_q_old)
    )
    torch.testing.assert_close(objective.buffer.log_q_old[idx], log_q_new.detach())


def test_joint_view_guards_non_finite_rows(flow):
    model = JointFlow(flow)
    z, _ = model.sample(4)
    z = z.detach().clone()
    z[1, 0, 0, 0] = math.nan
    log_q, aux = model.log_prob_and_aux(z)
    assert log_q[1] == -math.inf and torch.isfinite(log_q[[0, 2, 3]]).all() and aux[1] == 0
    assert model.log_pi(z)[1] == -math.inf


def test_fab_setup_fails_clearly_when_the_target_is_never_finite(flow, generator):
    class Broken(GaussianMixtureEnergy):
        def _reduced_energy(self, x):
            return super()._reduced_energy(x) * math.nan

    target = Broken(MEAN[None], [0.7], [1.0], log_z=0.0)
    objective = FABObjective(
        target, batch_size=8, n_intermediate=1, n_updates=1, buffer_max_length=16, buffer_min_length=8
    )
    with pytest.raises(RuntimeError, match="finite weight"):
        objective.setup(JointFlow(flow), generator)

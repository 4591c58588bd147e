import json
import math
import signal
from dataclasses import replace

import pytest
import torch

from bgflow_se3.train import (
    FABObjective,
    MaximumLikelihoodObjective,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    exit_when_interrupted,
    fit_fab,
    fit_kl,
    fit_ml,
)
from tests.train._helpers import GaussianAugmentedFlow, GaussianMixtureEnergy, centre

MEAN = centre(torch.tensor([[1.0, 0.0], [-0.5, 0.8], [0.2, -0.6]], dtype=torch.float64))


def gaussian_target(log_z=0.5, sigma=0.6):
    return GaussianMixtureEnergy(MEAN[None], [sigma], [1.0], log_z=log_z)


def fab_objective(target):
    return FABObjective(
        target, batch_size=16, n_intermediate=2, n_updates=2, buffer_max_length=128, buffer_min_length=32
    )


def params(flow):
    return torch.cat([p.detach().flatten().clone() for p in flow.parameters()])


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, mixture):
    config = TrainConfig(n_iterations=6, lr=1e-2, warmup_iterations=2, seed=3, progress=False, min_grad_history=2)
    straight_flow = GaussianAugmentedFlow().double()
    straight = Trainer(straight_flow, fab_objective(mixture), replace(config, plot=False)).run()

    first_flow = GaussianAugmentedFlow().double()
    Trainer(first_flow, fab_objective(mixture), replace(config, plot=False), out_dir=tmp_path / "b").run(until=3)
    resumed_flow = GaussianAugmentedFlow().double()  # a fresh process: new flow, objective and trainer
    resumed = Trainer(resumed_flow, fab_objective(mixture), config, out_dir=tmp_path / "b").run(resume=True)

    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    assert resumed.history[3]["loss"] == straight.history[3]["loss"]  # the next loss after the stop
    assert torch.equal(params(resumed_flow), params(straight_flow))
    assert resumed.n_target_evaluations == straight.n_target_evaluations > 0
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "b" / "training_curves.png").stat().st_size > 1000
    assert {"ess_flow", "ess_ais", "n_target_evaluations", "wall_time_s"} <= set(resumed.history[-1])


class Injecting(MaximumLikelihoodObjective):
    """ML with faults injected at chosen calls: NaN samples, a NaN gradient, an outlier, all samples NaN."""

    def __init__(self, data, flow):
        super().__init__(data, batch_size=16, aux_weight=0.0)
        self.flow, self.calls = flow, 0

    def losses(self, model, batch, generator):
        ((w, t),) = super().losses(model, batch, generator)
        self.calls += 1
        loss = t.loss
        if self.calls == 13:  # half the samples non-finite: masked, the step still happens
            loss = torch.where(torch.arange(16) % 2 == 0, loss, torch.full_like(loss, math.nan))
        elif self.calls == 14:  # finite loss, NaN gradient
            loss = loss + torch.sqrt(self.flow.mu_x.sum() * 0.0)
        elif self.calls == 15:  # gradient norm far above the median
            loss = loss * 1e6
        elif self.calls == 16:  # nothing left after masking
            loss = torch.full_like(loss, math.inf)
        return [(w, t._replace(loss=loss))]


def test_non_finite_masking_and_skip_counting(generator):
    flow = GaussianAugmentedFlow().double()
    data = MEAN + 0.5 * torch.randn(256, 3, 2, generator=generator, dtype=torch.float64)
    trainer = Trainer(flow, Injecting(data, flow), TrainConfig(n_iterations=20, lr=1e-2, progress=False))
    result = trainer.run(until=13)
    assert result.n_masked_samples == 8 and result.n_skipped_nonfinite == 0
    before = params(flow)
    result = trainer.run(until=16)
    assert torch.equal(params(flow), before)  # three skipped steps left the flow alone
    assert (result.n_skipped_nonfinite, result.n_skipped_outlier, result.n_skipped_masked) == (1, 1, 1)
    assert result.n_masked_samples == 8 + 16
    result = trainer.run()
    assert not torch.equal(params(flow), before) and result.iterations == 20


def test_metrics_log_is_strict_json_when_a_value_is_not_finite(generator, tmp_path):
    """An iteration whose every sample is masked has no finite loss; metrics.jsonl writes it as null, not NaN."""
    flow = GaussianAugmentedFlow().double()
    data = MEAN + 0.5 * torch.randn(256, 3, 2, generator=generator, dtype=torch.float64)
    config = TrainConfig(n_iterations=16, lr=1e-2, progress=False, plot=False)
    history = Trainer(flow, Injecting(data, flow), config, out_dir=tmp_path).run().history
    assert any(not math.isfinite(value) for record in history for value in record.values())

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=refuse) for line in lines]
    assert len(records) == 16 and None in records[-1].values()


def test_learning_rate_warms_up_then_decays():
    flow = GaussianAugmentedFlow().double()
    data = MEAN + torch.zeros(8, 3, 2, dtype=torch.float64)
    config = TrainConfig(n_iterations=10, lr=0.1, warmup_iterations=4, final_lr_fraction=0.1, progress=False)
    lrs = Trainer(flow, MaximumLikelihoodObjective(data, 4), config).run().series("lr")
    decay = [0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 6))) for k in range(6)]
    expected = [0.025, 0.05, 0.075, 0.1] + decay
    assert max(abs(a - b) for a, b in zip(lrs, expected, strict=True)) < 1e-12


def test_fit_ml_learns_the_data_distribution(generator):
    flow = GaussianAugmentedFlow().double()
    data = centre(MEAN + 0.4 * torch.randn(4096, 3, 2, generator=generator, dtype=torch.float64))
    result = fit_ml(
        flow,
        data,
        batch_size=256,
        n_iterations=300,
        lr=0.03,
        warmup_iterations=10,
        progress=False,
        target=gaussian_target(sigma=0.4),
        eval_every=100,
        n_eval=256,
    )
    assert result.n_target_evaluations == 3 * 256  # only the ESS evaluations touch the energy
    assert result.last("ess") > 0.5
    torch.testing.assert_close(centre(flow.mu_x.detach()), MEAN, atol=0.05, rtol=0)
    assert abs(flow.log_sigma_x.exp().item() - 0.4) < 0.03
    assert result.series("loss")[-20:].mean() < result.series("loss")[:5].mean() - 1.0


def test_fit_ml_with_kl_weight_mixes_the_data_and_the_target(generator):
    """loss = NLL(data) + kl_weight * KL(q || p) over isotropic Gaussians q = N(m, s^2) on the k-dim CoM-free
    subspace, with data of mean MEAN and variance sd^2 and target p = N(MEAN, sp^2): m = MEAN and, per unit k,
    d/ds [log s + sd^2 / (2 s^2) + kl_weight * (s^2 / (2 sp^2) - log s)] = 0, i.e. with y = s^2
    kl_weight / sp^2 * y^2 + (1 - kl_weight) * y - sd^2 = 0. For sd = 0.3, sp = 0.6: s = 0.528 at kl_weight = 3
    (0.424 at kl_weight 1, 0.3 without the KL term)."""
    sd, sp, kl_weight = 0.3, 0.6, 3.0
    eps = centre(torch.randn(4096, 3, 2, generator=generator, dtype=torch.float64))
    eps = eps - eps.mean(0)
    k = (3 - 1) * 2
    eps = eps / eps.pow(2).sum((1, 2)).mean().div(k).sqrt()  # empirical mean 0 and variance 1 per dof, exactly
    data = MEAN + sd * eps
    a, b, c = kl_weight / sp**2, 1 - kl_weight, -(sd**2)
    expected = math.sqrt((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))
    assert abs(expected - 0.528) < 1e-3
    flow = GaussianAugmentedFlow().double()
    result = fit_ml(
        flow,
        data,
        batch_size=256,
        target=gaussian_target(sigma=sp),
        kl_weight=kl_weight,
        n_iterations=300,
        lr=0.03,
        warmup_iterations=10,
        final_lr_fraction=0.05,
        progress=False,
    )
    assert result.n_target_evaluations == 300 * 256  # the KL term draws a batch from the flow every iteration
    torch.testing.assert_close(centre(flow.mu_x.detach()), MEAN, atol=0.02, rtol=0)
    assert abs(flow.log_sigma_x.exp().item() - expected) < 0.01, (flow.log_sigma_x.exp().item(), expected)


def test_fit_ml_with_kl_weight_needs_a_target():
    data = MEAN + torch.zeros(8, 3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="target"):
        fit_ml(GaussianAugmentedFlow().double(), data, kl_weight=1.0, n_iterations=1, progress=False)


def test_fit_kl_matches_a_gaussian_target():
    flow = GaussianAugmentedFlow().double()
    result = fit_kl(
        flow,
        gaussian_target(),
        batch_size=128,
        n_iterations=200,
        lr=0.03,
        warmup_iterations=10,
        eval_every=50,
        n_eval=512,
        progress=False,
    )
    assert result.last("ess") > 0.9
    assert result.n_target_evaluations == 200 * 128 + 4 * 512


def test_fit_fab_matches_a_gaussian_target_from_the_energy_alone():
    flow = GaussianAugmentedFlow().double()
    result = fit_fab(
        flow,
        gaussian_target(),
        batch_size=64,
        n_intermediate=2,
        n_updates=4,
        buffer_max_length=1024,
        buffer_min_length=256,
        step_size=0.05,
        n_iterations=60,
        lr=0.03,
        warmup_iterations=5,
        progress=False,
    )
    assert result.last("ess_flow", 10) > 0.8
    assert result.series("ess_flow")[0] < 0.5  # it started far off


def test_exit_when_interrupted_closes_then_exits_with_the_signal_code(capsys):
    closed = []
    stop = TrainingInterrupted("training stopped by SIGTERM after iteration 3 of 10", signal.SIGTERM, 3)
    with pytest.raises(SystemExit) as exited, exit_when_interrupted(lambda: closed.append(True)):
        raise stop
    assert exited.value.code == 143 and closed == [True]
    err = capsys.readouterr().err
    assert "after iteration 3 of 10" in err and "--resume" in err
    with pytest.raises(ValueError), exit_when_interrupted(lambda: closed.append(True)):  # other errors pass through
        raise ValueError("not a stop")
    assert closed == [True]

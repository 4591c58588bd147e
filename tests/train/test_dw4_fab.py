"""FAB on DW4 from the energy alone with the real augmented coupling flow: an integration test.

It checks the wiring with the real flow (exact target-evaluation count, finite losses and weights, no skipped steps,
an exact resume). It does not check learning: at the budget of a unit test on 2 CPU cores the small flow barely
moves (see the report of examples/dw4_fab.py --quick).
"""

import math
from dataclasses import replace

import torch

from bgflow_se3 import DoubleWellEnergy
from bgflow_se3.flow import AugmentedCouplingFlow
from bgflow_se3.train import FABObjective, TrainConfig, Trainer


def make(seed=0):
    torch.manual_seed(seed)
    flow = AugmentedCouplingFlow(4, dim=2, n_aug=1, length_scale=2.0, n_blocks=1, hidden=16, egnn_layers=1).double()
    objective = FABObjective(
        DoubleWellEnergy(),
        batch_size=32,
        n_intermediate=2,
        n_leapfrog=2,
        n_updates=2,
        buffer_max_length=256,
        buffer_min_length=64,
        step_size=0.05,
    )
    return flow, objective


def test_fab_on_dw4_with_the_real_flow(tmp_path):
    config = TrainConfig(n_iterations=4, lr=1e-3, warmup_iterations=1, seed=0, progress=False, plot=False)
    flow, objective = make()
    straight = Trainer(flow, objective, config).run()
    assert straight.n_skipped_nonfinite == straight.n_skipped_outlier == straight.n_masked_samples == 0
    assert all(math.isfinite(r["loss"]) for r in straight.history)
    assert straight.n_target_evaluations == (2 + 4) * 32 * (1 + 2 * 2)  # (setup + iterations) x batch x evals
    assert 0 < straight.last("ess_flow") <= 1 and 0 < straight.last("ess_ais") <= 1
    assert 0.05 < straight.last("hmc_acceptance") < 1
    assert torch.isfinite(objective.buffer.log_w[: len(objective.buffer)]).all()

    first_flow, first_objective = make()
    Trainer(first_flow, first_objective, replace(config), out_dir=tmp_path).run(until=2)
    resumed_flow, resumed_objective = make(seed=1)  # different initial weights: the checkpoint must overwrite them
    resumed = Trainer(resumed_flow, resumed_objective, config, out_dir=tmp_path).run(resume=True)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    for p, q in zip(resumed_flow.parameters(), flow.parameters()):
        assert torch.equal(p, q)

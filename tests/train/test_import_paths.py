"""Import paths users may hold keep working after the re-layering (issue 28)."""

import math

import numpy as np
import pytest
import torch

import bgflow_se3
import bgflow_se3.sampling as sampling
import bgflow_se3.train as train
import bgflow_se3.train.loop as loop

MOVED_TO_SAMPLING = (
    "AISResult",
    "AnnealedImportanceSampler",
    "EnergySamples",
    "HMCPoint",
    "HamiltonianMonteCarlo",
    "JointFlow",
    "LogDensityFn",
    "TargetDensity",
    "autograd_log_density",
    "sample_with_energies",
)


@pytest.mark.parametrize("name", MOVED_TO_SAMPLING)
def test_sampling_names_are_re_exported_by_train(name):
    assert getattr(train, name) is getattr(sampling, name)
    assert name in train.__all__ and name in sampling.__all__


@pytest.mark.parametrize("name", ["TrainConfig", "TrainResult", "Trainer", "exit_when_interrupted"])
def test_the_loop_names_stay_in_train_loop(name):
    assert getattr(loop, name) is getattr(train, name)


def test_the_two_effective_sample_sizes_agree():
    log_w = torch.randn(500, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    log_w[:7] = -math.inf
    ess = bgflow_se3.effective_sample_size(log_w)
    assert isinstance(train.effective_sample_size(log_w), float)
    assert train.effective_sample_size(log_w) == ess.fraction
    assert train.effective_sample_size(np.full(3, -np.inf)) == 0.0

"""Evaluating a trained flow: marginal NLL, the FAB scores (reverse ESS, AIS ESS), the numbers of a training run.

``sample_with_energies`` lives in ``bgflow_se3.sampling`` (below training and analysis) and is re-exported here.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..sampling.ais import AnnealedImportanceSampler
from ..sampling.flow_samples import EnergySamples, sample_with_energies
from ..sampling.joint import JointFlow
from .config import TrainResult
from .metrics import effective_sample_size
from .objectives import FABObjective

__all__ = ["EnergySamples", "fab_scores", "marginal_nll", "sample_with_energies", "training_summary"]


def marginal_nll(
    flow: nn.Module,
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    n_samples: int = 20,
    batch_size: int = 32,
) -> float:
    """Mean negative log-likelihood -log q(x) in nats per configuration of data x (n, n_atoms, dim).

    The marginal log q(x) of an augmented flow is estimated by importance sampling with ``n_samples`` draws of
    a ~ pi(a | x) (``flow.log_prob``), ``batch_size`` configurations at a time (memory grows with
    batch_size * n_samples * n_atoms^2). x must have the flow's dtype and device.
    """
    if len(x) == 0:
        raise ValueError("x is empty: pass at least one configuration")
    with torch.no_grad():
        values = [flow.log_prob(b, n_samples=n_samples, generator=generator) for b in torch.split(x, batch_size)]
    return float(-torch.cat(values).mean())


def fab_scores(
    model: JointFlow,
    objective: FABObjective,
    n: int,
    generator: torch.Generator | None = None,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Reverse ESS of n flow samples and the ESS of AIS towards p (alpha = 1) with the trained, frozen HMC steps.

    Both on the augmented joint against the objective's (regularised) target, normalised to [0, 1]. Samples are
    drawn and annealed ``chunk_size`` at a time (AIS keeps a gradient graph per step: one chunk of 8192 can take
    gigabytes); the ESS is computed over all n weights. Returns ``{"reverse_ess": ..., "ais_ess_towards_p": ...}``
    (the latter only when the objective uses HMC).
    """
    target = objective.target
    hmc = None
    if objective.ais.hmc is not None:
        hmc = copy.deepcopy(objective.ais.hmc)
        hmc.freeze()
        ais = AnnealedImportanceSampler(objective.ais.n_intermediate, alpha=1.0, hmc=hmc)
    log_w_flow, log_w_ais = [], []
    for start in range(0, n, chunk_size):
        with torch.no_grad():
            z, log_q = model.sample(min(chunk_size, n - start), generator)
            log_w_flow.append(target.joint(model, z) - log_q)
        if hmc is not None:
            result = ais.run(z, model.log_prob, lambda zz: target.joint(model, zz), generator)
            log_w_ais.append(result.log_w.detach())
    scores = {"reverse_ess": effective_sample_size(torch.cat(log_w_flow))}
    if hmc is not None:
        scores["ais_ess_towards_p"] = effective_sample_size(torch.cat(log_w_ais))
    return scores


def training_summary(result: TrainResult) -> dict[str, float]:
    """The numbers of a training run that every results.json reports: iterations, wall time (s), target evaluations,
    ESS of the last 10 iterations where logged (``ess_flow``, ``ess_ais``: FAB) and the guards' counters."""
    summary = {
        "iterations": result.iterations,
        "wall_time_s_training": result.wall_time_s,
        "n_target_evaluations": result.n_target_evaluations,
    }
    for key in ("ess_flow", "ess_ais"):
        if math.isfinite(result.last(key)):
            summary[f"{key}_last10"] = result.last(key, 10)
    summary.update(
        n_skipped_nonfinite=result.n_skipped_nonfinite,
        n_skipped_outlier=result.n_skipped_outlier,
        n_masked_samples=result.n_masked_samples,
    )
    return summary

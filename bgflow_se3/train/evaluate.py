"""Evaluating a trained flow: samples with their target energies, and the FAB scores (reverse ESS, AIS ESS)."""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..energy.base import Energy
from .ais import AnnealedImportanceSampler
from .joint import JointFlow
from .loop import TrainResult
from .metrics import effective_sample_size
from .objectives import FABObjective

__all__ = ["EnergySamples", "fab_scores", "marginal_nll", "sample_with_energies", "training_summary"]


class EnergySamples(NamedTuple):
    """Flow samples and what importance weights need, as float64 numpy arrays.

    x: configurations, shape (n, n_atoms, dim) (nm or reduced units). log_q: joint log q(x, a), nats, shape (n,).
    u: reduced target energy (kT, unregularised; +inf where the evaluation failed), shape (n,).
    log_p_aug: log pi(a | x) of the augmented target (0 for non-augmented flows), nats, shape (n,).
    The log importance weights are ``-u + log_p_aug - log_q`` (``bgflow_se3.reweight.log_importance_weights``).
    """

    x: np.ndarray
    log_q: np.ndarray
    u: np.ndarray
    log_p_aug: np.ndarray


def sample_with_energies(
    flow: nn.Module | JointFlow,
    energy: Energy,
    n: int,
    generator: torch.Generator | None = None,
    batch_size: int = 1024,
) -> EnergySamples:
    """Draw n samples from the flow in batches and evaluate the target's reduced energy on them.

    The flow samples in its own dtype and device (use float64 for weights); energies that are NaN count as
    failed evaluations (+inf). Returns ``EnergySamples`` on the CPU.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got {n} and {batch_size}")
    model = flow if isinstance(flow, JointFlow) else JointFlow(flow)
    xs, log_qs, us, log_ps = [], [], [], []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            z, log_q = model.sample(min(batch_size, n - start), generator)
            x, _ = model.unpack(z)
            u = energy(x)
            us.append(torch.where(torch.isnan(u), torch.full_like(u, math.inf), u).cpu())
            log_ps.append(model.log_pi(z).cpu())
            log_qs.append(log_q.cpu())
            xs.append(x.cpu())
    x, log_q, u, log_p_aug = (torch.cat(v).double().numpy() for v in (xs, log_qs, us, log_ps))
    return EnergySamples(x, log_q, u, log_p_aug)


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

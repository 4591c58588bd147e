"""Flow samples with their target energies: what importance weights and free energies need, as numpy arrays."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..energy.base import Energy
from .joint import JointFlow

__all__ = ["EnergySamples", "sample_with_energies"]


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

"""Importance-weight diagnostics used while training: effective sample size and the log-normaliser estimate."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..ess import kish_effective_count

__all__ = ["effective_sample_size", "log_normalizer"]


def effective_sample_size(log_w: Tensor) -> float:
    """Kish's normalised effective sample size (sum w)^2 / (n sum w^2), in [0, 1]: as a float, what
    ``bgflow_se3.effective_sample_size(log_w).fraction`` gives for valid weights (one implementation,
    ``bgflow_se3.ess``), but forgiving, as training logs it.

    log_w: unnormalised log importance weights, shape (n,) (a tensor on any device or an array); -inf is a zero
    weight, NaN counts as -inf. Returns 0.0 when every weight is zero or there is none.
    """
    log_w = torch.as_tensor(log_w).detach().double().flatten().cpu().numpy()
    log_w = np.where(np.isnan(log_w), -np.inf, log_w)
    if log_w.size == 0 or not np.isfinite(log_w).any():
        return 0.0
    return kish_effective_count(log_w) / log_w.size


def log_normalizer(log_w: Tensor) -> tuple[float, float]:
    """log Z = log mean(w) from importance weights, and its one-sigma error.

    log_w: log importance weights log p~ - log q, shape (n,); then E_q[w] = Z. The error is the delta-method
    standard error sqrt(var(w) / n) / mean(w) of log mean(w) (first order; it is itself noisy when the weights
    are heavy-tailed). Returns (log Z in nats, one-sigma error in nats).
    """
    log_w = torch.as_tensor(log_w).detach().double().flatten()
    n = log_w.numel()
    if n < 2 or not bool(torch.isfinite(log_w).any()):
        raise ValueError(f"need at least two samples with a finite log weight, got {n} samples")
    log_mean = torch.logsumexp(log_w, 0) - math.log(n)
    w = torch.exp(log_w - log_mean)  # weights relative to their mean
    stderr = float(w.std(unbiased=True)) / math.sqrt(n)
    return float(log_mean), stderr

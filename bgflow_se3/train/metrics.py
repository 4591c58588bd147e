"""Importance-weight diagnostics used while training: effective sample size and the log-normaliser estimate."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["effective_sample_size", "log_normalizer"]


def effective_sample_size(log_w: Tensor) -> float:
    """Kish's normalised effective sample size (sum w)^2 / (n sum w^2), in [0, 1].

    log_w: unnormalised log importance weights, shape (n,); -inf is a zero weight, NaN counts as -inf.
    Returns 0.0 when every weight is zero.
    """
    log_w = torch.as_tensor(log_w).detach().double().flatten()
    log_w = torch.where(torch.isnan(log_w), torch.full_like(log_w, -math.inf), log_w)
    if log_w.numel() == 0 or not bool(torch.isfinite(log_w).any()):
        return 0.0
    return float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)) / log_w.numel())


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

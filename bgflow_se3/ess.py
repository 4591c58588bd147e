"""Kish's effective sample size of importance weights: the one implementation, below training and reweighting.

``bgflow_se3.effective_sample_size`` (``reweight.weights``; checks its input, returns fraction and count) and
``bgflow_se3.train.effective_sample_size`` (``train.metrics``; forgiving, returns the fraction as a float, as
logged while training) both compute it here. Imports nothing from the package.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

__all__ = ["kish_effective_count"]


def kish_effective_count(log_w: np.ndarray) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2``, a count in [1, n].

    log_w: unnormalised log importance weights in nats, float64 numpy array of shape (n,) with n >= 1, no NaN or
    +inf and at least one finite entry (-inf is a zero weight). The weights are shifted by their maximum first, as
    ``2 log w`` overflows for ``log w > 3.6e307``.
    """
    log_w = log_w - log_w.max()
    return math.exp(2.0 * logsumexp(log_w) - logsumexp(2.0 * log_w))

"""Pareto k-hat: does a proposal miss part of the target's mass? The tail diagnostic of importance weights.

A flow that covers a state only thinly (its tails lighter than the target's somewhere in the state) leaves a few
samples with very large weights. Kish's effective sample size cannot see the danger: on the samples drawn it can
look fine while the weights' variance is infinite, and then the estimate and its bootstrap error are both
unreliable (usually biased towards the part of the state the flow does cover). Pareto-smoothed importance
sampling's diagnostic (Vehtari, Simpson, Gelman, Yao & Gabry, "Pareto smoothed importance sampling", JMLR 25,
2024) fits a generalised Pareto distribution to the largest weights; its shape k-hat estimates how many moments the
weights have (1 / k of them). With k-hat > 0.7 (or the smaller ``pareto_k_threshold`` for few samples) the
estimate is not to be trusted, whatever its error bar says; below 0.5 the central limit theorem holds.

The fit is Zhang & Stephens (2009) (profile-likelihood posterior mean of the GPD's scale-free parameter), with the
weakly informative prior towards k = 0.5 that PSIS uses; ``arviz`` has the same estimator, and is not a dependency
here for one function. It sees a *thin* cover; a region the proposal never reaches at all leaves no trace in any
weight, which only a different proposal can reveal.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

__all__ = ["PARETO_K_LIMIT", "generalized_pareto_shape", "pareto_k", "pareto_k_threshold"]

#: the largest k-hat at which PSIS trusts an importance-sampling estimate, for any number of samples
PARETO_K_LIMIT = 0.7

#: fewer tail weights than this leave k-hat undefined (NaN)
_MIN_TAIL = 5


def generalized_pareto_shape(exceedances: np.ndarray) -> float:
    """The shape k of a generalised Pareto distribution fitted to positive ``exceedances`` (n,) (Zhang & Stephens
    2009 with PSIS's prior: (n k + 10 * 0.5) / (n + 10)). k > 0: a power-law tail with 1 / k finite moments."""
    x = np.sort(np.asarray(exceedances, dtype=np.float64))
    n = x.size
    if n < _MIN_TAIL or not np.all(np.isfinite(x)) or x[-1] <= 0:
        return math.nan
    m = 30 + int(math.sqrt(n))
    quartile = x[max(0, int(n / 4 + 0.5) - 1)]
    if quartile <= 0:
        quartile = x[x > 0][0]
    theta = 1.0 / x[-1] + (1.0 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))) / (3.0 * quartile)
    k_of_theta = -np.log1p(-theta[:, None] * x).mean(axis=1)  # Zhang & Stephens' k, = -(the GPD shape)
    profile = n * (np.log(theta / k_of_theta) + k_of_theta - 1.0)
    posterior = np.exp(-logsumexp(profile[None, :] - profile[:, None], axis=1))
    theta_hat = float((theta * posterior).sum())
    shape = float(np.log1p(-theta_hat * x).mean())
    return (n * shape + 10 * 0.5) / (n + 10)


def pareto_k(log_w: np.ndarray) -> float:
    """PSIS's k-hat of importance weights given as log weights (n,) in nats (-inf: weight 0, ignored).

    The tail is the M = min(n / 5, 3 sqrt(n)) largest weights, as exceedances of the next one. NaN when fewer than
    25 weights are nonzero (too few for a tail), or when the tail's weights are all equal. Compare with
    ``pareto_k_threshold(n)``.
    """
    log_w = np.asarray(log_w, dtype=np.float64).reshape(-1)
    if np.isnan(log_w).any() or np.isposinf(log_w).any():
        raise ValueError("log weights must not be NaN or +inf (-inf is a zero weight)")
    log_w = np.sort(log_w[np.isfinite(log_w)])
    n = log_w.size
    n_tail = int(min(n / 5, 3 * math.sqrt(n)))
    if n_tail < _MIN_TAIL:
        return math.nan
    top = log_w[-1]
    exceedances = np.exp(log_w[-n_tail:] - top) - math.exp(log_w[-n_tail - 1] - top)
    if not exceedances[-1] > 0:
        return math.nan
    return generalized_pareto_shape(exceedances[exceedances > 0])


def pareto_k_threshold(n: int) -> float:
    """The k-hat above which an estimate from ``n`` nonzero weights is unreliable: min(1 - 1 / log10 n, 0.7)
    (Vehtari et al. 2024; fewer samples need a lighter tail)."""
    if n < 10:
        return 0.0
    return min(1.0 - 1.0 / math.log10(n), PARETO_K_LIMIT)

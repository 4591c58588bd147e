"""Importance weights of flow samples towards the target: log weights, effective sample sizes, expectations.

Conventions: ``log_q`` is the flow's log-density of each sample in nats (the joint ``log q(x, a)`` for augmented
flows), ``u`` the target's reduced energy ``E(x) / kT`` (dimensionless), ``log_p_aug`` the augmented target's
``log pi(a | x)`` in nats. All are 1-D of shape ``(n,)``, given as numpy arrays or torch tensors (any device); every
function computes in float64 numpy and returns floats, numpy arrays or small result types.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy.special import logsumexp

from ..errors import EmptyStateError, LowOverlapWarning, NonFiniteInputError
from ..ess import kish_effective_count
from .pymbar_calls import checked_exp

__all__ = [
    "DEFAULT_MIN_ESS",
    "EffectiveSampleSize",
    "Estimate",
    "as_float_array",
    "as_mask",
    "effective_sample_size",
    "expectation",
    "forward_effective_sample_size",
    "log_importance_weights",
    "log_partition_ratio",
]

#: Below this many (Kish) effective samples an estimate is flagged with a LowOverlapWarning.
DEFAULT_MIN_ESS = 50.0


@dataclass(frozen=True)
class Estimate:
    """An estimate with its one-sigma standard error: ``value, stderr = estimate`` unpacks the two numbers.

    value: the estimate (units stated by the function that returns it).
    stderr: one standard deviation of the estimate's sampling distribution (asymptotic or bootstrap).
    method: how it was computed, e.g. ``"EXP"``, ``"BAR"``, ``"MBAR"``, ``"SNIS"``.
    """

    value: float
    stderr: float
    method: str

    def __iter__(self):
        yield self.value
        yield self.stderr


class EffectiveSampleSize(NamedTuple):
    """Effective sample size: ``count`` samples' worth, ``fraction`` = count / n in [0, 1]."""

    fraction: float
    count: float


def _to_numpy(values: Any, name: str) -> Any:
    """A torch tensor (any device) as numpy; anything else unchanged. A ``meta`` tensor holds no data: ValueError."""
    if hasattr(values, "detach"):  # torch tensor on any device; no torch import needed here
        if getattr(values, "is_meta", False):
            raise ValueError(f"{name} is a tensor on the 'meta' device, which holds no data")
        values = values.detach().cpu().numpy()
    return values


def as_float_array(values: Any, name: str, n: int | None = None, dtype=np.float64) -> np.ndarray:
    """``values`` (numpy array, torch tensor, or sequence) as a 1-D numpy array of length ``n`` (if given)."""
    values = _to_numpy(values, name)
    try:
        array = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be numbers (a numpy array or torch tensor), got {error}") from error
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D of shape (n,), got shape {array.shape}")
    if n is not None and array.shape[0] != n:
        raise ValueError(f"{name} has {array.shape[0]} entries but log_q has {n}; pass one value per sample")
    return array


def as_mask(values: Any, name: str, n: int) -> np.ndarray:
    """A boolean mask of shape ``(n,)``; integer or float masks are refused (they usually hide a bug)."""
    mask = np.asarray(_to_numpy(values, name))
    if mask.dtype != np.bool_:
        raise TypeError(f"{name} must be a boolean mask of shape ({n},), got dtype {mask.dtype}")
    if mask.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one entry per sample), got {mask.shape}")
    return mask


def log_importance_weights(log_q: Any, u: Any, log_p_aug: Any | None = None) -> np.ndarray:
    """Unnormalised log importance weights ``log w = -u + log pi(a | x) - log q`` of flow samples, in nats.

    log_q: flow log-density of each sample, nats, shape (n,); must be finite (a non-finite log q means the flow
        evaluated a sample it cannot have produced, which is a bug upstream).
    u: reduced target energy, shape (n,); ``+inf`` (a failed or blown-up evaluation) gives weight 0,
        NaN and ``-inf`` raise.
    log_p_aug: augmented target ``log pi(a | x)``, nats, shape (n,), or None for non-augmented flows;
        ``-inf`` gives weight 0, NaN and ``+inf`` raise.
    Returns log w, float64 numpy array of shape (n,), ``-inf`` where the weight is 0.
    """
    log_q = as_float_array(log_q, "log_q")
    n = log_q.shape[0]
    if n == 0:
        raise ValueError("log_q is empty: pass at least one sample")
    u = as_float_array(u, "u", n)
    bad = ~np.isfinite(log_q)
    if bad.any():
        raise NonFiniteInputError(
            f"log_q is not finite for {int(bad.sum())} of {n} samples (first at index {int(np.argmax(bad))}); "
            "drop those samples before reweighting and check the flow's log-determinant"
        )
    bad = np.isnan(u) | (u == -np.inf)
    if bad.any():
        raise NonFiniteInputError(
            f"the reduced energy u is NaN or -inf for {int(bad.sum())} of {n} samples; "
            "only +inf (weight 0) is allowed: check the energy evaluation"
        )
    log_w = -u - log_q
    if log_p_aug is not None:
        log_p_aug = as_float_array(log_p_aug, "log_p_aug", n)
        bad = np.isnan(log_p_aug) | (log_p_aug == np.inf)
        if bad.any():
            raise NonFiniteInputError(
                f"log_p_aug is NaN or +inf for {int(bad.sum())} of {n} samples; check the augmented target"
            )
        log_w = log_w + log_p_aug
    return log_w


def _check_log_w(log_w: Any) -> np.ndarray:
    log_w = as_float_array(log_w, "log_w")
    if log_w.shape[0] == 0:
        raise ValueError("log_w is empty: pass at least one sample")
    if np.isnan(log_w).any() or (log_w == np.inf).any():
        raise NonFiniteInputError("log_w holds NaN or +inf; build it with log_importance_weights")
    if not np.isfinite(log_w).any():
        raise EmptyStateError(
            "every sample has weight 0 (all log weights are -inf): no estimate is possible; "
            "check the energies (+inf everywhere?) and the flow"
        )
    return log_w


def effective_sample_size(log_w: Any) -> EffectiveSampleSize:
    """Kish (reverse) effective sample size ``(sum w)^2 / sum w^2`` of flow samples.

    log_w: log importance weights, shape (n,), from ``log_importance_weights``.
    Returns ``EffectiveSampleSize(fraction, count)`` with count in [1, n].
    """
    log_w = _check_log_w(log_w)
    count = kish_effective_count(log_w)
    return EffectiveSampleSize(fraction=count / log_w.shape[0], count=count)


def forward_effective_sample_size(log_w: Any) -> EffectiveSampleSize:
    """Forward effective sample size ``1 / (mean(1/w) * mean(w))`` with w normalised to mean 1, on target samples.

    log_w: log importance weights ``-u + log pi(a|x) - log q`` evaluated on samples drawn from the target
        (e.g. MD or test data, one augmented ``a ~ pi(a|x)`` per sample), shape (n,).
    Returns ``EffectiveSampleSize(fraction, count)``; a target sample the flow gives (almost) no density ruins it.
    """
    log_w = _check_log_w(log_w)
    log_w = log_w - log_w.max()  # the fraction is scale-free; shifting keeps logsumexp(-log_w) finite
    n = log_w.shape[0]
    log_mean_w = logsumexp(log_w) - math.log(n)
    with np.errstate(over="ignore"):
        log_mean_inv_w = logsumexp(-log_w) - math.log(n)
    fraction = math.exp(-(log_mean_w + log_mean_inv_w)) if np.isfinite(log_mean_inv_w) else 0.0
    return EffectiveSampleSize(fraction=fraction, count=fraction * n)


def _warn_low_ess(count: float, min_ess: float, what: str) -> None:
    if count < min_ess:
        warnings.warn(
            f"{what} rests on {count:.1f} effective samples (< {min_ess:g}): the estimate and its error bar "
            "are unreliable; draw more samples or improve the flow's overlap with the target",
            LowOverlapWarning,
            stacklevel=3,
        )


def expectation(log_w: Any, values: Any, *, min_ess: float = DEFAULT_MIN_ESS) -> Estimate:
    """Self-normalised importance-sampling estimate of ``E_target[f]`` with its delta-method standard error.

    log_w: log importance weights, shape (n,). values: f at each sample, shape (n,), finite wherever w > 0.
    The standard error is ``sqrt(sum_n wbar_n^2 (f_n - E)^2)`` with ``wbar`` the normalised weights (first-order
    delta method for a ratio of means; it assumes independent samples).
    Warns ``LowOverlapWarning`` when the Kish effective sample size is below ``min_ess``.
    """
    log_w = _check_log_w(log_w)
    values = as_float_array(values, "values", log_w.shape[0])
    alive = np.isfinite(log_w)
    if not np.isfinite(values[alive]).all():
        raise NonFiniteInputError("values hold NaN or inf at samples with nonzero weight")
    wbar = np.exp(log_w[alive] - logsumexp(log_w[alive]))
    f = values[alive]
    mean = float(np.sum(wbar * f))
    stderr = float(np.sqrt(np.sum(wbar**2 * (f - mean) ** 2)))
    _warn_low_ess(1.0 / float(np.sum(wbar**2)), min_ess, "the expectation")
    return Estimate(value=mean, stderr=stderr, method="SNIS")


def log_partition_ratio(
    log_q: Any,
    u: Any,
    log_p_aug: Any | None = None,
    *,
    reference: Any | None = None,
    min_ess: float = DEFAULT_MIN_ESS,
    min_overlap: float = 0.03,
) -> Estimate:
    """``log(Z_target / Z_flow)`` in nats (equals ``-(F_target - F_flow)`` in kT), with its one-sigma error.

    Z_flow = 1 for a normalised flow, so this estimates ``log Z_target = log int exp(-u(x)) dx``.
    log_q, u, log_p_aug: of the flow samples, shape (n,) (see ``log_importance_weights``).
    reference: optional ``TargetSamples`` drawn from the target (with the flow's log q and u evaluated on them);
        with it the estimate is BAR (pymbar.bar, both directions), without it EXP (pymbar.exp, the importance-
        sampling estimate ``log mean w`` with the delta-method error).
    Warns ``LowOverlapWarning`` when EXP rests on fewer than ``min_ess`` effective samples or the BAR overlap is
    below ``min_overlap``; raises ``ConvergenceError`` when pymbar
    does not converge or returns a result that cannot be trusted.
    """
    log_w = log_importance_weights(log_q, u, log_p_aug)
    if not np.isfinite(log_w).any():
        raise EmptyStateError("every flow sample has weight 0 (u = +inf everywhere?): log Z cannot be estimated")
    if reference is None:
        _warn_low_ess(effective_sample_size(log_w).count, min_ess, "log_partition_ratio (EXP)")
        delta_f, stderr = checked_exp(-log_w)
        return Estimate(value=-delta_f, stderr=stderr, method="EXP")
    from .pymbar_calls import checked_bar

    log_w_ref = log_importance_weights(reference.log_q, reference.u, reference.log_p_aug)
    delta_f, stderr = checked_bar(-log_w, log_w_ref, min_overlap=min_overlap)
    return Estimate(value=-delta_f, stderr=stderr, method="BAR")

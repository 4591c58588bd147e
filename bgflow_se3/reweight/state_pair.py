"""The free energy between two states with its reliability verdict: the rule behind ``dF_reliable``.

``state_pair_free_energy`` is what the dipeptide evaluation (``analysis/dipeptide.py``) and the workflow's torsion
states (``workflow/states.py``) both report: pymbar's EXP estimate F_A - F_B over flow samples with a bootstrap
error, the effective samples in each state, and ``reliable`` = a finite estimate with no warning: no low overlap
reported by pymbar, each state resting on at least ``min_effective_samples`` effective samples, and each state's
weights light-tailed (Pareto k-hat at most ``pareto_k_threshold``, see ``reweight.tail``: a heavier tail means the
flow covers part of the state too thinly, and the estimate and its error bar cannot be trusted).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConvergenceError, EmptyStateError, LowOverlapWarning
from .free_energy import free_energy_difference
from .tail import pareto_k, pareto_k_threshold
from .weights import effective_sample_size, log_importance_weights

__all__ = ["StatePairFreeEnergy", "state_effective_samples", "state_pair_free_energy", "state_pareto_k"]


@dataclass(frozen=True)
class StatePairFreeEnergy:
    """F_A - F_B in kT with its error and verdict.

    value, stderr: kT; NaN when the estimate failed (then ``error`` says why). effective_a, effective_b: Kish
    effective samples of the flow in each state (0 when no sample of the state has nonzero weight). pareto_k_a,
    pareto_k_b: the tail index k-hat of each state's weights (NaN: too few weighted samples to fit a tail).
    warning: the first of pymbar's low-overlap warnings, the too-few-effective-samples message and the heavy-tail
    message that applies; "" when none. error: the estimator's failure (empty state, no convergence); "" when none.
    reliable: finite value and no warning.
    """

    value: float
    stderr: float
    effective_a: float
    effective_b: float
    reliable: bool
    warning: str
    error: str
    pareto_k_a: float = math.nan
    pareto_k_b: float = math.nan


def state_effective_samples(log_w: np.ndarray, mask: np.ndarray) -> float:
    """Kish effective sample count of the samples in ``mask`` (log weights ``log_w``); 0 when none has weight."""
    if not np.isfinite(log_w[mask]).any():
        return 0.0
    return float(effective_sample_size(np.where(mask, log_w, -np.inf)).count)


def state_pareto_k(log_w: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(k-hat, the threshold it must not exceed) of the weights of the samples in ``mask``; k-hat NaN when too few
    of them have weight (``reweight.tail.pareto_k``)."""
    weighted = log_w[mask]
    weighted = weighted[np.isfinite(weighted)]
    return pareto_k(weighted), pareto_k_threshold(weighted.size)


def state_pair_free_energy(
    log_q: Any,
    u: Any,
    in_a: Any,
    in_b: Any,
    *,
    log_p_aug: Any | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
    min_effective_samples: float = 50.0,
    labels: tuple[str, str] = ("A", "B"),
) -> StatePairFreeEnergy:
    """F_A - F_B (kT) by ``free_energy_difference(method="exp")`` with ``n_bootstrap`` bootstrap resamples (0: the
    delta method), and whether it is to be trusted.

    log_q, u, log_p_aug: as ``free_energy_difference`` (flow log-density, reduced target energy, augmented prior).
    in_a, in_b: boolean masks (n,) of the two states. labels: the states' names in the too-few-samples warning.
    ``EmptyStateError`` and ``ConvergenceError`` do not raise: they give value NaN and ``error``; other errors (bad
    input) raise. Every warning pymbar gave is handed on to the caller as well.
    """
    log_w = log_importance_weights(log_q, u, log_p_aug=log_p_aug)
    in_a, in_b = np.asarray(in_a, dtype=bool), np.asarray(in_b, dtype=bool)
    effective_a, effective_b = state_effective_samples(log_w, in_a), state_effective_samples(log_w, in_b)
    warning = error = ""
    try:  # pymbar through the checked reweighting API: a clear failure, never a silent number
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LowOverlapWarning)
            estimate = free_energy_difference(
                log_q, u, in_a, in_b, log_p_aug=log_p_aug, method="exp", n_bootstrap=n_bootstrap, seed=seed
            )
        value, stderr = estimate.value, estimate.stderr
        low_overlap = [str(w.message) for w in caught if issubclass(w.category, LowOverlapWarning)]
        for w in caught:  # hand every warning on to the caller as well
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        warning = "; ".join(low_overlap)
    except (EmptyStateError, ConvergenceError) as failure:
        value = stderr = math.nan
        error = str(failure)
    (k_a, limit_a), (k_b, limit_b) = state_pareto_k(log_w, in_a), state_pareto_k(log_w, in_b)
    if min(effective_a, effective_b) < min_effective_samples and not warning:
        warning = (
            f"effective samples per state {effective_a:.1f} ({labels[0]}) and {effective_b:.1f} ({labels[1]}): "
            f"fewer than {min_effective_samples:g}"
        )
    heavy = [
        f"{label} (Pareto k-hat {k:.2f} > {limit:.2f})"
        for label, k, limit in ((labels[0], k_a, limit_a), (labels[1], k_b, limit_b))
        if k > limit
    ]
    if heavy and not warning:  # one reason is enough; each state's k-hat is reported either way
        warning = (
            f"heavy-tailed weights in {' and '.join(heavy)}: the flow covers part of a state too thinly, so the "
            "estimate may be biased and its error bar too small"
        )
    return StatePairFreeEnergy(
        value=value,
        stderr=stderr,
        effective_a=effective_a,
        effective_b=effective_b,
        reliable=bool(math.isfinite(value) and not warning),
        warning=warning,
        error=error,
        pareto_k_a=k_a,
        pareto_k_b=k_b,
    )

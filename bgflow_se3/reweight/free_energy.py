"""Free-energy differences between states of the target from flow samples, through pymbar (MBAR, EXP, BAR).

A state is a boolean mask over the samples (e.g. ``phi in (0, 2)``); its free energy is
``F_A = -log int_A exp(-u(x)) dx`` in kT, so ``F_A - F_B = -log(P_target(A) / P_target(B))``.
The flow is a sampled thermodynamic state with reduced potential ``-log q`` (normalised, f = 0); the target and
its restrictions to A and B are unsampled states (MBAR, EXP) or, when samples drawn from the target are given
(``TargetSamples``, e.g. MD), sampled ones (MBAR, BAR).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Literal, NamedTuple

import numpy as np
from scipy.special import logsumexp

from ..errors import ConvergenceError, EmptyStateError, LowOverlapWarning
from .pymbar_calls import DEFAULT_MIN_OVERLAP, checked_bar, checked_mbar, pymbar_errors
from .weights import DEFAULT_MIN_ESS, Estimate, as_float_array, as_mask, log_importance_weights

__all__ = ["FreeEnergy", "TargetSamples", "free_energy_difference"]

logger = logging.getLogger(__name__)

Method = Literal["mbar", "exp", "bar"]


class FreeEnergy(Estimate):
    """A free-energy difference in kT with its one-sigma error: ``value, stderr = result``.

    value: F_A - F_B in kT. stderr: one sigma in kT (pymbar's asymptotic estimate, or the bootstrap standard
    deviation when ``method`` ends in ``+bootstrap``). method: ``"MBAR"``, ``"EXP"`` or ``"BAR"`` (+ ``"+bootstrap"``).
    """


class TargetSamples(NamedTuple):
    """Samples drawn from the target (e.g. MD), with the flow and target evaluated on them; all shape (m,).

    log_q: flow log-density (joint log q(x, a) with a ~ pi(a | x) for augmented flows), nats.
    u: reduced target energy. log_p_aug: log pi(a | x) in nats, or None.
    in_a, in_b: state masks (needed by ``free_energy_difference``, not by ``log_partition_ratio``).
    """

    log_q: Any
    u: Any
    log_p_aug: Any | None = None
    in_a: Any | None = None
    in_b: Any | None = None


class _Samples(NamedTuple):
    """Reduced potentials of one sample set: flow ``-log q`` and augmented target ``u - log pi``, masks."""

    u_flow: np.ndarray
    u_target: np.ndarray
    in_a: np.ndarray
    in_b: np.ndarray

    def take(self, index: np.ndarray) -> _Samples:
        return _Samples(*(field[index] for field in self))

    def __len__(self) -> int:
        return self.u_flow.shape[0]


def _make_samples(log_q: Any, u: Any, log_p_aug: Any, in_a: Any, in_b: Any, what: str) -> _Samples:
    """Validated reduced potentials: ``u_flow = -log q``, ``u_target = u - log pi(a|x)`` (= u_flow - log w)."""
    log_w = log_importance_weights(log_q, u, log_p_aug)  # validates log q, u and log pi
    n = log_w.shape[0]
    if in_a is None or in_b is None:
        raise ValueError(f"{what}: in_a and in_b (boolean masks of shape ({n},)) are required")
    u_flow = -as_float_array(log_q, "log_q")
    u_target = u_flow - log_w  # +inf where the weight is 0
    return _Samples(u_flow, u_target, as_mask(in_a, f"{what} in_a", n), as_mask(in_b, f"{what} in_b", n))


def _check_states(flow: _Samples, reference: _Samples | None, method: str) -> None:
    """Each state holds a sample with nonzero weight (BAR: a reference sample too); raises with the remedy."""
    sets = [flow] if reference is None or method == "exp" else [flow, reference]
    for name in ("in_a", "in_b"):
        n_in = sum(int(getattr(s, name).sum()) for s in sets)
        n_alive = sum(int((getattr(s, name) & np.isfinite(s.u_target)).sum()) for s in sets)
        state = name[-1].upper()
        if n_in == 0:
            raise EmptyStateError(
                f"state {state} ({name}) holds none of the {sum(len(s) for s in sets)} samples: its free energy is "
                "undefined; check the mask, or draw more samples if the state is rare"
            )
        if n_alive == 0:
            raise EmptyStateError(
                f"every sample in state {state} ({name}) has weight 0 (u = +inf): its free energy is undefined"
            )
    if method == "bar":
        for name in ("in_a", "in_b"):
            if not getattr(reference, name).any():
                raise EmptyStateError(
                    f"BAR needs target samples in state {name[-1].upper()} ({name}), but the reference has none; "
                    "use method='mbar', which pools both sample sets"
                )


def _check_distinct(flow: _Samples, reference: _Samples | None, method: str) -> None:
    """The states differ on some sample of nonzero weight (flow, and reference unless EXP); else ValueError."""
    sets = [flow] if reference is None or method == "exp" else [flow, reference]
    if all(np.array_equal(s.in_a & np.isfinite(s.u_target), s.in_b & np.isfinite(s.u_target)) for s in sets):
        raise ValueError(
            "in_a and in_b select the same samples (of those with nonzero weight): F_A - F_B would be 0 +/- 0 by "
            "construction, not an estimate; give two different states (e.g. in_a and ~in_a)"
        )


def _mbar(flow: _Samples, reference: _Samples | None, diagnostics: bool, min_ess: float, min_overlap: float):
    sets = [flow] if reference is None else [flow, reference]
    u_flow = np.concatenate([s.u_flow for s in sets])
    u_target = np.concatenate([s.u_target for s in sets])
    in_a = np.concatenate([s.in_a for s in sets])
    in_b = np.concatenate([s.in_b for s in sets])
    u_kn = np.stack([u_flow, u_target, np.where(in_a, u_target, np.inf), np.where(in_b, u_target, np.inf)])
    n_k = np.array([len(flow), 0 if reference is None else len(reference), 0, 0])
    mbar = checked_mbar(u_kn, n_k)
    errors = pymbar_errors()
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            result = mbar.compute_free_energy_differences(compute_uncertainty=True)
        except errors as error:  # e.g. unnormalised weights when log weights span more than float64 can resolve
            raise ConvergenceError(
                f"pymbar.MBAR could not estimate F_A - F_B ({error}); the log weights may span too wide a range "
                "(one sample dominating): check the energies, or try method='exp'"
            ) from error
    value, stderr = float(result["Delta_f"][3, 2]), float(result["dDelta_f"][3, 2])
    if not (math.isfinite(value) and math.isfinite(stderr)):
        raise ConvergenceError(f"MBAR returned F_A - F_B = {value} +/- {stderr}; a state has too little weight")
    if diagnostics:
        try:
            ess = mbar.compute_effective_sample_number()
        except errors as error:
            raise ConvergenceError(f"pymbar.MBAR could not compute effective sample numbers: {error}") from error
        for k, name in ((2, "A"), (3, "B")):
            if ess[k] < min_ess:
                warnings.warn(
                    f"MBAR: state {name} rests on {ess[k]:.1f} effective samples (< {min_ess:g}); the free energy "
                    f"{value:.3f} +/- {stderr:.3f} kT is unreliable: draw more samples or improve the flow",
                    LowOverlapWarning,
                    stacklevel=4,
                )
        if reference is not None:
            matrix = mbar.compute_overlap()["matrix"][:2, :2]
            eigenvalues = np.sort(np.linalg.eigvals(matrix).real)[::-1]
            overlap = 1.0 - eigenvalues[1]
            if overlap < min_overlap:
                warnings.warn(
                    f"MBAR: overlap {overlap:.3g} between flow and target samples is below {min_overlap:g}",
                    LowOverlapWarning,
                    stacklevel=4,
                )
    return value, stderr


def _exp(flow: _Samples, diagnostics: bool, min_ess: float) -> tuple[float, float]:
    """EXP (importance sampling) with the delta-method error of ``-log(S_A / S_B)``, covariance included.

    With ``y_n = w_n (1_A(n) / S_A - 1_B(n) / S_B)`` and ``S_X = mean(w 1_X)``, var = Var(y) / n; this is what
    MBAR reports for a single sampled state.
    """
    log_w = flow.u_flow - flow.u_target
    n = len(flow)
    log_s_a = logsumexp(np.where(flow.in_a, log_w, -np.inf))
    log_s_b = logsumexp(np.where(flow.in_b, log_w, -np.inf))
    value = float(log_s_b - log_s_a)
    # each part sums to 1; exp only inside its own state (elsewhere log_w - log_s_x may overflow, and 0 * inf = NaN)
    y = np.exp(np.where(flow.in_a, log_w - log_s_a, -np.inf)) - np.exp(np.where(flow.in_b, log_w - log_s_b, -np.inf))
    stderr = float(math.sqrt(n * np.sum((y - y.mean()) ** 2) / (n - 1))) if n > 1 else math.inf
    if diagnostics:
        for name, mask in (("A", flow.in_a), ("B", flow.in_b)):
            lw = log_w[mask]
            ess = math.exp(2 * logsumexp(lw) - logsumexp(2 * lw))
            if ess < min_ess:
                warnings.warn(
                    f"EXP: state {name} rests on {ess:.1f} effective flow samples (< {min_ess:g}); the free energy "
                    f"{value:.3f} +/- {stderr:.3f} kT is unreliable",
                    LowOverlapWarning,
                    stacklevel=4,
                )
    if not (math.isfinite(value) and math.isfinite(stderr)):
        raise ConvergenceError(f"EXP returned {value} +/- {stderr}")
    return value, stderr


def _bar(flow: _Samples, reference: _Samples, diagnostics: bool, min_overlap: float) -> tuple[float, float]:
    """BAR between the flow and the target restricted to A, and to B; F_A - F_B = dF_A - dF_B.

    The two BAR estimates share the flow samples; their errors are added in quadrature, which ignores the
    (negative) covariance through the shared flow samples: ``free_energy_difference`` bootstraps by default.
    """
    results = []
    for name in ("in_a", "in_b"):
        flow_mask, ref_mask = getattr(flow, name), getattr(reference, name)
        w_f = np.where(flow_mask, flow.u_target, np.inf) - flow.u_flow  # +inf outside the state
        w_r = reference.u_flow[ref_mask] - reference.u_target[ref_mask]
        results.append(checked_bar(w_f, w_r, min_overlap=min_overlap, diagnostics=diagnostics))
    (f_a, df_a), (f_b, df_b) = results
    return f_a - f_b, math.hypot(df_a, df_b)


def _estimate(
    method: str,
    flow: _Samples,
    reference: _Samples | None,
    diagnostics: bool,
    min_ess: float,
    min_overlap: float,
) -> tuple[float, float]:
    if method == "mbar":
        return _mbar(flow, reference, diagnostics, min_ess, min_overlap)
    if method == "exp":
        return _exp(flow, diagnostics, min_ess)
    return _bar(flow, reference, diagnostics, min_overlap)


def free_energy_difference(
    log_q: Any,
    u: Any,
    in_a: Any,
    in_b: Any,
    *,
    log_p_aug: Any | None = None,
    method: Method = "mbar",
    reference: TargetSamples | None = None,
    n_bootstrap: int | None = None,
    seed: int | np.random.Generator | None = None,
    min_ess: float = DEFAULT_MIN_ESS,
    min_overlap: float = DEFAULT_MIN_OVERLAP,
) -> FreeEnergy:
    """Free-energy difference ``F_A - F_B = -log(P(A) / P(B))`` of the target between two states, in kT.

    log_q: flow log-density of each flow sample, nats, shape (n,) (joint log q(x, a) for augmented flows).
    u: reduced target energy of each flow sample, shape (n,); +inf gives weight 0.
    in_a, in_b: boolean masks, shape (n,): which samples lie in state A and in state B. The states may overlap
        (e.g. A inside B: F_A - F_B = -log P(A | B)) but must differ on the samples with nonzero weight.
    log_p_aug: log pi(a | x) of the augmented target, nats, shape (n,), or None.
    method: ``"mbar"`` (pymbar.MBAR: the flow, and with ``reference`` the target, are sampled states; the target
        restricted to A and to B are unsampled ones), ``"exp"`` (importance sampling of the flow samples only,
        equal to MBAR without reference), ``"bar"`` (pymbar.bar between the flow and the target restricted to each
        state; needs ``reference`` samples in both states).
    reference: ``TargetSamples`` drawn from the target (e.g. MD) with log q, u, masks evaluated on them.
    n_bootstrap: if > 0, the error is the standard deviation of this many bootstrap re-estimates (flow and
        reference samples resampled independently, with replacement; ``seed`` seeds them), or pymbar's asymptotic
        error where that is larger (without overlap the re-estimates agree on a wrong value); if 0, pymbar's
        asymptotic error (EXP: the delta method; BAR: the two per-state errors in quadrature, which ignores their
        covariance through the shared flow samples and underestimates the error). None (default): 0 for "mbar" and
        "exp", 100 for "bar". Every error assumes independent samples: subsample correlated (MD) data first.
    Raises ``ValueError`` when in_a and in_b select the same samples of nonzero weight (flow and reference
    together; the answer would be 0 +/- 0 by construction), ``EmptyStateError`` when a state has no sample with
    nonzero weight, ``ConvergenceError`` when pymbar fails or returns a non-finite or 0 +/- 0 result; warns
    ``LowOverlapWarning`` when a state has fewer than ``min_ess`` effective samples or (BAR, MBAR with reference)
    the overlap is below ``min_overlap``.
    """
    if method not in ("mbar", "exp", "bar"):
        raise ValueError(f"method must be 'mbar', 'exp' or 'bar', got {method!r}")
    if method == "bar" and reference is None:
        raise ValueError("method='bar' needs samples from the target: pass reference=TargetSamples(...)")
    if method == "exp" and reference is not None:
        raise ValueError("method='exp' uses only flow samples; use 'mbar' or 'bar' to include the reference")
    flow = _make_samples(log_q, u, log_p_aug, in_a, in_b, "flow samples")
    ref = None
    if reference is not None:
        ref = _make_samples(reference.log_q, reference.u, reference.log_p_aug, reference.in_a, reference.in_b, "ref")
    _check_states(flow, ref, method)
    _check_distinct(flow, ref, method)
    value, stderr = _estimate(method, flow, ref, True, min_ess, min_overlap)
    label = method.upper()
    if n_bootstrap is None:
        n_bootstrap = 100 if method == "bar" else 0
    if n_bootstrap > 0:
        if not math.isfinite(stderr):
            raise ConvergenceError(
                f"{label}'s asymptotic error is {stderr}: the states do not overlap, so no bootstrap can give an "
                "error bar; draw more samples or use a better flow"
            )
        # never below the asymptotic error: without overlap the bootstrap re-estimates agree on a wrong value
        stderr = max(stderr, _bootstrap_stderr(method, flow, ref, n_bootstrap, seed, min_ess, min_overlap))
        label += "+bootstrap"
    return FreeEnergy(value=value, stderr=stderr, method=label)


def _bootstrap_stderr(
    method: str,
    flow: _Samples,
    reference: _Samples | None,
    n_bootstrap: int,
    seed: int | np.random.Generator | None,
    min_ess: float,
    min_overlap: float,
) -> float:
    """Standard deviation of re-estimates on resampled data; raises if more than 5% of them fail."""
    if n_bootstrap < 2:
        raise ValueError(f"n_bootstrap must be 0 (no bootstrap) or at least 2, got {n_bootstrap}")
    rng = np.random.default_rng(seed)
    values, failures = [], 0
    for _ in range(n_bootstrap):
        flow_b = flow.take(rng.integers(0, len(flow), len(flow)))
        ref_b = None if reference is None else reference.take(rng.integers(0, len(reference), len(reference)))
        try:
            _check_states(flow_b, ref_b, method)
            values.append(_estimate(method, flow_b, ref_b, False, min_ess, min_overlap)[0])
        except (EmptyStateError, ConvergenceError) as error:
            failures += 1
            logger.debug("bootstrap re-estimate failed: %s", error)
    if failures > 0.05 * n_bootstrap:
        raise ConvergenceError(
            f"{failures} of {n_bootstrap} bootstrap re-estimates failed (a state often ends up empty): the data "
            "cannot support an error bar; draw more samples"
        )
    return float(np.std(values, ddof=1))

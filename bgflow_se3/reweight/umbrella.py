"""Umbrella sampling along a periodic CV (a dihedral): MBAR over the biased windows, profile and state free energy.

The windows' bias is ``u_k(phi) = kappa / 2 * dphi(phi, c_k)^2`` with ``dphi`` wrapped into [-pi, pi), kappa in
kT / rad^2; all windows run at the target's temperature, so only the bias differs between them. Pure arrays:
the simulations live in ``bgflow_se3.simulate.umbrella_sampling``. ``combine_repeats`` and ``combine_profiles`` pool
independent repeats of a whole umbrella run: their scatter is the error that sees everything one run cannot.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConvergenceError, EmptyStateError, LowOverlapWarning
from .fes import FreeEnergySurface, histogram_fes
from .free_energy import FreeEnergy
from .pymbar_calls import DEFAULT_MIN_OVERLAP, checked_mbar, import_pymbar

__all__ = [
    "RepeatCombination",
    "UmbrellaResult",
    "combine_profiles",
    "combine_repeats",
    "periodic_harmonic_bias",
    "umbrella_free_energy",
    "unbiased_weights",
    "wrap_angle",
]


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angles wrapped into [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


def periodic_harmonic_bias(phi: np.ndarray, centers: np.ndarray, kappa: float) -> np.ndarray:
    """Reduced bias of every window at every sample: ``kappa/2 * wrap(phi - c_k)^2``, shape (K, N).

    phi: radians, shape (N,); centers: radians, shape (K,); kappa: kT / rad^2.
    """
    return 0.5 * kappa * wrap_angle(np.asarray(phi)[None, :] - np.asarray(centers)[:, None]) ** 2


@dataclass(frozen=True)
class UmbrellaResult:
    """Umbrella-sampling estimates from one set of window time series.

    profile: FES along phi (kT, relative to its lowest bin, pymbar analytical errors on the subsampled data).
    delta_f: F_A - F_B in kT with MBAR's error on the subsampled data (assumes decorrelated samples).
    blocks: F_A - F_B of each contiguous time block (all windows cut the same way), shape (n_blocks,).
    block_stderr: std(blocks) / sqrt(n_blocks), kT: the error that also sees slow, orthogonal motions.
    n_samples: samples per window used (after discarding equilibration), shape (K,).
    statistical_inefficiency: per window, of the bias time series (pymbar.timeseries), shape (K,).
    """

    profile: FreeEnergySurface
    delta_f: FreeEnergy
    blocks: np.ndarray
    block_stderr: float
    n_samples: np.ndarray
    statistical_inefficiency: np.ndarray


def _production(series: np.ndarray, discard_fraction: float) -> tuple[np.ndarray, int]:
    """One window's phi series wrapped into [-pi, pi) (float64), and the index where production starts (the leading
    ``discard_fraction`` is equilibration)."""
    series = wrap_angle(np.asarray(series, dtype=np.float64))
    return series, int(discard_fraction * series.size)


def _subsample(series: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, float]:
    """Decorrelated samples of one window (pymbar.timeseries on its own bias energy) and the inefficiency g."""
    timeseries = import_pymbar().timeseries
    if series.size < 10 or np.ptp(bias) == 0.0:
        return series, 1.0
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        g = float(timeseries.statistical_inefficiency(bias))
        index = timeseries.subsample_correlated_data(bias, g=g)
    return series[np.asarray(index, dtype=np.int64)], g


def _state_delta_f(
    phi: np.ndarray,
    n_k: np.ndarray,
    centers: np.ndarray,
    kappa: float,
    in_a: np.ndarray,
    in_b: np.ndarray,
    check_overlap: bool = False,
) -> tuple[float, float]:
    if not in_a.any() or not in_b.any():
        raise EmptyStateError("a state holds no umbrella sample: widen the windows or sample longer")
    bias = periodic_harmonic_bias(phi, centers, kappa)
    zeros = np.zeros_like(phi)
    u_kn = np.vstack([bias, zeros, np.where(in_a, 0.0, np.inf), np.where(in_b, 0.0, np.inf)])
    mbar = checked_mbar(u_kn, np.concatenate([n_k, [0, 0, 0]]))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        result = mbar.compute_free_energy_differences(compute_uncertainty=True)
    k = len(centers)
    if check_overlap:
        overlap = mbar.compute_overlap()["matrix"][:k, :k]
        neighbours = overlap[np.arange(k), (np.arange(k) + 1) % k]  # windows are ordered around the circle
        if neighbours.min() < DEFAULT_MIN_OVERLAP:
            worst = int(np.argmin(neighbours))
            warnings.warn(
                f"umbrella windows {worst} and {(worst + 1) % k} overlap poorly (MBAR overlap matrix element "
                f"{neighbours.min():.3g} < {DEFAULT_MIN_OVERLAP}): use more windows or a softer bias",
                LowOverlapWarning,
                stacklevel=3,
            )
    value, stderr = float(result["Delta_f"][k + 2, k + 1]), float(result["dDelta_f"][k + 2, k + 1])
    if not (math.isfinite(value) and math.isfinite(stderr)):
        raise ConvergenceError(f"umbrella MBAR returned {value} +/- {stderr}")
    return value, stderr


def umbrella_free_energy(
    phi_windows: Sequence[np.ndarray],
    centers: np.ndarray,
    kappa: float,
    state_a: Callable[[np.ndarray], np.ndarray],
    *,
    state_b: Callable[[np.ndarray], np.ndarray] | None = None,
    bins: int = 36,
    n_blocks: int = 4,
    discard_fraction: float = 0.1,
) -> UmbrellaResult:
    """Profile along phi and ``F_A - F_B`` (kT) from umbrella windows, with MBAR and time-block errors.

    phi_windows: one time series of phi (radians) per window, in window order, each shape (T_k,).
    centers: window centres, radians, shape (K,). kappa: bias force constant, kT / rad^2.
    state_a: maps phi (N,) to a boolean mask; state_b defaults to its complement.
    bins: number of profile bins on [-pi, pi). n_blocks: contiguous time blocks for the block error (each block
    is analysed on its own with MBAR). discard_fraction: leading fraction of every series dropped as equilibration.
    """
    centers = np.asarray(centers, dtype=np.float64)
    if len(phi_windows) != centers.size:
        raise ValueError(f"{len(phi_windows)} time series for {centers.size} windows")
    if n_blocks < 2:
        raise ValueError("n_blocks must be at least 2 to estimate a block error")
    state_b = state_b or (lambda phi: ~state_a(phi))
    production = []
    for k, series in enumerate(phi_windows):
        series, start = _production(series, discard_fraction)
        if series.size - start < 2 * n_blocks:
            raise ValueError(f"window {k} has {series.size} samples: too few for {n_blocks} blocks")
        production.append(series[start:])

    decorrelated, inefficiency = [], []
    for k, series in enumerate(production):
        bias = periodic_harmonic_bias(series, centers[k : k + 1], kappa)[0]
        samples, g = _subsample(series, bias)
        decorrelated.append(samples)
        inefficiency.append(g)
    phi = np.concatenate(decorrelated)
    n_k = np.array([s.size for s in decorrelated])
    value, stderr = _state_delta_f(phi, n_k, centers, kappa, state_a(phi), state_b(phi), check_overlap=True)
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    profile = histogram_fes(phi, periodic_harmonic_bias(phi, centers, kappa), n_k, np.zeros_like(phi), bins=[edges])

    blocks = []
    for b in range(n_blocks):
        parts = [np.array_split(series, n_blocks)[b] for series in production]
        phi_b = np.concatenate(parts)
        n_b = np.array([p.size for p in parts])
        blocks.append(_state_delta_f(phi_b, n_b, centers, kappa, state_a(phi_b), state_b(phi_b))[0])
    blocks = np.array(blocks)
    return UmbrellaResult(
        profile=profile,
        delta_f=FreeEnergy(value=value, stderr=stderr, method="MBAR"),
        blocks=blocks,
        block_stderr=float(np.std(blocks, ddof=1) / math.sqrt(n_blocks)),
        n_samples=np.array([s.size for s in production]),
        statistical_inefficiency=np.array(inefficiency),
    )


def unbiased_weights(
    phi_windows: Sequence[np.ndarray], centers: np.ndarray, kappa: float, discard_fraction: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """MBAR weights of every production sample of the windows in the unbiased ensemble.

    phi_windows: phi time series (radians) per window, in window order, shapes (T_k,); centers: (K,) radians;
    kappa: kT / rad^2. The leading ``discard_fraction`` of every series is dropped, as in ``umbrella_free_energy``.
    Returns ``(keep, weights)``: per window the boolean mask of kept samples (list of (T_k,)) concatenated into
    one array of shape (sum T_k,), and the weights of the kept samples, shape (n_kept,), summing to 1. Any other
    observable recorded alongside phi (psi, say) is reweighted with ``weights`` over ``observable[keep]``: MBAR on
    all (correlated) samples is consistent; only its error estimates would need decorrelated data.
    """
    centers = np.asarray(centers, dtype=np.float64)
    if len(phi_windows) != centers.size:
        raise ValueError(f"{len(phi_windows)} time series for {centers.size} windows")
    keep, kept = [], []
    for series in phi_windows:
        series, start = _production(series, discard_fraction)
        keep.append(np.arange(series.size) >= start)
        kept.append(series[start:])
    phi = np.concatenate(kept)
    n_k = np.array([s.size for s in kept])
    u_kn = np.vstack([periodic_harmonic_bias(phi, centers, kappa), np.zeros_like(phi)])
    mbar = checked_mbar(u_kn, np.concatenate([n_k, [0]]))
    weights = np.asarray(mbar.weights())[:, -1]
    return np.concatenate(keep), weights / weights.sum()


@dataclass(frozen=True)
class RepeatCombination:
    """One estimate pooled over independent repeats (kT), and whether the repeats agree within their errors.

    mean: plain mean of the repeats' values. stderr: std(values, ddof=1) / sqrt(n) for n >= 2 (the repeats'
    actual scatter; with few repeats it is itself uncertain: one degree of freedom for n = 2), the single error
    for n = 1. pooled_stderr: sqrt(sum errors^2) / n, the error of the mean the per-repeat errors predict.
    chi2: sum ((value - weighted mean) / error)^2 around the inverse-variance weighted mean, with dof = n - 1
    (for n = 2 it is z^2 with z = (v1 - v2) / sqrt(e1^2 + e2^2)). p_value: P(chi2_dof >= chi2) if the errors are
    right (NaN for n = 1). agree: p_value >= alpha (True for n = 1: nothing to compare).
    """

    mean: float
    stderr: float
    pooled_stderr: float
    chi2: float
    dof: int
    p_value: float
    agree: bool
    n: int


def combine_repeats(values: Sequence[float], errors: Sequence[float], alpha: float = 0.05) -> RepeatCombination:
    """Pool independent repeats of one estimate: mean, standard error from their scatter, chi-square agreement test.

    values: the repeats' estimates, shape (n,); errors: their one-sigma errors (> 0), shape (n,). The repeats
    disagree (``agree`` False) when chi2 of the values around their weighted mean has a p-value below ``alpha``:
    the per-repeat errors then understate the true scatter.
    """
    from scipy.stats import chi2 as chi2_distribution

    values = np.asarray(values, dtype=np.float64).ravel()
    errors = np.asarray(errors, dtype=np.float64).ravel()
    if values.size == 0 or values.shape != errors.shape:
        raise ValueError(f"need one error per value and at least one value, got {values.size} and {errors.size}")
    if not (np.isfinite(values).all() and np.isfinite(errors).all() and np.all(errors > 0)):
        raise ValueError("values must be finite and errors finite and positive")
    n = values.size
    pooled = float(np.sqrt(np.sum(errors**2)) / n)
    if n == 1:
        return RepeatCombination(float(values[0]), float(errors[0]), pooled, 0.0, 0, math.nan, True, 1)
    weights = 1.0 / errors**2
    weighted_mean = np.sum(weights * values) / np.sum(weights)
    chi2 = float(np.sum(weights * (values - weighted_mean) ** 2))
    p_value = float(chi2_distribution.sf(chi2, n - 1))
    return RepeatCombination(
        mean=float(values.mean()),
        stderr=float(np.std(values, ddof=1) / math.sqrt(n)),
        pooled_stderr=pooled,
        chi2=chi2,
        dof=n - 1,
        p_value=p_value,
        agree=bool(p_value >= alpha),
        n=n,
    )


def combine_profiles(f: np.ndarray, df: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of independent repeats' profiles (kT) with their scatter as error; both shape (m,).

    f, df: the repeats' profiles and errors on the same bins, shape (n, m), any offset per repeat, +inf for
    empty bins. Each profile is first normalised (sum over bins of exp(-f) = 1) so that the offsets cancel, the
    mean is shifted to 0 at its lowest bin. df: std(ddof=1) / sqrt(n) over the repeats for n >= 2, the given
    df for n = 1. A bin empty in any repeat gets f = df = +inf.
    """
    from scipy.special import logsumexp

    f = np.atleast_2d(np.asarray(f, dtype=np.float64))
    df = np.atleast_2d(np.asarray(df, dtype=np.float64))
    if f.shape != df.shape:
        raise ValueError(f"f and df must have the same shape, got {f.shape} and {df.shape}")
    finite = np.isfinite(f).all(axis=0)
    if not finite.any():
        raise ValueError("no bin is occupied in every repeat")
    normalised = f + logsumexp(-f, axis=1, keepdims=True)
    mean = np.full(f.shape[1], np.inf)
    error = np.full(f.shape[1], np.inf)
    mean[finite] = normalised[:, finite].mean(axis=0)
    mean[finite] -= mean[finite].min()
    if f.shape[0] == 1:
        error[finite] = df[0, finite]
    else:
        error[finite] = normalised[:, finite].std(axis=0, ddof=1) / math.sqrt(f.shape[0])
    return mean, error

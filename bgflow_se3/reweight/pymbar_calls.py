"""Checked calls into pymbar 4: every result is validated, pymbar's silent failures become errors or warnings."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from scipy.special import logsumexp

from ..errors import ConvergenceError, LowOverlapWarning

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MIN_OVERLAP",
    "checked_bar",
    "checked_exp",
    "checked_mbar",
    "import_pymbar",
    "overlap_scalar",
    "pymbar_errors",
    "quiet_pymbar_import",
]

#: Below this MBAR overlap (1 - second eigenvalue of the overlap matrix) BAR/MBAR results are flagged.
DEFAULT_MIN_OVERLAP = 0.03

#: Works beyond every finite work by this many kT stand for +inf in BAR (exp(-1000) is 0 in float64).
_INFINITE_WORK_MARGIN = 1000.0


@contextmanager
def quiet_pymbar_import() -> Iterator[None]:
    """Silence pymbar's import-time log messages (the JAX banner, the timeseries caveat) inside the block.

    Wrap every import that may import pymbar first, directly or through another package: openmmtools imports
    pymbar, so ``with quiet_pymbar_import(): from openmmtools import testsystems``. Later imports of pymbar are
    silent anyway (it is then in ``sys.modules``). Messages at ERROR and above still get through.
    """
    logger = logging.getLogger("pymbar")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def import_pymbar():
    """Import pymbar lazily, without its import-time log messages (``quiet_pymbar_import``)."""
    with quiet_pymbar_import():
        import pymbar
    return pymbar


def pymbar_errors(pymbar=None) -> tuple[type[BaseException], ...]:
    """The exceptions pymbar raises for failed or untrustworthy solves (to be turned into ``ConvergenceError``)."""
    from pymbar import utils

    return (utils.ConvergenceError, utils.ParameterError, utils.BoundsError, FloatingPointError, ArithmeticError)


def checked_exp(w_F: np.ndarray) -> tuple[float, float]:
    """pymbar.exp on forward works ``w_F`` (kT, shape (n,), ``+inf`` allowed): ``(Delta_f, dDelta_f)`` in kT."""
    pymbar = import_pymbar()
    w_F = np.asarray(w_F, dtype=np.float64)
    if not np.isfinite(w_F).any():
        raise ConvergenceError("EXP: every work is +inf (no sample has weight in the target); no estimate exists")
    try:
        with np.errstate(under="ignore"):
            result = pymbar.exp(w_F, compute_uncertainty=True)
    except pymbar_errors(pymbar) as error:
        raise ConvergenceError(f"pymbar.exp failed: {error}") from error
    value, stderr = float(result["Delta_f"]), float(result["dDelta_f"])
    if not (math.isfinite(value) and math.isfinite(stderr)):
        raise ConvergenceError(f"pymbar.exp returned {value} +/- {stderr}; the works are too spread to average")
    return value, stderr


def _cap_infinite(works: np.ndarray, sign: float, finite_extreme: float) -> np.ndarray:
    return np.where(np.isinf(works), sign * (abs(finite_extreme) + _INFINITE_WORK_MARGIN), works)


def overlap_scalar(w_F: np.ndarray, w_R: np.ndarray, delta_f: float) -> float:
    """MBAR overlap (1 - second eigenvalue of the 2x2 overlap matrix) of two states given works and Delta f.

    w_F: u_1 - u_0 on samples of state 0; w_R: u_0 - u_1 on samples of state 1; delta_f = f_1 - f_0 (kT).
    Returns a number in [0, 1]: 0 is no overlap, 1 identical states.
    """
    n_f, n_r = len(w_F), len(w_R)
    du = np.concatenate([w_F, -w_R])  # u_1 - u_0 on every sample
    log_n = np.array([math.log(n_f), math.log(n_r)])
    # log W_nk = f_k - u_k(x_n) - logsumexp_j(f_j - u_j(x_n) + log N_j), with u_0 = 0 and f_0 = 0.
    a = np.stack([np.zeros_like(du), delta_f - du], axis=1)
    log_denominator = logsumexp(a + log_n, axis=1, keepdims=True)
    weights = np.exp(a - log_denominator)
    overlap = (weights.T @ weights) * np.array([n_f, n_r])
    eigenvalues = np.sort(np.linalg.eigvals(overlap).real)[::-1]
    return float(np.clip(1.0 - eigenvalues[1], 0.0, 1.0))


def _bar_stderr(w_F: np.ndarray, w_R: np.ndarray, delta_f: float) -> float:
    """BAR's asymptotic error in its MBAR form (Shirts et al. 2008, as pymbar's uncertainty_method="MBAR").

    ``var = 1 / (sum_F f(-x)(1 - f(-x)) + sum_R f(x)(1 - f(x))) - 1/n_F - 1/n_R`` with Fermi functions evaluated
    through ``expit``, stable for +inf works and wide work distributions (where pymbar's own formula gives NaN).
    """
    from scipy.special import expit

    n_f, n_r = w_F.size, w_R.size
    c = math.log(n_f / n_r) - delta_f
    f_f = expit(-(w_F + c))
    f_r = expit(-(w_R - c))
    information = float(np.sum(f_f * (1.0 - f_f)) + np.sum(f_r * (1.0 - f_r)))
    if information <= 0.0:
        return math.inf
    variance = 1.0 / information - 1.0 / n_f - 1.0 / n_r
    return math.sqrt(variance) if variance > 0.0 else math.inf


def checked_bar(
    w_F: np.ndarray, w_R: np.ndarray, *, min_overlap: float = DEFAULT_MIN_OVERLAP, diagnostics: bool = True
) -> tuple[float, float]:
    """pymbar.bar with checks: ``(Delta_f, dDelta_f)`` in kT, Delta_f = f_1 - f_0.

    w_F: forward works ``u_1 - u_0`` on samples of state 0, shape (n_F,), ``+inf`` allowed (weight 0 in state 1).
    w_R: reverse works ``u_0 - u_1`` on samples of state 1, shape (n_R,), ``+inf`` allowed.
    pymbar 4 returns ``0 +/- 0`` (with only a log line) when its initial bracket is NaN, and NaN errors on no
    overlap: both raise ``ConvergenceError`` here. Infinite works are replaced by finite ones 1000 kT beyond every
    finite work, which leaves the BAR equation unchanged in float64 and keeps pymbar's bracketing finite.
    Warns ``LowOverlapWarning`` when the overlap is below ``min_overlap`` (only if ``diagnostics``).
    """
    pymbar = import_pymbar()
    w_F = np.asarray(w_F, dtype=np.float64)
    w_R = np.asarray(w_R, dtype=np.float64)
    for name, works in (("forward", w_F), ("reverse", w_R)):
        if works.size == 0:
            raise ValueError(f"BAR needs {name} works, got none")
        if np.isnan(works).any() or (works == -np.inf).any():
            raise ConvergenceError(f"BAR: {name} works hold NaN or -inf; check log q and the energies")
        if not np.isfinite(works).any():
            raise ConvergenceError(f"BAR: every {name} work is +inf; the two states do not overlap at all")
    extreme = max(np.abs(w_F[np.isfinite(w_F)]).max(), np.abs(w_R[np.isfinite(w_R)]).max())
    w_F_capped = _cap_infinite(w_F, 1.0, extreme)
    w_R_capped = _cap_infinite(w_R, 1.0, extreme)
    from pymbar.other_estimators import bar_zero

    with np.errstate(all="ignore"):
        upper = -logsumexp(-w_F_capped) + math.log(w_F.size)  # EXP brackets, as pymbar.bar starts from them
        lower = logsumexp(-w_R_capped) - math.log(w_R.size)
        brackets = (bar_zero(w_F_capped, w_R_capped, upper), bar_zero(w_F_capped, w_R_capped, lower))
    if not np.all(np.isfinite(brackets)):
        raise ConvergenceError(
            "pymbar.bar cannot bracket the free energy (NaN at the EXP brackets; pymbar 4 would return 0 +/- 0): "
            "no usable overlap between the two sample sets; improve the flow or add intermediate states"
        )
    try:
        with np.errstate(all="ignore"):
            result = pymbar.bar(w_F_capped, w_R_capped, compute_uncertainty=False)
    except pymbar_errors(pymbar) as error:
        raise ConvergenceError(f"pymbar.bar did not converge: {error}") from error
    value = float(result["Delta_f"])
    if value == 0.0:
        raise ConvergenceError(
            "pymbar.bar returned exactly 0, its sign of a failed solve (no usable overlap); "
            "improve the flow or add intermediate states"
        )
    stderr = _bar_stderr(w_F, w_R, value)
    if not (math.isfinite(value) and math.isfinite(stderr)):
        raise ConvergenceError(f"pymbar.bar returned {value} +/- {stderr}: the two sample sets do not overlap")
    if diagnostics:
        overlap = overlap_scalar(w_F_capped, w_R_capped, value)
        if overlap < min_overlap:
            warnings.warn(
                f"BAR overlap {overlap:.3g} < {min_overlap:g}: the estimate {value:.3f} +/- {stderr:.3f} kT is not "
                "trustworthy; improve the flow or add intermediate states",
                LowOverlapWarning,
                stacklevel=3,
            )
    return value, stderr


def checked_mbar(u_kn: np.ndarray, N_k: np.ndarray):
    """Build a pymbar.MBAR and check its free energies are finite; pymbar errors become ``ConvergenceError``.

    u_kn: reduced potentials, shape (K, N), ``+inf`` allowed; N_k: samples per state, shape (K,), zeros for
    unsampled states. Returns the MBAR object.
    """
    pymbar = import_pymbar()
    errors = pymbar_errors(pymbar)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            mbar = pymbar.MBAR(u_kn, N_k)
        except errors as first:
            logger.info("MBAR with the default solver failed (%s); retrying with the robust protocol", first)
            try:
                mbar = pymbar.MBAR(u_kn, N_k, solver_protocol="robust")
            except errors as error:
                raise ConvergenceError(f"pymbar.MBAR did not converge: {error}") from error
    if not np.all(np.isfinite(mbar.f_k)):
        raise ConvergenceError(f"pymbar.MBAR returned non-finite free energies {mbar.f_k}; a state has no weight")
    return mbar

"""Free-energy surface along one or two collective variables: flow samples reweighted to the target (pymbar FES)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConvergenceError
from .pymbar_calls import checked_mbar, import_pymbar
from .weights import as_float_array, log_importance_weights

__all__ = ["FreeEnergySurface", "free_energy_surface", "histogram_fes"]

#: pymbar's analytical FES error builds a dense (samples x occupied bins) weight matrix; refuse beyond this size.
MAX_UNCERTAINTY_ELEMENTS = 20_000_000


@dataclass(frozen=True)
class FreeEnergySurface:
    """A free-energy surface on a grid of bins, in kT relative to its lowest bin.

    centers: tuple of bin-centre arrays, one per CV, shapes (n_bins_d,) (CV units, e.g. radians).
    edges: tuple of bin-edge arrays, shapes (n_bins_d + 1,).
    f: free energy of each bin, kT, shape (n_bins_0,) or (n_bins_0, n_bins_1); ``+inf`` where no sample with
        nonzero weight fell (zero estimated probability).
    df: one-sigma error of ``f`` relative to the lowest bin (pymbar analytical), same shape; ``+inf`` in empty bins,
        0 in the reference bin.
    counts: number of samples in each bin, same shape (few samples: trust the error bars less).
    """

    centers: tuple[np.ndarray, ...]
    edges: tuple[np.ndarray, ...]
    f: np.ndarray
    df: np.ndarray
    counts: np.ndarray


def _edges(cv: np.ndarray, bins: Any, range_: Any) -> list[np.ndarray]:
    dims = cv.shape[1]
    if isinstance(bins, (int, np.integer)):
        bins = [int(bins)] * dims
    elif dims == 1 and len(bins) > 1 and all(np.ndim(b) == 0 for b in bins):
        bins = [bins]  # the edges of the one CV
    if len(bins) != dims:
        raise ValueError(f"bins must give one entry per CV ({dims}), got {len(bins)}")
    edges = []
    for d, b in enumerate(bins):
        if np.ndim(b) == 0:
            lo, hi = (cv[:, d].min(), cv[:, d].max()) if range_ is None else range_[d]
            edges.append(np.linspace(float(lo), float(hi), int(b) + 1))
        else:
            e = np.asarray(b, dtype=np.float64)
            if e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0):
                raise ValueError(f"bin edges for CV {d} must be increasing, 1-D, with at least 2 entries")
            edges.append(e)
    return edges


def histogram_fes(
    cv: Any, u_kn: np.ndarray, n_k: np.ndarray, u_target: np.ndarray, bins: Any = 50, cv_range: Any = None
) -> FreeEnergySurface:
    """Histogram FES through ``pymbar.FES`` for any set of sampled states (flow, umbrella windows, ...).

    cv: collective variables of every sample, shape (N,) or (N, D) with D in {1, 2}, ordered as the columns of
        ``u_kn``. u_kn: reduced potentials of the sampled states, shape (K, N); n_k: samples per state, shape (K,).
    u_target: reduced potential of the state whose FES is wanted at every sample, shape (N,), +inf allowed.
    bins: number of bins per CV, a sequence (per CV) of counts or edge arrays, or (1 CV) the edges;
    cv_range: ((lo, hi), ...) per CV for bins given as counts (default: the data's range).
    Samples outside the grid count in the normalisation but in no bin.
    """
    pymbar = import_pymbar()
    cv = np.asarray(cv, dtype=np.float64)
    cv = cv[:, None] if cv.ndim == 1 else cv
    if cv.ndim != 2 or cv.shape[1] not in (1, 2):
        raise ValueError(f"cv must have shape (N,), (N, 1) or (N, 2), got {cv.shape}")
    if not np.isfinite(cv).all():
        raise ValueError("cv holds NaN or inf; compute the collective variables on finite coordinates")
    edges = _edges(cv, bins, cv_range)
    shape = tuple(len(e) - 1 for e in edges)
    index = np.stack([np.digitize(cv[:, d], edges[d]) - 1 for d in range(cv.shape[1])], axis=1)
    # the last edge is inclusive, as in numpy.histogram
    for d in range(cv.shape[1]):
        index[cv[:, d] == edges[d][-1], d] = shape[d] - 1
    inside = np.all((index >= 0) & (index < np.array(shape)), axis=1)
    flat = np.full(cv.shape[0], np.prod(shape), dtype=np.int64)  # one overflow bin for samples off the grid
    flat[inside] = np.ravel_multi_index(tuple(index[inside].T), shape)
    counts = np.bincount(flat, minlength=np.prod(shape) + 1)[:-1].reshape(shape)
    alive = np.isfinite(u_target)
    occupied = np.unique(flat[inside & alive])
    if occupied.size == 0:
        raise ConvergenceError("no sample with nonzero target weight lies on the FES grid; widen range or bins")
    # zero-weight samples (u = +inf) go to an occupied bin, where they change nothing: a bin holding only such
    # samples would get f = inf inside pymbar and turn its analytical errors into NaN
    flat[~alive] = occupied[0]
    # pymbar labels bins as a 1-D histogram of the flat index: avoids its label clash for unequal 2-D grids.
    flat_edges = np.arange(np.prod(shape) + 2) - 0.5
    n_elements = cv.shape[0] * (len(n_k) + occupied.size + 1)
    if n_elements > MAX_UNCERTAINTY_ELEMENTS:
        raise ValueError(
            f"the analytical FES error needs a {cv.shape[0]} x {occupied.size + len(n_k) + 1} matrix; "
            "use fewer bins or subsample the data"
        )
    mbar = checked_mbar(u_kn, n_k)
    try:
        f_occ, df_occ = _pymbar_fes(pymbar, u_kn, n_k, mbar.f_k, u_target, flat, flat_edges, occupied)
    except (np.linalg.LinAlgError, pymbar.utils.ParameterError, pymbar.utils.DataError) as error:
        raise ConvergenceError(f"pymbar.FES failed: {error}") from error
    if not (np.isfinite(f_occ).all() and np.isfinite(df_occ).all()):
        raise ConvergenceError("pymbar.FES returned non-finite free energies or errors for occupied bins")
    f = np.full(np.prod(shape), np.inf)
    df = np.full(np.prod(shape), np.inf)
    f[occupied], df[occupied] = f_occ, df_occ
    centers = tuple(0.5 * (e[1:] + e[:-1]) for e in edges)
    return FreeEnergySurface(centers, tuple(edges), f.reshape(shape), df.reshape(shape), counts)


def _pymbar_fes(pymbar, u_kn, n_k, f_k, u_target, flat, flat_edges, occupied) -> tuple[np.ndarray, np.ndarray]:
    """f and df (relative to the lowest occupied bin) of the occupied flat bins through pymbar.FES."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fes = pymbar.FES(u_kn, n_k, mbar_options={"initial_f_k": f_k})
        fes.generate_fes(
            u_target, flat.astype(np.float64), fes_type="histogram", histogram_parameters={"bin_edges": flat_edges}
        )
        raw = fes.get_fes(occupied.astype(np.float64), reference_point="from-lowest")["f_i"]
        lowest = float(occupied[np.argmin(raw)])
        result = fes.get_fes(
            occupied.astype(np.float64),
            reference_point="from-specified",
            fes_reference=lowest,
            uncertainty_method="analytical",
        )
    return np.asarray(result["f_i"]), np.asarray(result["df_i"])


def free_energy_surface(
    cv: Any,
    log_q: Any,
    u: Any,
    *,
    log_p_aug: Any | None = None,
    bins: Any = 50,
    cv_range: Any = None,
) -> FreeEnergySurface:
    """FES of the target along 1 or 2 CVs from flow samples: a weighted histogram through ``pymbar.FES``.

    cv: CV values of each flow sample, shape (n,) or (n, 2) (e.g. phi, psi in radians).
    log_q, u, log_p_aug: as in ``log_importance_weights``, shape (n,).
    bins, cv_range: as in ``histogram_fes`` (e.g. ``bins=np.linspace(-np.pi, np.pi, 61)`` for a dihedral).
    Returns a ``FreeEnergySurface`` in kT relative to its lowest bin, with pymbar's analytical errors (they assume
    independent samples, which flow samples are).
    """
    log_w = log_importance_weights(log_q, u, log_p_aug)
    n = log_w.shape[0]
    cv = np.asarray(cv.detach().cpu().numpy() if hasattr(cv, "detach") else cv, dtype=np.float64)
    if cv.shape[0] != n:
        raise ValueError(f"cv has {cv.shape[0]} rows but there are {n} samples")
    u_flow = -as_float_array(log_q, "log_q")
    return histogram_fes(cv, u_flow[None, :], np.array([n]), u_flow - log_w, bins=bins, cv_range=cv_range)

"""Free-energy references of alanine dipeptide: the ones shipped with the package and the ones a recipe wrote.

``shipped_profile`` and ``shipped_ramachandran`` read ``bgflow_se3/systems/data/aldp/umbrella_*_<solvent>.npz``
(written by ``systems/aldp/umbrella.py``); ``load_profile`` reads the ``profile.npz`` that recipe writes into its
cache; ``reference_profile`` and ``reference_ramachandran`` take the cache's when there is one, else the shipped one.
Loaders only: the umbrella simulations live in ``bgflow_se3.simulate``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

__all__ = ["load_profile", "reference_profile", "reference_ramachandran", "shipped_profile", "shipped_ramachandran"]


def shipped_profile(solvent: str = "implicit") -> tuple[np.ndarray, np.ndarray]:
    """The umbrella phi profile shipped with the package: bin centres (radians) and f (kT), (m,) each.

    ``bgflow_se3/systems/data/aldp/umbrella_profile_<solvent>.npz``, written by ``systems/aldp/umbrella.py``
    (replica exchange, 4 repeats x 36 windows x 1 ns: F(phi > 0) - F(phi <= 0) = 3.73 +/- 0.07 kT; provenance in
    the JSON beside it), so that plots and the phi KL have a reference on a fresh machine. Only ``implicit`` is
    shipped; others raise ``FileNotFoundError``.
    """
    stored = _shipped_arrays(f"umbrella_profile_{solvent}.npz", f"umbrella profile for {solvent!r}")
    return np.asarray(stored["centers"], dtype=np.float64), np.asarray(stored["f"], dtype=np.float64)


def _shipped_arrays(name: str, what: str) -> dict[str, np.ndarray]:
    """The arrays of ``bgflow_se3/systems/data/aldp/<name>``; ``FileNotFoundError`` naming ``what`` and the recipe."""
    from importlib import resources

    path = resources.files("bgflow_se3.systems") / "data" / "aldp" / name
    if not path.is_file():
        raise FileNotFoundError(f"no {what} is shipped; run systems/aldp/umbrella.py")
    with resources.as_file(path) as file, np.load(file) as stored:
        return {key: stored[key] for key in stored.files}


def reference_profile(cache: Path, solvent: str = "implicit") -> tuple[np.ndarray, np.ndarray]:
    """The phi profile in ``cache`` when the recipe wrote one there, else the shipped one (``shipped_profile``)."""
    if (Path(cache) / "profile.npz").exists():
        return load_profile(cache)
    return shipped_profile(solvent)


def load_profile(cache: Path, missing_ok: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """The phi free-energy profile written by ``systems/aldp/umbrella.py``: bin centres (radians) and f (kT), (m,) each.

    When the cache has no ``profile.npz``: ``FileNotFoundError`` naming the recipe, or with ``missing_ok`` a
    warning and None.
    """
    path = Path(cache) / "profile.npz"
    if not path.exists():
        message = f"no umbrella profile at {path}; run `PYTHONPATH=. python systems/aldp/umbrella.py`"
        if missing_ok:
            warnings.warn(message, stacklevel=2)
            return None
        raise FileNotFoundError(message)
    stored = np.load(path)
    return np.asarray(stored["centers"], dtype=np.float64), np.asarray(stored["f"], dtype=np.float64)


def shipped_ramachandran(solvent: str = "implicit") -> np.ndarray:
    """The umbrella (phi, psi) reference shipped with the package: probability, shape (64, 64), sums to 1.

    ``bgflow_se3/systems/data/aldp/umbrella_ramachandran_<solvent>.npz``, written by ``systems/aldp/umbrella.py``
    (MBAR-reweighted umbrella windows; provenance in the JSON beside it). Bins as ``periodic_histogram``: 64 equal
    bins per angle on [-pi, pi), index [phi, psi]. Only ``implicit`` is shipped; others raise ``FileNotFoundError``.
    """
    stored = _shipped_arrays(f"umbrella_ramachandran_{solvent}.npz", f"Ramachandran reference for {solvent!r}")
    return np.asarray(stored["p"], dtype=np.float64)


def reference_ramachandran(cache: Path, solvent: str = "implicit") -> np.ndarray:
    """The (phi, psi) histogram in ``cache`` when the recipe wrote one there, else the shipped one."""
    path = Path(cache) / "ramachandran.npz"
    if path.exists():
        return np.asarray(np.load(path)["p"], dtype=np.float64)
    return shipped_ramachandran(solvent)

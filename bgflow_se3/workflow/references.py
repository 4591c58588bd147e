"""Umbrella references for the workflow's torsions: read a ``systems/aldp/umbrella.py`` cache and compare with it.

A reference is the replica-exchange umbrella run of the generalised recipe for one torsion of one molecule
(``--system-xml``, ``--pdb``, ``--torsion``, ``--cache DIR``). ``load_umbrella_reference(DIR)`` reads its
``summary.json`` (F(torsion > 0) - F(torsion <= 0) over the repeats, with the repeat-scatter error), its
``profile.npz`` (the torsion's free-energy profile, drawn under the flow's in ``torsion_profiles.png``) and the
biased torsion's atoms from a repeat's ``config.json``, so that a reference made for another torsion is refused
instead of compared. ``compare_with_reference`` is the acceptance rule of the peptide benchmarks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TOLERANCE_KT",
    "TOLERANCE_SIGMA",
    "UmbrellaReference",
    "check_reference_atoms",
    "compare_with_reference",
    "load_umbrella_reference",
]

#: a flow estimate agrees with its reference when reliable and within both of these (the benchmark's rule)
TOLERANCE_KT = 0.2
TOLERANCE_SIGMA = 2.0


@dataclass(frozen=True)
class UmbrellaReference:
    """One torsion's umbrella reference.

    dF_kT, stderr_kT: F(torsion > 0) - F(torsion <= 0) and its error (the repeats' scatter; the one repeat's block
    error when there is one repeat), kT. stderr_source: which of the two. n_repeats, ns_per_window: the run's size.
    atoms: the biased torsion's four 0-based atom indices (None when the cache does not record them).
    centers, f: its free-energy profile, bin centres (radians) and f (kT), (m,) each (None without profile.npz).
    folder: the cache.
    """

    dF_kT: float
    stderr_kT: float
    stderr_source: str
    n_repeats: int
    ns_per_window: float
    atoms: tuple[int, int, int, int] | None
    centers: np.ndarray | None
    f: np.ndarray | None
    folder: Path

    @property
    def profile(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(centers, f) for ``evaluate_molecule``'s overlay, or None."""
        return None if self.centers is None else (self.centers, self.f)

    def as_dict(self) -> dict[str, Any]:
        """The numbers for ``results.json`` (no arrays)."""
        return {
            "dF_kT": self.dF_kT,
            "stderr_kT": self.stderr_kT,
            "stderr_source": self.stderr_source,
            "n_repeats": self.n_repeats,
            "ns_per_window": self.ns_per_window,
            "atoms": None if self.atoms is None else list(self.atoms),
            "folder": str(self.folder),
        }


def _biased_atoms(folder: Path) -> tuple[int, int, int, int] | None:
    for config in sorted(folder.glob("seed_*/config.json")):
        atoms = json.loads(config.read_text()).get("torsion")
        if atoms is not None:
            return tuple(int(a) for a in atoms)
    return None


def load_umbrella_reference(folder: str | Path) -> UmbrellaReference:
    """The reference in an umbrella cache ``folder`` (written by ``systems/aldp/umbrella.py``).

    Raises ``FileNotFoundError`` (naming the folder and the recipe) when the folder has no ``summary.json`` (the
    recipe writes it when a run's analysis finishes), ``ValueError`` when that file is not an umbrella summary.
    """
    folder = Path(folder)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(
            f"no umbrella reference in {folder}: it has no summary.json (make one with `PYTHONPATH=. python "
            f"systems/aldp/umbrella.py --system-xml ... --pdb ... --torsion NAME --cache {folder}`)"
        )
    try:
        summary = json.loads(summary_path.read_text())
        entry = summary["delta_f_phi_positive_kT"]
        value, stderr = float(entry["combined"]), float(entry["stderr"])
        n_repeats = len(entry["per_repeat"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{summary_path} is not an umbrella summary (systems/aldp/umbrella.py): {e}") from e
    if not math.isfinite(value):
        raise ValueError(f"{summary_path}: the reference's F(> 0) - F(<= 0) is not finite ({value})")
    centers = f = None
    profile_path = folder / "profile.npz"
    if profile_path.is_file():
        with np.load(profile_path) as stored:
            centers = np.asarray(stored["centers"], dtype=np.float64)
            f = np.asarray(stored["f"], dtype=np.float64)
    return UmbrellaReference(
        dF_kT=value,
        stderr_kT=stderr,
        stderr_source=str(entry.get("stderr_source", "")),
        n_repeats=n_repeats,
        ns_per_window=float(summary.get("ns_per_window", math.nan)),
        atoms=_biased_atoms(folder),
        centers=centers,
        f=f,
        folder=folder,
    )


def check_reference_atoms(reference: UmbrellaReference, name: str, atoms: Any) -> None:
    """``ValueError`` when ``reference`` biased other atoms than torsion ``name``'s ``atoms`` (four indices); a
    cache that does not record its atoms passes."""
    if reference.atoms is not None and list(reference.atoms) != [int(a) for a in atoms]:
        raise ValueError(
            f"the reference in {reference.folder} biased the torsion of atoms {list(reference.atoms)}, but {name} "
            f"is {[int(a) for a in atoms]}"
        )


def compare_with_reference(entry: dict[str, Any], reference: UmbrellaReference) -> dict[str, Any]:
    """How a ``torsion_free_energies`` entry compares with its reference.

    Returns ``reference`` (``UmbrellaReference.as_dict``), ``difference_kT`` (flow - reference),
    ``difference_sigma`` (|difference| over the combined standard error) and ``within_tolerance``: reliable, within
    ``TOLERANCE_KT`` and within ``TOLERANCE_SIGMA`` combined standard errors. Raises ``ValueError`` when the
    reference biased other atoms than the entry's torsion.
    """
    check_reference_atoms(reference, entry["name"], entry["atoms"])
    difference = entry["dF_positive_minus_negative_kT"] - reference.dF_kT
    sigma = math.hypot(entry["stderr_kT"], reference.stderr_kT)
    z = abs(difference) / sigma if sigma > 0 else math.inf
    within = bool(entry["reliable"] and abs(difference) <= TOLERANCE_KT and z <= TOLERANCE_SIGMA)
    return {
        "reference": reference.as_dict(),
        "difference_kT": difference,
        "difference_sigma": z,
        "within_tolerance": within,
    }

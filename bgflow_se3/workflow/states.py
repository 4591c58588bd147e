"""Named torsions, states on coordinates, and the free-energy table between states.

A state is any callable ``x (n, n_atoms, 3) in nm -> bool mask (n,)``. ``TorsionState`` builds one from a union of
angle ranges of one torsion; ``all_of`` intersects states. Torsions are ``Torsion(name, atoms)`` (four 0-based atom
indices); ``peptide_torsions`` names every residue's phi and psi of a peptide topology "phi<k>" / "psi<k>", k the
0-based index of the residue (in the topology's residue order) that owns the angle's CA.

Angles are OpenMM's (``geometry.openmm_dihedral``, float64), which agree in sign with mdtraj's (``compute_phi``),
in (-pi, pi]; -pi is the same angle as pi. A range ``(low, high)`` means the arc low < angle <= high on the circle,
low and high in [-pi, pi]; low > high wraps across pi (``(2.5, -2.5)`` is angle > 2.5 or angle <= -2.5), and
``(-pi, pi)`` is the whole circle. The default pair of a torsion is positive (0, pi] against non-positive (-pi, 0],
the flagship's "phi > 0 vs phi <= 0" (only an angle of exactly -pi, which is pi here, differs from ``phi > 0``).

``torsion_free_energies`` and ``state_free_energies`` report, per pair, F_A - F_B in kT by pymbar's EXP estimate
with a bootstrap error, the effective samples in each state and ``reliable`` by the rule the dipeptide evaluation
uses (``reweight.state_pair_free_energy``). A state no sample reaches gives ``reliable`` False and an ``error`` that
names it; the other entries are still computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..analysis.dihedrals import as_mdtraj_topology, as_positions
from ..geometry import openmm_dihedral
from ..reweight.state_pair import state_pair_free_energy

__all__ = [
    "State",
    "Torsion",
    "TorsionState",
    "all_of",
    "negative_state",
    "parse_torsion_spec",
    "peptide_torsions",
    "positive_state",
    "resolve_torsion",
    "state_free_energies",
    "torsion_free_energies",
    "torsion_from_parts",
    "torsion_values",
]

State = Callable[[Any], np.ndarray]


@dataclass(frozen=True)
class Torsion:
    """A named dihedral of four atoms (0-based indices into the System's particles)."""

    name: str
    atoms: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        atoms = tuple(int(a) for a in self.atoms)
        if len(atoms) != 4 or len(set(atoms)) != 4 or min(atoms) < 0:
            raise ValueError(f"torsion {self.name!r} needs four distinct non-negative atom indices, got {self.atoms}")
        object.__setattr__(self, "atoms", atoms)


def peptide_torsions(topology: Any) -> list[Torsion]:
    """Every backbone phi (C(i-1)-N-CA-C) and psi (N-CA-C-N(i+1)) of an openmm or mdtraj topology, found by mdtraj;
    named "phi<k>" / "psi<k>" with k the 0-based index of the residue of the CA, ordered phi, psi by residue.

    Raises ``ValueError`` when the topology has none (not a peptide): name torsions by hand with ``Torsion``.
    """
    import mdtraj

    top = as_mdtraj_topology(topology)
    traj = mdtraj.Trajectory(np.zeros((1, top.n_atoms, 3), dtype=np.float32), top)
    found = []
    for kind, compute in (("phi", mdtraj.compute_phi), ("psi", mdtraj.compute_psi)):
        indices, _ = compute(traj, periodic=False)
        for quad in indices:
            residue = top.atom(int(quad[2 if kind == "phi" else 1])).residue.index  # the CA's residue
            found.append((residue, kind, Torsion(f"{kind}{residue}", tuple(int(a) for a in quad))))
    if not found:
        raise ValueError(
            f"the topology ({top.n_residues} residues) has no peptide backbone torsions (phi, psi); name the "
            "torsions yourself: Torsion('name', (a, b, c, d)) with four 0-based atom indices"
        )
    return [torsion for _, _, torsion in sorted(found, key=lambda item: (item[0], item[1]))]


def parse_torsion_spec(spec: str) -> tuple[str, tuple[int, int, int, int] | None]:
    """How a command line names a torsion -> (name, atoms or None): ``NAME``, ``NAME=a,b,c,d`` or ``a,b,c,d`` (then
    also its name), with four distinct 0-based atom indices. Raises ``ValueError`` saying what is wrong."""
    text = spec.strip()
    name, sep, atoms = text.partition("=")
    if not sep and "," in text:
        name, atoms = text, text
    name = name.strip()
    if not name:
        raise ValueError("give NAME, NAME=a,b,c,d or a,b,c,d")
    if not atoms:
        return name, None
    try:
        indices = tuple(int(a) for a in atoms.split(","))
    except ValueError:
        raise ValueError("the atoms must be four 0-based integers, a,b,c,d") from None
    if len(indices) != 4:
        raise ValueError("the atoms must be four 0-based integers, a,b,c,d")
    if len(set(indices)) != 4 or min(indices) < 0:
        raise ValueError("the atoms must be four distinct 0-based indices, a,b,c,d")
    return name, indices  # type: ignore[return-value]


def torsion_from_parts(
    name: str, atoms: Sequence[int] | None, named: Mapping[str, Torsion], n_atoms: int | None = None
) -> Torsion:
    """The torsion ``name`` of ``named`` (e.g. ``peptide_torsions``' "phi2") when ``atoms`` is None, else
    ``Torsion(name, atoms)``; its atoms below ``n_atoms`` when given. Raises ``ValueError`` (starting with the
    name) naming the known torsions or the atom out of range."""
    if atoms is None:
        if name not in named:
            known = ", ".join(named) or "none: this is not a peptide"
            raise ValueError(f"{name}: no such named torsion (named: {known}); give NAME=a,b,c,d")
        torsion = named[name]
    else:
        torsion = Torsion(name, tuple(atoms))
    if n_atoms is not None and max(torsion.atoms) >= n_atoms:
        raise ValueError(f"{torsion.name} names atom {max(torsion.atoms)}, but the molecule has {n_atoms}")
    return torsion


def resolve_torsion(spec: str, topology: Any, n_atoms: int | None = None) -> Torsion:
    """The torsion a command line names (``parse_torsion_spec``), looked up among ``peptide_torsions(topology)``
    when it is a bare name (``torsion_from_parts``). Raises ``ValueError`` starting with the spec or the name."""
    try:
        name, atoms = parse_torsion_spec(spec)
    except ValueError as e:
        raise ValueError(f"{spec.strip()}: {e}") from None
    named: dict[str, Torsion] = {}
    if atoms is None:
        try:
            named = {t.name: t for t in peptide_torsions(topology)}
        except ValueError:
            pass
    return torsion_from_parts(name, atoms, named, n_atoms)


def torsion_values(x: Any, torsions: Sequence[Torsion]) -> np.ndarray:
    """Dihedral angles (radians, (-pi, pi], OpenMM's sign) of each torsion, shape (n, len(torsions)).

    x: coordinates (n, n_atoms, 3) in nm, numpy or torch. Non-finite coordinates give NaN angles.
    """
    xyz = as_positions(x)
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise ValueError(f"coordinates must have shape (n, n_atoms, 3) in nm, got {xyz.shape}")
    for torsion in torsions:
        if max(torsion.atoms) >= xyz.shape[1]:
            raise ValueError(f"torsion {torsion.name} names atom {max(torsion.atoms)}, but x has {xyz.shape[1]} atoms")
    positions = torch.from_numpy(xyz)
    columns = [openmm_dihedral(*(positions[:, a] for a in torsion.atoms)).numpy() for torsion in torsions]
    angles = np.stack(columns, axis=1) if columns else np.zeros((len(xyz), 0))
    return np.where(angles <= -math.pi, angles + 2 * math.pi, angles)  # -pi is pi


def _check_range(low: float, high: float) -> tuple[float, float]:
    low, high = float(low), float(high)
    if not (-math.pi <= low <= math.pi and -math.pi <= high <= math.pi) or low == high:
        raise ValueError(
            f"an angle range (low, high] needs low != high, both in [-pi, pi] radians, got ({low}, {high}]"
        )
    return low, high


@dataclass(frozen=True)
class TorsionState:
    """The torsion's angle lies in one of ``ranges``: arcs (low, high] in radians, low > high wrapping across pi.
    Called on coordinates (n, n_atoms, 3), nm, it gives the bool mask (n,); non-finite coordinates are in no state."""

    torsion: Torsion
    ranges: tuple[tuple[float, float], ...]
    label: str = ""

    def __post_init__(self) -> None:
        ranges = tuple(_check_range(*r) for r in self.ranges)
        if not ranges:
            raise ValueError(f"a state of torsion {self.torsion.name} needs at least one angle range")
        object.__setattr__(self, "ranges", ranges)
        if not self.label:
            arcs = " or ".join(f"({low:.4g}, {high:.4g}]" for low, high in ranges)
            object.__setattr__(self, "label", f"{self.torsion.name} in {arcs}")

    def contains(self, angles: Any) -> np.ndarray:
        """Which angles (radians, in [-pi, pi]; -pi taken as pi; NaN in none) lie in the state."""
        a = np.asarray(angles, dtype=np.float64)
        a = np.where(a <= -math.pi, a + 2 * math.pi, a)
        inside = np.zeros(a.shape, dtype=bool)
        for low, high in self.ranges:
            inside |= ((a > low) & (a <= high)) if low < high else ((a > low) | (a <= high))
        return inside

    def __call__(self, x: Any) -> np.ndarray:
        return self.contains(torsion_values(x, [self.torsion])[:, 0])


def positive_state(torsion: Torsion) -> TorsionState:
    """The torsion in (0, pi]: "phi > 0"."""
    return TorsionState(torsion, ((0.0, math.pi),), label=f"{torsion.name} > 0")


def negative_state(torsion: Torsion) -> TorsionState:
    """The torsion in (-pi, 0]: "phi <= 0"."""
    return TorsionState(torsion, ((-math.pi, 0.0),), label=f"{torsion.name} <= 0")


def all_of(*states: State) -> State:
    """The intersection of states: a sample is in it when it is in every one."""
    if not states:
        raise ValueError("all_of needs at least one state")

    def state(x: Any) -> np.ndarray:
        masks = [np.asarray(s(x), dtype=bool) for s in states]
        return np.logical_and.reduce(masks)

    return state


def _inputs(x: Any, log_q: Any, u: Any, log_p_aug: Any | None):
    """Coordinates and float64 log q, u, log p_aug; samples with non-finite coordinates get weight 0."""
    xyz = as_positions(x)
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise ValueError(f"coordinates must have shape (n, n_atoms, 3) in nm, got {xyz.shape}")
    finite = np.isfinite(xyz).all(axis=(1, 2))
    log_q = as_positions(log_q).reshape(-1)
    u = as_positions(u).reshape(-1)
    if log_q.shape != (len(xyz),) or u.shape != (len(xyz),):
        raise ValueError(f"log_q and u need shape ({len(xyz)},), got {log_q.shape} and {u.shape}")
    log_q = np.where(finite, log_q, 0.0)
    u = np.where(finite, u, math.inf)
    if log_p_aug is not None:
        log_p_aug = np.where(finite, as_positions(log_p_aug).reshape(-1), 0.0)
    return np.where(finite[:, None, None], xyz, 0.0), finite, log_q, u, log_p_aug


def _mask(state: State, xyz: np.ndarray, finite: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(state(xyz), dtype=bool)
    if mask.shape != finite.shape:
        raise ValueError(f"state {name!r} returned a mask of shape {mask.shape}, expected {finite.shape}")
    return mask & finite


def _pair(log_q, u, log_p_aug, in_a, in_b, labels, what, n_bootstrap, seed, min_ess) -> dict[str, Any]:
    """One entry of the table: F_A - F_B, its error, effective samples, verdict, and the errors named."""
    pair = state_pair_free_energy(
        log_q,
        u,
        in_a,
        in_b,
        log_p_aug=log_p_aug,
        n_bootstrap=n_bootstrap,
        seed=seed,
        min_effective_samples=min_ess,
        labels=labels,
    )
    error = pair.error
    if error:
        unreached = [label for label, n in zip(labels, (pair.effective_a, pair.effective_b), strict=True) if n == 0]
        if unreached:
            error = (
                f"{what}: no sample with nonzero weight reaches state {' nor '.join(repr(s) for s in unreached)}; "
                f"its free energy is undefined (draw samples that visit it). pymbar: {error}"
            )
        else:
            error = f"{what}: {error}"
    return {
        "dF_kT": pair.value,
        "stderr_kT": pair.stderr,
        "reliable": pair.reliable,
        "effective_samples_a": pair.effective_a,
        "effective_samples_b": pair.effective_b,
        "pareto_k_a": pair.pareto_k_a,
        "pareto_k_b": pair.pareto_k_b,
        "warning": f"{what}: {pair.warning}" if pair.warning else "",
        "error": error,
    }


def torsion_free_energies(
    x: Any,
    log_q: Any,
    u: Any,
    torsions: Sequence[Torsion],
    log_p_aug: Any | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
    min_ess: float = 50.0,
) -> list[dict[str, Any]]:
    """F(torsion > 0) - F(torsion <= 0) in kT for each torsion, from flow samples and their importance weights.

    x: flow samples (n, n_atoms, 3), nm (non-finite samples get weight 0). log_q: flow log-density, nats (joint
    log q(x, a) for augmented flows); u: reduced target energy (+inf: weight 0); log_p_aug: log pi(a | x) or None;
    each shape (n,). n_bootstrap, seed: the bootstrap error (0: the delta method). min_ess: the effective samples
    each state needs for ``reliable``.
    Returns one dict per torsion: ``name``, ``atoms`` (four ints), ``dF_positive_minus_negative_kT``,
    ``stderr_kT`` (NaN when the estimate failed), ``reliable``, ``effective_samples_positive``,
    ``effective_samples_negative``, ``pareto_k_positive``, ``pareto_k_negative`` (each state's weight-tail index,
    ``reweight.tail``), ``warning`` and ``error`` ("" when none).
    """
    torsions = list(torsions)
    if not torsions:
        raise ValueError("no torsions given: pass peptide_torsions(topology) or Torsion('name', (a, b, c, d))")
    xyz, finite, log_q, u, log_p_aug = _inputs(x, log_q, u, log_p_aug)
    angles = torsion_values(xyz, torsions)
    table = []
    for k, torsion in enumerate(torsions):
        positive, negative = positive_state(torsion), negative_state(torsion)
        in_a, in_b = positive.contains(angles[:, k]) & finite, negative.contains(angles[:, k]) & finite
        entry = _pair(
            log_q,
            u,
            log_p_aug,
            in_a,
            in_b,
            (positive.label, negative.label),
            f"torsion {torsion.name}",
            n_bootstrap,
            seed,
            min_ess,
        )
        table.append(
            {
                "name": torsion.name,
                "atoms": list(torsion.atoms),
                "dF_positive_minus_negative_kT": entry["dF_kT"],
                "stderr_kT": entry["stderr_kT"],
                "reliable": entry["reliable"],
                "effective_samples_positive": entry["effective_samples_a"],
                "effective_samples_negative": entry["effective_samples_b"],
                "pareto_k_positive": entry["pareto_k_a"],
                "pareto_k_negative": entry["pareto_k_b"],
                "warning": entry["warning"],
                "error": entry["error"],
            }
        )
    return table


def state_free_energies(
    x: Any,
    log_q: Any,
    u: Any,
    states: Mapping[str, State],
    pairs: Sequence[tuple[str, str]] | None = None,
    log_p_aug: Any | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
    min_ess: float = 50.0,
) -> list[dict[str, Any]]:
    """F_A - F_B in kT for named states, for each pair (A, B) in ``pairs`` (default: every pair, A before B in the
    order of ``states``). Inputs as ``torsion_free_energies``; states: name -> callable x -> bool mask (n,).

    Returns one dict per pair: ``state_a``, ``state_b``, ``dF_kT``, ``stderr_kT``, ``reliable``,
    ``effective_samples_a``, ``effective_samples_b``, ``pareto_k_a``, ``pareto_k_b``, ``warning``, ``error``.
    """
    names = list(states)
    if pairs is None:
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    pairs = [tuple(pair) for pair in pairs]
    if not pairs:
        raise ValueError("no pair of states: name at least two states, or pass pairs=[('A', 'B')]")
    for a, b in pairs:
        for name in (a, b):
            if name not in states:
                raise ValueError(f"pair ({a!r}, {b!r}) names an unknown state {name!r}; states are {names}")
        if a == b:
            raise ValueError(f"pair ({a!r}, {b!r}) compares a state with itself")
    xyz, finite, log_q, u, log_p_aug = _inputs(x, log_q, u, log_p_aug)
    masks = {name: _mask(states[name], xyz, finite, name) for name in {n for pair in pairs for n in pair}}
    return [
        {
            "state_a": a,
            "state_b": b,
            **_pair(log_q, u, log_p_aug, masks[a], masks[b], (a, b), f"states {a} - {b}", n_bootstrap, seed, min_ess),
        }
        for a, b in pairs
    ]

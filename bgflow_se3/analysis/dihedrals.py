"""Backbone dihedrals (phi, psi) of coordinate batches through mdtraj, from an openmm or mdtraj topology."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "BackboneDihedrals",
    "as_mdtraj_topology",
    "as_positions",
    "backbone_dihedrals",
    "dihedral_angles",
    "phi_psi",
]


class BackboneDihedrals(NamedTuple):
    """phi, psi in radians in [-pi, pi], shapes (batch, n_phi) and (batch, n_psi); atom indices (n, 4) each."""

    phi: np.ndarray
    psi: np.ndarray
    phi_atoms: np.ndarray
    psi_atoms: np.ndarray


def as_mdtraj_topology(topology: Any):
    """An ``mdtraj.Topology`` from an mdtraj or openmm.app topology."""
    import mdtraj

    if isinstance(topology, mdtraj.Topology):
        return topology
    if hasattr(topology, "atoms") and hasattr(topology, "residues") and hasattr(topology, "getNumAtoms"):
        return mdtraj.Topology.from_openmm(topology)
    raise TypeError(f"topology must be an mdtraj.Topology or openmm.app.Topology, got {type(topology).__name__}")


def as_positions(x: Any) -> np.ndarray:
    """Positions (numpy array or torch tensor on any device) as float64 numpy; integer or complex input and
    ``meta`` tensors (no data) raise ``TypeError`` / ``ValueError``."""
    if hasattr(x, "detach"):
        if getattr(x, "is_meta", False):
            raise ValueError("coordinates are a tensor on the 'meta' device, which holds no data")
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"coordinates must be floating point (nm), got dtype {x.dtype}")
    return x.astype(np.float64)


def _check_angles(angles: np.ndarray) -> np.ndarray:
    """float64 angles; NaN (degenerate geometry, or coordinates too large for mdtraj's float32) raises."""
    angles = np.asarray(angles, dtype=np.float64)
    if not np.isfinite(angles).all():
        bad = int(np.flatnonzero(~np.isfinite(angles).reshape(len(angles), -1).all(axis=1))[0])
        raise ValueError(
            f"a dihedral angle is undefined (NaN) for configuration {bad}: atoms coincide, or coordinates are too "
            "large for mdtraj's float32 arithmetic (keep them well below 1e15 nm)"
        )
    return angles


def _trajectory(topology: Any, x: Any):
    import mdtraj

    top = as_mdtraj_topology(topology)
    xyz = as_positions(x)
    if xyz.ndim == 2:
        xyz = xyz[None]
    if xyz.ndim != 3 or xyz.shape[1:] != (top.n_atoms, 3):
        raise ValueError(f"coordinates must have shape (batch, {top.n_atoms}, 3) in nm, got {xyz.shape}")
    if not np.isfinite(xyz).all():
        raise ValueError("coordinates hold NaN or inf; drop those samples before computing dihedrals")
    return mdtraj.Trajectory(xyz, top)


def dihedral_angles(x: Any, atoms: Any, topology: Any) -> np.ndarray:
    """Dihedral angles (radians, [-pi, pi]) of atom quadruples ``atoms`` (n, 4) for coordinates x (batch, n_atoms, 3).

    Returns shape (batch, n). Computed by mdtraj (in float32: about 1e-6 rad precision).
    """
    import mdtraj

    atoms = np.atleast_2d(np.asarray(atoms, dtype=np.int64))
    return _check_angles(mdtraj.compute_dihedrals(_trajectory(topology, x), atoms, periodic=False))


def backbone_dihedrals(topology: Any, x: Any) -> BackboneDihedrals:
    """All backbone phi and psi angles (radians) of coordinates x, shape (batch, n_atoms, 3) in nm.

    topology: openmm.app.Topology or mdtraj.Topology. x: numpy array or torch tensor (any device).
    """
    import mdtraj

    traj = _trajectory(topology, x)
    phi_atoms, phi = mdtraj.compute_phi(traj, periodic=False)
    psi_atoms, psi = mdtraj.compute_psi(traj, periodic=False)
    return BackboneDihedrals(_check_angles(phi), _check_angles(psi), phi_atoms, psi_atoms)


def phi_psi(topology: Any, x: Any) -> tuple[np.ndarray, np.ndarray]:
    """The single phi and psi of a dipeptide (e.g. alanine dipeptide), radians, each shape (batch,)."""
    dihedrals = backbone_dihedrals(topology, x)
    if dihedrals.phi.shape[1] != 1 or dihedrals.psi.shape[1] != 1:
        raise ValueError(
            f"phi_psi expects one phi and one psi (a dipeptide), found {dihedrals.phi.shape[1]} and "
            f"{dihedrals.psi.shape[1]}; use backbone_dihedrals"
        )
    return dihedrals.phi[:, 0], dihedrals.psi[:, 0]

"""What every shipped test system of the catalogue holds: a System, its topology and a starting structure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ShippedStructure"]


@dataclass(frozen=True)
class ShippedStructure:
    """A shipped System with its topology and starting structure, in the openmmtools style.

    system: openmm.System. topology: openmm.app.Topology. positions: openmm Quantity of shape (n_atoms, 3), nm.
    solvent: which of the shipped Systems of the molecule this is (e.g. "implicit").
    """

    system: Any
    topology: Any
    positions: Any
    solvent: str

    @property
    def positions_nm(self) -> np.ndarray:
        """Starting positions as a float64 array of shape (n_atoms, 3), nm."""
        import openmm.unit as unit

        return np.asarray(self.positions.value_in_unit(unit.nanometer), dtype=np.float64)

    @property
    def mdtraj_topology(self):
        """The topology as an ``mdtraj.Topology`` (for dihedrals and trajectory files)."""
        import mdtraj

        return mdtraj.Topology.from_openmm(self.topology)

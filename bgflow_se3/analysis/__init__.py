"""Analysis: collective variables (mdtraj), histograms, divergences and plots."""

from .dihedrals import BackboneDihedrals, as_mdtraj_topology, backbone_dihedrals, dihedral_angles, phi_psi
from .plots import free_energy_profile_figure, ramachandran_figure

__all__ = [
    "BackboneDihedrals",
    "as_mdtraj_topology",
    "backbone_dihedrals",
    "dihedral_angles",
    "free_energy_profile_figure",
    "phi_psi",
    "ramachandran_figure",
]

"""Analysis: collective variables (mdtraj), histograms, divergences and plots."""

from .chirality import L_CHIRALITY_SIGN, chiral_centres, chirality_mismatch, chirality_signs, d_chirality_fraction
from .dihedrals import BackboneDihedrals, as_mdtraj_topology, backbone_dihedrals, dihedral_angles, phi_psi
from .dipeptide import evaluate_dipeptide
from .plots import free_energy_profile_figure, profiles_grid_figure, ramachandran_figure, ramachandran_panels_figure
from .ramachandran import histogram_kl, periodic_histogram, phi_profile_kl, ramachandran_kl
from .stereo import handedness, same_handedness, stereocentres

__all__ = [
    "BackboneDihedrals",
    "L_CHIRALITY_SIGN",
    "as_mdtraj_topology",
    "backbone_dihedrals",
    "chiral_centres",
    "chirality_mismatch",
    "chirality_signs",
    "d_chirality_fraction",
    "dihedral_angles",
    "evaluate_dipeptide",
    "free_energy_profile_figure",
    "handedness",
    "histogram_kl",
    "periodic_histogram",
    "phi_profile_kl",
    "phi_psi",
    "profiles_grid_figure",
    "ramachandran_figure",
    "ramachandran_kl",
    "ramachandran_panels_figure",
    "same_handedness",
    "stereocentres",
]

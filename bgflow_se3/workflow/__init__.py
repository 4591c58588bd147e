"""From the user's OpenMM System to free energies: the input checks (``inputs.py``), torsions, states and their
free-energy table (``states.py``)."""

from .inputs import Molecule, check_molecule, load_molecule
from .states import (
    State,
    Torsion,
    TorsionState,
    all_of,
    negative_state,
    peptide_torsions,
    positive_state,
    state_free_energies,
    torsion_free_energies,
    torsion_values,
)

__all__ = [
    "Molecule",
    "State",
    "Torsion",
    "TorsionState",
    "all_of",
    "check_molecule",
    "load_molecule",
    "negative_state",
    "peptide_torsions",
    "positive_state",
    "state_free_energies",
    "torsion_free_energies",
    "torsion_values",
]

"""From the user's OpenMM System to free energies: torsions, states and their free-energy table (``states.py``)."""

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
    "State",
    "Torsion",
    "TorsionState",
    "all_of",
    "negative_state",
    "peptide_torsions",
    "positive_state",
    "state_free_energies",
    "torsion_free_energies",
    "torsion_values",
]

"""From the user's OpenMM System to free energies: the input checks (``inputs.py``), torsions, states and their
free-energy table (``states.py``), rotatable torsions (``rotatable.py``), seeded Langevin coverage
(``coverage.py``), sizes (``settings.py``), the staged run (``pipeline.py``: ``run_workflow``) and its evaluation
(``evaluation.py``), umbrella references to compare with (``references.py``); ``cli.py`` is ``bgflow-se3 run``."""

from .inputs import Molecule, check_molecule, load_molecule
from .pipeline import run_workflow
from .references import UmbrellaReference, compare_with_reference, load_umbrella_reference
from .settings import WorkflowSettings
from .states import (
    State,
    Torsion,
    TorsionState,
    all_of,
    negative_state,
    parse_torsion_spec,
    peptide_torsions,
    positive_state,
    resolve_torsion,
    state_free_energies,
    torsion_free_energies,
    torsion_from_parts,
    torsion_values,
)

__all__ = [
    "Molecule",
    "State",
    "Torsion",
    "TorsionState",
    "UmbrellaReference",
    "WorkflowSettings",
    "all_of",
    "check_molecule",
    "compare_with_reference",
    "load_molecule",
    "load_umbrella_reference",
    "negative_state",
    "parse_torsion_spec",
    "peptide_torsions",
    "positive_state",
    "resolve_torsion",
    "run_workflow",
    "state_free_energies",
    "torsion_free_energies",
    "torsion_from_parts",
    "torsion_values",
]

"""Set a torsion of a molecule by rotating one side of its central bond: hand-built starting structures.

Used to seed dynamics in every basin of a Ramachandran plot (e.g. alanine dipeptide's phi > 0 states, which
unbiased MD at 300 K rarely visits), so that training data cover the states whose free energies we estimate. The
operations live in ``bgflow_se3.geometry``; this module keeps their sampling-side import path.
"""

from ..geometry import moving_side, set_torsion, torsion_angle

__all__ = ["moving_side", "set_torsion", "torsion_angle"]

"""Old path of ``bgflow_se3.systems.lennard_jones`` (the LJ cluster as an openmm.System); kept for users' imports."""

from .lennard_jones import LennardJonesSystem, lennard_jones_system

__all__ = ["LennardJonesSystem", "lennard_jones_system"]

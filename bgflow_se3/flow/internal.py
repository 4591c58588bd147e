"""Old path of ``bgflow_se3.flow.internal_coordinates`` (the internal-coordinate flow); kept for users' imports."""

from .internal_coordinates import InternalCoordinateFlow, internal_coordinates, place_atoms, zmatrix_from_bonds

__all__ = ["InternalCoordinateFlow", "internal_coordinates", "place_atoms", "zmatrix_from_bonds"]

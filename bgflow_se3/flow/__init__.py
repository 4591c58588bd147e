"""Equivariant normalising flows: the augmented coupling flow and CNF baselines. Never imports OpenMM."""

from .augmented import AugmentedCouplingFlow, FlowSample
from .couplings import ProjectionCoupling, reference_vector_loss
from .egnn import EGNN
from .splines import rational_quadratic_spline

__all__ = [
    "EGNN",
    "AugmentedCouplingFlow",
    "FlowSample",
    "ProjectionCoupling",
    "rational_quadratic_spline",
    "reference_vector_loss",
]

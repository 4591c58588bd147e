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
from .cnf import ContinuousFlow, com_free_gaussian_log_prob, sample_com_free_gaussian
from .enf import EGNNDynamics, ENFlow
from .kernel_cnf import KernelDynamics, KernelFlow
from .noneq import NonEquivariantFlow, random_rotations

__all__ = [
    "ContinuousFlow",
    "EGNNDynamics",
    "ENFlow",
    "KernelDynamics",
    "KernelFlow",
    "NonEquivariantFlow",
    "com_free_gaussian_log_prob",
    "random_rotations",
    "sample_com_free_gaussian",
]

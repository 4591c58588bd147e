"""Normalising flows: the augmented coupling flow, an internal-coordinate flow for molecules, and CNF baselines.

Never imports OpenMM."""

from .augmented import AugmentedCouplingFlow, FlowSample
from .cnf import ContinuousFlow, com_free_gaussian_log_prob, sample_com_free_gaussian
from .couplings import ProjectionCoupling, reference_vector_loss
from .egnn import EGNN
from .enf import EGNNDynamics, ENFlow
from .environment_cnf import EnvironmentKernelDynamics, EnvironmentKernelFlow
from .group_averaged import GroupAveragedFlow
from .internal import InternalCoordinateFlow, zmatrix_from_bonds
from .kernel_cnf import KernelDynamics, KernelFlow
from .noneq import NonEquivariantFlow, random_rotations
from .splines import rational_quadratic_spline

__all__ = [
    "EGNN",
    "AugmentedCouplingFlow",
    "ContinuousFlow",
    "EGNNDynamics",
    "ENFlow",
    "EnvironmentKernelDynamics",
    "EnvironmentKernelFlow",
    "FlowSample",
    "GroupAveragedFlow",
    "InternalCoordinateFlow",
    "KernelDynamics",
    "KernelFlow",
    "NonEquivariantFlow",
    "ProjectionCoupling",
    "com_free_gaussian_log_prob",
    "random_rotations",
    "rational_quadratic_spline",
    "reference_vector_loss",
    "sample_com_free_gaussian",
    "zmatrix_from_bonds",
]

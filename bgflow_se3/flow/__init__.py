"""Normalising flows. The seed's model, the SE(3) x S_n augmented coupling flow, is ``augmented`` (the flow)
built from ``couplings`` (projection couplings), ``egnn`` (the equivariant network), ``frames`` (CoM, frames,
spherical coordinates) and ``splines``; ``internal_coordinates`` is an internal-coordinate flow for molecules
(with ``coupling_stack``); ``baselines/`` holds the peers' models (E-NF, kernel CNFs, group-averaged and
non-equivariant flows), re-exported here.

Never imports OpenMM."""

from .augmented import AugmentedCouplingFlow, FlowSample
from .baselines import (
    ContinuousFlow,
    EGNNDynamics,
    ENFlow,
    EnvironmentKernelDynamics,
    EnvironmentKernelFlow,
    GroupAveragedFlow,
    KernelDynamics,
    KernelFlow,
    NonEquivariantFlow,
    com_free_gaussian_log_prob,
    random_rotations,
    sample_com_free_gaussian,
)
from .couplings import ProjectionCoupling, reference_vector_loss
from .egnn import EGNN
from .internal_coordinates import InternalCoordinateFlow, zmatrix_from_bonds
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

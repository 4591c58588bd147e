"""Equivariant normalising flows: the augmented coupling flow and CNF baselines. Never imports OpenMM."""

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

"""Baselines from the same literature, beside the seed's augmented coupling flow (one package up).

- ``ENFlow``: the E(n) equivariant CNF (Satorras et al. 2021); ``KernelFlow``: Köhler et al.'s equivariant
  radial-kernel CNF; ``EnvironmentKernelFlow``: its per-atom-environment variant; all on ``ContinuousFlow``.
- ``GroupAveragedFlow``: a coupling flow on canonicalised internal coordinates, averaged over permutations and
  the mirror image (exactly invariant for small clusters).
- ``NonEquivariantFlow``: a RealNVP on CoM-free coordinates with random-rotation augmentation.

Never imports OpenMM.
"""

from .cnf import ContinuousFlow, com_free_gaussian_log_prob, sample_com_free_gaussian
from .enf import EGNNDynamics, ENFlow
from .environment_cnf import EnvironmentKernelDynamics, EnvironmentKernelFlow
from .group_averaged import GroupAveragedFlow
from .kernel_cnf import KernelDynamics, KernelFlow
from .noneq import NonEquivariantFlow, random_rotations

__all__ = [
    "ContinuousFlow",
    "EGNNDynamics",
    "ENFlow",
    "EnvironmentKernelDynamics",
    "EnvironmentKernelFlow",
    "GroupAveragedFlow",
    "KernelDynamics",
    "KernelFlow",
    "NonEquivariantFlow",
    "com_free_gaussian_log_prob",
    "random_rotations",
    "sample_com_free_gaussian",
]

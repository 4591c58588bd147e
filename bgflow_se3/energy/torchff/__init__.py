"""TorchForceField: an openmm.System compiled into batched torch energy terms (CPU or GPU, float32 or float64).

Imports run one way: ``base`` (ForceTerm, BuildContext, value readers) and ``kernels`` (batched energy formulas,
geometry) <- ``fused`` (analytic-gradient pass), ``tabulated`` <- ``expressions`` (Lepton compiler) <- one module
per force family (``standard``, ``cmap``, ``custom_bonded``, ``custom_nonbonded``) <- ``registry`` (every supported
force, listed once) <- ``forcefield`` (TorchForceField).
"""

from .base import ForceTerm
from .forcefield import TorchForceField
from .registry import SUPPORTED_FORCES, compile_force

__all__ = ["SUPPORTED_FORCES", "ForceTerm", "TorchForceField", "compile_force"]

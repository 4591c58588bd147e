"""Every OpenMM force with a torch version, listed once: force class name -> ``ForceTerm`` subclass.

A new force is one term module (a ``ForceTerm`` subclass with ``from_force``) plus one line in ``TERMS``;
``SUPPORTED_FORCES`` and ``compile_force`` follow from it (see docs/adding_a_force.md). The order of ``TERMS`` is
the order in which ``SUPPORTED_FORCES`` names them in error messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import UnsupportedForceError
from .base import BuildContext, ForceTerm
from .cmap import CMAPTorsionTerm
from .custom_bonded import (
    CustomAngleTerm,
    CustomBondTerm,
    CustomCentroidBondTerm,
    CustomCompoundBondTerm,
    CustomExternalTerm,
    CustomTorsionTerm,
)
from .custom_nonbonded import CustomGBTerm, CustomNonbondedTerm
from .standard import GBSAOBCTerm, HarmonicAngleTerm, HarmonicBondTerm, NonbondedTerm, PeriodicTorsionTerm

__all__ = ["IGNORED_FORCES", "SUPPORTED_FORCES", "TERMS", "compile_force"]

#: OpenMM force class name -> the term that compiles it (through ``ForceTerm.build(force, context)``). The standard
#: forces go through the fused analytic pass, the others (custom forces, CMAP) through autograd.
TERMS: dict[str, type[ForceTerm]] = {
    "HarmonicBondForce": HarmonicBondTerm,
    "HarmonicAngleForce": HarmonicAngleTerm,
    "PeriodicTorsionForce": PeriodicTorsionTerm,
    "NonbondedForce": NonbondedTerm,
    "GBSAOBCForce": GBSAOBCTerm,
    "CMAPTorsionForce": CMAPTorsionTerm,
    "CustomBondForce": CustomBondTerm,
    "CustomAngleForce": CustomAngleTerm,
    "CustomTorsionForce": CustomTorsionTerm,
    "CustomExternalForce": CustomExternalTerm,
    "CustomCompoundBondForce": CustomCompoundBondTerm,
    "CustomCentroidBondForce": CustomCentroidBondTerm,
    "CustomNonbondedForce": CustomNonbondedTerm,
    "CustomGBForce": CustomGBTerm,
}
#: Forces accepted and ignored: they add no energy.
IGNORED_FORCES = ("CMMotionRemover",)
#: Force classes with a torch version; ``CMMotionRemover`` is accepted and ignored (it adds no energy).
SUPPORTED_FORCES = (*TERMS, *IGNORED_FORCES)


def compile_force(force: Any, force_index: int = -1, masses: Sequence[float] | None = None) -> ForceTerm | None:
    """The torch term of one ``openmm.Force`` (None for ignored forces such as ``CMMotionRemover``).

    masses: the System's particle masses (Da); ``CustomCentroidBondForce`` weights groups without weights by them.

    Raises ``UnsupportedForceError`` for force classes without a torch version and ``UnsupportedSystemError``
    for supported classes used with cutoffs, periodic boundaries or other unsupported options.
    """
    name = type(force).__name__
    if name in IGNORED_FORCES:
        return None
    if name not in TERMS:
        raise UnsupportedForceError(
            f"force {force_index} ({name}) has no torch version; TorchForceField supports "
            f"{', '.join(SUPPORTED_FORCES)} (CMMotionRemover is ignored). Use OpenMMEnergy for this System, "
            "or remove the force"
        )
    context = BuildContext(force_index, None if masses is None else tuple(masses))
    return TERMS[name].build(force, context)

"""A target restricted to a region: u(x) where ``allowed(x)``, +inf elsewhere (importance weight 0).

The Boltzmann density of a chiral molecule is the force field's density restricted to one enantiomer: an achiral
force field gives a mirror image the same energy, so without the restriction a flow's D-form samples would count as
configurations of the L molecule (``systems.aldp.is_l_form`` is the mask for alanine dipeptide).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .base import Energy

__all__ = ["RestrictedEnergy"]


class RestrictedEnergy(Energy):
    """``energy`` on the configurations where ``allowed(x)`` (batch,) bool is True, u = +inf (zero force) elsewhere.

    Same units, temperature and error policy as ``energy``; ``energy_and_force`` is forwarded when the wrapped
    energy has it (``TorchForceField``).
    """

    def __init__(self, energy: Energy, allowed: Callable[[Tensor], Tensor]) -> None:
        super().__init__(energy.n_atoms, energy.dim, temperature=energy.temperature, on_error=energy.on_error)
        self.energy = energy
        self.allowed = allowed

    def _mask(self, x: Tensor, u: Tensor) -> Tensor:
        return torch.where(self.allowed(x), u, torch.full_like(u, float("inf")))

    def _reduced_energy(self, x: Tensor) -> Tensor:
        return self._mask(x, self.energy(x))

    def energy_and_force(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(u, force) with u = +inf and force 0 outside the allowed region; shapes (batch,), (batch, n_atoms, dim)."""
        x = self.validate(x)
        if hasattr(self.energy, "energy_and_force"):
            u, force = self.energy.energy_and_force(x)
        else:
            u, force = self.energy(x).detach(), self.energy.force(x)
        keep = self.allowed(x)
        return torch.where(keep, u, torch.full_like(u, float("inf"))), force * keep[:, None, None]

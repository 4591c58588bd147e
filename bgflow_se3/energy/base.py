"""The Energy interface: batched reduced energies u(x) = E(x)/kT with forces -du/dx."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import EnergyEvaluationError, NonFiniteInputError

__all__ = ["MOLAR_GAS_CONSTANT", "Energy", "kT_in_kJ_per_mol"]

#: R in kJ/(mol K), the CODATA 2018 value OpenMM uses (openmm.unit.MOLAR_GAS_CONSTANT_R).
MOLAR_GAS_CONSTANT = 8.31446261815324e-3

OnError = Literal["inf", "raise"]


def kT_in_kJ_per_mol(temperature: float) -> float:
    """Thermal energy k_B T in kJ/mol for a temperature in kelvin."""
    return MOLAR_GAS_CONSTANT * float(temperature)


class Energy(nn.Module):
    """Base class of every target: a batched, differentiable reduced energy.

    ``energy(x)`` takes positions of shape ``(batch, n_atoms, dim)`` (nm for molecules, reduced length units for
    the particle targets) and returns reduced energies ``u = E / kT``, dimensionless, shape ``(batch,)``,
    differentiable with respect to ``x``. ``energy.force(x)`` returns ``-du/dx``, shape ``(batch, n_atoms, dim)``.

    Input policy (the same for every subclass):
    - a shape other than ``(batch, n_atoms, dim)`` or ``(n_atoms, dim)`` raises ``ValueError``; a single
      configuration ``(n_atoms, dim)`` is treated as a batch of one and returns shape ``(1,)``;
    - integer, complex and half-precision inputs raise ``TypeError`` (half precision cannot hold the energies
      of molecular systems);
    - a tensor on the ``meta`` device, or on another device than the energy's parameters, raises ``ValueError``;
    - a configuration with NaN or infinite coordinates gets ``u = +inf`` and zero force when
      ``on_error="inf"`` (the default), and raises ``NonFiniteInputError`` when ``on_error="raise"``;
    - a finite configuration whose energy comes out NaN or -inf (coincident particles, overflow of the input
      dtype) gets ``u = +inf`` and zero force too, or raises ``EnergyEvaluationError`` when ``on_error="raise"``;
      an energy that overflows to +inf stays +inf.

    Subclasses implement ``_reduced_energy(x)`` for finite, validated ``x``. They may override ``force``
    when forces come cheaper than through autograd.
    """

    def __init__(
        self,
        n_atoms: int,
        dim: int = 3,
        temperature: float | None = None,
        on_error: OnError = "inf",
    ) -> None:
        super().__init__()
        if n_atoms < 1 or dim < 1:
            raise ValueError(f"n_atoms and dim must be positive, got n_atoms={n_atoms}, dim={dim}")
        if on_error not in ("inf", "raise"):
            raise ValueError(f"on_error must be 'inf' or 'raise', got {on_error!r}")
        if temperature is not None and (
            isinstance(temperature, (str, bytes, bool)) or not hasattr(temperature, "__float__")
        ):
            raise TypeError(f"temperature must be a number in kelvin, got {type(temperature).__name__}")
        if temperature is not None and not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be positive and finite (kelvin), got {temperature}")
        self.n_atoms = int(n_atoms)
        self.dim = int(dim)
        self.temperature = None if temperature is None else float(temperature)
        self.on_error: OnError = on_error

    @property
    def kT(self) -> float | None:
        """Thermal energy in kJ/mol, or None for targets defined directly in reduced units."""
        return None if self.temperature is None else kT_in_kJ_per_mol(self.temperature)

    @property
    def event_shape(self) -> tuple[int, int]:
        """Shape of one configuration, ``(n_atoms, dim)``."""
        return (self.n_atoms, self.dim)

    def validate(self, x: Tensor) -> Tensor:
        """Check type and shape; return ``x`` as ``(batch, n_atoms, dim)``."""
        if not isinstance(x, Tensor):
            raise TypeError(f"positions must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
            raise TypeError(
                f"positions must be float32 or float64, got {x.dtype}; "
                "half precision cannot hold energies accurately, convert with x.float() or x.double()"
            )
        if x.ndim == 2:
            x = x.unsqueeze(0)
        if x.ndim != 3 or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"positions must have shape (batch, {self.n_atoms}, {self.dim}), got {tuple(x.shape)}")
        if x.device.type == "meta":
            raise ValueError("positions are on the 'meta' device, which holds no data; pass a CPU or CUDA tensor")
        reference = next(self.buffers(), None)
        if reference is None:
            reference = next(self.parameters(), None)
        if reference is not None and reference.device != x.device:
            raise ValueError(
                f"positions are on {x.device} but this energy's parameters on {reference.device}; "
                f"move one of them (x.to({str(reference.device)!r}) or energy.to({str(x.device)!r}))"
            )
        return x

    def finite_mask(self, x: Tensor) -> Tensor:
        """Boolean mask ``(batch,)`` of configurations whose coordinates are all finite; raises if asked to."""
        finite = torch.isfinite(x).flatten(1).all(dim=1)
        if self.on_error == "raise" and not bool(finite.all()):
            bad = (~finite).nonzero().flatten()
            raise NonFiniteInputError(
                f"{len(bad)} of {len(x)} configurations have NaN or infinite coordinates "
                f"(first at batch index {int(bad[0])}); pass on_error='inf' to get u=+inf for them instead"
            )
        return finite

    def forward(self, x: Tensor) -> Tensor:
        """Reduced energy u(x), shape ``(batch,)``, dimensionless (kT); see the class docstring for the policy."""
        x = self.validate(x)
        finite = self.finite_mask(x)
        if bool(finite.all()):
            return self._failed_to_inf(self._reduced_energy(x), x.dtype)
        # Evaluate on a harmless stand-in so that no NaN enters autograd, then mark those rows +inf.
        safe = torch.where(finite[:, None, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        u = self._failed_to_inf(self._reduced_energy(safe), x.dtype, finite)
        return torch.where(finite, u, torch.full_like(u, float("inf")))

    def _failed_to_inf(self, u: Tensor, dtype: torch.dtype, rows: Tensor | None = None) -> Tensor:
        """``u`` with NaN and infinite energies of finite configurations (``rows``) set to +inf, or raise."""
        failed = torch.isnan(u) | (u == -math.inf)  # +inf is a valid answer (weight 0), e.g. RestrictedEnergy
        if rows is not None:
            failed = failed & rows
        if not bool(failed.any()):
            return u
        if self.on_error == "raise":
            index = int(failed.nonzero()[0])
            raise EnergyEvaluationError(
                f"{int(failed.sum())} of {len(u)} configurations with finite coordinates have a non-finite energy "
                f"(first at batch index {index}: {float(u[index])}; coincident particles or overflow of {dtype}); "
                "pass on_error='inf' to get u=+inf and zero force for them instead"
            )
        return torch.where(failed, torch.full_like(u, float("inf")), u)

    def reduced_energy(self, x: Tensor) -> Tensor:
        """Alias of ``forward``: u(x) = E(x) / kT, shape ``(batch,)``."""
        return self(x)

    def force(self, x: Tensor) -> Tensor:
        """Force ``-du/dx`` in reduced units (1/nm for molecules), shape ``(batch, n_atoms, dim)``.

        Rows with non-finite input (u = +inf) get zero force.
        """
        x = self.validate(x)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            u = self(x)
            ok = torch.isfinite(u)
            finite_u = torch.where(ok, u, torch.zeros_like(u))
            (grad,) = torch.autograd.grad(finite_u.sum(), x)
        # where() passes zero gradient to the +inf rows, but 0 * inf inside their graph can still leave NaN there
        return torch.where(ok[:, None, None], -grad, torch.zeros_like(grad))

    def _reduced_energy(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

"""The base of every compiled term: ``ForceTerm``, the ``BuildContext`` its builder receives, and the helpers that
read OpenMM values into float64/long tensors. Every term module imports from here; this module imports no other
module of ``torchff``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["BuildContext", "ForceTerm", "f64", "long_rows", "plain"]


@dataclass(frozen=True)
class BuildContext:
    """What a term's builder may need besides the force itself.

    force_index: the force's index in the System (-1: not from a System), for error messages.
    masses: the System's particle masses (Da), or None when the force is compiled on its own.
    """

    force_index: int = -1
    masses: tuple[float, ...] | None = None


class ForceTerm(nn.Module):
    """One compiled ``openmm.Force``: ``forward(x)`` gives its energy in kJ/mol, shape ``(batch,)``.

    x: positions in nm, shape (batch, n_atoms, 3). Parameters are float64 buffers that stay float64 under
    ``.to(dtype)``/``.float()``; they are cast to ``x.dtype`` at call time, so the dtype follows the input.

    Subclasses define ``from_force(force, force_index)``; the registry builds every term through :meth:`build`,
    which a term that needs more of the System (e.g. the masses) overrides.
    """

    #: True where the force has parameters for every particle of the System (its particle count must match).
    per_particle: bool = False

    def __init__(self, name: str, force_index: int, force_group: int) -> None:
        super().__init__()
        self.name = name
        self.force_index = int(force_index)
        self.force_group = int(force_group)

    @classmethod
    def from_force(cls, force: Any, force_index: int = -1) -> ForceTerm:
        raise NotImplementedError

    @classmethod
    def build(cls, force: Any, context: BuildContext) -> ForceTerm:
        """The term of ``force`` (an ``openmm.Force`` of this term's class) within the System of ``context``."""
        return cls.from_force(force, context.force_index)

    def extra_repr(self) -> str:
        return f"force_index={self.force_index}, force_group={self.force_group}"

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> ForceTerm:
        # Devices move with the module; float64 parameters stay float64 (they are cast per call instead).
        def keep_float64(t: Tensor) -> Tensor:
            out = fn(t)
            if t.dtype == torch.float64 and out.dtype != torch.float64:
                return t.to(device=out.device)  # the original float64 values, on the new device
            return out

        return super()._apply(keep_float64, recurse)


def plain(value: Any) -> float:
    """A float from an OpenMM value in its default units (Quantity or plain number)."""
    return float(value._value) if hasattr(value, "_value") else float(value)


def f64(values: Any) -> Tensor:
    """``values`` as a flat float64 tensor, shape (n,)."""
    return torch.as_tensor(np.asarray(values, dtype=np.float64).reshape(-1))


def long_rows(values: Any, width: int) -> Tensor:
    """``values`` (atom indices) as a long tensor of shape (n, width)."""
    return torch.as_tensor(np.asarray(values, dtype=np.int64).reshape(-1, width))

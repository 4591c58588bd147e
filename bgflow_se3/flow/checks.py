"""Input checks shared by the flows' public log-densities: shape, dtype, device and finiteness of positions."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import NonFiniteInputError

__all__ = ["check_positions"]


def check_positions(x: Tensor, n_atoms: int, dim: int, reference: Tensor, name: str = "x") -> Tensor:
    """``x`` of shape (batch, n_atoms, dim) in ``reference``'s dtype, or a clear error.

    reference: a parameter or buffer of the flow (its dtype and device). A float32/float64 ``x`` is converted to the
    flow's dtype; integer, complex and half-precision tensors raise ``TypeError``, a wrong shape or a tensor on
    another device (or the ``meta`` device) ``ValueError``, NaN or infinite entries ``NonFiniteInputError``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 3 or tuple(x.shape[1:]) != (n_atoms, dim):
        raise ValueError(f"{name} must have shape (batch, {n_atoms}, {dim}), got {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"{name} must be float32 or float64 (the flow is {reference.dtype}), got {x.dtype}; "
            "convert it with x.to(flow's dtype)"
        )
    if x.device != reference.device:
        raise ValueError(
            f"{name} is on {x.device} but the flow's parameters on {reference.device}; "
            f"move one of them (x.to({str(reference.device)!r}) or flow.to({str(x.device)!r}))"
        )
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteInputError(f"{name} holds NaN or infinite coordinates; a log-density of them is undefined")
    return x.to(reference.dtype)

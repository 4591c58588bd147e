"""Lin-log regularisation of reduced energies for training: identity below a threshold, logarithmic above, finite."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["regularize_energy"]


def regularize_energy(u: Tensor, linear_max: float = 1e3, hard_max: float = 1e9) -> Tensor:
    """Tame very high reduced energies so that one clash cannot blow up a loss or a gradient.

    u: reduced energies u = E/kT (dimensionless, in units of kT), any shape. The thresholds are in kT too.

    - ``u <= linear_max``: unchanged (the physically relevant range keeps its exact value and gradient);
    - ``linear_max < u < hard_max``: ``linear_max + log(1 + u - linear_max)``, continuous with slope 1 at the
      threshold and slope ``1 / (1 + u - linear_max)`` above it;
    - ``u >= hard_max`` and every non-finite value (``+inf`` marks a failed evaluation in ``OpenMMEnergy``;
      ``-inf`` and NaN can only come from a broken target and must not attract the flow): the cap
      ``linear_max + log(1 + hard_max - linear_max)`` (about 1020.7 kT for the defaults), with zero gradient.

    Always finite, monotone non-decreasing on the real line, differentiable (no NaN gradients, also at inf/NaN
    inputs). Returns a tensor of u's shape, dtype and device.
    """
    if not (math.isfinite(linear_max) and math.isfinite(hard_max)) or not hard_max > linear_max:
        raise ValueError(f"need finite linear_max < hard_max (kT), got linear_max={linear_max}, hard_max={hard_max}")
    if not u.is_floating_point():
        raise TypeError(f"energies must be a floating point tensor, got {u.dtype}")
    capped = ~torch.isfinite(u) | (u >= hard_max)
    # Feed the log branch only values in its range so that no inf/NaN reaches the backward pass through where().
    safe = torch.where(capped, torch.full_like(u, hard_max), u)
    above = safe > linear_max
    excess = torch.where(above, safe - linear_max, torch.zeros_like(safe))
    return torch.where(above, linear_max + torch.log1p(excess), safe)

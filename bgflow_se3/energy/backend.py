"""The fastest reduced-energy backend of an openmm.System for a device: TorchForceField on CUDA, else OpenMM."""

from __future__ import annotations

from typing import Any

from .base import Energy

__all__ = ["energy_for_device"]


def energy_for_device(system: Any, temperature: float, device: str, n_workers: int = 1) -> tuple[Energy, str]:
    """A reduced-energy target for ``system`` at ``temperature`` (K), and the backend's name for reports.

    device: "cuda..." gives ``TorchForceField`` on that device (batched on the GPU); anything else gives
    ``OpenMMEnergy`` with ``n_workers`` processes (the Reference platform; call ``close()`` when done).
    Raises ``ValueError`` for a device that is neither CPU nor CUDA (e.g. "meta", a typo).
    """
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'cpu' or 'cuda[:index]', got {device!r}") from error
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:index]' (energies need real data), got {device!r}")
    if kind == "cuda":
        from .torchff import TorchForceField

        return TorchForceField.from_system(system, temperature).to(device), "TorchForceField"
    from .openmm import OpenMMEnergy

    return OpenMMEnergy(system, temperature, n_workers=n_workers), f"OpenMMEnergy({n_workers} workers)"

"""Sampling on energies without a flow: batched Langevin dynamics (training data, proposals' starting points)."""

from .langevin import LangevinTrajectory, langevin_dynamics, minimise

__all__ = ["LangevinTrajectory", "langevin_dynamics", "minimise"]

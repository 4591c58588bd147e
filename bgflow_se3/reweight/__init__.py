"""Reweighting: importance weights, effective sample sizes and free energies through pymbar."""

__all__: list[str] = []

"""Equivariant normalising flows: the augmented coupling flow and CNF baselines. Never imports OpenMM."""

__all__: list[str] = []

"""Analysis: collective variables (mdtraj), histograms, divergences and plots."""

__all__: list[str] = []

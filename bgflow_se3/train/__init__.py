"""Training: maximum likelihood, reverse KL and FAB, with one training loop."""

__all__: list[str] = []

"""Benchmark systems shipped with the library (OpenMM-native files) and the recipes that rebuild them."""

from .aldp import AlanineDipeptide, load_aldp

__all__ = ["AlanineDipeptide", "load_aldp"]

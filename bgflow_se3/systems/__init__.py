"""Benchmark systems shipped with the library (OpenMM-native files) and the recipes that rebuild them."""

from .aldp import AlanineDipeptide, load_aldp
from .particles import LennardJonesSystem, lennard_jones_system

__all__ = ["AlanineDipeptide", "LennardJonesSystem", "lennard_jones_system", "load_aldp"]

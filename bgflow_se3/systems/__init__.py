"""Benchmark systems shipped with the library (OpenMM-native files) and the recipes that rebuild them."""

from .aldp import AlanineDipeptide, load_aldp
from .particles import LennardJonesSystem, lennard_jones_system

__all__ = ["AlanineDipeptide", "LennardJonesSystem", "lennard_jones_system", "load_aldp"]
from .particle_data import load_particle_data, make_particle_data

__all__ = ["AlanineDipeptide", "load_aldp", "load_particle_data", "make_particle_data"]

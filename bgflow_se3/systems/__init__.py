"""Benchmark systems shipped with the library (OpenMM-native files) and the recipes that rebuild them."""

from .aldp import AlanineDipeptide, load_aldp
from .md import default_md_dir, load_aldp_md, run_aldp_md
from .particle_data import load_particle_data, make_particle_data
from .particles import LennardJonesSystem, lennard_jones_system

__all__ = [
    "AlanineDipeptide",
    "LennardJonesSystem",
    "default_md_dir",
    "lennard_jones_system",
    "load_aldp",
    "load_aldp_md",
    "load_particle_data",
    "make_particle_data",
    "run_aldp_md",
]

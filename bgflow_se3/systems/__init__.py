"""The catalogue of benchmark systems: loaders and the shipped OpenMM files (alanine dipeptide, capped alanine
peptides, the LJ clusters).

A leaf: it imports nothing of the rest of ``bgflow_se3`` (nothing here runs a simulation). The drivers that make
reference data live in ``bgflow_se3.simulate``; the names that used to live here (``run_aldp_md``,
``load_aldp_md``, ``default_md_dir``, ``load_particle_data``, ``make_particle_data``) are still importable from
this package, looked up in ``bgflow_se3.simulate`` on first use (module ``__getattr__``), so importing the
catalogue does not import the drivers.
"""

from .aldp import AlanineDipeptide, load_aldp
from .lennard_jones import LennardJonesSystem, lennard_jones_system
from .peptides import Peptide, load_peptide

__all__ = [
    "AlanineDipeptide",
    "LennardJonesSystem",
    "Peptide",
    "default_md_dir",
    "lennard_jones_system",
    "load_aldp",
    "load_aldp_md",
    "load_particle_data",
    "load_peptide",
    "make_particle_data",
    "run_aldp_md",
]

#: names that moved to the drivers: name -> module of bgflow_se3.simulate that defines it
_MOVED_TO_SIMULATE = {
    "default_md_dir": "bgflow_se3.simulate.aldp_md",
    "load_aldp_md": "bgflow_se3.simulate.aldp_md",
    "run_aldp_md": "bgflow_se3.simulate.aldp_md",
    "load_particle_data": "bgflow_se3.simulate.particle_mcmc",
    "make_particle_data": "bgflow_se3.simulate.particle_mcmc",
}


def __getattr__(name: str):
    if name in _MOVED_TO_SIMULATE:
        from importlib import import_module

        return getattr(import_module(_MOVED_TO_SIMULATE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

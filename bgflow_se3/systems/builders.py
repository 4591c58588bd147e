"""Recipes that build the benchmark OpenMM Systems from force-field files (used by systems/*/build.py).

``write_aldp_files`` (which needs openmmtools) lives in ``bgflow_se3.simulate.aldp_files``; this module still
gives it lazily (module ``__getattr__``), so the catalogue imports nothing of ``bgflow_se3.simulate``.
"""

from __future__ import annotations

__all__ = ["ALDP_FORCEFIELDS", "build_aldp_systems"]

#: Force-field files of the alanine dipeptide Systems, as named in openmm.app.
ALDP_FORCEFIELDS = {
    "vacuum": ("amber99sbildn.xml",),
    "implicit": ("amber99sbildn.xml", "amber99_obc.xml"),
    "gbn2": ("amber14-all.xml", "implicit/gbn2.xml"),
}


def build_aldp_systems(topology):
    """Alanine dipeptide Systems of ``ALDP_FORCEFIELDS``, NoCutoff, no constraints, no CMMotionRemover.

    topology: openmm.app.Topology of ACE-ALA-NME (22 atoms).
    Returns a dict ``{"vacuum": System, "implicit": System, "gbn2": System}``.
    """
    import openmm.app as app

    systems = {}
    for name, files in ALDP_FORCEFIELDS.items():
        forcefield = app.ForceField(*files)
        systems[name] = forcefield.createSystem(
            topology,
            nonbondedMethod=app.NoCutoff,
            constraints=None,
            rigidWater=False,
            removeCMMotion=False,
        )
    return systems


def __getattr__(name: str):
    """``write_aldp_files``, from ``bgflow_se3.simulate.aldp_files``, imported on first use (the old path)."""
    if name == "write_aldp_files":
        from importlib import import_module

        return import_module("bgflow_se3.simulate.aldp_files").write_aldp_files
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

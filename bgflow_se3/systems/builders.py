"""Recipes that build the benchmark OpenMM Systems from force-field files (used by systems/*/build.py)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ALDP_FORCEFIELDS", "build_aldp_systems", "write_aldp_files"]

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


def write_aldp_files(directory: str | Path) -> None:
    """Write ``aldp.pdb``, ``vacuum.xml``, ``implicit.xml`` and ``gbn2.xml`` into ``directory``.

    The structure is openmmtools' alanine dipeptide (the tleap-built ACE-ALA-NME shipped with openmmtools);
    the Systems come from :func:`build_aldp_systems` on the topology read back from the written PDB, so that
    the files are self-consistent.
    """
    import openmm
    import openmm.app as app

    from ..reweight._pymbar import quiet_pymbar_import

    with quiet_pymbar_import():  # openmmtools imports pymbar, which prints a JAX banner and a caveat on import
        from openmmtools import testsystems

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    source = testsystems.AlanineDipeptideVacuum(constraints=None)
    pdb_path = directory / "aldp.pdb"
    with open(pdb_path, "w") as handle:
        app.PDBFile.writeFile(source.topology, source.positions, handle, keepIds=True)
    pdb = app.PDBFile(str(pdb_path))
    for name, system in build_aldp_systems(pdb.topology).items():
        (directory / f"{name}.xml").write_text(openmm.XmlSerializer.serialize(system))

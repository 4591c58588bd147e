"""Rebuild the shipped alanine dipeptide files (``bgflow_se3/systems/data/aldp``): used by systems/aldp/build.py.

Takes openmmtools' structure (imported quietly: openmmtools imports pymbar, which prints on import) and the
Systems of ``bgflow_se3.systems.builders.build_aldp_systems``.
"""

from __future__ import annotations

from pathlib import Path

from ..systems.builders import build_aldp_systems

__all__ = ["write_aldp_files"]


def write_aldp_files(directory: str | Path) -> None:
    """Write ``aldp.pdb``, ``vacuum.xml``, ``implicit.xml`` and ``gbn2.xml`` into ``directory``.

    The structure is openmmtools' alanine dipeptide (the tleap-built ACE-ALA-NME shipped with openmmtools);
    the Systems come from :func:`bgflow_se3.systems.builders.build_aldp_systems` on the topology read back from
    the written PDB, so that the files are self-consistent.
    """
    import openmm
    import openmm.app as app

    from ..reweight.pymbar_calls import quiet_pymbar_import

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

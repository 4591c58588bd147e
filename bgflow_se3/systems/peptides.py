"""Capped alanine peptides: the tetrapeptide Ace-(Ala)3-Nme ("ala4", 42 atoms) and the hexapeptide Ace-(Ala)5-Nme
("ala6", 62 atoms), amber99sbildn + OBC implicit solvent (amber99_obc), 300 K, set up like the alanine dipeptide.

The FAB / TA-BG convention names a capped peptide by its peptide bonds: n alanines between the ACE and NME caps
make an (n+1)-peptide (Ace-Ala-Nme is the dipeptide). The files live in ``bgflow_se3/systems/data/<name>/`` and are
rebuilt from the sequence by ``PYTHONPATH=. python systems/peptides/build.py`` (see docs/peptides.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from .structure import ShippedStructure

__all__ = ["PEPTIDES", "Peptide", "load_peptide"]

#: name -> (sequence of residue names, number of atoms)
PEPTIDES = {
    "ala4": (("ACE", "ALA", "ALA", "ALA", "NME"), 42),
    "ala6": (("ACE", "ALA", "ALA", "ALA", "ALA", "ALA", "NME"), 62),
}
SOLVENTS = ("implicit",)


@dataclass(frozen=True)
class Peptide(ShippedStructure):
    """A shipped peptide test system, in the style of ``AlanineDipeptide``.

    system: openmm.System (amber99sbildn + amber99_obc: a GBSAOBCForce; NoCutoff, no constraints, no
        CMMotionRemover).
    topology: openmm.app.Topology.
    positions: openmm Quantity of shape (n_atoms, 3), nm: the shipped minimised structure.
    name: "ala4" or "ala6".
    solvent: "implicit".
    """

    name: str

    @property
    def provenance(self) -> dict:
        """How the files were built (``provenance.json``: sequence, method, OpenMM version, energy, checks)."""
        return json.loads(_data(self.name).joinpath("provenance.json").read_text())


def _data(name: str):
    return resources.files("bgflow_se3.systems") / "data" / name


def load_peptide(name: str, solvent: str = "implicit") -> Peptide:
    """Load a shipped capped alanine peptide: ``"ala4"`` (Ace-(Ala)3-Nme) or ``"ala6"`` (Ace-(Ala)5-Nme).

    Only ``solvent="implicit"`` (amber99sbildn.xml + amber99_obc.xml) is shipped. Raises ``ValueError`` for an
    unknown name or solvent, naming the known ones.
    """
    import openmm
    import openmm.app as app

    if name not in PEPTIDES:
        raise ValueError(f"unknown peptide {name!r}; the shipped peptides are {', '.join(map(repr, PEPTIDES))}")
    if solvent not in SOLVENTS:
        raise ValueError(f"solvent must be one of {', '.join(map(repr, SOLVENTS))} for {name!r}, got {solvent!r}")
    data = _data(name)
    with resources.as_file(data / f"{name}.pdb") as pdb_path:
        pdb = app.PDBFile(str(pdb_path))
    system = openmm.XmlSerializer.deserialize((data / f"{solvent}.xml").read_text())
    return Peptide(system=system, topology=pdb.topology, positions=pdb.positions, name=name, solvent=solvent)

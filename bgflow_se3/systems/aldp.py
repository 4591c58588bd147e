"""Alanine dipeptide (ACE-ALA-NME, 22 atoms): amber99sbildn in vacuum or OBC implicit solvent, amber14 + GBn2, 300 K."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Literal

from .structure import ShippedStructure

__all__ = ["CHIRAL_CENTRE_ATOMS", "PHI_ATOMS", "PSI_ATOMS", "SOLVENTS", "AlanineDipeptide", "is_l_form", "load_aldp"]

Solvent = Literal["vacuum", "implicit", "gbn2"]
#: The shipped Systems: name -> force-field files (openmm.app names); see ``bgflow_se3.systems.builders``.
SOLVENTS = ("vacuum", "implicit", "gbn2")

#: atom indices of the backbone dihedrals in the shipped topology (checked against mdtraj in the tests)
PHI_ATOMS = (4, 6, 8, 14)  # C(ACE) - N - CA - C
PSI_ATOMS = (6, 8, 14, 16)  # N - CA - C - N(NME)
#: (N, CA, C, CB) of the alanine residue: the chiral centre
CHIRAL_CENTRE_ATOMS = (6, 8, 14, 10)


def is_l_form(x):
    """Boolean mask (batch,): the alpha carbon of configurations x (batch, 22, 3) (torch) is L.

    L has a positive signed volume (N - CA) . ((C - CA) x (CB - CA)) (the CORN rule, as
    ``analysis.chirality``); NaN coordinates give False. The force field cannot tell L from D (mirror images have
    equal energy), so the Boltzmann target of the L molecule is exp(-u) restricted to this mask.
    """
    from ..geometry import signed_volume  # torch: imported on first use, as before

    n, ca, c, cb = (x[:, i] for i in CHIRAL_CENTRE_ATOMS)
    return signed_volume(n, ca, c, cb) > 0


@dataclass(frozen=True)
class AlanineDipeptide(ShippedStructure):
    """An alanine dipeptide test system, in the openmmtools style.

    system: openmm.System (NoCutoff, no constraints; ``implicit`` adds a GBSAOBCForce, ``gbn2`` is amber14 with a
        CustomGBForce).
    topology: openmm.app.Topology.
    positions: openmm Quantity of shape (22, 3), nm: the shipped minimisable starting structure.
    solvent: "vacuum", "implicit" or "gbn2".
    """


def load_aldp(solvent: Solvent = "implicit") -> AlanineDipeptide:
    """Load a shipped alanine dipeptide System, all NoCutoff, unconstrained, without CMMotionRemover:

    - ``"vacuum"``: amber99sbildn.xml;
    - ``"implicit"`` (default): amber99sbildn.xml + amber99_obc.xml (a ``GBSAOBCForce``, OBC type II);
    - ``"gbn2"``: amber14-all.xml + implicit/gbn2.xml (GBn2 implicit solvent as a ``CustomGBForce``, Nguyen et al.
      2013; amber14's ff14SB parameters, so its bonded and nonbonded energies differ from the two above).

    All share the topology and positions of ``aldp.pdb``. The files live in ``bgflow_se3/systems/data/aldp`` and
    are rebuilt by ``python systems/aldp/build.py``.
    """
    import openmm
    import openmm.app as app

    if solvent not in SOLVENTS:
        raise ValueError(f"solvent must be one of {', '.join(map(repr, SOLVENTS))}, got {solvent!r}")
    data = resources.files("bgflow_se3.systems") / "data" / "aldp"
    with resources.as_file(data / "aldp.pdb") as pdb_path:
        pdb = app.PDBFile(str(pdb_path))
    system = openmm.XmlSerializer.deserialize((data / f"{solvent}.xml").read_text())
    return AlanineDipeptide(system=system, topology=pdb.topology, positions=pdb.positions, solvent=solvent)

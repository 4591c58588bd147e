"""Rebuild the shipped alanine peptide files: PYTHONPATH=. python systems/peptides/build.py [--out DIR].

For each peptide of ``PEPTIDES`` ("ala4": Ace-(Ala)3-Nme, the alanine tetrapeptide; "ala6": Ace-(Ala)5-Nme, the
alanine hexapeptide; the FAB / TA-BG convention counts the caps' peptide bonds, so n alanines between the caps make
an (n+1)-peptide) writes into ``DIR/<name>/``:

- ``<name>.pdb``: built from the sequence with no network and no template file. The heavy atoms are placed from
  ideal internal coordinates (Engh & Huber bond lengths and angles; omega 180, every alanine at phi -135, psi 135,
  an extended beta strand; the CB placed on the L side), written as a heavy-atom PDB, read back (standard bonds),
  given hydrogens by ``openmm.app.Modeller.addHydrogens`` with the force field (``random`` seeded, Reference
  platform, so the build repeats), then minimised with
  ``openmm.LocalEnergyMinimizer`` on the implicit-solvent System (Reference platform, tolerance 1 kJ/mol/nm);
- ``implicit.xml``: amber99sbildn.xml + amber99_obc.xml, NoCutoff, constraints=None, no CMMotionRemover (as the
  shipped alanine dipeptide's ``implicit.xml``);
- ``provenance.json``: the sequence, method, OpenMM version, force fields, settings, the minimised energy (kJ/mol)
  and the checks (every atom matched to a template, finite energy, the smallest non-bonded distance, all CA L).

DIR defaults to ``bgflow_se3/systems/data``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "bgflow_se3" / "systems" / "data"

#: name -> number of alanines between the ACE and NME caps
PEPTIDES = {"ala4": 3, "ala6": 5}
FORCEFIELDS = ("amber99sbildn.xml", "amber99_obc.xml")
PHI, PSI, OMEGA = -135.0, 135.0, 180.0  # degrees: extended (beta) start

# ideal geometry (Angstrom, degrees; Engh & Huber 1991)
B_N_CA, B_CA_C, B_C_N, B_C_O, B_CA_CB, B_CH3_C, B_N_CH3 = 1.458, 1.525, 1.329, 1.231, 1.530, 1.520, 1.458
A_C_N_CA, A_N_CA_C, A_CA_C_N, A_CA_C_O, A_N_CA_CB = 121.7, 111.2, 116.2, 120.5, 110.5
#: the improper C-N-CA-CB torsion that puts CB on the L side (checked below by the CORN signed volume)
T_C_N_CA_CB = -122.6


def _place(a, b, c, bond, angle, torsion):
    """Position of d with |cd| = bond, angle bcd = angle, dihedral abcd = torsion (degrees) (NeRF)."""
    angle, torsion = math.radians(angle), math.radians(torsion)
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d2 = np.array(
        [
            -bond * math.cos(angle),
            bond * math.sin(angle) * math.cos(torsion),
            bond * math.sin(angle) * math.sin(torsion),
        ]
    )
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def heavy_atoms(n_ala: int) -> list[tuple[str, str, int, np.ndarray]]:
    """(residue name, atom name, residue number, position in Angstrom) of ACE-(ALA)n-NME's heavy atoms."""
    ch3 = np.array([0.0, 0.0, 0.0])
    c = np.array([B_CH3_C, 0.0, 0.0])
    # ACE: CH3 - C(=O) - N(ALA1); the point (0, 1, 0) only fixes the frame (the plane of the chain)
    n = _place(np.array([0.0, 1.0, 0.0]), ch3, c, B_C_N, A_CA_C_N, 180.0)
    o = _place(n, ch3, c, B_C_O, A_CA_C_O, 180.0)
    atoms = [("ACE", "CH3", 1, ch3), ("ACE", "C", 1, c), ("ACE", "O", 1, o)]
    prev_ca, prev_c = ch3, c  # the ACE methyl plays CA(i-1)
    for k in range(n_ala):
        resnum = k + 2
        ca = _place(prev_ca, prev_c, n, B_N_CA, A_C_N_CA, OMEGA)
        cc = _place(prev_c, n, ca, B_CA_C, A_N_CA_C, PHI)
        cb = _place(prev_c, n, ca, B_CA_CB, A_N_CA_CB, PHI + T_C_N_CA_CB)
        n_next = _place(n, ca, cc, B_C_N, A_CA_C_N, PSI)
        o = _place(n_next, ca, cc, B_C_O, A_CA_C_O, 180.0)
        atoms += [("ALA", "N", resnum, n), ("ALA", "CA", resnum, ca), ("ALA", "C", resnum, cc)]
        atoms += [("ALA", "O", resnum, o), ("ALA", "CB", resnum, cb)]
        prev_ca, prev_c, n = ca, cc, n_next
    ch3_nme = _place(prev_ca, prev_c, n, B_N_CH3, A_C_N_CA, OMEGA)
    atoms += [("NME", "N", n_ala + 2, n), ("NME", "C", n_ala + 2, ch3_nme)]
    return atoms


def heavy_atom_pdb(n_ala: int) -> str:
    lines = []
    for serial, (resname, name, resnum, xyz) in enumerate(heavy_atoms(n_ala), start=1):
        record = "ATOM  " if resname == "ALA" else "HETATM"
        lines.append(
            f"{record}{serial:5d} {name:<4s} {resname:3s} A{resnum:4d}    {xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}"
            f"  1.00  0.00          {name[0]:>2s}"
        )
    return "\n".join(lines + ["TER", "END"]) + "\n"


def build_system(topology):
    import openmm.app as app

    return app.ForceField(*FORCEFIELDS).createSystem(
        topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False, removeCMMotion=False
    )


def min_nonbonded_distance(topology, positions_nm: np.ndarray) -> float:
    """Smallest distance (nm) between atoms more than three bonds apart (the 1-4 and closer pairs excluded)."""
    n = topology.getNumAtoms()
    adjacency = [set() for _ in range(n)]
    for bond in topology.bonds():
        adjacency[bond[0].index].add(bond[1].index)
        adjacency[bond[1].index].add(bond[0].index)
    near = np.eye(n, dtype=bool)
    frontier = [{i} for i in range(n)]
    for _ in range(3):
        frontier = [set().union(*(adjacency[j] for j in f)) if f else set() for f in frontier]
        for i, f in enumerate(frontier):
            near[i, list(f)] = True
    d = np.linalg.norm(positions_nm[:, None] - positions_nm[None], axis=-1)
    return float(d[~near].min())


def build_peptide(name: str, n_ala: int, out: Path) -> dict:
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    from bgflow_se3.analysis.chirality import chirality_signs

    heavy = app.PDBFile(io.StringIO(heavy_atom_pdb(n_ala)))
    modeller = app.Modeller(heavy.topology, heavy.positions)
    random.seed(0)  # Modeller.addHydrogens starts some hydrogens at random positions: seeded, the build repeats
    modeller.addHydrogens(app.ForceField(*FORCEFIELDS), platform=openmm.Platform.getPlatformByName("Reference"))
    system = build_system(modeller.topology)  # raises unless every atom matches a template
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(modeller.positions)
    e_start = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, 0)
    state = context.getState(getEnergy=True, getPositions=True)
    positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)

    directory = out / name
    directory.mkdir(parents=True, exist_ok=True)
    pdb_path = directory / f"{name}.pdb"
    with open(pdb_path, "w") as handle:
        app.PDBFile.writeFile(modeller.topology, positions * unit.nanometer, handle, keepIds=True)
    # everything below is checked on what was written (PDB precision 0.001 A), as a user loads it
    pdb = app.PDBFile(str(pdb_path))
    system = build_system(pdb.topology)
    (directory / "implicit.xml").write_text(openmm.XmlSerializer.serialize(system))
    x = pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(x)
    energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    signs = chirality_signs(pdb.topology, x[None])[0]
    d_min = min_nonbonded_distance(pdb.topology, np.asarray(x))
    expected_atoms = 6 + 10 * n_ala + 6
    checks = {
        "n_atoms": pdb.topology.getNumAtoms(),
        "expected_n_atoms": expected_atoms,
        "all_atoms_matched_to_templates": True,
        "energy_finite": bool(math.isfinite(energy)),
        "min_nonbonded_distance_nm": round(d_min, 4),
        "chirality_signs": [int(s) for s in signs],
    }
    if not (
        checks["n_atoms"] == expected_atoms
        and math.isfinite(energy)
        and d_min > 0.1
        and all(s == 1 for s in signs)
        and len(signs) == n_ala
    ):
        raise RuntimeError(f"{name}: a check failed: {checks}, energy {energy}")
    provenance = {
        "name": name,
        "sequence": ["ACE"] + ["ALA"] * n_ala + ["NME"],
        "description": f"Ace-(Ala){n_ala}-Nme",
        "method": (
            "heavy atoms from ideal internal coordinates (Engh & Huber bond lengths/angles, omega 180, "
            f"phi {PHI}, psi {PSI}, CB on the L side) by NeRF in systems/peptides/build.py; hydrogens by "
            "openmm.app.Modeller.addHydrogens(ForceField(*force_fields)) with random.seed(0); minimised with "
            "openmm.LocalEnergyMinimizer (tolerance 1 kJ/mol/nm, Reference platform) on the implicit System"
        ),
        "openmm_version": openmm.__version__,
        "force_fields": list(FORCEFIELDS),
        "settings": {
            "nonbondedMethod": "NoCutoff",
            "constraints": None,
            "rigidWater": False,
            "removeCMMotion": False,
            "temperature_K": 300.0,
        },
        "energy_before_minimisation_kj_mol": round(e_start, 3),
        "energy_minimised_kj_mol": round(energy, 3),
        "checks": checks,
    }
    (directory / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    for peptide, n_ala in PEPTIDES.items():
        record = build_peptide(peptide, n_ala, args.out)
        print(
            f"{peptide}: {record['description']}, energy {record['energy_minimised_kj_mol']} kJ/mol, {record['checks']}"
        )

"""Benchmark of the own-molecule workflow on the shipped capped alanine peptides, against umbrella references.

    PYTHONPATH=. python systems/peptides/benchmark.py --peptide ala4 --references                  # print the commands
    PYTHONPATH=. python systems/peptides/benchmark.py --peptide ala4 --out runs/bench_ala4         # flow + table
    PYTHONPATH=. python systems/peptides/benchmark.py --peptide ala4 --out DIR --smoke             # seconds

The flow side is exactly ``bgflow-se3 run`` on the shipped files (``workflow.run_workflow`` with its defaults, or
``--smoke``), so nothing here is tuned to the peptide. The reference of each residue's phi is a replica-exchange
umbrella run of ``systems/aldp/umbrella.py`` on the same files (``--system-xml``, ``--pdb``, ``--torsion phi<k>``)
cached in ``REFERENCES/<peptide>/phi<k>``; ``--references`` prints those commands. ``benchmark.json`` in ``--out``
then holds, per residue: the flow's F(phi > 0) - F(phi <= 0) with its error, reliability and effective samples, the
reference's with its repeat-scatter error, their difference, the difference in combined standard errors, and
whether it is within 0.2 kT and 2 combined standard errors (the acceptance rule); plus reverse ESS, target
evaluations and wall time of the run. A residue without a reference cache is reported without the comparison.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from bgflow_se3.cli_checks import output_directory
from bgflow_se3.jsonio import write_json
from bgflow_se3.systems.peptides import PEPTIDES, load_peptide
from bgflow_se3.workflow import (
    UmbrellaReference,
    WorkflowSettings,
    check_molecule,
    load_umbrella_reference,
    peptide_torsions,
    run_workflow,
)

DEFAULT_REFERENCES = Path.home() / ".cache" / "bgflow_se3" / "peptide_umbrella"


def peptide_files(name: str) -> tuple[Path, Path]:
    """The shipped System XML and PDB of ``name`` (as files on disk)."""
    data = resources.files("bgflow_se3.systems") / "data" / name
    return Path(str(data / "implicit.xml")), Path(str(data / f"{name}.pdb"))


def reference_commands(name: str, references: Path, workers: int = 2) -> list[str]:
    """One ``systems/aldp/umbrella.py`` command per phi torsion of ``name``."""
    xml, pdb = peptide_files(name)
    peptide = load_peptide(name)
    phis = [t for t in peptide_torsions(peptide.topology) if t.name.startswith("phi")]
    return [
        f"PYTHONPATH=. python systems/aldp/umbrella.py --system-xml {xml} --pdb {pdb} --torsion {t.name} "
        f"--cache {references / name / t.name} --repeats 4 --ns-per-window 1 --workers {workers}"
        for t in phis
    ]


def cached_references(name: str, references: Path) -> dict[str, UmbrellaReference]:
    """torsion name -> reference for each phi of ``name`` whose cache ``references/name/phi<k>`` is finished."""
    peptide = load_peptide(name)
    found = {}
    for t in peptide_torsions(peptide.topology):
        folder = references / name / t.name
        if t.name.startswith("phi") and (folder / "summary.json").is_file():
            found[t.name] = load_umbrella_reference(folder)
    return found


def row(entry: dict) -> dict:
    """One row of the table: the flow's entry and, where it has one, the comparison with its reference."""
    keys = ("name", "atoms", "stderr_kT", "reliable", "effective_samples_positive", "effective_samples_negative")
    out = {"dF_kT": entry["dF_positive_minus_negative_kT"], **{k: entry[k] for k in keys}}
    out["pareto_k"] = [entry.get("pareto_k_positive"), entry.get("pareto_k_negative")]
    comparison = ("reference", "difference_kT", "difference_sigma", "within_tolerance")
    return {**out, **{k: entry[k] for k in comparison if k in entry}, "reference": entry.get("reference")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peptide", choices=sorted(PEPTIDES), default="ala4")
    parser.add_argument("--out", type=output_directory, default=None, help="run folder (default runs/bench_<name>)")
    parser.add_argument("--reference-dir", type=Path, default=DEFAULT_REFERENCES)
    parser.add_argument("--references", action="store_true", help="print the umbrella commands of the references")
    parser.add_argument("--smoke", action="store_true", help="the workflow's smallest sizes (checks the pipeline)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if args.references:
        print("\n".join(reference_commands(args.peptide, args.reference_dir)))
        return
    peptide = load_peptide(args.peptide)
    molecule = check_molecule(peptide.system, peptide.topology, peptide.positions_nm)
    out = args.out or Path("runs") / f"bench_{args.peptide}"
    settings = WorkflowSettings.smoke() if args.smoke else WorkflowSettings()
    references = cached_references(args.peptide, args.reference_dir)
    results = run_workflow(
        molecule, out, settings=settings, references=references, resume=args.resume, progress=not args.no_progress
    )
    rows = [row(entry) for entry in results["torsion_free_energies"]]
    table = {
        "peptide": args.peptide,
        "n_atoms": results["n_atoms"],
        "residues": rows,
        "all_within_tolerance": all(r.get("within_tolerance", False) for r in rows),
        "reverse_ess": results["reverse_ess"],
        "n_target_evaluations_total": results["n_target_evaluations_total"],
        "wall_time_s_total": results["wall_time_s_total"],
        "settings": "smoke" if args.smoke else "defaults",
    }
    write_json(out / "benchmark.json", table)
    for r in rows:
        ref = r["reference"]
        against = (
            f"reference {ref['dF_kT']:.3f} +/- {ref['stderr_kT']:.3f}: {r['difference_kT']:+.3f} kT "
            f"({r['difference_sigma']:.1f} sigma) {'OK' if r['within_tolerance'] else 'OUTSIDE tolerance'}"
            if ref
            else "no reference cached (--references prints the commands)"
        )
        print(f"{r['name']}: {r['dF_kT']:.3f} +/- {r['stderr_kT']:.3f} kT, reliable {r['reliable']}; {against}")
    print(f"reverse ESS {100 * table['reverse_ess']:.2f} %, {table['wall_time_s_total']:.0f} s -> {out}")


if __name__ == "__main__":
    main()

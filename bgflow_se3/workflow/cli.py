"""``bgflow-se3 run``: the workflow from a System XML and a PDB to free energies, on the command line.

    bgflow-se3 run --system-xml system.xml --pdb molecule.pdb --out DIR

For a peptide every residue's phi is a default state pair: F(phi > 0) - F(phi <= 0) is printed per residue with its
error bar and reliability flag and kept in ``DIR/results.json`` as ``torsion_free_energies`` (a list of {name, atoms
(four 0-based indices), dF_positive_minus_negative_kT, stderr_kT, reliable, ...}). Other molecules name torsions
(``--torsion NAME=a,b,c,d``); ``--state`` and ``--pair`` add named states of one or more torsions;
``--reference NAME=DIR`` compares torsion NAME with an umbrella cache of ``systems/aldp/umbrella.py``. Inputs are
checked before anything runs (``workflow.inputs``): a periodic box, constraints, virtual sites, a PDB that does not
match the System, rings or an unreached state give one line naming the problem, exit status 1, and nothing in an
existing output folder is overwritten (``--resume`` continues an interrupted run).
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

from ..cli_checks import output_directory, positive_int
from ..errors import BgflowError

__all__ = ["add_run_parser", "parse_state", "parse_torsion", "run_command"]

logger = logging.getLogger(__name__)

#: the exit status of ``--strict`` when an estimate is not reliable (1 is bad input, 2 a malformed option)
UNRELIABLE_EXIT = 3

STATE_HELP = """\
states (radians; a range (low, high] with low > high wraps across pi):
  --torsion phi1                      a torsion the workflow names (peptides: phi<k>, psi<k>, k the residue index)
  --torsion chi=8,10,12,14            any four 0-based atom indices
  --state "alphaR=phi1:-3.1416:0&psi1:-2.1:0.9"
                                      a named state: every term (&) holds; a term is TORSION:LOW:HIGH, several
                                      ranges of one torsion joined by | (e.g. psi1:2:3.1416|-3.1416:-2.5)
  --pair alphaR:beta                  F(alphaR) - F(beta) (default: every pair of the --state's)"""


def parse_torsion(text: str) -> tuple[str, tuple[int, int, int, int] | None]:
    """``NAME`` or ``NAME=a,b,c,d`` -> (name, atoms or None) (``states.parse_torsion_spec``, with a name of letters,
    digits and _.:+-); raises ``argparse.ArgumentTypeError``."""
    from .states import parse_torsion_spec

    name = text.partition("=")[0].strip()
    if not re.fullmatch(r"[A-Za-z0-9_.:+-]+", name or "-"):
        raise argparse.ArgumentTypeError(f"{text!r}: a torsion is NAME or NAME=a,b,c,d (letters, digits, _.:+-)")
    try:
        return parse_torsion_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


def parse_state(text: str) -> tuple[str, list[tuple[str, list[tuple[float, float]]]]]:
    """``NAME=TORSION:LOW:HIGH[|LOW:HIGH][&TORSION:...]`` -> (name, [(torsion, [(low, high), ...]), ...])."""
    name, _, body = text.partition("=")
    name = name.strip()
    if not name or not body:
        raise argparse.ArgumentTypeError(f"{text!r}: a state is NAME=TORSION:LOW:HIGH (see --help)")
    terms = []
    for term in body.split("&"):
        torsion, _, ranges = term.strip().partition(":")
        arcs = []
        for arc in ranges.split("|"):
            try:
                low, high = (float(v) for v in arc.split(":"))
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{text!r}: {term.strip()!r} is not TORSION:LOW:HIGH with LOW and HIGH in radians"
                ) from None
            if not (-math.pi - 1e-4 <= low <= math.pi + 1e-4 and -math.pi - 1e-4 <= high <= math.pi + 1e-4):
                raise argparse.ArgumentTypeError(f"{text!r}: angles are radians in [-pi, pi], got ({low}, {high}]")
            arcs.append((max(-math.pi, min(math.pi, low)), max(-math.pi, min(math.pi, high))))
        if not torsion:
            raise argparse.ArgumentTypeError(f"{text!r}: {term.strip()!r} names no torsion")
        terms.append((torsion, arcs))
    return name, terms


def _reference(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: a reference is TORSION=DIR (an umbrella cache folder)")
    return name.strip(), Path(folder.strip())


def _pair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise argparse.ArgumentTypeError(f"{text!r}: a pair is STATE_A:STATE_B")
    return a, b


def add_run_parser(subparsers: Any) -> None:
    """Register ``bgflow-se3 run``."""
    parser = subparsers.add_parser(
        "run",
        help="free energies of your molecule from scratch: System XML + PDB -> results.json",
        description="Seeded Langevin data -> maximum likelihood -> FAB -> reweighted free energies, for a\n"
        "non-periodic OpenMM System (serialized XML) and a PDB of the molecule. Peptides: F(phi > 0) - F(phi <= 0)\n"
        "per residue by default. Everything lands in --out; --resume continues an interrupted run.",
        epilog=STATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--system-xml", type=Path, required=True, help="serialized openmm.System")
    parser.add_argument("--pdb", type=Path, required=True, help="the molecule: topology, bonds, start structure")
    parser.add_argument("--out", type=output_directory, required=True, help="output folder (new, or --resume)")
    parser.add_argument("--torsion", type=parse_torsion, action="append", default=[], help="NAME or NAME=a,b,c,d")
    parser.add_argument("--state", type=parse_state, action="append", default=[], help="see below")
    parser.add_argument("--pair", type=_pair, action="append", default=None, help="STATE_A:STATE_B")
    parser.add_argument(
        "--reference",
        type=_reference,
        action="append",
        default=[],
        help="TORSION=DIR: compare with (and draw) the umbrella reference cached in DIR by systems/aldp/umbrella.py",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out (same inputs and options)")
    parser.add_argument(
        "--strict",
        action="store_true",
        help=f"exit with status {UNRELIABLE_EXIT} when any estimate is not reliable (after writing every file)",
    )
    parser.add_argument("--temperature", type=float, default=300.0, help="kelvin")
    parser.add_argument("--smoke", action="store_true", help="the smallest sizes (checks the pipeline; seconds)")
    parser.add_argument("--replicas", type=positive_int, default=None, help="seeded Langevin replicas")
    parser.add_argument("--md-ps", type=float, default=None, help="Langevin ps per replica")
    parser.add_argument("--hidden", type=positive_int, default=None, help="flow MLP width (default: from the molecule)")
    parser.add_argument("--bins", type=positive_int, default=None, help="spline bins of the flow (default 8)")
    parser.add_argument("--ml-iterations", type=positive_int, default=None)
    parser.add_argument("--fab-iterations", type=positive_int, default=None)
    parser.add_argument("--samples", type=positive_int, default=None, help="flow samples for the estimates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run_command)


def _settings(args: argparse.Namespace):
    from .settings import WorkflowSettings

    changes = {
        "replicas": args.replicas,
        "md_ps": args.md_ps,
        "hidden": args.hidden,
        "n_bins": args.bins,
        "ml_iterations": args.ml_iterations,
        "fab_iterations": args.fab_iterations,
        "n_samples": args.samples,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    changes.update(temperature_K=args.temperature, seed=args.seed)
    return WorkflowSettings.smoke(**changes) if args.smoke else WorkflowSettings(**changes)


def _torsions(molecule, specs) -> tuple[dict[str, Any], dict[str, Any]]:
    """(known, chosen), each name -> Torsion: the workflow's named torsions (peptides: phi<k>, psi<k>), and the
    ``--torsion`` choices resolved (``states.torsion_from_parts``: a known name, or the atoms given)."""
    from .states import peptide_torsions, torsion_from_parts

    try:
        known = {t.name: t for t in peptide_torsions(molecule.topology)}
    except ValueError:
        known = {}
    chosen = {}
    for name, atoms in specs:
        try:
            chosen[name] = torsion_from_parts(name, atoms, known, molecule.n_atoms)
        except ValueError as e:
            raise ValueError(f"--torsion {e}") from None
    return known, chosen


def _states(specs, known, chosen) -> dict[str, Any]:
    """name -> state for each ``--state``, its torsions looked up among ``known`` and ``chosen``."""
    from .states import TorsionState, all_of

    lookup = {**known, **chosen}
    states = {}
    for name, terms in specs:
        parts = []
        for torsion, arcs in terms:
            if torsion not in lookup:
                raise ValueError(
                    f"--state {name}: unknown torsion {torsion!r}; name it with --torsion {torsion}=a,b,c,d"
                )
            parts.append(TorsionState(lookup[torsion], tuple(arcs)))
        states[name] = parts[0] if len(parts) == 1 else all_of(*parts)
    return states


def _report(results: dict[str, Any], out: Path) -> None:
    print()
    for entry in results["torsion_free_energies"]:
        flag = "reliable" if entry["reliable"] else f"NOT reliable: {entry['error'] or entry['warning']}"
        print(
            f"{entry['name']:>8} {entry['atoms']}: F(> 0) - F(<= 0) = {entry['dF_positive_minus_negative_kT']:8.3f} "
            f"+/- {entry['stderr_kT']:.3f} kT  ({flag}; effective samples {entry['effective_samples_positive']:.0f} "
            f"/ {entry['effective_samples_negative']:.0f}; weight-tail k-hat {entry['pareto_k_positive']:.2f} / "
            f"{entry['pareto_k_negative']:.2f})"
        )
        if entry.get("reference"):
            ref = entry["reference"]
            verdict = "within tolerance" if entry["within_tolerance"] else "OUTSIDE tolerance"
            print(
                f"{'':>8} reference {ref['dF_kT']:.3f} +/- {ref['stderr_kT']:.3f} kT ({ref['n_repeats']} repeats x "
                f"{ref['ns_per_window']:g} ns per window): {entry['difference_kT']:+.3f} kT, "
                f"{entry['difference_sigma']:.1f} sigma, {verdict}"
            )
    for entry in results["state_free_energies"]:
        flag = "reliable" if entry["reliable"] else f"NOT reliable: {entry['error'] or entry['warning']}"
        print(
            f"F({entry['state_a']}) - F({entry['state_b']}) = {entry['dF_kT']:.3f} +/- {entry['stderr_kT']:.3f} kT "
            f"({flag})"
        )
    print(
        f"reverse ESS {100 * results['reverse_ess']:.2f} % of {results['n_samples']} samples (weight-tail k-hat "
        f"{results['pareto_k']:.2f}); "
        f"{results['wall_time_s_total']:.0f} s; results in {out / 'results.json'}"
    )


def _references(specs) -> dict[str, Any]:
    """name -> ``UmbrellaReference`` for each ``--reference``; a missing or unreadable cache is a ``ValueError``."""
    from .references import load_umbrella_reference

    references = {}
    for name, folder in specs:
        try:
            references[name] = load_umbrella_reference(folder)
        except FileNotFoundError as e:
            raise ValueError(f"--reference {name}: {e}") from None
    return references


def run_command(args: argparse.Namespace) -> int:
    """``bgflow-se3 run``: returns the exit code (0; 1 with one line for bad input; 3 with ``--strict`` when an
    estimate is not reliable; 128 + signal when stopped)."""
    from ..threads import set_threads
    from ..train import exit_when_interrupted
    from .inputs import load_molecule
    from .pipeline import run_workflow

    if args.threads:
        set_threads(args.threads)
    try:
        settings = _settings(args)
        molecule = load_molecule(args.system_xml, args.pdb)
        known, chosen = _torsions(molecule, args.torsion)
        states = _states(args.state, known, chosen)
        references = _references(args.reference)
        with exit_when_interrupted():
            results = run_workflow(
                molecule,
                args.out,
                torsions=list(chosen.values()) or None,
                states=states,
                pairs=args.pair,
                settings=settings,
                references=references,
                resume=args.resume,
                progress=not args.no_progress,
            )
    except (BgflowError, ValueError) as error:  # bad input or a state no replica reached: one line, no traceback
        logger.debug("run failed", exc_info=True)
        raise SystemExit(f"bgflow-se3 run: {type(error).__name__}: {error}") from None
    except KeyboardInterrupt:  # Ctrl-C outside training (coverage MD, evaluation): finished stages are on disk
        print(
            f"bgflow-se3 run: interrupted; the finished stages are kept in {args.out}: rerun this command with "
            "--resume to continue",
            file=sys.stderr,
        )
        return 130
    _report(results, args.out)
    if args.strict and not results["all_reliable"]:
        print(f"bgflow-se3 run: --strict: not every estimate is reliable (exit {UNRELIABLE_EXIT})", file=sys.stderr)
        return UNRELIABLE_EXIT
    return 0

"""The ``bgflow-se3`` command line: one argparse subcommand per task: ``run`` (the whole workflow from a System XML
and a PDB to free energies, ``workflow.cli``) and ``free-energy`` (reweight saved samples).

Add a subcommand by writing ``_add_<name>(subparsers)`` that registers its parser and sets ``func`` to a
function taking the parsed arguments and returning an exit code, then listing it in ``SUBCOMMANDS``. Options are
checked at parse time with the ``type=`` functions of ``bgflow_se3.cli_checks``.

``bgflow-se3 free-energy SAMPLES.npz`` reads the samples file described in ``SAMPLES_FORMAT`` (the
``samples.npz`` that ``analysis.evaluate_dipeptide`` writes is one). The target is the molecule with the handedness
of the given structure (the shipped alanine dipeptide: L; ``--pdb``: the PDB's structure) at every stereocentre
that ``analysis.stereocentres`` finds from the bond graph: samples of the other handedness (mirror images,
which an achiral force field scores the same) get u = +inf, i.e. weight 0, whether u is computed here or read
from the file, as in the library (``evaluate_dipeptide(restrict_to_l=True)``, ``energy.RestrictedEnergy``).
"""

from __future__ import annotations

import argparse
import logging
import math
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cli_checks import n_bootstrap, output_directory, positive_int, umbrella_cache
from .errors import BgflowError
from .workflow.cli import add_run_parser

__all__ = ["SAMPLES_FORMAT", "build_parser", "check_samples", "load_samples", "main", "run_free_energy"]

logger = logging.getLogger(__name__)

#: phi in (0, 2) rad versus the rest: the alanine dipeptide state of the literature.
PHI_STATE = (0.0, 2.0)

SAMPLES_FORMAT = """\
samples file: an .npz written with numpy.savez(path, x=..., log_q=..., ...); n samples, one row each:
  x          (n, n_atoms, 3)  configurations in nm (finite)
  log_q      (n,)             flow log-density in nats (the joint log q(x, a) for augmented flows)
  log_p_aug  (n,)             log pi(a | x) of the augmented target in nats (zeros for a flow without auxiliary
                              variables); required unless the file declares augmented=False
  augmented  ()               optional bool scalar: False declares a flow without auxiliary variables, so
                              log_p_aug may be left out (or pass --not-augmented)
  a          (n, ...)         optional augmented variables; a file holding a needs log_p_aug
  u          (n,)             optional reduced target energy E / kT at --temperature (+inf: weight 0); computed
                              with OpenMM when absent
Weights are exp(-u + log_p_aug - log_q). Samples whose handedness differs from the given structure's (mirror
images, D residues for alanine dipeptide) get weight 0 unless --no-restrict-chirality; bgflow_se3's
evaluate_dipeptide writes x, log_q, u, log_p_aug and augmented into samples.npz."""


def _load_system(name: str | None, xml: Path | None, pdb: Path | None) -> tuple[Any, Any, np.ndarray]:
    """(openmm.System, openmm.app.Topology, positions (n_atoms, 3) nm) from a shipped name or from XML + PDB files.

    The positions are the structure whose handedness defines the target (``run_free_energy``'s
    ``reference_positions``).
    """
    if xml is not None or pdb is not None:
        if xml is None or pdb is None:
            raise SystemExit("--system-xml and --pdb go together")
        import openmm
        import openmm.app as app
        import openmm.unit as unit

        structure = app.PDBFile(str(pdb))
        positions = np.asarray(structure.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
        return openmm.XmlSerializer.deserialize(Path(xml).read_text()), structure.topology, positions
    from .systems import load_aldp

    if name not in ("aldp-implicit", "aldp-vacuum"):
        raise SystemExit(f"unknown --system {name!r}: use aldp-implicit, aldp-vacuum, or --system-xml with --pdb")
    aldp = load_aldp(name.split("-")[1])
    return aldp.system, aldp.topology, aldp.positions_nm


def _check_arrays(data: dict[str, np.ndarray], source: str) -> None:
    """Names, shapes and dtypes of the samples arrays; raises ValueError naming the array and the remedy."""
    missing = {"x", "log_q"} - set(data)
    if missing:
        raise ValueError(f"{source} lacks {sorted(missing)}: save x (n, n_atoms, 3) in nm and log_q (n,) in nats")
    x = np.asarray(data["x"])
    if x.ndim != 3 or x.shape[-1] != 3 or x.shape[0] == 0:
        raise ValueError(f"x in {source} must have shape (n, n_atoms, 3) with n >= 1, got {x.shape}")
    for name in ("log_q", "u", "log_p_aug"):
        if name in data and np.shape(data[name]) != (x.shape[0],):
            raise ValueError(
                f"{name} in {source} must have shape ({x.shape[0]},) (one per sample), got {np.shape(data[name])}"
            )
    if "a" in data and np.shape(data["a"])[:1] != (x.shape[0],):
        raise ValueError(
            f"a in {source} must have one row per sample, shape ({x.shape[0]}, ...), got {np.shape(data['a'])}"
        )
    for name, array in data.items():
        kinds, what = ("biu", "a bool") if name == "augmented" else ("fiu", "numbers")
        if array.dtype.kind not in kinds:
            raise ValueError(f"{name} in {source} must be {what}, got dtype {array.dtype}")
    if "augmented" in data and (np.shape(data["augmented"]) != () or data["augmented"] not in (0, 1)):
        raise ValueError(f"augmented in {source} must be one bool (True or False), got {data['augmented']!r}")
    if not np.isfinite(x).all():
        raise ValueError(f"x in {source} holds NaN or inf coordinates: drop those samples first")


def _check_augmentation(data: dict[str, np.ndarray], source: str) -> None:
    """log_p_aug must be there unless the file says the flow is not augmented (``augmented`` False, no ``a``)."""
    declared = bool(data["augmented"]) if "augmented" in data else None
    if declared is False and "a" in data:
        raise ValueError(f"{source} says augmented=False but holds augmented variables a: fix one of the two")
    if "log_p_aug" in data:
        if declared is False and np.any(np.asarray(data["log_p_aug"]) != 0):
            raise ValueError(
                f"{source} says augmented=False but its log_p_aug is not zero: save augmented=True if it is augmented"
            )
        return
    if "a" in data:
        raise ValueError(
            f"{source} holds augmented variables a but no log_p_aug: save log_p_aug = log pi(a | x) (n,) in nats, "
            "without which the weights are wrong"
        )
    if declared is not False:
        raise ValueError(
            f"{source} has no log_p_aug: an augmented flow's weights need log_p_aug = log pi(a | x) (n,) in nats; "
            "save it, or declare a flow without auxiliary variables with augmented=False in the file "
            "(bgflow-se3 free-energy: --not-augmented)"
        )


def check_samples(samples: dict[str, Any], source: str = "the samples") -> dict[str, np.ndarray]:
    """The samples dict (format: ``SAMPLES_FORMAT``) as numpy arrays, checked; ``ValueError`` names what is wrong.

    Shapes, dtypes, finite x, and the augmentation rule: ``log_p_aug`` is required unless ``augmented`` is False
    (and there is no ``a``), since leaving log pi(a | x) out of an augmented flow's weights gives a wrong Delta F
    without any other sign.
    """
    data = {name: np.asarray(value) for name, value in samples.items()}
    _check_arrays(data, source)
    _check_augmentation(data, source)
    return data


def load_samples(path: Path, not_augmented: bool = False) -> dict[str, np.ndarray]:
    """The checked arrays of a samples .npz (``check_samples``); for scripts: a bad file exits (``SystemExit``)
    with a one-line message.

    not_augmented: the user's declaration (``--not-augmented``) that the flow has no auxiliary variables.
    """
    try:
        archive = np.load(path, allow_pickle=False)
        if not hasattr(archive, "files"):
            raise ValueError("it holds a single array, not named arrays")
        with archive:
            data = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise SystemExit(
            f"cannot read {path} as an .npz of samples ({type(error).__name__}: {error}); "
            "write it with numpy.savez(path, x=..., log_q=..., log_p_aug=... or augmented=False, [u=...])"
        ) from None
    if not_augmented:
        if "augmented" in data and bool(data["augmented"]):
            raise SystemExit(f"{path} says augmented=True, but --not-augmented was given: drop one of the two")
        data.setdefault("augmented", np.asarray(False))
    try:
        return check_samples(data, str(path))
    except ValueError as error:
        raise SystemExit(str(error)) from None


def _mirror_samples(topology: Any, x: np.ndarray, reference_positions: np.ndarray | None) -> tuple[np.ndarray, int]:
    """(mask (n,) of samples whose handedness differs from the reference, number of chiral centres).

    With a reference structure: at every stereocentre that ``analysis.stereocentres`` finds from the bond graph (any
    molecule); without one: L at every amino-acid alpha carbon (``analysis.chiral_centres``).
    """
    if reference_positions is None:
        from .analysis.chirality import chiral_centres, chirality_mismatch

        n_centres = len(chiral_centres(topology))
        if n_centres == 0:
            return np.zeros(x.shape[0], dtype=bool), 0
        return chirality_mismatch(topology, x, reference_positions), n_centres
    import torch

    from .analysis.stereo import same_handedness, stereocentres

    n_centres = len(stereocentres(topology))
    if n_centres == 0:
        return np.zeros(x.shape[0], dtype=bool), 0
    allowed = same_handedness(topology, reference_positions)  # a planar reference raises, naming the atom
    return ~allowed(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy(), n_centres


def _target_energies(
    samples: dict[str, np.ndarray], system: Any, temperature: float, mirror: np.ndarray, restrict: bool
) -> np.ndarray:
    """Reduced energies u (n,) of the target: from the file or OpenMM, +inf on mirror samples when ``restrict``."""
    x = samples["x"]
    if "u" in samples:
        u = np.asarray(samples["u"], dtype=np.float64)
        n_finite = int(np.sum(mirror & np.isfinite(u)))
        if restrict and n_finite:
            warnings.warn(
                f"u in the samples gives {n_finite} mirror-image samples (of the other handedness than the given "
                "structure's) a finite energy; they get weight 0, since the target is the molecule of the given "
                "handedness (restrict_chirality=False, --no-restrict-chirality, keeps them)",
                UserWarning,
                stacklevel=3,
            )
    else:
        from .simulate.openmm_langevin import reduced_energies

        u = np.full(x.shape[0], math.inf)
        compute = ~mirror if restrict else np.ones(x.shape[0], dtype=bool)
        if compute.any():
            u[compute] = reduced_energies(system, x[compute], temperature)
    return np.where(mirror, math.inf, u) if restrict else u


def run_free_energy(
    samples: dict[str, Any],
    system: Any,
    topology: Any,
    *,
    temperature: float = 300.0,
    out: Path | None = None,
    umbrella_cache: Path | None = None,
    bins: int = 36,
    n_bootstrap: int = 0,
    seed: int = 0,
    reference_positions: np.ndarray | None = None,
    restrict_chirality: bool = True,
) -> dict[str, Any]:
    """phi-state Delta F, ESS, phi profile and Ramachandran plot of saved flow samples; returns a summary dict.

    samples: ``x`` (n, n_atoms, 3) nm, ``log_q`` (n,) nats, ``log_p_aug`` (n,) nats (or ``augmented`` False),
    optional ``u`` (n,) reduced energies (evaluated with OpenMM at ``temperature``, kelvin, when absent): the
    format of ``SAMPLES_FORMAT``, checked by ``check_samples``.
    reference_positions: (n_atoms, 3) nm, the structure whose handedness, at every stereocentre that
    ``analysis.stereocentres`` finds from the bond graph, defines the target (None: L at every alpha carbon).
    With ``restrict_chirality`` (default) samples of the other handedness get u = +inf (weight 0), also when u
    comes from the file (with a warning if the file gave them a finite u); the summary reports their
    fraction (``mirror_fraction``; None when the topology has no chiral centre) either way.
    Summary: n_samples; n_infinite_energy (samples of the target's handedness with u = +inf: failed evaluations);
    restrict_chirality, n_chiral_centres, n_mirror_samples, mirror_fraction; ess_fraction, ess_count; the fraction
    of samples in phi (0, 2); delta_f_kT, delta_f_stderr_kT, delta_f_method; umbrella_* from ``umbrella_cache``.
    Writes figures and summary.json (strict JSON: NaN as null) to ``out``.
    """
    from .analysis import free_energy_profile_figure, phi_psi, ramachandran_figure
    from .jsonio import write_json
    from .reweight import effective_sample_size, free_energy_difference, free_energy_surface, log_importance_weights
    from .reweight.state_pair import state_pareto_k

    samples = check_samples(samples)
    x, log_q = samples["x"], samples["log_q"]
    n_atoms = topology.getNumAtoms() if hasattr(topology, "getNumAtoms") else topology.n_atoms
    if x.shape[1] != n_atoms:
        raise ValueError(
            f"x holds {x.shape[1]} atoms per sample but the topology has {n_atoms}: use the matching System"
        )
    log_p_aug = samples.get("log_p_aug")
    mirror, n_centres = _mirror_samples(topology, x, reference_positions)
    if restrict_chirality and mirror.all():
        raise ValueError(
            f"all {len(mirror)} samples are mirror images of the given structure (the other handedness): the flow "
            "samples the other enantiomer; give a structure of that handedness (--pdb), or keep them with "
            "restrict_chirality=False (--no-restrict-chirality)"
        )
    u = _target_energies(samples, system, temperature, mirror, restrict_chirality)
    log_w = log_importance_weights(log_q, u, log_p_aug)
    ess = effective_sample_size(log_w)
    phi, psi = phi_psi(topology, x)
    in_a = (phi > PHI_STATE[0]) & (phi < PHI_STATE[1])
    delta_f = free_energy_difference(log_q, u, in_a, ~in_a, log_p_aug=log_p_aug, n_bootstrap=n_bootstrap, seed=seed)
    tail_in, tail_out = state_pareto_k(log_w, in_a), state_pareto_k(log_w, ~in_a)
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    profile = free_energy_surface(phi, log_q, u, log_p_aug=log_p_aug, bins=edges)
    summary: dict[str, Any] = {
        "n_samples": int(x.shape[0]),
        "n_infinite_energy": int(np.sum(~np.isfinite(u) & ~(mirror & restrict_chirality))),  # failed evaluations
        "restrict_chirality": bool(restrict_chirality),
        "n_chiral_centres": n_centres,
        "n_mirror_samples": int(mirror.sum()),
        "mirror_fraction": float(mirror.mean()) if n_centres else None,
        "ess_fraction": ess.fraction,
        "ess_count": ess.count,
        "fraction_flow_samples_phi_in_0_2": float(in_a.mean()),
        "delta_f_kT": delta_f.value,
        "delta_f_stderr_kT": delta_f.stderr,
        "delta_f_method": delta_f.method,
        # each state's weight tail (reweight.tail): above its limit the flow covers part of the state too thinly
        "pareto_k_phi_in_0_2": tail_in[0],
        "pareto_k_rest": tail_out[0],
        "pareto_k_limit": min(tail_in[1], tail_out[1]),
    }
    reference = None
    if umbrella_cache is not None and (Path(umbrella_cache) / "profile.npz").exists():
        ref = np.load(Path(umbrella_cache) / "profile.npz")
        reference = (ref["centers"], ref["f"], ref["df"])
        summary["umbrella_delta_f_kT"] = float(ref["delta_f"])
        summary["umbrella_block_stderr_kT"] = float(ref["block_stderr"])
        summary["umbrella_ns_per_window"] = float(ref["ns_per_window"])
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        weights = np.exp(log_w - np.max(log_w))
        ramachandran_figure(phi, psi, title="flow samples").savefig(out / "ramachandran_flow.png", dpi=120)
        ramachandran_figure(phi, psi, weights=weights, title="reweighted to the target").savefig(
            out / "ramachandran_reweighted.png", dpi=120
        )
        free_energy_profile_figure(
            profile.centers[0],
            profile.f,
            profile.df,
            reference=reference,
            label="flow, reweighted",
            reference_label="umbrella sampling",
        ).savefig(out / "phi_profile.png", dpi=120)
        write_json(out / "summary.json", summary, indent=1)
    return summary


def _print_summary(summary: dict[str, Any], out: Path | None) -> None:
    """The CLI's report: Delta F, ESS, the mirror-image fraction and the umbrella reference."""
    print(
        f"Delta F(phi in (0, 2) vs rest) = {summary['delta_f_kT']:.3f} +/- {summary['delta_f_stderr_kT']:.3f} kT "
        f"({summary['delta_f_method']}); ESS {summary['ess_count']:.0f} of {summary['n_samples']} "
        f"({100 * summary['ess_fraction']:.2f}%)"
    )
    if summary["mirror_fraction"] is not None:
        fate = "weight 0" if summary["restrict_chirality"] else "kept: --no-restrict-chirality"
        print(
            f"mirror images of the given structure (D for alanine dipeptide): {summary['n_mirror_samples']} of "
            f"{summary['n_samples']} samples ({100 * summary['mirror_fraction']:.2f}%), {fate}"
        )
    if "umbrella_delta_f_kT" in summary:
        print(
            f"umbrella reference: {summary['umbrella_delta_f_kT']:.3f} +/- {summary['umbrella_block_stderr_kT']:.3f} kT"
        )
    if out is not None:
        print(f"figures and summary.json in {out}")


def _free_energy(args: argparse.Namespace) -> int:
    samples = load_samples(args.samples, not_augmented=args.not_augmented)
    system, topology, positions = _load_system(args.system, args.system_xml, args.pdb)
    try:
        summary = run_free_energy(
            samples,
            system,
            topology,
            temperature=args.temperature,
            out=args.out,
            umbrella_cache=args.umbrella_cache,
            bins=args.bins,
            n_bootstrap=args.n_bootstrap,
            seed=args.seed,
            reference_positions=positions,
            restrict_chirality=not args.no_restrict_chirality,
        )
    except (BgflowError, ValueError) as error:  # bad data or an estimate that cannot be trusted: one line, no trace
        logger.debug("free-energy failed", exc_info=True)
        raise SystemExit(f"bgflow-se3 free-energy: {type(error).__name__}: {error}") from None
    _print_summary(summary, args.out)
    return 0


def _add_free_energy(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "free-energy",
        help="phi-state free energy, ESS, phi profile and Ramachandran plot of saved samples",
        description="Reweight saved flow samples to the target System and report Delta F(phi in (0, 2) vs rest)\n"
        "in kT with its error, the ESS and the fraction of mirror-image samples. The target is the molecule\n"
        "with the handedness of the given structure (shipped alanine dipeptide: L; --pdb: that structure's):\n"
        "mirror images get weight 0, also when the file gives them a finite u (with a warning).",
        epilog=SAMPLES_FORMAT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("samples", type=Path, help="npz: x (nm), log_q, log_p_aug or augmented=False, optional u")
    parser.add_argument("--system", default="aldp-implicit", help="aldp-implicit | aldp-vacuum")
    parser.add_argument("--system-xml", type=Path, default=None, help="serialized openmm.System (with --pdb)")
    parser.add_argument(
        "--pdb", type=Path, default=None, help="PDB with the topology and a structure of the target's handedness"
    )
    parser.add_argument("--temperature", type=float, default=300.0, help="kelvin")
    parser.add_argument(
        "--umbrella-cache", type=umbrella_cache, default=None, help="umbrella run to overlay (holds profile.npz)"
    )
    parser.add_argument("--bins", type=positive_int, default=36, help="phi profile bins on [-pi, pi)")
    parser.add_argument(
        "--n-bootstrap", type=n_bootstrap, default=0, help="bootstrap error (>= 2 resamples) instead of MBAR's (0)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=output_directory, default=None, help="directory for figures and summary.json")
    parser.add_argument(
        "--not-augmented",
        action="store_true",
        help="the flow has no auxiliary variables: accept a file without log_p_aug",
    )
    parser.add_argument(
        "--no-restrict-chirality",
        action="store_true",
        help="keep samples of the other handedness (mirror images) instead of giving them weight 0",
    )
    parser.set_defaults(func=_free_energy)


SUBCOMMANDS: list[Callable[[Any], None]] = [add_run_parser, _add_free_energy]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="bgflow-se3", description="SE(3) equivariant Boltzmann generators")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bgflow-se3``; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

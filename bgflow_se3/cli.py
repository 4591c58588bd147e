"""The ``bgflow-se3`` command line: one argparse subcommand per task (``free-energy`` now; train/sample to come).

Add a subcommand by writing ``_add_<name>(subparsers)`` that registers its parser and sets ``func`` to a
function taking the parsed arguments and returning an exit code, then listing it in ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BgflowError

__all__ = ["build_parser", "main", "run_free_energy"]

logger = logging.getLogger(__name__)

#: phi in (0, 2) rad versus the rest: the alanine dipeptide state of the literature.
PHI_STATE = (0.0, 2.0)


def _load_system(name: str | None, xml: Path | None, pdb: Path | None) -> tuple[Any, Any]:
    """(openmm.System, openmm.app.Topology) from a shipped name or from serialized XML + PDB files."""
    if xml is not None or pdb is not None:
        if xml is None or pdb is None:
            raise SystemExit("--system-xml and --pdb go together")
        import openmm
        import openmm.app as app

        return openmm.XmlSerializer.deserialize(Path(xml).read_text()), app.PDBFile(str(pdb)).topology
    from .systems import load_aldp

    if name not in ("aldp-implicit", "aldp-vacuum"):
        raise SystemExit(f"unknown --system {name!r}: use aldp-implicit, aldp-vacuum, or --system-xml with --pdb")
    aldp = load_aldp(name.split("-")[1])
    return aldp.system, aldp.topology


def _load_samples(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a samples .npz, checked for names and shapes; a bad file exits with a one-line message."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not hasattr(archive, "files"):
            raise ValueError("it holds a single array, not named arrays")
        with archive:
            data = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise SystemExit(
            f"cannot read {path} as an .npz of samples ({type(error).__name__}: {error}); "
            "write it with numpy.savez(path, x=..., log_q=..., [u=..., log_p_aug=...])"
        ) from None
    missing = {"x", "log_q"} - set(data)
    if missing:
        raise SystemExit(f"{path} lacks {sorted(missing)}: save x (n, n_atoms, 3) in nm and log_q (n,) in nats")
    x = data["x"]
    if x.ndim != 3 or x.shape[-1] != 3 or x.shape[0] == 0:
        raise SystemExit(f"x in {path} must have shape (n, n_atoms, 3) with n >= 1, got {x.shape}")
    for name in ("log_q", "u", "log_p_aug"):
        if name in data and data[name].shape != (x.shape[0],):
            raise SystemExit(
                f"{name} in {path} must have shape ({x.shape[0]},) (one per sample), got {data[name].shape}"
            )
    for name, array in data.items():
        if array.dtype.kind not in "fiu":
            raise SystemExit(f"{name} in {path} must be numbers, got dtype {array.dtype}")
    if not np.isfinite(x).all():
        raise SystemExit(f"x in {path} holds NaN or inf coordinates: drop those samples first")
    return data


def run_free_energy(
    samples: dict[str, np.ndarray],
    system: Any,
    topology: Any,
    *,
    temperature: float = 300.0,
    out: Path | None = None,
    umbrella_cache: Path | None = None,
    bins: int = 36,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """phi-state Delta F, ESS, phi profile and Ramachandran plot of saved flow samples; returns a summary dict.

    samples: ``x`` (n, n_atoms, 3) nm, ``log_q`` (n,) nats, optional ``log_p_aug`` (n,) and ``u`` (n,) (reduced
    energies; evaluated with OpenMM at ``temperature`` when absent). Writes figures and summary.json to ``out``.
    """
    from .analysis import free_energy_profile_figure, phi_psi, ramachandran_figure
    from .reweight import effective_sample_size, free_energy_difference, free_energy_surface, log_importance_weights

    x, log_q = samples["x"], samples["log_q"]
    log_p_aug = samples.get("log_p_aug")
    if "u" in samples:
        u = samples["u"]
    else:
        from .systems.simulation import reduced_energies

        u = reduced_energies(system, x, temperature)
    log_w = log_importance_weights(log_q, u, log_p_aug)
    ess = effective_sample_size(log_w)
    phi, psi = phi_psi(topology, x)
    in_a = (phi > PHI_STATE[0]) & (phi < PHI_STATE[1])
    delta_f = free_energy_difference(log_q, u, in_a, ~in_a, log_p_aug=log_p_aug, n_bootstrap=n_bootstrap, seed=seed)
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    profile = free_energy_surface(phi, log_q, u, log_p_aug=log_p_aug, bins=edges)
    summary: dict[str, Any] = {
        "n_samples": int(x.shape[0]),
        "n_infinite_energy": int(np.sum(~np.isfinite(u))),
        "ess_fraction": ess.fraction,
        "ess_count": ess.count,
        "fraction_flow_samples_phi_in_0_2": float(in_a.mean()),
        "delta_f_kT": delta_f.value,
        "delta_f_stderr_kT": delta_f.stderr,
        "delta_f_method": delta_f.method,
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
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _free_energy(args: argparse.Namespace) -> int:
    samples = _load_samples(args.samples)
    system, topology = _load_system(args.system, args.system_xml, args.pdb)
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
        )
    except (BgflowError, ValueError) as error:  # bad data or an estimate that cannot be trusted: one line, no trace
        logger.debug("free-energy failed", exc_info=True)
        raise SystemExit(f"bgflow-se3 free-energy: {type(error).__name__}: {error}") from None
    print(
        f"Delta F(phi in (0, 2) vs rest) = {summary['delta_f_kT']:.3f} +/- {summary['delta_f_stderr_kT']:.3f} kT "
        f"({summary['delta_f_method']}); ESS {summary['ess_count']:.0f} of {summary['n_samples']} "
        f"({100 * summary['ess_fraction']:.2f}%)"
    )
    if "umbrella_delta_f_kT" in summary:
        print(
            f"umbrella reference: {summary['umbrella_delta_f_kT']:.3f} +/- {summary['umbrella_block_stderr_kT']:.3f} kT"
        )
    if args.out is not None:
        print(f"figures and summary.json in {args.out}")
    return 0


def _add_free_energy(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "free-energy",
        help="phi-state free energy, ESS, phi profile and Ramachandran plot of saved samples",
        description="Reweight saved flow samples (npz: x in nm (n, n_atoms, 3), log_q; optional log_p_aug, u) "
        "to the target System and report Delta F(phi in (0, 2) vs rest) in kT with its error.",
    )
    parser.add_argument("samples", type=Path, help="npz with x (nm), log_q (nats), optional log_p_aug, u")
    parser.add_argument("--system", default="aldp-implicit", help="aldp-implicit | aldp-vacuum")
    parser.add_argument("--system-xml", type=Path, default=None, help="serialized openmm.System (with --pdb)")
    parser.add_argument("--pdb", type=Path, default=None, help="PDB with the topology (with --system-xml)")
    parser.add_argument("--temperature", type=float, default=300.0, help="kelvin")
    parser.add_argument("--umbrella-cache", type=Path, default=None, help="umbrella run to overlay (profile.npz)")
    parser.add_argument("--bins", type=int, default=36, help="phi profile bins on [-pi, pi)")
    parser.add_argument("--n-bootstrap", type=int, default=0, help="bootstrap error instead of MBAR's (0: MBAR)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="directory for figures and summary.json")
    parser.set_defaults(func=_free_energy)


SUBCOMMANDS: list[Callable[[Any], None]] = [_add_free_energy]


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

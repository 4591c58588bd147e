"""Reference phi free energies of alanine dipeptide by umbrella sampling (OpenMM) + MBAR (pymbar), in repeats.

    PYTHONPATH=. python systems/aldp/umbrella.py --ns-per-window 0.5 --workers 2      # 2 repeats, 0.5 ns/window
    PYTHONPATH=. python systems/aldp/umbrella.py --extend-ns 1.0 --workers 2          # add 1 ns to every window
    PYTHONPATH=. python systems/aldp/umbrella.py --repeats 4 --workers 2              # add repeats 3 and 4
    PYTHONPATH=. python systems/aldp/umbrella.py --smoke --repeats 2                  # seconds: checks the pipeline
    PYTHONPATH=. python systems/aldp/umbrella.py --system-xml S.xml --pdb M.pdb --torsion phi2 --cache DIR
                                                # your own molecule, any torsion (a name or a,b,c,d)

Your own molecule: ``--system-xml`` and ``--pdb`` (checked by ``workflow.load_molecule``) replace the shipped
alanine dipeptide and ``--torsion`` names the biased torsion: a peptide torsion of ``workflow.peptide_torsions``
("phi2", "psi1", ...) or four 0-based atom indices. ``--cache`` is then required; the run's config records the files'
paths and SHA-256, so a cache is never continued with changed files. "phi" in the output below means the biased
torsion (F(torsion > 0) - F(torsion <= 0) is ``delta_f_phi_positive_kT``); the Ramachandran histogram pairs it with
the residue's psi (or, off a peptide, with itself). Nothing else changes: windows, replica exchange, repeats and
their chi-square test are the same for every molecule.

Windows: ``--windows`` centres evenly on [-pi, pi), a CustomTorsionForce bias k/2 dphi^2 on phi, Langevin dynamics
(LangevinMiddleIntegrator, 1/ps, 300 K) at 2 fs with hydrogen mass repartitioning (3 amu) and no constraints:
repartitioning changes masses only, so the configurational distribution (and every phi free energy) is that of
the shipped System.

Replica exchange (the default, ``--exchange-every-ps 1``): every ps neighbouring windows (a ring) try to swap
their configurations, accepted by the Metropolis rule on the bias energies (``bgflow_se3.simulate.replica_exchange``),
so psi, the slow coordinate the phi bias does not touch, relaxes where it moves fast and travels into the barrier
windows where it does not. ``--exchange-every-ps 0`` runs independent windows (the earlier protocol); the two
protocols keep separate caches (``CACHE`` ends in ``_exchange`` for replica exchange).

Repeats: ``--repeats N`` fully independent runs with seeds ``seed, seed + 1, ..., seed + N - 1``, each cached in
its own folder ``CACHE/seed_<seed>`` (default CACHE ~/.cache/bgflow_se3/aldp_umbrella/<solvent>) and run (or
extended, never restarted) one after the other. The OpenMM seeds of every window are hashed from (run seed,
window), so no two repeats share a random stream. ``--extend-ns`` brings every repeat to the longest cached
repeat plus that many ns per window.

Output, for two state definitions, F(phi > 0) - F(phi <= 0) (``delta_f_phi_positive_kT``) and F(phi in (0, 2)) -
F(rest) (``delta_f_phi_0_2_kT``), in kT:

- per repeat: the MBAR estimate, MBAR's error (decorrelated samples: blind to slow motions it cannot see) and a
  time-block error (``--blocks`` contiguous blocks of that one run). Both are errors of ONE run: its blocks share
  its starting structure and any slow mode it has not relaxed, and with 5 blocks the block error is itself
  uncertain by about +/-35 %. Neither is the error to quote.
- combined: the mean over the repeats with standard error std(ddof=1) / sqrt(N) (the scatter of independent
  runs, which sees everything a single run cannot; it needs N >= 2 and with N = 2 rests on one degree of freedom,
  so it is rough: take more repeats for a reliable error). A chi-square test of the repeats around their weighted
  mean (with their block errors) says whether they agree within their errors; a WARNING line is printed when
  they do not (p < 0.05), i.e. when the single-run errors understate the true scatter.
- how many ns in total +/-0.1 kT would need, from the repeat scatter (from the block error with one repeat).

Files: CACHE/ramachandran.npz, the MBAR-reweighted (phi, psi) probability histogram of the unbiased ensemble
(64 x 64 periodic bins, ``bgflow_se3.analysis.ramachandran.periodic_histogram``; mean over the repeats as ``p``,
each repeat's in ``p_repeats``): the Ramachandran reference of ``evaluate_dipeptide``, which plain MD cannot give
here (phi > 0 is ~4 kT up and crossings take nanoseconds).
CACHE/profile.npz, the phi profile averaged over the repeats (their scatter as ``df``) with the combined
F(phi in (0, 2)) - F(rest) as ``delta_f`` and its combined error as ``delta_f_stderr`` and ``block_stderr`` (the
keys that examples/free_energy_aldp.py and ``bgflow_se3.systems.aldp_references.load_profile`` read), and
CACHE/summary.json with the per-repeat and combined numbers of both states.

Measured (implicit, 36 windows, k = 200 kJ/mol/rad^2, 2 workers on 2 CPU cores): with replica exchange (1 ps),
1 ns per window, four repeats gave F(phi > 0) - F(phi <= 0) = 3.91, 3.80, 3.66, 3.57 kT, 3.73 +/- 0.07 combined;
they agree with their own block errors (chi2 2.5 for 3 dof), swaps are accepted 29 % of the time (5-7 % at the
hardest pair, phi0 2.09 -> 2.27), and +/-0.1 kT needs ~80 ns in total. 9-28 min per repeat (alone: ~9). Without
exchange (0.5 ns per window) four repeats gave 3.86, 3.29, 3.73, 3.22 (bimodal: psi did not equilibrate in the
barrier windows, the alpha-region fraction of a window differed between repeats by up to 0.55; with exchange by
at most 0.19). Provenance: bgflow_se3/systems/data/aldp/umbrella_profile_implicit.json.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np

from bgflow_se3.analysis.ramachandran import periodic_histogram
from bgflow_se3.cli_checks import positive_int
from bgflow_se3.jsonio import write_json
from bgflow_se3.reweight.umbrella import combine_profiles, combine_repeats, umbrella_free_energy, unbiased_weights
from bgflow_se3.simulate.umbrella_sampling import (
    UmbrellaConfig,
    load_window_angles,
    load_windows,
    run_umbrella,
    window_centers,
)

TARGET_KT = 0.1  # the error the "ns needed" line aims at
RAMACHANDRAN_BINS = 64  # the convention of ramachandran_kl


def phi_positive(phi: np.ndarray) -> np.ndarray:
    """phi > 0 (versus phi <= 0, phi in [-pi, pi))."""
    return phi > 0.0


def in_state_a(phi: np.ndarray) -> np.ndarray:
    """The state of the issue: phi in (0, 2) rad."""
    return (phi > 0.0) & (phi < 2.0)


# summary key -> (label, state A; state B is its complement)
STATES = {
    "delta_f_phi_positive_kT": ("F(phi > 0) - F(phi <= 0)", phi_positive),
    "delta_f_phi_0_2_kT": ("F(phi in (0, 2)) - F(rest)", in_state_a),
}


def repeat_cache(cache: Path, seed: int) -> Path:
    """The cache folder of the repeat with this seed."""
    return Path(cache) / f"seed_{seed}"


def analyse_repeat(cache: Path, seed: int, bins: int, n_blocks: int) -> dict:
    """Both state free energies and the profile of one cached repeat, as a JSON-able record (profile as arrays)."""
    config, series, psi, done_ns = load_window_angles(cache)
    centers = window_centers(config.n_windows)
    record = {
        "seed": seed,
        "cache": str(cache),
        "ns_per_window": done_ns,
        "total_ns": done_ns * config.n_windows,
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
    }
    profile = None
    for key, (_, state) in STATES.items():
        result = umbrella_free_energy(series, centers, config.kappa, state, bins=bins, n_blocks=n_blocks)
        record[key] = {
            "value": result.delta_f.value,
            "mbar_stderr": result.delta_f.stderr,
            "block_stderr": result.block_stderr,
            "blocks": result.blocks.tolist(),
        }
        record["statistical_inefficiency_mean"] = float(result.statistical_inefficiency.mean())
        if profile is None:  # the same for every state
            profile = result.profile
    record["profile"] = {"centers": profile.centers[0], "f": profile.f, "df": profile.df}
    if psi is not None:  # the MBAR-reweighted (phi, psi) histogram of the unbiased ensemble
        keep, weights = unbiased_weights(series, centers, config.kappa)
        angles = np.stack([np.concatenate(series), np.concatenate(psi)], axis=1)[keep]
        record["ramachandran"] = periodic_histogram(angles, RAMACHANDRAN_BINS, weights)
    return record


def combine(records: list[dict], target: float = TARGET_KT) -> dict:
    """Per-repeat and combined numbers of every state (JSON-able), from the records of ``analyse_repeat``."""
    if not records:
        raise ValueError("no repeat to combine")
    ns_per_repeat = float(np.mean([r["total_ns"] for r in records]))
    summary = {
        "n_repeats": len(records),
        "seeds": [r["seed"] for r in records],
        "ns_per_window": [r["ns_per_window"] for r in records],
        "total_ns": float(sum(r["total_ns"] for r in records)),
    }
    for key, (label, _) in STATES.items():
        values = [r[key]["value"] for r in records]
        block = [r[key]["block_stderr"] for r in records]
        c = combine_repeats(values, block)
        # error of one repeat: the repeats' scatter (N >= 2) or the block error of the single run
        one_run = float(np.std(values, ddof=1)) if len(records) > 1 else block[0]
        summary[key] = {
            "label": label,
            "per_repeat": values,
            "per_repeat_mbar_stderr": [r[key]["mbar_stderr"] for r in records],
            "per_repeat_block_stderr": block,
            "per_repeat_blocks": [r[key]["blocks"] for r in records],
            "combined": c.mean,
            "stderr": c.stderr,
            "stderr_source": "repeat scatter" if c.n > 1 else "time blocks of the single run",
            "pooled_block_stderr": c.pooled_stderr,
            "chi2": c.chi2,
            "dof": c.dof,
            "p_value": None if math.isnan(c.p_value) else c.p_value,
            "repeats_agree": c.agree if c.n > 1 else None,
            f"ns_total_for_{target:g}kT": ns_per_repeat * (one_run / target) ** 2,
        }
    return summary


def report_lines(summary: dict, target: float = TARGET_KT) -> list[str]:
    """What the recipe prints about the combined numbers (WARNING lines when repeats disagree)."""
    n = summary["n_repeats"]
    lines = []
    for key in STATES:
        s = summary[key]
        if n > 1:
            lines.append(
                f"{s['label']} = {s['combined']:.3f} +/- {s['stderr']:.3f} kT (mean of {n} repeats, error "
                f"std/sqrt({n}); their block errors predict +/- {s['pooled_block_stderr']:.3f})"
            )
            verdict = "repeats agree within their errors" if s["repeats_agree"] else "repeats DISAGREE"
            lines.append(f"  chi2 = {s['chi2']:.2f} for {s['dof']} dof, p = {s['p_value']:.3g}: {verdict}")
            if not s["repeats_agree"]:
                lines.append(
                    f"WARNING: {s['label']}: the {n} repeats scatter more than their single-run (block) errors "
                    f"allow (p = {s['p_value']:.3g}); those errors are too small: quote the repeat scatter, "
                    "sample longer and add repeats"
                )
        else:
            lines.append(
                f"{s['label']} = {s['combined']:.3f} +/- {s['stderr']:.3f} kT (ONE repeat: time-block error of a "
                "single run, not checked against independent runs; use --repeats 2 or more)"
            )
        needed = s[f"ns_total_for_{target:g}kT"]
        source = "repeat scatter" if n > 1 else "block error"
        lines.append(f"  +/-{target:g} kT needs about {needed:.0f} ns in total (from the {source})")
    return lines


def write_outputs(summary: dict, records: list[dict], cache: Path, out: Path | None = None) -> tuple[Path, Path]:
    """CACHE/profile.npz (combined profile and the keys readers use) and the JSON summary; returns both paths."""
    centers = np.asarray(records[0]["profile"]["centers"])
    for r in records[1:]:
        if not np.allclose(r["profile"]["centers"], centers):
            raise ValueError("the repeats' profiles use different bins")
    f_repeats = np.stack([r["profile"]["f"] for r in records])
    f, df = combine_profiles(f_repeats, np.stack([r["profile"]["df"] for r in records]))
    a, positive = summary["delta_f_phi_0_2_kT"], summary["delta_f_phi_positive_kT"]
    cache.mkdir(parents=True, exist_ok=True)
    profile_path = cache / "profile.npz"
    np.savez(
        profile_path,
        centers=centers,
        f=f,
        df=df,
        delta_f=a["combined"],
        delta_f_stderr=a["stderr"],
        block_stderr=a["stderr"],  # the name readers use; it holds the combined (repeat-scatter) error
        ns_per_window=min(summary["ns_per_window"]),
        total_ns=summary["total_ns"],
        n_repeats=summary["n_repeats"],
        seeds=np.array(summary["seeds"]),
        delta_f_repeats=np.array(a["per_repeat"]),
        delta_f_phi_positive=positive["combined"],
        delta_f_phi_positive_stderr=positive["stderr"],
        delta_f_phi_positive_repeats=np.array(positive["per_repeat"]),
        f_repeats=f_repeats,
    )
    histograms = [r["ramachandran"] for r in records if "ramachandran" in r]
    if histograms:  # the reference Ramachandran histogram: mean probability over the repeats that recorded psi
        np.savez(
            cache / "ramachandran.npz",
            p=np.mean(histograms, axis=0),
            p_repeats=np.stack(histograms),
            bins=RAMACHANDRAN_BINS,
            total_ns=float(sum(r["total_ns"] for r in records if "ramachandran" in r)),
        )
    repeats = [{k: v for k, v in r.items() if k not in ("profile", "ramachandran")} for r in records]
    out = out or cache / "summary.json"
    write_json(out, {**summary, "repeats": repeats}, indent=1)
    return profile_path, out


def own_molecule(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict | None:
    """For --system-xml/--pdb: the biased and recorded torsions' atoms (the files checked); None for the shipped
    alanine dipeptide. Usage errors (parser.error) for an incomplete or unknown choice."""
    if args.system_xml is None and args.pdb is None and args.torsion is None:
        return None
    if args.system_xml is None or args.pdb is None or args.torsion is None or args.cache is None:
        parser.error("your own molecule needs --system-xml, --pdb, --torsion and --cache together")
    from bgflow_se3.errors import BgflowError
    from bgflow_se3.workflow import load_molecule, peptide_torsions, resolve_torsion

    try:
        molecule = load_molecule(args.system_xml, args.pdb)
    except (BgflowError, ValueError) as error:
        parser.error(f"{type(error).__name__}: {error}")
    try:
        torsion = resolve_torsion(args.torsion, molecule.topology, molecule.n_atoms)
    except ValueError as error:
        parser.error(f"--torsion {error}")
    try:
        named = {t.name: t.atoms for t in peptide_torsions(molecule.topology)}
    except ValueError:
        named = {}
    atoms, recorded = torsion.atoms, None
    if torsion.name.startswith("phi") and f"psi{torsion.name[3:]}" in named:
        recorded = named[f"psi{torsion.name[3:]}"]
    return {"torsion": atoms, "record_torsion": recorded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solvent", choices=["implicit", "vacuum"], default="implicit")
    parser.add_argument("--ns-per-window", type=float, default=0.5, help="production per window and repeat (ns)")
    parser.add_argument("--extend-ns", type=float, default=None, help="longest cached repeat + this many ns/window")
    parser.add_argument("--repeats", type=int, default=2, help="independent runs, seeds seed .. seed + N - 1")
    parser.add_argument("--windows", type=positive_int, default=36)
    parser.add_argument("--force-constant", type=float, default=200.0, help="kJ/mol/rad^2")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=5, help="time blocks for the per-repeat block error")
    parser.add_argument("--bins", type=positive_int, default=36, help="profile bins on [-pi, pi)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first repeat")
    parser.add_argument("--cache", type=Path, default=None, help="default ~/.cache/bgflow_se3/aldp_umbrella/SOLVENT")
    parser.add_argument("--out", type=Path, default=None, help="JSON summary (default CACHE/summary.json)")
    parser.add_argument(
        "--exchange-every-ps",
        type=float,
        default=1.0,
        help="replica exchange between neighbouring windows every this many ps (0: independent windows)",
    )
    parser.add_argument("--smoke", action="store_true", help="12 soft windows x 4 ps in a separate cache (seconds)")
    parser.add_argument("--analyse-only", action="store_true", help="no simulation: analyse the cached repeats")
    parser.add_argument("--system-xml", type=Path, default=None, help="your own molecule's System (with --pdb)")
    parser.add_argument("--pdb", type=Path, default=None, help="your own molecule's PDB (with --system-xml)")
    parser.add_argument("--torsion", default=None, help="biased torsion: a peptide torsion name (phi2) or a,b,c,d")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    own = own_molecule(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("pymbar").setLevel(logging.WARNING)

    root = Path.home() / ".cache" / "bgflow_se3" / "aldp_umbrella"
    exchange = args.exchange_every_ps if args.exchange_every_ps > 0 else None
    protocol = "" if exchange is None else "_exchange"  # independent windows and replica exchange never share a cache
    if args.smoke:
        settings = dict(n_windows=12, force_constant=60.0, equilibration_ps=1.0, save_every=50)
        settings["exchange_every_ps"] = None if exchange is None else 0.1
        ns = 0.004
        cache = args.cache or root / f"smoke_{args.solvent}{protocol}"
    else:
        settings = dict(n_windows=args.windows, force_constant=args.force_constant, exchange_every_ps=exchange)
        ns = args.ns_per_window
        cache = args.cache or root / f"{args.solvent}{protocol}"
    if (cache / "config.json").exists():
        print(
            f"note: {cache} holds a single run in the old layout; repeats now live in {cache}/seed_<seed>. To reuse "
            f"it as the repeat with seed S (the seed in its config.json): mkdir {cache}/seed_S && "
            f"mv {cache}/config.json {cache}/window_*.npz {cache}/seed_S/ (it used the old per-window seeds: "
            "independent of new runs, though not of an old-layout run with a neighbouring seed)"
        )
    seeds = [args.seed + r for r in range(args.repeats)]
    if args.extend_ns is not None:
        done = []
        for seed in seeds:
            try:
                done.append(load_windows(repeat_cache(cache, seed))[2])
            except FileNotFoundError:
                pass
        ns = max(done, default=0.0) + args.extend_ns
    if not args.analyse_only:
        for seed in seeds:
            if own is None:
                config = UmbrellaConfig(solvent=args.solvent, seed=seed, **settings)
            else:
                config = UmbrellaConfig.for_files(args.system_xml, args.pdb, seed=seed, **own, **settings)
            folder = repeat_cache(cache, seed)
            print(f"repeat seed {seed}: {config.n_windows} windows to {ns:g} ns each in {folder}")
            seconds = run_umbrella(config, ns, folder, workers=args.workers)
            print(f"repeat seed {seed}: simulation wall time {seconds:.1f} s")

    start = time.perf_counter()
    records = []
    for seed in seeds:
        try:
            record = analyse_repeat(repeat_cache(cache, seed), seed, args.bins, args.blocks)
        except FileNotFoundError as error:
            print(f"repeat seed {seed} skipped: {error}")
            continue
        records.append(record)
        print(
            f"repeat seed {seed}: {record['config']['n_windows']} windows x {record['ns_per_window']:.3f} ns = "
            f"{record['total_ns']:.2f} ns ({record['config']['solvent']})"
        )
        for key, (label, _) in STATES.items():
            r = record[key]
            print(
                f"  {label} = {r['value']:.3f} kT +/- {r['mbar_stderr']:.3f} (MBAR, decorrelated) "
                f"+/- {r['block_stderr']:.3f} ({args.blocks} time blocks); blocks "
                f"{np.array2string(np.array(r['blocks']), precision=3)}"
            )
    if not records:
        raise SystemExit(f"no repeat cached under {cache}; run without --analyse-only first")
    summary = combine(records)
    summary["analysis_s"] = time.perf_counter() - start
    summary["solvent"] = args.solvent
    print(f"combined: {len(records)} repeat(s), {summary['total_ns']:.2f} ns in total")
    for line in report_lines(summary):
        print(line)
    profile_path, out = write_outputs(summary, records, cache, args.out)
    print(f"wrote {profile_path} and {out}")


if __name__ == "__main__":
    main()

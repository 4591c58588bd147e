"""Free energies of alanine dipeptide from flow samples: phi-state Delta F with its error, phi profile against the
umbrella-sampling reference, Ramachandran plots and the effective sample size.

    PYTHONPATH=. python examples/free_energy_aldp.py --samples samples.npz --out outputs/free_energy
    PYTHONPATH=. python examples/free_energy_aldp.py --quick --out outputs/free_energy_quick

samples.npz holds x (n, 22, 3) in nm, log_q (n,) in nats (the joint log q(x, a) for augmented flows) and
log_p_aug = log pi(a | x) (zeros for a flow without auxiliary variables, which may instead declare
``augmented=False`` and leave log_p_aug out); save it from a trained flow with
``np.savez(path, x=x, log_q=log_q, log_p_aug=log_p_aug)`` (the format: ``bgflow_se3.cli.SAMPLES_FORMAT``;
``evaluate_dipeptide`` writes one). The target is the L molecule: D samples (mirror images) get weight 0. The same
analysis is ``bgflow-se3 free-energy``.

``--quick`` needs no flow: it draws samples from a known, normalised stand-in density (a Gaussian kernel mixture
around a few short MD frames, some pulled into phi > 0), only to exercise the pipeline in a minute on a CPU.
Its importance weights are poor by construction (expect a LowOverlapWarning and a meaningless number).
"""

import argparse
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from bgflow_se3.cli import load_samples, run_free_energy
from bgflow_se3.cli_checks import n_bootstrap, output_directory, umbrella_cache
from bgflow_se3.systems import load_aldp

DEFAULT_UMBRELLA = Path.home() / ".cache" / "bgflow_se3" / "aldp_umbrella" / "implicit"


def quick_samples(aldp, n: int, sigma_nm: float, seed: int) -> dict[str, np.ndarray]:
    """Samples and exact log-density of a Gaussian kernel mixture around short MD frames (pipeline check only)."""
    import openmm

    from bgflow_se3.simulate.openmm_langevin import langevin_context
    from bgflow_se3.simulate.umbrella_windows import add_torsion_bias, phi_atom_indices

    frames = []
    for pull_to in (None, 1.0):  # one run in the main basin, one pulled to phi = 1 rad, then released
        system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(aldp.system))
        if pull_to is not None:
            add_torsion_bias(system, phi_atom_indices(aldp.topology), 500.0, pull_to)
        context = langevin_context(system, aldp.positions_nm, timestep_fs=1.0, seed=seed)
        openmm.LocalEnergyMinimizer.minimize(context, maxIterations=200)
        context.getIntegrator().step(5000)
        positions = context.getState(getPositions=True).getPositions(asNumpy=True)._value
        context = langevin_context(aldp.system, positions, timestep_fs=1.0, seed=seed + 1)
        for _ in range(100):
            context.getIntegrator().step(50)
            frames.append(context.getState(getPositions=True).getPositions(asNumpy=True)._value)
    centers = np.asarray(frames)  # (M, 22, 3) nm
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, len(centers), n)] + sigma_nm * rng.normal(size=(n, *centers.shape[1:]))
    d = x.shape[1] * 3
    squared = np.sum((x[:, None] - centers[None]) ** 2, axis=(2, 3))  # (n, M)
    log_q = logsumexp(-0.5 * squared / sigma_nm**2, axis=1) - np.log(len(centers))
    log_q -= 0.5 * d * np.log(2 * np.pi * sigma_nm**2)
    return {"x": x, "log_q": log_q, "augmented": np.asarray(False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=Path, default=None, help="npz: x (nm), log_q, log_p_aug, optional u")
    parser.add_argument("--not-augmented", action="store_true", help="the flow has no log_p_aug: accept its file")
    parser.add_argument("--quick", action="store_true", help="stand-in samples (no flow needed), pipeline check")
    parser.add_argument("--solvent", choices=["implicit", "vacuum"], default="implicit")
    parser.add_argument("--umbrella-cache", type=umbrella_cache, default=DEFAULT_UMBRELLA, help="holds profile.npz")
    parser.add_argument("--n-bootstrap", type=n_bootstrap, default=0, help="0: MBAR's error, else >= 2 resamples")
    parser.add_argument("--out", type=output_directory, default=Path("outputs/free_energy_aldp"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (args.samples is None) == (not args.quick):
        parser.error("give exactly one of --samples and --quick")

    aldp = load_aldp(args.solvent)
    if args.quick:
        samples = quick_samples(aldp, 2000, 0.002, args.seed)
    else:
        samples = load_samples(args.samples, not_augmented=args.not_augmented)
    # energies, weights, ESS, the phi-state Delta F (pymbar MBAR), the phi profile against the umbrella reference
    # and the figures: the same analysis as `bgflow-se3 free-energy`
    summary = run_free_energy(
        samples,
        aldp.system,
        aldp.topology,
        temperature=300.0,
        out=args.out,
        umbrella_cache=args.umbrella_cache,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
    )
    for key, value in summary.items():
        print(f"{key:>36}: {value:.4g}" if isinstance(value, float) else f"{key:>36}: {value}")
    if "umbrella_delta_f_kT" not in summary:
        print(f"no umbrella reference in {args.umbrella_cache}: run systems/aldp/umbrella.py to overlay one")
    print(f"figures and summary.json in {args.out}")


if __name__ == "__main__":
    main()

"""Unbiased Langevin MD of alanine dipeptide: training data for maximum likelihood (a trajectory + an npy array).

    PYTHONPATH=. python systems/aldp/md.py --ns 10 --out ~/.cache/bgflow_se3/aldp_md/implicit
    PYTHONPATH=. python systems/aldp/md.py --smoke                     # 2 ps, checks the pipeline

Writes OUT/positions.npy (frames, 22, 3) float32 in nm, OUT/trajectory.dcd with OUT/topology.pdb (read with
``mdtraj.load("trajectory.dcd", top="topology.pdb")``) and OUT/info.json. LangevinMiddleIntegrator at 300 K, 1/ps,
2 fs with hydrogen mass repartitioning (3 amu; masses do not change the configurational distribution) and no
constraints, so frames are samples of exactly the shipped System's Boltzmann distribution (correlated in time,
and unbiased MD crosses into phi > 0 rarely: it is training data, not a free-energy reference).
"""

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solvent", choices=["implicit", "vacuum"], default="implicit")
    parser.add_argument("--ns", type=float, default=1.0, help="production length, ns")
    parser.add_argument("--save-every-ps", type=float, default=1.0)
    parser.add_argument("--equilibration-ps", type=float, default=50.0)
    parser.add_argument("--timestep-fs", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--platform", default="Reference", help="OpenMM platform (Reference is fastest for 22 atoms)")
    parser.add_argument("--out", type=Path, default=None, help="default ~/.cache/bgflow_se3/aldp_md/SOLVENT")
    parser.add_argument("--smoke", action="store_true", help="2 ps of production, 1 ps equilibration")
    args = parser.parse_args()

    from bgflow_se3.simulate.aldp_md import default_md_dir, load_aldp_md, run_aldp_md

    if args.smoke:
        args.ns, args.equilibration_ps, args.save_every_ps = 0.002, 1.0, 0.1
    out = run_aldp_md(
        args.solvent,
        args.ns,
        args.out or default_md_dir(args.solvent),
        save_every_ps=args.save_every_ps,
        equilibration_ps=args.equilibration_ps,
        timestep_fs=args.timestep_fs,
        seed=args.seed,
        platform=args.platform,
    )
    info = json.loads((out / "info.json").read_text())
    print(f"{len(load_aldp_md(folder=out))} frames ({args.ns} ns) in {info['wall_s']:.1f} s -> {out}")
    print(f"fraction of frames with phi in (0, 2): {info['fraction_phi_in_0_2']:.4f}")


if __name__ == "__main__":
    main()

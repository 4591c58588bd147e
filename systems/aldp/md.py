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
import time
from pathlib import Path

import numpy as np


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

    import mdtraj
    import openmm
    import openmm.unit as unit

    from bgflow_se3.analysis import phi_psi
    from bgflow_se3.systems import load_aldp
    from bgflow_se3.systems.simulation import langevin_context, repartition_hydrogen_mass

    if args.smoke:
        args.ns, args.equilibration_ps, args.save_every_ps = 0.002, 1.0, 0.1
    out = args.out or Path.home() / ".cache" / "bgflow_se3" / "aldp_md" / args.solvent
    out.mkdir(parents=True, exist_ok=True)
    aldp = load_aldp(args.solvent)
    system = repartition_hydrogen_mass(aldp.system, aldp.topology, 3.0)
    context = langevin_context(
        system, aldp.positions_nm, timestep_fs=args.timestep_fs, seed=args.seed, platform=args.platform
    )
    openmm.LocalEnergyMinimizer.minimize(context, maxIterations=500)
    integrator = context.getIntegrator()
    steps_per_ps = int(round(1000 / args.timestep_fs))
    integrator.step(int(args.equilibration_ps * steps_per_ps))
    save_every = max(1, int(round(args.save_every_ps * steps_per_ps)))
    n_frames = int(round(args.ns * 1000 / args.save_every_ps))
    frames = np.empty((n_frames, aldp.system.getNumParticles(), 3), dtype=np.float32)
    start = time.perf_counter()
    for i in range(n_frames):
        integrator.step(save_every)
        frames[i] = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    seconds = time.perf_counter() - start
    if not np.isfinite(frames).all():
        raise RuntimeError("the simulation blew up (non-finite positions); use a smaller --timestep-fs")
    np.save(out / "positions.npy", frames)
    top = aldp.mdtraj_topology
    trajectory = mdtraj.Trajectory(frames, top)
    trajectory.save_dcd(str(out / "trajectory.dcd"))
    trajectory[0].save_pdb(str(out / "topology.pdb"))
    phi, _ = phi_psi(top, frames)
    info = {
        "solvent": args.solvent,
        "ns": args.ns,
        "frames": n_frames,
        "save_every_ps": args.save_every_ps,
        "timestep_fs": args.timestep_fs,
        "hydrogen_mass_amu": 3.0,
        "temperature_K": 300.0,
        "seed": args.seed,
        "wall_s": seconds,
        "fraction_phi_in_0_2": float(np.mean((phi > 0) & (phi < 2))),
    }
    (out / "info.json").write_text(json.dumps(info, indent=1))
    print(f"{n_frames} frames ({args.ns} ns) in {seconds:.1f} s -> {out}")
    print(f"fraction of frames with phi in (0, 2): {info['fraction_phi_in_0_2']:.4f}")


if __name__ == "__main__":
    main()

"""Alanine dipeptide in implicit solvent (amber99sbildn + OBC, 300 K) trained by FAB from the energy alone.

python examples/aldp_fab.py --quick        # the whole pipeline on 2 CPU cores in under 5 minutes (tiny sizes:
                                           # a smoke test of train -> sample -> save -> analyse, not a good model)
python examples/aldp_fab.py                # the real run for one GPU (see FULL below for its budget)

Energies: TorchForceField on the GPU when CUDA is present; otherwise OpenMMEnergy (--workers processes).
Everything lands in --out: checkpoint.pt, metrics.jsonl, training_curves.png, samples.dcd + topology.pdb
(mdtraj-readable), samples.npz (x, log_q, u, log_p_aug: the input of free_energy_aldp.py), ramachandran.png,
results.json (reverse ESS, D-chirality fraction, phi-state free-energy difference through pymbar MBAR with its
error, or NaN with the reason when a state is empty, target evaluations, wall time).
--resume continues training from the checkpoint.

Budget of the default mode: 12,000 iterations x 512 samples x (1 + 8 intermediates x 4 leapfrog steps) = 2.0e8
target evaluations (as fab-torch's alanine dipeptide run) plus 8 flow updates per iteration; its wall time on one
GPU was not measured here (no GPU was available when this was written).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from bgflow_se3 import ConvergenceError, EmptyStateError, Energy
from bgflow_se3.analysis import phi_psi, ramachandran_figure
from bgflow_se3.flow import AugmentedCouplingFlow
from bgflow_se3.reweight import effective_sample_size, free_energy_difference, log_importance_weights
from bgflow_se3.systems import load_aldp
from bgflow_se3.train import FABObjective, JointFlow, TargetDensity, TrainConfig, Trainer

TEMPERATURE = 300.0
QUICK = dict(
    flow=dict(n_blocks=1, hidden=16, egnn_layers=1, mlp_blocks=1),
    fab=dict(
        batch_size=32, n_intermediate=1, n_leapfrog=2, n_updates=2, buffer_max_length=32 * 16, buffer_min_length=64
    ),
    n_iterations=200,
    lr=1e-3,
    n_samples=2048,
)
FULL = dict(
    flow=dict(n_blocks=20, hidden=128, egnn_layers=3, mlp_blocks=1),
    fab=dict(
        batch_size=512,
        n_intermediate=8,
        n_leapfrog=4,
        n_updates=8,
        buffer_max_length=512 * 512,
        buffer_min_length=512 * 64,
    ),
    n_iterations=12000,
    lr=2e-4,
    n_samples=100_000,
)


def make_energy(system, device: str, n_workers: int) -> tuple[Energy, str]:
    """The fastest available reduced-energy backend for the system at 300 K, and its name."""
    import bgflow_se3.energy as energies

    if device.startswith("cuda"):
        return energies.TorchForceField.from_system(system, TEMPERATURE).to(device), "TorchForceField"
    return energies.OpenMMEnergy(system, TEMPERATURE, n_workers=n_workers), f"OpenMMEnergy({n_workers} workers)"


def chirality_sign(x: np.ndarray, n: int, ca: int, c: int, cb: int) -> np.ndarray:
    """Sign of the signed volume (N - CA) . ((C - CA) x (CB - CA)), shape (batch,); x in nm (batch, atoms, 3)."""
    v1, v2, v3 = x[:, n] - x[:, ca], x[:, c] - x[:, ca], x[:, cb] - x[:, ca]
    return np.sign(np.einsum("bi,bi->b", v1, np.cross(v2, v3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the pipeline in < 5 min on 2 CPU cores")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/aldp_fab[_quick])")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=1, help="OpenMM worker processes (CPU backends)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    setup = QUICK if args.quick else FULL
    out = args.out or Path("runs") / ("aldp_fab_quick" if args.quick else "aldp_fab")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(args.seed)

    aldp = load_aldp("implicit")
    energy, backend = make_energy(aldp.system, args.device, args.workers)
    dtype = torch.float32  # training; sampling and weights for the analysis are in float64
    flow = AugmentedCouplingFlow.for_topology(
        aldp.topology, n_aug=1, sigma_aug=0.05, length_scale=0.3, **setup["flow"]
    ).to(args.device, dtype)
    objective = FABObjective(TargetDensity(energy, energy_cut=1e3), step_size=0.005, **setup["fab"])
    n_iterations = args.iterations or setup["n_iterations"]
    config = TrainConfig(
        n_iterations=n_iterations,
        lr=setup["lr"],
        warmup_iterations=max(1, min(500, n_iterations // 10)),
        seed=args.seed,
        progress=not args.no_progress,
        checkpoint_every=0 if args.quick else 500,
    )
    trainer = Trainer(flow, objective, config, out_dir=out)
    result = trainer.run(resume=args.resume)

    # sample, weight and save
    import mdtraj

    model = JointFlow(flow.double())
    generator = torch.Generator(device=args.device).manual_seed(args.seed + 1)
    xs, log_qs, us, log_p_augs = [], [], [], []
    with torch.no_grad():
        for n in [min(1024, setup["n_samples"] - i) for i in range(0, setup["n_samples"], 1024)]:
            z, log_q = model.sample(n, generator)
            x_batch, _ = model.unpack(z)
            us.append(energy(x_batch).cpu())
            log_p_augs.append(model.log_pi(z).cpu())
            log_qs.append(log_q.cpu())
            xs.append(x_batch.cpu())
    x = torch.cat(xs).numpy()
    log_q, u, log_p_aug = (torch.cat(v).double().numpy() for v in (log_qs, us, log_p_augs))
    log_w = log_importance_weights(log_q, u, log_p_aug=log_p_aug)
    top = aldp.mdtraj_topology
    traj = mdtraj.Trajectory(x.astype(np.float32), top)
    traj.save_dcd(str(out / "samples.dcd"))
    traj[0].save_pdb(str(out / "topology.pdb"))
    np.savez(out / "samples.npz", x=x, log_q=log_q, u=u, log_p_aug=log_p_aug)  # input of free_energy_aldp.py

    # analysis: chirality, Ramachandran, phi-state free energy
    atom = {a.name: a.index for a in top.residue(1).atoms}
    reference = chirality_sign(aldp.positions_nm[None], atom["N"], atom["CA"], atom["C"], atom["CB"])[0]
    d_fraction = float(np.mean(chirality_sign(x, atom["N"], atom["CA"], atom["C"], atom["CB"]) != reference))
    phi, psi = phi_psi(top, x)
    weights = np.exp(log_w - log_w.max()) if np.isfinite(log_w).any() else np.zeros_like(log_w)
    ramachandran_figure(phi, psi, weights=weights, title="flow samples, reweighted").savefig(out / "ramachandran.png")
    try:  # pymbar through the checked reweighting API: a clear failure, never a silent number
        estimate = free_energy_difference(log_q, u, phi > 0, phi <= 0, log_p_aug=log_p_aug, method="mbar")
        dF, ddF = estimate.value, estimate.stderr
    except (EmptyStateError, ConvergenceError) as error:
        print(f"no phi-state free energy: {error}")
        dF = ddF = math.nan
    summary = {
        "mode": "quick" if args.quick else "full",
        "energy_backend": backend,
        "device": args.device,
        "iterations": result.iterations,
        "wall_time_s_training": result.wall_time_s,
        "wall_time_s_total": time.perf_counter() - start,
        "n_target_evaluations": result.n_target_evaluations,
        "reverse_ess": float(effective_sample_size(log_w).fraction),
        "ess_ais_last": result.last("ess_ais"),
        "d_chirality_fraction": d_fraction,
        "dF_phi_positive_minus_negative_kT": dF,
        "dF_stderr_kT": ddF,
        "n_samples": len(x),
        "n_skipped_nonfinite": result.n_skipped_nonfinite,
        "n_skipped_outlier": result.n_skipped_outlier,
        "n_masked_samples": result.n_masked_samples,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    for key, value in summary.items():
        print(f"{key:>34}: {value:.4g}" if isinstance(value, float) else f"{key:>34}: {value}")
    if summary["reverse_ess"] * len(x) < 50:
        print(
            "WARNING: fewer than 50 effective samples: the free-energy difference and reweighted plot are not reliable"
        )
    close = getattr(energy, "close", None)
    if callable(close):
        close()


if __name__ == "__main__":
    main()

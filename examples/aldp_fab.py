"""Alanine dipeptide in implicit solvent (amber99sbildn + OBC, 300 K) trained by FAB from the energy alone.

python examples/aldp_fab.py --quick        # the whole pipeline on 2 CPU cores in under 5 minutes (tiny sizes:
                                           # a smoke test of train -> sample -> save -> analyse, not a good model)
python examples/aldp_fab.py                # the real run for one GPU (see FULL below for its budget)

Energies: TorchForceField on the GPU when it exists and CUDA is present; otherwise OpenMMEnergy (worker pool);
otherwise a small single-Context OpenMM energy defined here. Everything lands in --out: checkpoint.pt,
metrics.jsonl, training_curves.png, samples.dcd + topology.pdb (mdtraj-readable), ramachandran.png, results.json
(reverse ESS, D-chirality fraction, phi-state free-energy difference with a bootstrap error, target evaluations,
wall time). --resume continues training from the checkpoint.

Budget of the default mode: 12,000 iterations x 512 samples x (1 + 8 intermediates x 4 leapfrog steps) = 2.0e8
target evaluations (as fab-torch's alanine dipeptide run) plus 8 flow updates per iteration; its wall time on one
GPU was not measured here (no GPU was available when this was written).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bgflow_se3 import Energy
from bgflow_se3.flow import AugmentedCouplingFlow
from bgflow_se3.systems import load_aldp
from bgflow_se3.train import FABObjective, JointFlow, TargetDensity, TrainConfig, Trainer, effective_sample_size

TEMPERATURE = 300.0
QUICK = dict(
    flow=dict(n_blocks=1, hidden=16, egnn_layers=1, mlp_blocks=1),
    fab=dict(
        batch_size=32, n_intermediate=1, n_leapfrog=2, n_updates=2, buffer_max_length=32 * 16, buffer_min_length=64
    ),
    n_iterations=20,
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


class _ContextEnergy(Energy):
    """Fallback: reduced energy of an openmm.System from one Context, serially; forces give the gradient."""

    def __init__(self, system, temperature: float, platform: str = "Reference") -> None:
        import openmm

        super().__init__(system.getNumParticles(), 3, temperature=temperature)
        integrator = openmm.VerletIntegrator(0.001)
        self._context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform))
        self._integrator = integrator

    def _evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import openmm.unit as unit

        xs = x.detach().cpu().double().numpy()
        u, f = np.empty(len(xs)), np.zeros_like(xs)
        for i, pos in enumerate(xs):
            self._context.setPositions(pos)
            state = self._context.getState(getEnergy=True, getForces=True)
            u[i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / self.kT
            f[i] = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer) / self.kT
        bad = ~np.isfinite(u) | ~np.isfinite(f).all(axis=(1, 2))
        u[bad], f[bad] = np.inf, 0.0
        return torch.as_tensor(u).to(x), torch.as_tensor(f).to(x)

    def _reduced_energy(self, x: torch.Tensor) -> torch.Tensor:
        return _ForceFunction.apply(x, self._evaluate)


class _ForceFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, evaluate):
        u, force = evaluate(x)
        ctx.save_for_backward(force)
        return u

    @staticmethod
    def backward(ctx, grad_u):
        (force,) = ctx.saved_tensors
        return -force * grad_u[:, None, None], None


def make_energy(system, device: str, n_workers: int) -> tuple[Energy, str]:
    """The fastest available reduced-energy backend for the system at 300 K, and its name."""
    import bgflow_se3.energy as energies

    if device.startswith("cuda") and hasattr(energies, "TorchForceField"):
        return energies.TorchForceField.from_system(system, TEMPERATURE).to(device), "TorchForceField"
    if hasattr(energies, "OpenMMEnergy"):
        return energies.OpenMMEnergy(system, TEMPERATURE, n_workers=n_workers), f"OpenMMEnergy({n_workers} workers)"
    return _ContextEnergy(system, TEMPERATURE), "single OpenMM Context (fallback)"


def chirality_sign(x: np.ndarray, n: int, ca: int, c: int, cb: int) -> np.ndarray:
    """Sign of the signed volume (N - CA) . ((C - CA) x (CB - CA)), shape (batch,); x in nm (batch, atoms, 3)."""
    v1, v2, v3 = x[:, n] - x[:, ca], x[:, c] - x[:, ca], x[:, cb] - x[:, ca]
    return np.sign(np.einsum("bi,bi->b", v1, np.cross(v2, v3)))


def phi_free_energy(phi: np.ndarray, log_w: np.ndarray, rng: np.random.Generator, n_boot: int = 200):
    """dF = F(phi > 0) - F(phi < 0) in kT by self-normalised importance weights, with a bootstrap one-sigma error."""

    def estimate(idx: np.ndarray) -> float:
        lw, positive = log_w[idx], phi[idx] > 0
        if not positive.any() or positive.all():
            return math.nan
        lse = lambda a: np.logaddexp.reduce(a)  # noqa: E731
        return float(-(lse(lw[positive]) - lse(lw[~positive])))

    value = estimate(np.arange(len(phi)))
    boot = np.array([estimate(rng.integers(0, len(phi), len(phi))) for _ in range(n_boot)])
    boot = boot[np.isfinite(boot)]
    return value, float(boot.std()) if len(boot) > 1 else math.nan


def ramachandran_plot(phi: np.ndarray, psi: np.ndarray, weights: np.ndarray, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6))
    fig.subplots_adjust(bottom=0.15, wspace=0.3)
    FigureCanvasAgg(fig)
    for i, (w, title) in enumerate([(None, "flow samples"), (weights, "reweighted to p")]):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.hist2d(phi, psi, bins=64, range=[[-np.pi, np.pi], [-np.pi, np.pi]], weights=w, cmap="viridis")
        ax.set_xlabel("phi (rad)")
        ax.set_ylabel("psi (rad)")
        ax.set_title(title)
    fig.savefig(path, dpi=100)


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

    model, target = JointFlow(flow.double()), TargetDensity(energy, energy_cut=math.inf, energy_max=math.inf)
    generator = torch.Generator(device=args.device).manual_seed(args.seed + 1)
    xs, log_ws = [], []
    with torch.no_grad():
        for n in [min(1024, setup["n_samples"] - i) for i in range(0, setup["n_samples"], 1024)]:
            z, log_q = model.sample(n, generator)
            log_ws.append((target.joint(model, z) - log_q).cpu())
            xs.append(z[:, 0].cpu())
    x, log_w = torch.cat(xs).numpy(), torch.cat(log_ws).double().numpy()
    top = aldp.mdtraj_topology
    traj = mdtraj.Trajectory(x.astype(np.float32), top)
    traj.save_dcd(str(out / "samples.dcd"))
    traj[0].save_pdb(str(out / "topology.pdb"))
    np.save(out / "log_weights.npy", log_w)

    # analysis: chirality, Ramachandran, phi-state free energy
    atom = {a.name: a.index for a in top.residue(1).atoms}
    reference = chirality_sign(aldp.positions_nm[None], atom["N"], atom["CA"], atom["C"], atom["CB"])[0]
    d_fraction = float(np.mean(chirality_sign(x, atom["N"], atom["CA"], atom["C"], atom["CB"]) != reference))
    phi = mdtraj.compute_phi(traj)[1][:, 0]
    psi = mdtraj.compute_psi(traj)[1][:, 0]
    finite = np.isfinite(log_w)
    weights = np.zeros_like(log_w)
    if finite.any():
        weights[finite] = np.exp(log_w[finite] - log_w[finite].max())
    ramachandran_plot(phi, psi, weights, out / "ramachandran.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        dF, ddF = phi_free_energy(phi, np.where(finite, log_w, -np.inf), np.random.default_rng(args.seed))
    summary = {
        "mode": "quick" if args.quick else "full",
        "energy_backend": backend,
        "device": args.device,
        "iterations": result.iterations,
        "wall_time_s_training": result.wall_time_s,
        "wall_time_s_total": time.perf_counter() - start,
        "n_target_evaluations": result.n_target_evaluations,
        "reverse_ess": effective_sample_size(torch.as_tensor(log_w)),
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

"""DW4 by maximum likelihood on MCMC samples: make reference data with HMC, train, report test NLL and reverse ESS.

python examples/dw4_ml.py --quick           # 2 CPU cores, a few minutes
python examples/dw4_ml.py                   # paper-sized flow and 1e4 training samples
torchrun --nproc_per_node 2 examples/dw4_ml.py --quick  # data parallel: each rank a disjoint slice of the global batch

Under torchrun the batch size is per rank; the global batch (batch size x ranks) is drawn as one process with that
batch would draw it, so the training does not depend on the number of ranks. Rank 0 makes the data and evaluates.

The reference data come from batched HMC on the DW4 energy (many chains, burn-in, thinning); they are cached in
--out as data.pt. Outputs: checkpoint.pt, metrics.jsonl, training_curves.png, results.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bgflow_se3 import DoubleWellEnergy
from bgflow_se3.cli_checks import output_directory
from bgflow_se3.flow import AugmentedCouplingFlow
from bgflow_se3.jsonio import write_json
from bgflow_se3.sampling import HamiltonianMonteCarlo, JointFlow, TargetDensity, autograd_log_density
from bgflow_se3.train import effective_sample_size, exit_when_interrupted, fit_ml, init_from_env

QUICK = dict(flow=dict(n_blocks=2, hidden=32, egnn_layers=1), n_train=1000, n_iterations=300, batch_size=128, lr=1e-3)
FULL = dict(
    flow=dict(n_blocks=12, hidden=128, egnn_layers=3), n_train=10000, n_iterations=5000, batch_size=256, lr=2e-4
)


def mcmc_samples(energy: DoubleWellEnergy, n: int, generator: torch.Generator, n_chains: int = 1000) -> torch.Tensor:
    """n CoM-free DW4 configurations (n, 4, 2) from batched HMC: 300 adaptive burn-in steps, then every 20th step."""
    hmc = HamiltonianMonteCarlo(1, step_size=0.1, n_leapfrog=8, project=JointFlow.project)
    log_density = autograd_log_density(lambda z: -energy(z[:, 0]))
    z = 2.0 * torch.randn(n_chains, 1, 4, 2, generator=generator, dtype=torch.float64)
    point = hmc.evaluate(JointFlow.project(z), log_density)
    for _ in range(300):
        point, _ = hmc.step(point, log_density, 0, generator)
    hmc.freeze()
    samples = []
    while sum(len(s) for s in samples) < n:
        for _ in range(20):
            point, _ = hmc.step(point, log_density, 0, generator)
        samples.append(point.z[:, 0].clone())
    return torch.cat(samples)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=output_directory, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    setup = QUICK if args.quick else FULL
    out = args.out or Path("runs") / ("dw4_ml_quick" if args.quick else "dw4_ml")
    out.mkdir(parents=True, exist_ok=True)
    ctx = init_from_env(backend=None if args.device.startswith("cuda") else "gloo")  # torchrun: data parallel
    device = ctx.device if ctx.distributed else torch.device(args.device)
    torch.manual_seed(args.seed)
    energy = DoubleWellEnergy()

    data_path = out / "data.pt"
    if not data_path.exists() and ctx.is_main:
        generator = torch.Generator().manual_seed(args.seed)
        torch.save(mcmc_samples(energy, setup["n_train"] + 1000, generator), data_path)
    ctx.barrier()  # the other ranks read rank 0's data
    data = torch.load(data_path)
    train, test = data[:-1000], data[-1000:]

    flow = AugmentedCouplingFlow(4, dim=2, n_aug=1, length_scale=2.0, sigma_aug=0.5, **setup["flow"]).to(
        device, torch.float32
    )
    with exit_when_interrupted(ctx.close):
        result = fit_ml(
            flow,
            train.float(),
            batch_size=setup["batch_size"],
            target=energy,
            n_iterations=setup["n_iterations"],
            lr=setup["lr"],
            warmup_iterations=setup["n_iterations"] // 20,
            eval_every=max(setup["n_iterations"] // 10, 1),
            seed=args.seed,
            progress=not args.no_progress,
            out_dir=out,
            resume=args.resume,
        )
    ctx.close()
    if not ctx.is_main:
        return
    flow.double()
    model, density = JointFlow(flow), TargetDensity(energy)
    generator = torch.Generator(device=device).manual_seed(args.seed + 1)
    with torch.no_grad():
        nll = -flow.log_prob(test.to(device), n_samples=20, generator=generator).mean()
        z, log_q = model.sample(4096, generator)
        log_w = density.joint(model, z) - log_q

    summary = {
        "mode": "quick" if args.quick else "full",
        "n_train": len(train),
        "iterations": result.iterations,
        "wall_time_s": result.wall_time_s,
        "test_nll_nats": float(nll),
        "reverse_ess": effective_sample_size(log_w),
        "n_skipped_nonfinite": result.n_skipped_nonfinite,
        "n_skipped_outlier": result.n_skipped_outlier,
    }
    write_json(out / "results.json", summary)
    for key, value in summary.items():
        print(f"{key:>20}: {value:.4g}" if isinstance(value, float) else f"{key:>20}: {value}")


if __name__ == "__main__":
    main()

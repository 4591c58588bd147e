"""LJ13 by FAB from the energy alone: train the augmented coupling flow, then report ESS and mean energies.

python examples/lj13_fab.py --quick         # 2 CPU cores, a few minutes: a tiny flow, a check of the pipeline
python examples/lj13_fab.py                 # the paper-sized flow (GPU recommended)
torchrun --nproc_per_node 4 examples/lj13_fab.py  # data parallel on 4 GPUs: AIS batch and buffer per rank

Target: LennardJonesEnergy(13) (ordered pairs + harmonic tether, reduced units; systems/lj13/README.md). The full
mode uses the LJ13 settings of the augmented-coupling-flow paper (12 blocks, EGNN 3 layers of width 128, n_aug 1,
sigma_aug 0.1, auxiliary-loss weight 10) with fab-torch's FAB (alpha = 2, 8 intermediates, 4 leapfrog steps,
prioritised buffer of 64 to 512 batches, 8 updates per AIS batch). Reports the reverse ESS of flow samples, the
ESS of AIS towards p with the trained HMC steps, and the mean reduced energy of flow samples (raw and reweighted)
against the MCMC reference data (``load_particle_data("lj13", "test")``, when cached) with the reference NLL.
Everything lands in --out: checkpoint.pt, metrics.jsonl, training_curves.png, results.json. --resume continues.
Ctrl-C or SIGTERM stops after the current iteration with the checkpoint written (exit status 130 / 143); training
also checkpoints every 5 minutes, so a killed run resumes too. Resume with the options of the first run.

Budget of the default mode: 10,000 iterations x 1024 samples x (1 + 8 x 4) = 3.4e8 target evaluations (cheap:
pure torch) plus 8 flow updates per iteration; its wall time on one GPU was not measured here.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from bgflow_se3 import LennardJonesEnergy
from bgflow_se3.cli_checks import output_directory
from bgflow_se3.flow import AugmentedCouplingFlow
from bgflow_se3.jsonio import write_json
from bgflow_se3.reweight import log_importance_weights
from bgflow_se3.sampling import JointFlow, sample_with_energies
from bgflow_se3.simulate import load_particle_data
from bgflow_se3.train import (
    FABObjective,
    TrainConfig,
    Trainer,
    exit_when_interrupted,
    fab_scores,
    init_from_env,
    marginal_nll,
    training_summary,
)

QUICK = dict(
    flow=dict(n_blocks=2, hidden=32, egnn_layers=1, projection="vector", spline_range=3.0),
    fab=dict(
        batch_size=32,
        n_intermediate=2,
        n_leapfrog=3,
        n_updates=4,
        buffer_max_length=32 * 32,
        buffer_min_length=32 * 4,
    ),
    n_iterations=80,
    lr=1e-3,
    n_eval=1024,
    n_nll=500,
)
SMOKE = dict(
    QUICK,
    fab=dict(batch_size=16, n_intermediate=1, n_leapfrog=2, n_updates=2, buffer_max_length=64, buffer_min_length=32),
    n_iterations=3,
    n_eval=64,
    n_nll=8,
)
FULL = dict(
    flow=dict(n_blocks=12, hidden=128, egnn_layers=3),
    fab=dict(
        batch_size=1024,
        n_intermediate=8,
        n_leapfrog=4,
        n_updates=8,
        buffer_max_length=1024 * 512,
        buffer_min_length=1024 * 64,
    ),
    n_iterations=10000,
    lr=2e-4,
    n_eval=10000,
    n_nll=1000,
)


def energy_scores(
    flow: AugmentedCouplingFlow,
    energy: LennardJonesEnergy,
    n: int,
    n_nll: int,
    generator: torch.Generator,
    device: str,
) -> dict[str, float]:
    """Mean reduced energy of n flow samples (raw, median, reweighted), of the reference data, and its NLL (nats).

    The NLL is the flow's marginal -log q on the first n_nll reference (test) samples, 20 draws of a each.
    """
    samples = sample_with_energies(flow, energy, n, generator)
    log_w = log_importance_weights(samples.log_q, samples.u, log_p_aug=samples.log_p_aug)
    finite = np.isfinite(samples.u)
    weights = np.exp(log_w - log_w.max()) if np.isfinite(log_w).any() else np.zeros_like(log_w)
    scores = {
        "mean_energy_flow": float(samples.u[finite].mean()) if finite.any() else math.nan,
        "median_energy_flow": float(np.median(samples.u[finite])) if finite.any() else math.nan,
        "mean_energy_flow_reweighted": float(np.sum(weights * np.where(finite, samples.u, 0)) / weights.sum())
        if weights.sum() > 0
        else math.nan,
        "mean_energy_reference": math.nan,
        "mean_energy_reference_stderr": math.nan,
        "reference_nll_nats": math.nan,
    }
    try:
        reference = load_particle_data("lj13", "test", make_if_missing=False, dtype=torch.float64).to(device)
    except FileNotFoundError as error:
        print(f"no reference data, reference scores are NaN: {error}")
        return scores
    with torch.no_grad():
        u_ref = energy(reference).cpu().numpy()
        nll = marginal_nll(flow, reference[:n_nll], generator)
    scores["mean_energy_reference"] = float(u_ref.mean())
    scores["mean_energy_reference_stderr"] = float(u_ref.std(ddof=1) / math.sqrt(len(u_ref)))
    scores["reference_nll_nats"] = nll
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes for 2 CPU cores (minutes)")
    parser.add_argument("--smoke", action="store_true", help="seconds: 3 iterations, 128 evaluation samples")
    parser.add_argument(
        "--out", type=output_directory, default=None, help="output folder (default runs/lj13_fab[_quick])"
    )
    parser.add_argument("--iterations", type=int, default=None, help="override the number of iterations")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint in --out (with the same options)"
    )
    parser.add_argument("--lr", type=float, default=None, help="override the peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--float64", action="store_true", help="train in float64 (default float32)")
    args = parser.parse_args()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    setup = {"smoke": SMOKE, "quick": QUICK, "full": FULL}[mode]
    out = args.out or Path("runs") / ("lj13_fab" if mode == "full" else f"lj13_fab_{mode}")
    ctx = init_from_env(backend=None if args.device.startswith("cuda") else "gloo")  # torchrun: data parallel
    device = ctx.device if ctx.distributed else torch.device(args.device)
    torch.manual_seed(args.seed)

    dtype = torch.float64 if args.float64 else torch.float32  # float32 trains faster; evaluation is in float64
    flow = AugmentedCouplingFlow(13, dim=3, n_aug=1, length_scale=1.0, sigma_aug=0.1, **setup["flow"]).to(device, dtype)
    energy = LennardJonesEnergy(13)
    objective = FABObjective(energy, step_size=0.02, aux_weight=10.0, **setup["fab"])
    n_iterations = args.iterations or setup["n_iterations"]
    config = TrainConfig(
        n_iterations=n_iterations,
        lr=args.lr or setup["lr"],
        warmup_iterations=max(1, min(100, n_iterations // 10)),
        seed=args.seed,
        progress=not args.no_progress,
        checkpoint_every=0 if mode != "full" else 500,  # and every 5 min in every mode (checkpoint_every_s)
    )
    trainer = Trainer(flow, objective, config, out_dir=out, distributed=ctx)
    start = time.perf_counter()
    with exit_when_interrupted(ctx.close):
        result = trainer.run(resume=args.resume)
    ctx.close()
    if not ctx.is_main:  # rank 0 evaluates and writes
        return
    flow.double()
    generator = torch.Generator(device=device).manual_seed(args.seed + 1)
    scores = fab_scores(JointFlow(flow), objective, setup["n_eval"], generator)
    scores.update(energy_scores(flow, energy, setup["n_eval"], setup["n_nll"], generator, str(device)))
    summary = {
        "mode": mode,
        "device": str(device),
        "world_size": ctx.world_size,
        **training_summary(result),
        **scores,
        "n_parameters": sum(p.numel() for p in flow.parameters()),
        "wall_time_s_this_call": time.perf_counter() - start,
    }
    write_json(out / "results.json", summary)
    for key, value in summary.items():
        print(f"{key:>30}: {value:.4g}" if isinstance(value, float) else f"{key:>30}: {value}")


if __name__ == "__main__":
    main()

"""Alanine dipeptide in implicit solvent (amber99sbildn + OBC, 300 K) trained by FAB from the energy alone.

python examples/aldp_fab.py --quick        # the whole pipeline on 2 CPU cores in under 5 minutes (tiny sizes:
                                           # a smoke test of train -> sample -> save -> analyse, not a good model)
python examples/aldp_fab.py                # the real run for one GPU (see FULL below for its budget)

Energies: TorchForceField on the GPU when CUDA is present; otherwise OpenMMEnergy (--workers processes).
Everything lands in --out: checkpoint.pt, metrics.jsonl, training_curves.png, samples.dcd + topology.pdb
(mdtraj-readable), samples.npz (x, log_q, u, log_p_aug: the input of free_energy_aldp.py), ramachandran.png,
results.json (reverse ESS, D-chirality fraction, Ramachandran KL(MD || flow) on 64 x 64 periodic bins and
KL(umbrella || flow) along phi, in nats, unweighted and reweighted (NaN when the reference is not cached: MD from
systems/aldp/md.py, umbrella from systems/aldp/umbrella.py), phi-state free-energy difference through pymbar MBAR
with its error, or NaN with the reason when a state is empty, target evaluations, wall time).
--resume continues training from the checkpoint; --smoke runs the quick sizes for 3 iterations (tests).

Budget of the default mode: 12,000 iterations x 128 samples x (1 + 8 intermediates x 4 leapfrog steps) = 5.1e7
target evaluations plus 8 flow updates of batch 128 per iteration. Memory sets the batch: the 20-block flow keeps
~0.53 GB of autograd graph per configuration in float32 (measured on CPU: 1.46 GB at batch 2, 4.67 GB at batch 8),
so fab-torch's batch of 512 would need ~270 GB per update; 128 needs ~70 GB (AIS runs in chunks of 64,
``ais_chunk_size``). Its wall time on one GPU was not measured here (no GPU was available when this was written).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bgflow_se3.analysis import evaluate_dipeptide
from bgflow_se3.energy import energy_for_device
from bgflow_se3.flow import AugmentedCouplingFlow
from bgflow_se3.systems import default_md_dir, load_aldp, load_aldp_md
from bgflow_se3.systems.umbrella import default_umbrella_dir, load_profile
from bgflow_se3.train import FABObjective, TargetDensity, TrainConfig, Trainer, training_summary

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
SMOKE = dict(QUICK, n_iterations=3, n_samples=128)
FULL = dict(
    flow=dict(n_blocks=20, hidden=128, egnn_layers=3, mlp_blocks=1),
    fab=dict(
        batch_size=128,
        n_intermediate=8,
        n_leapfrog=4,
        n_updates=8,
        buffer_max_length=128 * 512,
        buffer_min_length=128 * 64,
        ais_chunk_size=64,
    ),
    n_iterations=12000,
    lr=2e-4,
    n_samples=100_000,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the pipeline in < 5 min on 2 CPU cores")
    parser.add_argument("--smoke", action="store_true", help="3 iterations, 128 samples: checks the pipeline")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/aldp_fab[_quick])")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=1, help="OpenMM worker processes (CPU backends)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--md-data", type=Path, default=default_md_dir("implicit"), help="MD reference folder")
    parser.add_argument("--umbrella", type=Path, default=default_umbrella_dir("implicit"), help="umbrella cache")
    args = parser.parse_args()
    args.quick = args.quick or args.smoke
    setup = SMOKE if args.smoke else QUICK if args.quick else FULL
    out = args.out or Path("runs") / ("aldp_fab_quick" if args.quick else "aldp_fab")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(args.seed)

    aldp = load_aldp("implicit")
    energy, backend = energy_for_device(aldp.system, TEMPERATURE, args.device, args.workers)
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

    # sample, weight, save and analyse (in float64): chirality, Ramachandran KL, phi-state free energy
    scores = evaluate_dipeptide(
        flow.double(),
        energy,
        aldp.topology,
        setup["n_samples"],
        out,
        generator=torch.Generator(device=args.device).manual_seed(args.seed + 1),
        reference_md=load_aldp_md(folder=args.md_data, missing_ok=True),
        umbrella_profile=load_profile(args.umbrella, missing_ok=True),
    )
    summary = {
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "energy_backend": backend,
        "device": args.device,
        **training_summary(result),
        **scores,
        "wall_time_s_total": time.perf_counter() - start,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    for key, value in summary.items():
        print(f"{key:>34}: {value:.4g}" if isinstance(value, float) else f"{key:>34}: {value}")
    if summary["reverse_ess"] * summary["n_samples"] < 50:
        print(
            "WARNING: fewer than 50 effective samples: the free-energy difference and reweighted plot are not reliable"
        )
    close = getattr(energy, "close", None)
    if callable(close):
        close()


if __name__ == "__main__":
    main()

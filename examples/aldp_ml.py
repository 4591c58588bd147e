"""Alanine dipeptide in implicit solvent (amber99sbildn + OBC, 300 K) trained by maximum likelihood on MD data.

python examples/aldp_ml.py --quick         # 2 CPU cores, a few minutes: 0.5 ns of MD made on the fly (cached),
                                           # a tiny flow; a test of the pipeline, not a good model
python examples/aldp_ml.py                 # the real run for one GPU on the cached MD of systems/aldp/md.py
torchrun --nproc_per_node 4 examples/aldp_ml.py   # data parallel on 4 GPUs: batch size per rank, rank 0 writes

Data: MD frames from the ``systems/aldp/md.py`` recipe (``~/.cache/bgflow_se3/aldp_md/implicit``; the full mode
asks for it by name when it is missing, --quick simulates its own short trajectory into ``.../implicit_quick``
through the same library code, about 30 s per ns on one core). The first 80 % of the trajectory trains, the last
20 % validates (contiguous in time, so validation frames are not neighbours of training frames).
Energies for the importance weights: TorchForceField on the GPU when CUDA is present, otherwise OpenMMEnergy.
Everything lands in --out: checkpoint.pt, metrics.jsonl, training_curves.png, validation_nll.png (train and
validation NLL, nats per configuration, marginal log q by importance sampling with 20 draws of a),
samples.dcd + topology.pdb (mdtraj-readable), samples.npz, ramachandran.png (flow, reweighted flow, validation MD),
results.json (validation NLL, reverse ESS vs the OpenMM target, Ramachandran KL(validation MD || flow) on 64 x 64
periodic bins and KL(umbrella || flow) along phi in nats, unweighted and reweighted, D-chirality fraction,
phi-state free-energy difference, wall time). --resume continues training from checkpoint.pt (written every 5
minutes, at Ctrl-C / SIGTERM and at the end; resume with the options of the first run); --smoke is a seconds-long
check.

Budget of the default mode: 20,000 iterations x 256 frames, 20 blocks of width 128, no energy evaluations while
training (only 100,000 for the final weights); its wall time on one GPU was not measured here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bgflow_se3.analysis import evaluate_dipeptide
from bgflow_se3.cli_checks import existing_directory, output_directory
from bgflow_se3.energy import energy_for_device
from bgflow_se3.flow import AugmentedCouplingFlow
from bgflow_se3.jsonio import strict_json, write_json
from bgflow_se3.simulate import default_md_dir, load_aldp_md, run_aldp_md
from bgflow_se3.simulate.umbrella_sampling import default_umbrella_dir
from bgflow_se3.systems import load_aldp
from bgflow_se3.systems.aldp_references import reference_profile, reference_ramachandran
from bgflow_se3.train import (
    MaximumLikelihoodObjective,
    TrainConfig,
    Trainer,
    exit_when_interrupted,
    init_from_env,
    marginal_nll,
    plot_training_curves,
    training_summary,
)

TEMPERATURE = 300.0
QUICK = dict(
    flow=dict(n_blocks=2, hidden=32, egnn_layers=1, mlp_blocks=1),
    md=dict(ns=0.5, save_every_ps=0.5, equilibration_ps=20.0),
    n_iterations=200,
    batch_size=32,
    lr=1e-3,
    n_samples=2048,
    n_nll=64,
    n_curve_points=5,
)
SMOKE = dict(
    QUICK,
    md=dict(ns=0.01, save_every_ps=0.1, equilibration_ps=1.0),
    n_iterations=4,
    batch_size=16,
    n_samples=64,
    n_nll=8,
    n_curve_points=4,
)
FULL = dict(
    flow=dict(n_blocks=20, hidden=128, egnn_layers=3, mlp_blocks=1),
    md=None,
    n_iterations=20000,
    batch_size=256,
    lr=2e-4,
    n_samples=100_000,
    n_nll=2048,
    n_curve_points=20,
)


def md_frames(mode: str, setup: dict, folder: Path | None) -> tuple[np.ndarray, Path]:
    """The MD frames (n, 22, 3), nm, and their folder: cached, or simulated now in the quick and smoke modes."""
    if folder is None:
        folder = default_md_dir("implicit") if mode == "full" else default_md_dir(f"implicit_{mode}")
    if not (folder / "positions.npy").exists() and setup["md"] is not None:
        print(f"no MD data in {folder}: simulating {setup['md']['ns']} ns now (the systems/aldp/md.py code path)")
        run_aldp_md("implicit", out=folder, **setup["md"])
    return load_aldp_md(folder=folder), folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes for 2 CPU cores (minutes)")
    parser.add_argument("--smoke", action="store_true", help="seconds: 10 ps of MD, 4 iterations, 64 samples")
    parser.add_argument(
        "--out", type=output_directory, default=None, help="output folder (default runs/aldp_ml[_quick])"
    )
    parser.add_argument("--md-data", type=Path, default=None, help="MD folder (default: the cache of this mode)")
    parser.add_argument(
        "--umbrella",
        type=existing_directory,
        default=default_umbrella_dir("implicit"),
        help="umbrella cache (default: its profile, else the shipped one)",
    )
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out (same options)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=1, help="OpenMM worker processes (CPU backend)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the flow (~2x faster steps after minutes of compiling)"
    )
    args = parser.parse_args()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    setup = {"smoke": SMOKE, "quick": QUICK, "full": FULL}[mode]
    out = args.out or Path("runs") / ("aldp_ml" if mode == "full" else f"aldp_ml_{mode}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ctx = init_from_env(backend=None if args.device.startswith("cuda") else "gloo")  # torchrun: data parallel
    device = ctx.device if ctx.distributed else torch.device(args.device)
    torch.manual_seed(args.seed)

    if ctx.is_main:  # rank 0 simulates missing MD; the other ranks then read its files
        md_frames(mode, setup, args.md_data)
    ctx.barrier()
    frames, md_folder = md_frames(mode, setup, args.md_data)
    n_train = int(0.8 * len(frames))
    train = torch.from_numpy(frames[:n_train]).to(device)
    val = torch.from_numpy(frames[n_train:]).to(device)
    aldp = load_aldp("implicit")
    flow = AugmentedCouplingFlow.for_topology(
        aldp.topology, n_aug=1, sigma_aug=0.05, length_scale=0.3, compile=args.compile, **setup["flow"]
    ).to(device, torch.float32)
    n_iterations = args.iterations or setup["n_iterations"]
    config = TrainConfig(
        n_iterations=n_iterations,
        lr=setup["lr"],
        warmup_iterations=max(1, min(500, n_iterations // 10)),
        seed=args.seed,
        progress=not args.no_progress,
        checkpoint_every=0 if mode != "full" else 1000,  # and every 5 min in every mode (checkpoint_every_s)
        plot=False,  # plotted once at the end, not after every chunk
    )
    objective = MaximumLikelihoodObjective(train, setup["batch_size"])
    trainer = Trainer(flow, objective, config, out_dir=out, distributed=ctx)

    # train in chunks; after each, the NLL of validation frames and of as many training frames (overfitting check)
    curve_path = out / "validation_nll.jsonl"
    if not args.resume and ctx.is_main:
        curve_path.unlink(missing_ok=True)
    curve = [json.loads(line) for line in curve_path.read_text().splitlines()] if curve_path.exists() else []
    generator = torch.Generator(device=device).manual_seed(args.seed + 2)
    n_nll = min(setup["n_nll"], len(val))
    chunk = max(1, n_iterations // setup["n_curve_points"])
    result = None
    for until in range(chunk, n_iterations + chunk, chunk):
        with exit_when_interrupted():
            result = trainer.run(until=min(until, n_iterations), resume=args.resume and result is None)
        if not ctx.is_main or (curve and curve[-1]["iteration"] >= result.iterations):
            continue  # rank 0 alone measures and writes the NLL curve
        record = {
            "iteration": result.iterations,
            "val_nll": marginal_nll(flow, val[:n_nll], generator),
            "train_nll": marginal_nll(flow, train[:n_nll], generator),
        }
        curve.append(record)
        with curve_path.open("a") as f:
            f.write(strict_json(record, indent=None) + "\n")
    ctx.close()
    if not ctx.is_main:
        return
    plot_training_curves(result.history, out / "training_curves.png")
    plot_training_curves(curve, out / "validation_nll.png", keys=("val_nll", "train_nll"))

    # sample, weight, save and analyse against the validation frames (float64)
    energy, backend = energy_for_device(aldp.system, TEMPERATURE, str(device), args.workers)
    scores = evaluate_dipeptide(
        flow.double(),
        energy,
        aldp.topology,
        setup["n_samples"],
        out,
        generator=torch.Generator(device=device).manual_seed(args.seed + 1),
        reference_md=frames[n_train:],
        umbrella_profile=reference_profile(args.umbrella),
        umbrella_ramachandran=reference_ramachandran(args.umbrella),
    )
    summary = {
        "mode": mode,
        "energy_backend": backend,
        "device": str(device),
        "ranks": ctx.world_size,
        "md_data": str(md_folder),
        "n_train_frames": n_train,
        "n_val_frames": len(frames) - n_train,
        **training_summary(result),
        "val_nll_nats": curve[-1]["val_nll"],
        "train_nll_nats": curve[-1]["train_nll"],
        **scores,
        "wall_time_s_total": time.perf_counter() - start,
    }
    write_json(out / "results.json", summary)
    for key, value in summary.items():
        print(f"{key:>34}: {value:.4g}" if isinstance(value, float) else f"{key:>34}: {value}")
    close = getattr(energy, "close", None)
    if callable(close):
        close()


if __name__ == "__main__":
    main()

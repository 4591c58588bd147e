"""Alanine dipeptide in implicit solvent (amber99sbildn + OBC, 300 K): F(phi > 0) - F(phi <= 0) from a Boltzmann
generator trained by FAB, with an error bar.

python examples/aldp_fab.py --quick     # the README's main job: < 10 min on 2 CPU cores
python examples/aldp_fab.py --long      # ~0.015 kT statistical error in < 1 h on 2 CPU cores
python examples/aldp_fab.py             # GPU: the augmented coupling flow trained from scratch by FAB (see FULL)
torchrun --nproc_per_node 4 examples/aldp_fab.py   # the same on 4 GPUs, data parallel (examples/slurm_multinode.sh)

Under torchrun every rank runs FAB with the sizes below on its own device (its own TorchForceField, AIS batch and
replay buffer: the global batch is the batch size x the number of ranks), gradients are summed over ranks, and
rank 0 alone samples, reweights and writes the results.

CPU modes (--quick, --long) start from the internal-coordinate flow shipped with the package
(``bgflow_se3/systems/data/aldp/icflow_implicit.pt``, made by ``systems/aldp/pretrain_flow.py``: maximum
likelihood on Langevin replicas seeded in every Ramachandran basin; provenance in the JSON beside it; a model that
no longer matches the code raises ``PretrainedModelMismatch``), fine-tune it by FAB (AIS towards p^2/q with HMC,
prioritised replay buffer) on TorchForceField energies, then draw flow samples and reweight them with exact
float64 energies. The target is the L molecule: the force field gives mirror images equal energy, so D samples get
weight 0 (``RestrictedEnergy`` in training, ``restrict_to_l`` in the evaluation). F(phi > 0) - F(phi <= 0) is
pymbar's EXP estimate with a bootstrap error, flagged reliable when both states rest on >= 50 effective samples.

Everything lands in --out: metrics.jsonl, training_curves.png, samples.dcd + topology.pdb (mdtraj-readable),
samples.npz (x, log_q, u, log_p_aug: the input of free_energy_aldp.py), ramachandran.png, phi_profile.png and
results.json (dF and its error, reverse ESS, effective samples per state, D fraction, Ramachandran KL against MD
and KL against the umbrella phi profile where those references exist, target evaluations, wall time).
--smoke runs the smallest sizes (tests). Ctrl-C or SIGTERM during training stops after the current iteration with
checkpoint.pt written (exit status 130 / 143); --resume continues from it. Training also checkpoints every 5 minutes
(TrainConfig.checkpoint_every_s), so --resume continues a killed run from its last checkpoint. Resume with the
options of the first run: other training settings (e.g. another --iterations) raise CheckpointError.

GPU mode budget (FULL): the augmented coupling flow at the reference implementation's alanine dipeptide size (8
blocks, EGNN 3 x 32, vector projection) from scratch: 6,000 iterations x 256 samples x (1 + 8 x 4) = 5.1e7 target
evaluations on TorchForceField, ~25 MB of autograd graph per configuration; not run here (no GPU was lent).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bgflow_se3.analysis import evaluate_dipeptide
from bgflow_se3.cli_checks import existing_directory, output_directory
from bgflow_se3.energy import RestrictedEnergy, TorchForceField
from bgflow_se3.flow import AugmentedCouplingFlow
from bgflow_se3.jsonio import write_json
from bgflow_se3.sampling import TargetDensity
from bgflow_se3.simulate import default_md_dir, load_aldp_md
from bgflow_se3.simulate.pretrained import load_pretrained_aldp_flow
from bgflow_se3.simulate.umbrella_sampling import default_umbrella_dir
from bgflow_se3.systems import load_aldp
from bgflow_se3.systems.aldp import is_l_form
from bgflow_se3.systems.aldp_references import reference_profile, reference_ramachandran
from bgflow_se3.threads import set_threads
from bgflow_se3.train import FABObjective, TrainConfig, Trainer, exit_when_interrupted, init_from_env, training_summary

TEMPERATURE = 300.0
FAB_FINE_TUNE = dict(batch_size=128, n_intermediate=2, n_leapfrog=3, n_updates=4, step_size=0.002, ais_chunk_size=None)
QUICK = dict(
    pretrained=True,
    fab=dict(FAB_FINE_TUNE, buffer_max_length=128 * 64, buffer_min_length=128 * 4),
    n_iterations=60,
    lr=1e-5,
    n_samples=200_000,
)
LONG = dict(QUICK, n_iterations=500, lr=2e-5, n_samples=1_500_000)
SMOKE = dict(
    QUICK,
    fab=dict(FAB_FINE_TUNE, batch_size=16, n_updates=2, buffer_max_length=128, buffer_min_length=32),
    n_iterations=3,
    n_samples=256,
)
FULL = dict(
    pretrained=False,
    flow=dict(n_blocks=8, hidden=32, egnn_layers=3, mlp_blocks=1, projection="vector"),
    fab=dict(
        batch_size=256,
        n_intermediate=8,
        n_leapfrog=4,
        n_updates=8,
        step_size=0.002,
        buffer_max_length=256 * 256,
        buffer_min_length=256 * 16,
        ais_chunk_size=128,
    ),
    n_iterations=6000,
    lr=2e-4,
    n_samples=200_000,
)


def build_flow(setup: dict, aldp, device: str | torch.device, compile: bool = False):
    """The pretrained internal-coordinate flow (CPU modes) or a fresh augmented coupling flow (GPU mode).

    compile: run the augmented flow's couplings ``torch.compile``d (``AugmentedCouplingFlow(compile=True)``).
    """
    if setup["pretrained"]:
        flow, provenance = load_pretrained_aldp_flow("implicit")
        return flow.to(device), {
            "pretrained_commit": provenance.get("commit"),
            **{f"pretrained_{k}": v for k, v in provenance.get("metrics", {}).items()},
        }
    flow = AugmentedCouplingFlow.for_topology(
        aldp.topology, n_aug=1, sigma_aug=0.05, length_scale=0.3, compile=compile, **setup["flow"]
    )
    return flow.to(device, torch.float32), {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="pretrained flow + short FAB: < 10 min on 2 CPU cores")
    mode.add_argument("--long", action="store_true", help="more FAB and samples: < 1 h on 2 CPU cores")
    mode.add_argument("--smoke", action="store_true", help="the smallest sizes: checks the pipeline")
    parser.add_argument(
        "--out", type=output_directory, default=None, help="output folder (default runs/aldp_fab_<mode>)"
    )
    parser.add_argument("--iterations", type=int, default=None, help="FAB iterations (default: the mode's)")
    parser.add_argument("--samples", type=int, default=None, help="flow samples for the estimate (default: the mode's)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out (same options)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: bgflow_se3.threads' policy)"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="full mode: torch.compile the augmented flow (~2x faster steps after minutes of compiling)",
    )
    parser.add_argument("--md-data", type=Path, default=default_md_dir("implicit"), help="MD reference folder")
    parser.add_argument(
        "--umbrella",
        type=existing_directory,
        default=default_umbrella_dir("implicit"),
        help="umbrella cache (default: its profile, else the shipped one)",
    )
    args = parser.parse_args()
    name = "smoke" if args.smoke else "quick" if args.quick else "long" if args.long else "full"
    setup = {"smoke": SMOKE, "quick": QUICK, "long": LONG, "full": FULL}[name]
    if args.compile and setup["pretrained"]:
        parser.error(f"--compile applies to the augmented flow of the full mode; --{name} uses the pretrained flow")
    if args.threads:
        set_threads(args.threads)
    out = args.out or Path("runs") / f"aldp_fab_{name}"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ctx = init_from_env(backend=None if args.device.startswith("cuda") else "gloo")  # torchrun: data parallel
    device = ctx.device if ctx.distributed else torch.device(args.device)
    torch.manual_seed(args.seed)

    aldp = load_aldp("implicit")
    # training energies in float32 on the device; the target is the L enantiomer
    energy = RestrictedEnergy(TorchForceField.from_system(aldp.system, TEMPERATURE).to(device), is_l_form)
    flow, flow_info = build_flow(setup, aldp, device, compile=args.compile)
    objective = FABObjective(TargetDensity(energy, energy_cut=1e3), **setup["fab"])
    n_iterations = args.iterations or setup["n_iterations"]
    config = TrainConfig(
        n_iterations=n_iterations,
        lr=setup["lr"],
        warmup_iterations=max(1, min(500, n_iterations // 10)),
        seed=args.seed,
        progress=not args.no_progress,
        checkpoint_every=0 if name in ("smoke", "quick") else 500,  # and every 5 min in every mode (checkpoint_every_s)
    )
    with exit_when_interrupted(ctx.close):
        result = Trainer(flow, objective, config, out_dir=out, distributed=ctx).run(resume=args.resume)
    ctx.close()
    if not ctx.is_main:  # rank 0 samples, reweights and writes
        return

    # sample, weight with float64 energies, save and analyse: chirality, Ramachandran KL, phi-state free energy
    scores = evaluate_dipeptide(
        flow.double(),
        TorchForceField.from_system(aldp.system, TEMPERATURE).to(device),
        aldp.topology,
        args.samples or setup["n_samples"],
        out,
        generator=torch.Generator(device=device).manual_seed(args.seed + 1),
        batch_size=4096,
        reference_md=load_aldp_md(folder=args.md_data, missing_ok=True),
        umbrella_profile=reference_profile(args.umbrella),
        umbrella_ramachandran=reference_ramachandran(args.umbrella),
        restrict_to_l=True,
    )
    summary = {
        "mode": name,
        "energy_backend": "TorchForceField",
        "device": str(device),
        "world_size": ctx.world_size,
        "flow": type(flow).__name__,
        **flow_info,
        **training_summary(result),
        **scores,
        "n_target_evaluations_total": result.n_target_evaluations + scores["n_samples"],
        "wall_time_s_total": time.perf_counter() - start,
    }
    write_json(out / "results.json", summary)
    for key, value in summary.items():
        print(f"{key:>36}: {value:.4g}" if isinstance(value, float) else f"{key:>36}: {value}")
    dF, err = summary["dF_phi_positive_minus_negative_kT"], summary["dF_stderr_kT"]
    verdict = "reliable" if summary["dF_reliable"] else f"NOT reliable: {summary['dF_warning'] or summary['dF_error']}"
    print(f"\nF(phi > 0) - F(phi <= 0) = {dF:.3f} +/- {err:.3f} kT ({verdict})")


if __name__ == "__main__":
    main()

"""Data-parallel FAB scaling: iterations/s and target-energy evaluations/s on 1 rank and on N ranks (torchrun).

Weak scaling: every rank runs the same per-rank FAB (DW4 or LJ13, a small flow, float32, batch ``--batch`` per rank,
2 intermediates x 3 leapfrog steps, 4 gradient updates per AIS batch), so N ranks train on an N times larger global
batch. Ideal scaling keeps iterations/s (ratio 1.0) and multiplies energy evaluations/s by N. The 1-rank baseline is
a plain process (no process group: the code path of a single-process run); N ranks are launched by torchrun with the
gloo backend on CPUs, or NCCL with ``--device cuda``. The replay buffer is filled before the clock starts; a few
warm-up iterations are not timed. The machine's load average is recorded before and after: on a shared machine the
ratio measures the contention as well.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/distributed_scaling.py --quick
    PYTHONPATH=. python benchmarks/distributed_scaling.py --ranks 1 2 4 --device cuda --target lj13
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _flow(target: str) -> torch.nn.Module:
    """The small flow: ``GroupAveragedFlow`` for DW4, a 2-block augmented coupling flow for LJ13."""
    from bgflow_se3.flow import AugmentedCouplingFlow, GroupAveragedFlow

    if target == "dw4":
        return GroupAveragedFlow(4, 2, n_layers=4, hidden=32, length_scale=2.0)
    return AugmentedCouplingFlow(13, dim=3, n_aug=1, length_scale=1.0, sigma_aug=0.1, n_blocks=2, hidden=32)


def worker(args: argparse.Namespace) -> None:
    """One rank: fill the buffer, warm up, time ``--iterations`` FAB iterations; rank 0 writes ``--result``."""
    from bgflow_se3 import DoubleWellEnergy, LennardJonesEnergy
    from bgflow_se3.train import FABObjective, TrainConfig, Trainer, init_from_env

    torch.set_num_threads(args.threads)
    ctx = init_from_env(backend="nccl" if args.device == "cuda" else "gloo", timeout_s=600)
    device = ctx.device if ctx.distributed else torch.device(args.device)
    torch.manual_seed(0)
    flow = _flow(args.target).to(device, torch.float32)
    energy = DoubleWellEnergy() if args.target == "dw4" else LennardJonesEnergy(13).to(device)
    b = args.batch
    objective = FABObjective(
        energy,
        batch_size=b,
        n_intermediate=2,
        n_leapfrog=3,
        n_updates=4,
        buffer_max_length=16 * b,
        buffer_min_length=4 * b,
        step_size=0.05,
    )
    total = args.warmup + args.iterations
    config = TrainConfig(n_iterations=total, lr=1e-3, warmup_iterations=1, seed=0, progress=False, plot=False)
    trainer = Trainer(flow, objective, config, distributed=ctx)
    trainer.run(until=args.warmup)  # fills the buffer (setup) and warms up
    before = trainer.run(until=args.warmup).n_target_evaluations  # collective: the global count so far
    ctx.barrier()
    start = time.perf_counter()
    after = trainer.run(until=total).n_target_evaluations
    ctx.barrier()
    wall = time.perf_counter() - start
    if ctx.is_main:
        result = {
            "world_size": ctx.world_size,
            "backend": ctx.backend,
            "device": str(device),
            "per_rank_batch": b,
            "global_batch": b * ctx.world_size,
            "timed_iterations": args.iterations,
            "wall_s": wall,
            "iterations_per_s": args.iterations / wall,
            "energy_evaluations": after - before,
            "energy_evaluations_per_s": (after - before) / wall,
            "torch_threads_per_rank": torch.get_num_threads(),
        }
        Path(args.result).write_text(json.dumps(result, indent=2))
    ctx.close()


def launch(args: argparse.Namespace, world_size: int, result: Path) -> dict:
    """Run the worker on ``world_size`` ranks (1: a plain process) and return rank 0's result."""
    worker_args = [
        str(Path(__file__).resolve()),
        "--worker",
        "--result",
        str(result),
        "--target",
        args.target,
        "--batch",
        str(args.batch),
        "--iterations",
        str(args.iterations),
        "--warmup",
        str(args.warmup),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    if world_size == 1:
        command = [sys.executable, *worker_args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}"]
        command += worker_args
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO))
    subprocess.run(command, env=env, cwd=REPO, check=True, timeout=args.timeout_s)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="DW4, 1 and 2 ranks, 10 timed iterations (about 1 min)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="world sizes to measure (first: baseline)")
    parser.add_argument("--target", choices=["dw4", "lj13"], default="dw4")
    parser.add_argument("--batch", type=int, default=128, help="FAB batch per rank")
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations (default 10 quick, 30)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (OMP_NUM_THREADS)")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="per launch")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "distributed_scaling.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.iterations is None:
        args.iterations = 10 if args.quick else 30
    if args.worker:
        worker(args)
        return

    load_before = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for world_size in args.ranks:
            runs.append(launch(args, world_size, Path(tmp) / f"ranks_{world_size}.json"))
    load_after = os.getloadavg()
    base = runs[0]
    for run in runs:
        run["iterations_per_s_ratio"] = run["iterations_per_s"] / base["iterations_per_s"]
        run["energy_evaluations_per_s_ratio"] = run["energy_evaluations_per_s"] / base["energy_evaluations_per_s"]
    summary = {
        "benchmark": "distributed_scaling",
        "target": args.target,
        "weak_scaling": "per-rank batch fixed; ideal: iterations/s ratio 1, energy evaluations/s ratio = ranks",
        "runs": runs,
        "load_average_1_5_15_min_before": load_before,
        "load_average_1_5_15_min_after": load_after,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"{'ranks':>5} {'global batch':>12} {'it/s':>8} {'evals/s':>10} {'it/s ratio':>10} {'evals/s ratio':>13}")
    for run in runs:
        print(
            f"{run['world_size']:>5} {run['global_batch']:>12} {run['iterations_per_s']:>8.3f} "
            f"{run['energy_evaluations_per_s']:>10.0f} {run['iterations_per_s_ratio']:>10.2f} "
            f"{run['energy_evaluations_per_s_ratio']:>13.2f}"
        )
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}; {os.cpu_count()} CPUs")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

"""Sampling throughput of the augmented coupling flow: samples per second with their joint log q(x, a).

For DW4 (4 atoms, 2D), LJ13 (13 atoms) and alanine dipeptide sized systems (22 atoms, 4 atom types) and each
projection type, draws batches of ``--batch`` samples (default 1024) with ``flow.sample`` under ``torch.no_grad``
and reports samples/s; ratios are against the spherical projection of the same system in the same run.

    PYTHONPATH=. python benchmarks/sampling_throughput.py --quick
    PYTHONPATH=. python benchmarks/sampling_throughput.py --device cuda --out benchmarks/results/throughput_gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from bgflow_se3 import AugmentedCouplingFlow

SYSTEMS = {
    "dw4": dict(n_atoms=4, dim=2, atom_types=None),
    "lj13": dict(n_atoms=13, dim=3, atom_types=None),
    # alanine dipeptide: 22 atoms, types C, H, N, O in topology order
    "aldp": dict(n_atoms=22, dim=3, atom_types=[1, 0, 1, 1, 0, 3, 2, 1, 0, 1, 0, 1, 1, 1, 0, 3, 2, 1, 0, 1, 1, 1]),
}
PROJECTIONS = ("spherical", "cartesian", "vector")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(flow: AugmentedCouplingFlow, batch: int, repeats: int, device: torch.device) -> float:
    """Samples per second of ``flow.sample(batch)`` (with log q), best of ``repeats`` after one warm-up."""
    with torch.no_grad():
        flow.sample(batch)
        _sync(device)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            sample = flow.sample(batch)
            _sync(device)
            best = min(best, time.perf_counter() - start)
        if not torch.isfinite(sample.log_q).all():
            raise RuntimeError("non-finite log q in the benchmark sample")
    return batch / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small flows and batches (a CPU smoke run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 1024; 128 with --quick)")
    parser.add_argument("--n-blocks", type=int, default=None, help="blocks (default 12; 2 with --quick)")
    parser.add_argument("--hidden", type=int, default=None, help="EGNN width (default 128; 32 with --quick)")
    parser.add_argument("--egnn-layers", type=int, default=None, help="EGNN layers (default 3; 1 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3; 1 with --quick)")
    parser.add_argument("--out", default="benchmarks/results/sampling_throughput.json")
    args = parser.parse_args()
    quick = args.quick
    batch = args.batch or (128 if quick else 1024)
    n_blocks = args.n_blocks or (2 if quick else 12)
    hidden = args.hidden or (32 if quick else 128)
    layers = args.egnn_layers or (1 if quick else 3)
    repeats = args.repeats or (1 if quick else 3)
    device = torch.device(args.device)
    torch.manual_seed(0)

    rows = []
    for system, spec in SYSTEMS.items():
        baseline = None
        for projection in PROJECTIONS:
            flow = AugmentedCouplingFlow(
                spec["n_atoms"],
                spec["dim"],
                spec["atom_types"],
                projection=projection,
                n_blocks=n_blocks,
                hidden=hidden,
                egnn_layers=layers,
            ).to(device)
            rate = measure(flow, batch, repeats, device)
            baseline = rate if projection == "spherical" else baseline
            rows.append(
                dict(system=system, projection=projection, samples_per_s=rate, ratio_vs_spherical=rate / baseline)
            )
            print(f"{system:5s} {projection:9s} {rate:12.1f} samples/s   x{rate / baseline:5.2f} vs spherical")

    result = dict(
        benchmark="sampling_throughput",
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        torch_threads=torch.get_num_threads(),
        dtype="float32",
        batch=batch,
        n_blocks=n_blocks,
        hidden=hidden,
        egnn_layers=layers,
        quick=quick,
        rows=rows,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

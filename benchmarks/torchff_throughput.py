"""Throughput of TorchForceField (energies + forces) against a per-sample OpenMM Reference loop, same run.

    PYTHONPATH=. python benchmarks/torchff_throughput.py [--quick] [--device cpu|cuda] [--compile] [--out PATH]

For alanine dipeptide in vacuum and in OBC implicit solvent, it times
- the baseline: one OpenMM Reference Context, per sample ``setPositions`` + ``getState(energy, forces)``;
- TorchForceField at batch 256 / 1024 / 4096 (or ``--batch-sizes``), float32 and float64, energy and analytic
  forces of the whole batch (on ``--device``), optionally also under ``torch.compile``;
and prints evaluations per second and the ratio to the baseline, plus the float32 error against float64.
Results go to JSON (``--out``, default ``benchmarks/results/torchff_throughput.json``). Rates are given by wall
clock and by this process's CPU time; on a shared machine the CPU-time ratio is the fairer one.

Forces come from ``TorchForceField.energy_and_force``: one fused pass with analytic gradients (no autograd graph).

What limits CPU speed: eager torch still makes ~100 separate passes over ``(n_pairs, batch)`` intermediates for
the OBC term (each reads and writes memory, and every fresh allocation costs page faults), whereas OpenMM's
Reference loop does the same arithmetic per pair in one fused scalar loop; float64 ``log``/``exp`` cost several ns
per element. Chunks of ``cpu_chunk_size`` configurations keep the intermediates in cache. ``torch.compile`` fuses
these passes into a few C++ loops, but compiling takes minutes on CPU; on a GPU the passes are cheap and the batch
is evaluated in one go.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from bgflow_se3 import TorchForceField
from bgflow_se3.systems import load_aldp


def _configurations(positions_nm: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return positions_nm[None] + rng.normal(scale=0.01, size=(n, *positions_nm.shape))


class Rate(NamedTuple):
    """Evaluations per second by wall clock and by this process's CPU time (fairer on a shared machine)."""

    wall: float
    cpu: float


def _timed(step, n_per_step: int, min_seconds: float) -> Rate:
    count, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while True:
        step()
        count += n_per_step
        wall = time.perf_counter() - wall0
        if wall >= min_seconds:
            return Rate(count / wall, count / max(time.process_time() - cpu0, 1e-9))


def openmm_loop_rate(system, positions: np.ndarray, min_seconds: float) -> Rate:
    """Evaluations (energy + forces) per second of a per-sample OpenMM Reference loop."""
    import openmm

    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))

    def step() -> None:
        for pos in positions:
            context.setPositions(pos)
            state = context.getState(getEnergy=True, getForces=True)
            state.getPotentialEnergy()
            state.getForces(asNumpy=True)

    return _timed(step, len(positions), min_seconds)


def _energy_and_force(ff: TorchForceField, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return ff.energy_and_force(x)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_rate(ff: TorchForceField, x: torch.Tensor, min_seconds: float, warmup: int = 2) -> Rate:
    """Evaluations (energy + forces) per second of ``ff`` on the batch ``x``."""
    for _ in range(warmup):
        _energy_and_force(ff, x)
    _sync(x.device)

    def step() -> None:
        _energy_and_force(ff, x)
        _sync(x.device)

    return _timed(step, len(x), min_seconds)


def float32_error(ff: TorchForceField, x64: torch.Tensor) -> dict[str, float]:
    """Largest relative errors of float32 energies (kT, relative to max(|u|, 1)) and forces (norm) vs float64."""
    u64, f64 = _energy_and_force(ff, x64)
    u32, f32 = _energy_and_force(ff, x64.float())
    e_rel = ((u32.double() - u64).abs() / u64.abs().clamp_min(1.0)).max().item()
    f_rel = ((f32.double() - f64).flatten(1).norm(dim=1) / f64.flatten(1).norm(dim=1)).max().item()
    return {"energy_rel_max": e_rel, "force_rel_max": f_rel}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short timings, batch 256 and 1024 only")
    parser.add_argument("--device", default="cpu", help="torch device for TorchForceField (cpu, cuda, ...)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--systems", nargs="+", default=["vacuum", "implicit"], choices=["vacuum", "implicit"])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow first call)")
    parser.add_argument("--min-seconds", type=float, default=None, help="timing window per measurement")
    parser.add_argument("--out", default="benchmarks/results/torchff_throughput.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    batch_sizes = args.batch_sizes or ([256, 1024] if args.quick else [256, 1024, 4096])
    min_seconds = args.min_seconds or (0.5 if args.quick else 2.0)
    variants = [False, True] if args.compile else [False]
    results = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": platform.processor() or platform.machine(),
        "baseline": "per-sample OpenMM Reference loop: setPositions + getState(energy, forces), one core",
        "records": [],
    }
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    for solvent in args.systems:
        aldp = load_aldp(solvent)
        positions = _configurations(aldp.positions_nm, max(batch_sizes))
        baseline = openmm_loop_rate(aldp.system, positions[:500], min_seconds)
        print(f"\naldp {solvent}: OpenMM Reference loop {baseline.wall:,.0f} evals/s ({baseline.cpu:,.0f} by CPU time)")
        results["records"].append(
            {"system": f"aldp_{solvent}", "backend": "openmm_reference_loop", **baseline._asdict()}
        )
        for compiled in variants:
            ff = TorchForceField.from_system(aldp.system, compile=compiled).to(device)
            x64_all = torch.tensor(positions, device=device)
            if not compiled:
                err = float32_error(ff, x64_all[:1024])
                print(f"  float32 vs float64: energy {err['energy_rel_max']:.1e}, force {err['force_rel_max']:.1e}")
                results["records"].append({"system": f"aldp_{solvent}", "backend": "float32_error", **err})
            for dtype in (torch.float32, torch.float64):
                for batch in batch_sizes:
                    x = x64_all[:batch].to(dtype)
                    rate = torch_rate(ff, x, min_seconds)
                    name = "torchff_compiled" if compiled else "torchff"
                    print(
                        f"  {name:17s} {str(dtype)[6:]:8s} batch {batch:5d}: {rate.wall:12,.0f} evals/s "
                        f"= {rate.wall / baseline.wall:6.2f} x OpenMM loop (by CPU time "
                        f"{rate.cpu / baseline.cpu:6.2f} x)"
                    )
                    results["records"].append(
                        {
                            "system": f"aldp_{solvent}",
                            "backend": name,
                            "dtype": str(dtype)[6:],
                            "batch": batch,
                            **rate._asdict(),
                            "ratio_vs_openmm_loop": rate.wall / baseline.wall,
                            "ratio_vs_openmm_loop_cpu_time": rate.cpu / baseline.cpu,
                        }
                    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

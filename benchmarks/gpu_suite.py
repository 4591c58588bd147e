"""One command, one JSON: what a GPU buys for alanine dipeptide (TorchForceField, the flow, a short FAB run).

    PYTHONPATH=. python benchmarks/gpu_suite.py                          # on one GPU: about 6-8 minutes
    PYTHONPATH=. python benchmarks/gpu_suite.py --tiny --device cpu      # seconds: checks the pipeline (tests)

Sections (each measured in this run, on this machine):

- ``energy``: TorchForceField (OBC implicit solvent, the shipped ``load_aldp("implicit")`` System) energy + force
  evaluations per second at batch 1e3, 1e4, 1e5, in float32 and float64, eager and ``torch.compile``d, each with
  the ratio to the per-sample OpenMM loop (one Context, setPositions + getState per configuration: what the peer
  libraries run) on the fastest OpenMM platform here (CUDA when OpenMM has it, else CPU), measured in the same run.
- ``flow``: the augmented coupling flow at the alanine dipeptide sizes (``reference``: 8 blocks, EGNN 3 x 32,
  vector projection, the reference implementation's model and ``examples/aldp_fab.py``'s GPU mode; ``wide``:
  8 blocks x 128, spherical): configurations per second and peak device memory for log q(x, a) + backward and for
  sampling with log q, float32, batch 64 to 1024 (an out-of-memory batch is recorded as such, not fatal).
- ``training``: ``examples/aldp_fab.py``'s GPU mode (FAB from scratch, TorchForceField energies on the device) for
  a fixed wall-time budget (3 minutes): iterations, target evaluations per second, the flow's ESS at the end.

Timings synchronise the device and take the median of repeats after a warm-up call. ``--tiny`` shrinks every
batch, repeat and budget so that the whole suite runs in seconds on a CPU (the test suite runs it so).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.flow_speed import log_q_backward, sample_without_grad, timed
from bgflow_se3 import AugmentedCouplingFlow, TorchForceField
from bgflow_se3.energy import kT_in_kJ_per_mol
from bgflow_se3.systems import load_aldp

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gpu_suite.json"
TEMPERATURE = 300.0
FLOW_SIZES = {
    "reference": dict(n_blocks=8, hidden=32, egnn_layers=3, mlp_blocks=1, projection="vector"),
    "wide": dict(n_blocks=8, hidden=128, egnn_layers=3, mlp_blocks=1, projection="spherical"),
}
FULL = dict(
    energy_batches=[1_000, 10_000, 100_000],
    loop_configurations=300,
    flow_batches=[64, 256, 1024],
    repeats=5,
    min_seconds=0.5,
    training_seconds=180.0,
    compile=True,
)
TINY = dict(
    energy_batches=[8, 32],
    loop_configurations=8,
    flow_batches=[4],
    repeats=1,
    min_seconds=0.0,
    training_seconds=0.0,  # two iterations, whatever they take
    compile=False,
)


def aldp_configurations(n: int, seed: int = 0) -> torch.Tensor:
    """n perturbed copies of the shipped alanine dipeptide structure, (n, 22, 3) float64 nm (0.01 nm noise)."""
    aldp = load_aldp("implicit")
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.as_tensor(aldp.positions_nm, dtype=torch.float64)
    return x0 + 0.01 * torch.randn((n, *x0.shape), generator=generator, dtype=torch.float64)


def openmm_loop_rate(n: int) -> dict:
    """Energy + force evaluations/s of the per-sample OpenMM loop on the fastest platform OpenMM offers here."""
    import openmm
    import openmm.unit as unit

    aldp = load_aldp("implicit")
    names = {openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())}
    name = next(p for p in ("CUDA", "CPU", "Reference") if p in names)
    context = openmm.Context(aldp.system, openmm.VerletIntegrator(1.0), openmm.Platform.getPlatformByName(name))
    kT = kT_in_kJ_per_mol(TEMPERATURE)
    x = aldp_configurations(n, seed=1).numpy()
    context.setPositions(x[0] * unit.nanometer)
    context.getState(getEnergy=True, getForces=True)  # warm-up (kernel compilation on GPUs)
    start = time.perf_counter()
    for conf in x:
        context.setPositions(conf * unit.nanometer)
        state = context.getState(getEnergy=True, getForces=True)
        _ = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / kT
        _ = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer) / kT
    seconds = time.perf_counter() - start
    return {"platform": name, "configurations": n, "evaluations_per_s": n / seconds}


def energy_section(device: torch.device, setup: dict) -> dict:
    """TorchForceField evaluations/s per (dtype, eager/compiled, batch), with the ratio to the OpenMM loop."""
    loop = openmm_loop_rate(setup["loop_configurations"])
    aldp = load_aldp("implicit")
    rows = []
    for dtype in (torch.float32, torch.float64):
        ff = TorchForceField.from_system(aldp.system, TEMPERATURE).to(device, dtype)
        variants: dict[str, Callable | str] = {"eager": ff.energy_and_force}
        if setup["compile"]:
            try:
                variants["compiled"] = torch.compile(ff.energy_and_force, dynamic=False)
            except Exception as error:  # compile unavailable here: say so, keep the eager numbers
                variants["compiled"] = f"unavailable: {type(error).__name__}: {error}"
        else:
            variants["compiled"] = "skipped (--tiny)"
        for mode, fn in variants.items():
            for batch in setup["energy_batches"]:
                row = {"dtype": str(dtype).removeprefix("torch."), "mode": mode, "batch": batch}
                if isinstance(fn, str):
                    rows.append({**row, "error": fn})
                    continue
                x = aldp_configurations(batch).to(device, dtype)
                try:
                    seconds = timed(functools.partial(fn, x), device, setup["repeats"], setup["min_seconds"])
                except Exception as error:  # e.g. out of memory, or a compile failure on first call
                    rows.append({**row, "error": f"{type(error).__name__}: {error}"[:300]})
                    continue
                rate = batch / seconds
                rows.append({**row, "evaluations_per_s": rate, "x_openmm_loop": rate / loop["evaluations_per_s"]})
    return {"openmm_loop": loop, "torchforcefield": rows}


def flow_section(device: torch.device, setup: dict, sizes: dict[str, dict]) -> list[dict]:
    """Configurations/s and peak memory of log q + backward and of sampling, per flow size and batch (float32)."""
    aldp = load_aldp("implicit")
    rows = []
    for name, size in sizes.items():
        torch.manual_seed(0)
        flow = AugmentedCouplingFlow.for_topology(aldp.topology, n_aug=1, sigma_aug=0.05, length_scale=0.3, **size)
        flow = flow.to(device, torch.float32)
        n_parameters = sum(p.numel() for p in flow.parameters())
        for batch in setup["flow_batches"]:
            row = {"size": name, **size, "n_parameters": n_parameters, "batch": batch}
            with torch.no_grad():
                x = flow.sample(batch).x
                a = flow.sample_aug_target(x)

            tasks = {
                "log_q_backward": functools.partial(log_q_backward, flow, x, a),
                "sample": functools.partial(sample_without_grad, flow, batch),
            }
            for task, fn in tasks.items():
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    seconds = timed(fn, device, setup["repeats"], setup["min_seconds"])
                except torch.OutOfMemoryError:
                    row[f"{task}_error"] = "out of memory"
                    continue
                row[f"{task}_configurations_per_s"] = batch / seconds
                if device.type == "cuda":
                    row[f"{task}_peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            rows.append(row)
            print(json.dumps(row))
    return rows


def training_section(device: torch.device, setup: dict, flow_size: dict | None = None) -> dict:
    """examples/aldp_fab.py's GPU mode (FAB from scratch) for a fixed wall-time budget (flow_size: another flow)."""
    from bgflow_se3.energy import RestrictedEnergy
    from bgflow_se3.sampling import TargetDensity
    from bgflow_se3.systems.aldp import is_l_form
    from bgflow_se3.train import FABObjective, TrainConfig, Trainer
    from examples.aldp_fab import FULL as FAB_GPU
    from examples.aldp_fab import build_flow

    aldp = load_aldp("implicit")
    energy = RestrictedEnergy(TorchForceField.from_system(aldp.system, TEMPERATURE).to(device), is_l_form)
    fab, mode = dict(FAB_GPU["fab"]), dict(FAB_GPU, flow=flow_size or FAB_GPU["flow"])
    if setup["training_seconds"] <= 0:  # tiny: the smallest FAB that exercises every part
        fab.update(batch_size=8, n_intermediate=1, n_updates=1, buffer_min_length=8, buffer_max_length=64)
    torch.manual_seed(0)
    flow, _ = build_flow(mode, aldp, str(device))
    objective = FABObjective(TargetDensity(energy, energy_cut=1e3), **fab)
    config = TrainConfig(n_iterations=FAB_GPU["n_iterations"], lr=FAB_GPU["lr"], progress=False, plot=False)
    trainer = Trainer(flow, objective, config)
    start = time.perf_counter()
    result = trainer.run(until=1)  # setup (buffer filling) + one iteration
    while time.perf_counter() - start < setup["training_seconds"] or result.iterations < 2:
        result = trainer.run(until=result.iterations + 1)
    seconds = time.perf_counter() - start
    last = result.history[-10:]
    return {
        "flow": mode["flow"],
        "fab": fab,
        "iterations": result.iterations,
        "wall_time_s": seconds,
        "iterations_per_s": result.iterations / seconds,
        "n_target_evaluations": result.n_target_evaluations,
        "target_evaluations_per_s": result.n_target_evaluations / seconds,
        "ess_flow_last10": float(np.mean([r["ess_flow"] for r in last if "ess_flow" in r] or [np.nan])),
        "ess_ais_last10": float(np.mean([r["ess_ais"] for r in last if "ess_ais" in r] or [np.nan])),
    }


def machine(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    info["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="smallest sizes: seconds on a CPU")
    parser.add_argument("--sections", nargs="+", default=["energy", "flow", "training"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    device = torch.device(args.device)
    setup = TINY if args.tiny else FULL
    tiny_flow = dict(n_blocks=1, hidden=8, egnn_layers=1, mlp_blocks=1, projection="vector")
    sizes = {"tiny": tiny_flow} if args.tiny else FLOW_SIZES
    report: dict[str, Any] = {"machine": machine(device), "tiny": args.tiny, "setup": setup}
    start = time.perf_counter()
    if "energy" in args.sections:
        report["energy"] = energy_section(device, setup)
        loop = report["energy"]["openmm_loop"]
        print(f"OpenMM per-sample loop ({loop['platform']}): {loop['evaluations_per_s']:.0f} evaluations/s")
        for row in report["energy"]["torchforcefield"]:
            what = f"TorchForceField {row['dtype']} {row['mode']:>8} batch {row['batch']:>6}"
            if "error" in row:
                print(f"{what}: {row['error']}")
            else:
                print(f"{what}: {row['evaluations_per_s']:.3g}/s = {row['x_openmm_loop']:.1f} x the loop")
    if "flow" in args.sections:
        report["flow"] = flow_section(device, setup, sizes)
    if "training" in args.sections:
        report["training"] = training_section(device, setup, tiny_flow if args.tiny else None)
        t = report["training"]
        print(
            f"FAB (GPU mode): {t['iterations']} iterations in {t['wall_time_s']:.0f} s, "
            f"{t['target_evaluations_per_s']:.3g} target evaluations/s, ESS(flow) {t['ess_flow_last10']:.3g}"
        )
    report["wall_time_s"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out} ({report['wall_time_s']:.0f} s)")


if __name__ == "__main__":
    main()

"""Sampling throughput (configurations per second, log q included) of the flows at the same EGNN width.

    PYTHONPATH=. python benchmarks/sampling_speed.py --quick            # LJ13, small batch, CPU
    PYTHONPATH=. python benchmarks/sampling_speed.py --device cuda --batch 1000

The augmented coupling flow (when ``bgflow_se3.flow.AugmentedCouplingFlow`` exists; one pass through its couplings)
against E-NF (an RK4 solve with a divergence at every stage: exact or Hutchinson), plus the kernel CNF, its
environment-aware extension (closed-form divergence), the RealNVP baseline and, for DW4, the exactly invariant
``GroupAveragedFlow`` (a spline flow evaluated on all 48 permutations and reflections per configuration). Untrained
models: the cost of a fixed-step solver does not depend on training (adaptive solvers, as in the E-NF paper, get
slower as the dynamics stiffen, so the ratio here is a lower bound). Prints samples per second and each ratio to
E-NF with the same trace; writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from bgflow_se3.flow import ENFlow, EnvironmentKernelFlow, GroupAveragedFlow, KernelFlow, NonEquivariantFlow

SHAPES = {"dw4": (4, 2), "lj13": (13, 3), "lj55": (55, 3)}


def throughput(model: torch.nn.Module, batch: int, repeats: int, device: str) -> float:
    """Samples per second of ``model.sample(batch)`` (x and log q), best of ``repeats`` after one warm-up."""
    gen = torch.Generator(device=device).manual_seed(0)
    best = float("inf")
    with torch.no_grad():
        for k in range(repeats + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = model.sample(batch, generator=gen)
            log_q = out[-1]
            if not bool(torch.isfinite(log_q).all()):
                raise RuntimeError(f"{type(model).__name__} produced non-finite log q")
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if k > 0:
                best = min(best, time.perf_counter() - start)
    return batch / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--system", default="lj13", choices=sorted(SHAPES))
    parser.add_argument("--hidden", type=int, default=None, help="EGNN width of both flows (32 quick, 128 full)")
    parser.add_argument("--batch", type=int, default=None, help="configurations per call (64 quick, 1000 full)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sampling_speed.json"))
    args = parser.parse_args()
    hidden = args.hidden or (32 if args.quick else 128)
    batch = args.batch or (64 if args.quick else 1000)
    repeats = args.repeats or (1 if args.quick else 3)
    n_atoms, dim = SHAPES[args.system]
    torch.manual_seed(0)

    models = {
        "enf_exact": ENFlow(n_atoms, dim, hidden=hidden, n_steps=20, trace="exact", exact_max_dof=10**6),
        "enf_hutchinson": ENFlow(n_atoms, dim, hidden=hidden, n_steps=20, trace="hutchinson"),
        "kernel": KernelFlow(n_atoms, dim, n_steps=20),
        "environment_kernel": EnvironmentKernelFlow(n_atoms, dim, hidden=hidden, n_steps=20),
        "noneq": NonEquivariantFlow(n_atoms, dim, n_layers=12, hidden=hidden),
    }
    if args.system == "dw4":  # all n! permutations: a small-cluster model
        models["group_averaged"] = GroupAveragedFlow(n_atoms, dim, n_layers=6, hidden=64)
    try:
        from bgflow_se3.flow import AugmentedCouplingFlow
    except ImportError:
        print("augmented flow: bgflow_se3.flow.AugmentedCouplingFlow not found, skipped")
    else:
        for projection in ("spherical", "cartesian", "vector"):
            models[f"augmented_{projection}"] = AugmentedCouplingFlow(
                n_atoms, dim, projection=projection, hidden=hidden, n_blocks=12
            )
    results = {}
    for name, model in models.items():
        model.to(args.device)
        results[name] = throughput(model, batch, repeats, args.device)
    for name, rate in results.items():
        print(f"{name:22s} {rate:12.1f} samples/s   x{rate / results['enf_exact']:8.2f} vs E-NF exact   "
              f"x{rate / results['enf_hutchinson']:8.2f} vs E-NF Hutchinson")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "sampling_speed", "system": args.system, "hidden": hidden, "batch": batch, "device": args.device,
        "machine": platform.platform(), "torch": torch.__version__, "samples_per_s": results,
        "ratio_vs_enf_exact": {k: v / results["enf_exact"] for k, v in results.items()},
        "ratio_vs_enf_hutchinson": {k: v / results["enf_hutchinson"] for k, v in results.items()},
    }, indent=2))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

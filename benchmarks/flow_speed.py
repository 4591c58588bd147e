"""Augmented flow speed and memory at the alanine dipeptide sizes, this tree against a baseline tree, in one run.

    git worktree add /tmp/bgflow_baseline <older commit>
    PYTHONPATH=. python benchmarks/flow_speed.py --baseline /tmp/bgflow_baseline --threads 2
    PYTHONPATH=. python benchmarks/flow_speed.py --quick                     # this tree only, seconds

For each tree (``--baseline`` and this one), a fresh worker process imports ``bgflow_se3`` from that tree, builds
``AugmentedCouplingFlow.for_topology`` for alanine dipeptide at ``--size`` (``reference``: 8 blocks, EGNN 3 x 32,
vector projection, n_aug 1, the reference implementation's model) in float32 with torch seed 0, and measures at
each batch size: configurations/s of log q(x, a) + backward, configurations/s of sampling with log q (no graph),
and the bytes autograd saves for backward per configuration (``saved_tensors_hooks``; parameters excluded). The
trees run alternately, ``--repeats`` times each, so that drifting background load hits both alike; the medians
and the ratios (this tree / baseline) are printed and written as JSON. ``--threads`` sets torch's threads in the
workers (use 1 on a shared machine). ``--compile`` runs this tree's flow with ``compiled=True`` (the baseline stays
as it is) and reports the seconds of the first calls, which compile, apart from the timings; the first run on a
machine compiles for minutes, later ones read inductor's on-disk cache.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "flow_speed.json"
SIZES = {
    "reference": dict(n_blocks=8, hidden=32, egnn_layers=3, mlp_blocks=1, projection="vector"),
    "tiny": dict(n_blocks=1, hidden=8, egnn_layers=1, mlp_blocks=1, projection="vector"),
}


# Shared with gpu_suite.py. This module imports nothing from bgflow_se3 at the top, so that each worker can take
# bgflow_se3 from its own tree.
def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, min_seconds: float) -> float:
    """Median seconds per call of ``fn`` after one warm-up call; each repeat loops until ``min_seconds``."""
    fn()
    synchronise(device)
    times = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            synchronise(device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        times.append(elapsed / calls)
    return statistics.median(times)


def log_q_backward(flow: torch.nn.Module, x: torch.Tensor, a: torch.Tensor) -> None:
    """One maximum-likelihood step's work: joint log q(x, a) and its backward pass."""
    flow.zero_grad(set_to_none=True)
    (-flow.log_prob_joint(x, a).mean()).backward()


def sample_without_grad(flow: torch.nn.Module, n: int) -> None:
    """n samples with their log q, no graph."""
    with torch.no_grad():
        flow.sample(n)


def _count(saved: dict[int, tuple[torch.Tensor, int]], exclude: set[int], t):
    """saved_tensors_hooks pack hook: records the bytes of each distinct saved tensor not in ``exclude``.

    The tensor itself is kept in ``saved`` until the measurement ends: a saved tensor whose graph is dropped during the
    forward pass (a discarded intermediate) would otherwise free its memory, and a later tensor at the same address
    would overwrite its entry, so the total would depend on the allocator (0.03 % between two runs of one tree).
    """
    if t.data_ptr() not in exclude:
        saved[t.data_ptr()] = (t, t.numel() * t.element_size())
    return t


def _identity(t):
    return t


def worker(size: str, batches: list[int], min_seconds: float, compile: bool = False) -> dict:
    """Runs inside the worker process (``bgflow_se3`` imported from its tree); returns per-batch numbers."""
    from bgflow_se3 import AugmentedCouplingFlow
    from bgflow_se3.systems import load_aldp

    aldp = load_aldp("implicit")
    torch.manual_seed(0)
    flow = AugmentedCouplingFlow.for_topology(aldp.topology, n_aug=1, sigma_aug=0.05, length_scale=0.3, **SIZES[size])
    flow = flow.float()
    parameters = {p.data_ptr() for p in flow.parameters()}
    compile_seconds = None
    if compile:
        flow.compiled = True
        start = time.perf_counter()
        with torch.no_grad():
            x = flow.sample(batches[0]).x
        log_q_backward(flow, x, flow.sample_aug_target(x))
        compile_seconds = time.perf_counter() - start
    rows = []
    for batch in batches:
        with torch.no_grad():
            x = flow.sample(batch).x
            a = flow.sample_aug_target(x)

        saved: dict[int, tuple[torch.Tensor, int]] = {}
        if compile:  # the eager graph's memory: the hooks are for eager autograd
            flow.compiled = False
        with torch.autograd.graph.saved_tensors_hooks(functools.partial(_count, saved, parameters), _identity):
            log_q_backward(flow, x, a)
        if compile:
            flow.compiled = True
        row = {"batch": batch, "saved_mb_per_configuration": sum(n for _, n in saved.values()) / batch / 2**20}
        saved.clear()
        tasks = {
            "log_q_backward": functools.partial(log_q_backward, flow, x, a),
            "sample": functools.partial(sample_without_grad, flow, batch),
        }
        for name, fn in tasks.items():
            row[f"{name}_configurations_per_s"] = batch / timed(fn, torch.device("cpu"), 1, min_seconds)
        rows.append(row)
    return {"n_parameters": sum(p.numel() for p in flow.parameters()), "rows": rows, "compile_s": compile_seconds}


def run_tree(src: Path, size: str, batches: list[int], threads: int, min_seconds: float, compile: bool) -> dict:
    """One worker process with ``src`` first on sys.path; its JSON result."""
    code = (
        "import json, sys, torch; "
        f"torch.set_num_threads({threads}); "
        f"sys.path.insert(0, {str(src)!r}); "
        f"sys.path.insert(1, {str(ROOT / 'benchmarks')!r}); "
        "import bgflow_se3, flow_speed; "
        f"assert bgflow_se3.__file__.startswith({str(src)!r}), bgflow_se3.__file__; "
        f"print(json.dumps(flow_speed.worker({size!r}, {batches!r}, {min_seconds!r}, {compile!r})))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker for {src} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, default=None, help="source tree to compare with (git worktree)")
    parser.add_argument("--size", choices=sorted(SIZES), default="reference")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=3.0, help="timing per measurement")
    parser.add_argument("--compile", action="store_true", help="this tree's flow with compiled=True")
    parser.add_argument("--quick", action="store_true", help="tiny flow, batch 8, one repeat, this tree only")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.quick:
        args.size, args.batches, args.repeats, args.min_seconds, args.baseline = "tiny", [8], 1, 0.0, None
    trees = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for repeat in range(args.repeats):
        for name, src in trees.items():
            compile = args.compile and name == "this"
            runs[name].append(run_tree(src, args.size, args.batches, args.threads, args.min_seconds, compile))
            print(f"repeat {repeat + 1}/{args.repeats}: {name} done", flush=True)
    keys = ("log_q_backward_configurations_per_s", "sample_configurations_per_s", "saved_mb_per_configuration")
    table = []
    for i, batch in enumerate(args.batches):
        row = {"batch": batch}
        for name in trees:
            for key in keys:
                row[f"{name}_{key}"] = statistics.median(run["rows"][i][key] for run in runs[name])
        if "baseline" in trees:
            for key in keys:
                row[f"ratio_{key}"] = row[f"this_{key}"] / row[f"baseline_{key}"]
        table.append(row)
        line = f"batch {batch:>4}: log q + backward {row['this_log_q_backward_configurations_per_s']:.1f}/s, "
        line += f"sample {row['this_sample_configurations_per_s']:.1f}/s, "
        line += f"saved {row['this_saved_mb_per_configuration']:.2f} MB/configuration"
        if "baseline" in trees:
            line += (
                f" | x baseline: {row['ratio_log_q_backward_configurations_per_s']:.2f} (log q + backward), "
                f"{row['ratio_sample_configurations_per_s']:.2f} (sample), "
                f"{row['ratio_saved_mb_per_configuration']:.2f} (memory)"
            )
        print(line)
    report = {
        "size": args.size,
        "flow": SIZES[args.size],
        "threads": args.threads,
        "repeats": args.repeats,
        "trees": {name: str(src) for name, src in trees.items()},
        "compiled": args.compile,
        "compile_s_per_run": [run["compile_s"] for run in runs["this"]],
        "n_parameters": {name: runs[name][0]["n_parameters"] for name in trees},
        "table": table,
    }
    if args.compile:
        print("first calls (compiling) per run, s:", ", ".join(f"{run['compile_s']:.0f}" for run in runs["this"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

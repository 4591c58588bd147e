"""FAB iterations/s on alanine dipeptide under the thread policy and under torch's default thread count.

    PYTHONPATH=. python benchmarks/thread_policy.py           # the table: minutes; run it on an otherwise quiet machine
    PYTHONPATH=. python benchmarks/thread_policy.py --smoke   # seconds: one configuration, tiny sizes (the test)

Configurations: the target is k = 0 (``TorchForceField``, float32, in this process) or k = 1, 2 (``OpenMMEnergy``
on OpenMM's CPU platform with ``n_workers=k``: k = 1 evaluates in this process, k = 2 in two worker processes),
restricted to the L enantiomer as in ``examples/aldp_fab.py``; threads are "policy" (``Trainer.run`` applies
``bgflow_se3.threads``' plan; OpenMM Contexts get its ``openmm_threads``) or "default" (torch keeps its start-up
thread count, pinned with ``set_threads``; OpenMM Contexts get ``OpenMMEnergy``'s default); each runs alone and next to
one busy neighbour (a pure-Python busy loop that this script starts, and kills at the end).

Each configuration runs in a fresh interpreter without ``OMP_NUM_THREADS`` / ``BGFLOW_SE3_THREADS``: it loads the
pretrained internal-coordinate flow (``load_pretrained_aldp_flow("implicit")``), builds ``FABObjective`` (batch
``--batch``, 2 intermediate distributions x 3 leapfrog steps, 4 updates per iteration), runs the buffer set-up and one
warm-up iteration, then times ``--iterations`` iterations. Printed and written as JSON (``--out``, default
benchmarks/results/thread_policy.json): iterations/s, the torch and OpenMM threads used, the plan's reason, and per
(k, neighbour) the ratio policy / default (> 1: the policy is faster).

The policy measures other work over a quarter second from /proc/stat (our CPUs, minus our own CPU time); the
neighbour runs ``--settle`` seconds before the first configuration next to it, and every row records the busy cores
the plan saw (``plan_busy``).

Measured (2 idle cores, aldp, batch 64, 5 iterations, 2026-12-01): alone the policy matches torch's default
(policy / default 1.00, 0.98, 1.05 for k = 0, 1, 2); next to one busy process it is 3.5x, 3.3x and 3.1x faster
(k = 0: 1.35 against 0.39 it/s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "thread_policy.json"
FULL = dict(ks=(0, 1, 2), arms=("policy", "default"), neighbours=(False, True), batch=64, iterations=5, settle=2.0)
#: the smoke test checks the pipeline with one configuration (k = 0, policy, next to the neighbour); torch's default
#: arm is left out, as it can take minutes on a busy machine
SMOKE = dict(ks=(0,), arms=("policy",), neighbours=(True,), batch=8, iterations=1, settle=0.0)
#: environment variables that would fix the thread count and so bypass both arms
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "BGFLOW_SE3_THREADS")


def measure(k: int, threads: str, batch: int, iterations: int) -> dict[str, Any]:
    """One configuration in this process (a fresh interpreter): FAB iterations/s and the threads used."""
    import torch

    from bgflow_se3.energy import OpenMMEnergy, RestrictedEnergy, TorchForceField
    from bgflow_se3.sampling import TargetDensity
    from bgflow_se3.simulate.pretrained import load_pretrained_aldp_flow
    from bgflow_se3.systems import load_aldp
    from bgflow_se3.systems.aldp import is_l_form
    from bgflow_se3.threads import plan_threads, set_threads
    from bgflow_se3.train import FABObjective, TrainConfig, Trainer

    startup_threads = torch.get_num_threads()
    if threads == "default":
        set_threads(startup_threads)  # the one setting: the trainer's policy keeps it
    torch.manual_seed(0)
    aldp = load_aldp("implicit")
    if k == 0:
        energy = TorchForceField.from_system(aldp.system, 300.0)
    else:
        properties = {"Threads": str(plan_threads(k if k > 1 else 0).openmm_threads)} if threads == "policy" else None
        energy = OpenMMEnergy(aldp.system, 300.0, platform="CPU", n_workers=k, platform_properties=properties)
    flow, _ = load_pretrained_aldp_flow("implicit")
    objective = FABObjective(
        TargetDensity(RestrictedEnergy(energy, is_l_form), energy_cut=1e3),
        batch_size=batch,
        n_intermediate=2,
        n_leapfrog=3,
        n_updates=4,
        step_size=0.002,
        buffer_min_length=batch * 4,
        buffer_max_length=batch * 64,
    )
    config = TrainConfig(n_iterations=1 + iterations, lr=1e-5, warmup_iterations=1, progress=False, plot=False)
    trainer = Trainer(flow, objective, config)
    start = time.perf_counter()
    trainer.run(until=1)  # buffer set-up and one warm-up iteration
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    trainer.run()
    elapsed = time.perf_counter() - start
    plan = trainer.thread_plan
    if k > 0:
        energy.close()
    return {
        "iterations_per_s": iterations / elapsed,
        "seconds": elapsed,
        "setup_and_warmup_s": setup_s,
        "torch_threads": torch.get_num_threads(),
        "torch_startup_threads": startup_threads,
        "openmm_threads": None if k == 0 else (properties or {}).get("Threads", "OpenMMEnergy default"),
        "plan_reason": plan.reason,
        "plan_busy": plan.busy,
        "plan_cores": plan.cores,
    }


def run_configuration(k: int, threads: str, neighbour: bool, batch: int, iterations: int) -> dict[str, Any]:
    """``measure`` in a fresh interpreter without thread variables; the row of the table."""
    env = {name: value for name, value in os.environ.items() if name not in THREAD_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    spec = json.dumps(dict(k=k, threads=threads, batch=batch, iterations=iterations))
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", spec],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"configuration {spec} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {"k": k, "threads": threads, "neighbour": neighbour, **row}


def start_neighbour() -> subprocess.Popen:
    """A busy neighbour: one Python process spinning on one core until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def stop_neighbour(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (k, neighbour): iterations/s under the policy / under torch's default."""
    out = []
    for key in sorted({(r["k"], r["neighbour"]) for r in rows}):
        arms = {r["threads"]: r for r in rows if (r["k"], r["neighbour"]) == key}
        if {"policy", "default"} <= set(arms):
            ratio = arms["policy"]["iterations_per_s"] / arms["default"]["iterations_per_s"]
            out.append({"k": key[0], "neighbour": key[1], "policy_over_default": ratio})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="one configuration, tiny sizes, no settling: seconds")
    parser.add_argument("--batch", type=int, default=None, help="FAB batch size (default 64; smoke 8)")
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations (default 5; smoke 1)")
    parser.add_argument("--settle", type=float, default=None, help="seconds the neighbour runs before it is measured")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        spec = json.loads(args.worker)
        print(json.dumps(measure(spec["k"], spec["threads"], spec["batch"], spec["iterations"])))
        return
    setup = dict(SMOKE if args.smoke else FULL)
    batch = args.batch or setup["batch"]
    iterations = args.iterations or setup["iterations"]
    settle = setup["settle"] if args.settle is None else args.settle

    rows = []
    for neighbour in setup["neighbours"]:
        proc = start_neighbour() if neighbour else None
        try:
            if proc is not None and settle > 0:
                print(f"neighbour started; letting the load average follow it for {settle:.0f} s", flush=True)
                time.sleep(settle)
            for k in setup["ks"]:
                for threads in setup["arms"]:
                    row = run_configuration(k, threads, neighbour, batch, iterations)
                    rows.append(row)
                    where = "with neighbour" if neighbour else "alone"
                    print(
                        f"k={k} {threads:>7} {where:>14}: {row['iterations_per_s']:.3g} it/s, "
                        f"torch threads {row['torch_threads']} ({row['plan_reason']})",
                        flush=True,
                    )
        finally:
            if proc is not None:
                stop_neighbour(proc)
    table = ratios(rows)
    for r in table:
        where = "with neighbour" if r["neighbour"] else "alone"
        print(f"k={r['k']} {where:>14}: policy / default = {r['policy_over_default']:.3f}")
    report = {
        "mode": "smoke" if args.smoke else "full",
        "batch": batch,
        "iterations": iterations,
        "settle_s": settle,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "rows": rows,
        "ratios": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

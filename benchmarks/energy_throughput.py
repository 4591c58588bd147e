"""Energy + force throughput: a per-sample OpenMM loop (the baseline) versus OpenMMEnergy with 1 and 2 workers
and TorchForceField (float64, float32, and float64 through autograd).

    PYTHONPATH=. python benchmarks/energy_throughput.py --quick          # batch 256 only
    PYTHONPATH=. python benchmarks/energy_throughput.py --out results.json
    PYTHONPATH=. python benchmarks/energy_throughput.py --systems aldp_implicit --backends TorchForceField --threads 1
    PYTHONPATH=. python benchmarks/energy_throughput.py --batch-sizes 1024 --backends TorchForceField --threads 1 \
        --systems aldp_amber14_obc2 aldp_amber14_gbn2 aldp_openmmtools_implicit aldp_amber19_cmap aldp_charmm36_cmap

Systems: alanine dipeptide in vacuum and in OBC implicit solvent (amber99sbildn, GBSAOBCForce), LJ13, and alanine
dipeptide with custom forces: amber14 + implicit/obc2.xml and + implicit/gbn2.xml (CustomGBForce), openmmtools'
AlanineDipeptideImplicit (CustomGBForce OBC2 from its prmtop), ff19SB (amber19-all.xml, CMAPTorsionForce) and
CHARMM36 (charmm36_2024.xml: CMAPTorsionForce, CustomNonbondedForce, CustomBondForce; building it takes a minute).
Systems are built only when selected (``--systems``). Every backend returns reduced energies (batch,) and forces
(batch, n_atoms, 3) as float64 torch tensors from float64 positions, so all do the same work.
The baseline is the loop the peer libraries run (setPositions + getState(getEnergy, getForces), unit-aware values),
measured in the same run. Prints evaluations per second and the ratio to the baseline, writes JSON.

It also prints the CPU time per evaluation, this process plus its worker processes, and the ratio of the baseline's
CPU time to each backend's (``x loop CPU``), which background load on a shared machine disturbs far less than wall
time. ``--threads`` sets torch's intra-op threads (default: torch's own, i.e. ``OMP_NUM_THREADS``). On a shared
machine wall-clock ratios of 2 workers mostly measure the neighbours (with sched_autogroup, all processes of one
session share one fair slice of the CPUs, so a second worker cannot buy a second core); the CPU column shows the
pool's own cost.

To add a backend (e.g. TorchForceField), append a ``Backend`` to ``BACKENDS``: a name and a function that takes a
``Target`` and returns an object with ``energy_and_force(x) -> (u, force)`` and ``close()``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.unit as unit
import torch

from bgflow_se3 import OpenMMEnergy, TorchForceField, UnsupportedSystemError
from bgflow_se3.energy import kT_in_kJ_per_mol
from bgflow_se3.systems import lennard_jones_system, load_aldp

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "energy_throughput.json"


@dataclass(frozen=True)
class Target:
    """A benchmark system: an openmm.System, its temperature (K) and a pool of configurations (nm)."""

    name: str
    system: Any
    temperature: float
    positions: torch.Tensor  # (max_batch, n_atoms, 3), float64


@dataclass(frozen=True)
class Backend:
    """A way to evaluate a Target: ``make(target)`` returns an object with energy_and_force(x) and close()."""

    name: str
    make: Callable[[Target], Any]


class OpenMMLoop:
    """The baseline: one Context, one setPositions + getState per configuration, values through openmm.unit."""

    def __init__(self, target: Target) -> None:
        self.context = openmm.Context(
            target.system, openmm.VerletIntegrator(1.0), openmm.Platform.getPlatformByName("Reference")
        )
        self.kT = kT_in_kJ_per_mol(target.temperature)

    def energy_and_force(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        energies, forces = [], []
        for conf in x.numpy():
            self.context.setPositions(conf * unit.nanometer)
            state = self.context.getState(getEnergy=True, getForces=True)
            energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
            forces.append(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
        return torch.tensor(energies, dtype=torch.float64) / self.kT, torch.from_numpy(np.stack(forces)) / self.kT

    def close(self) -> None:
        self.context = None


class TorchForceFieldEvaluator:
    """TorchForceField in a given dtype: u and -du/dx from its fused analytic pass (``energy_and_force``), or
    from one forward and one autograd backward pass over every term (``analytic_gradient=False``)."""

    def __init__(self, target: Target, dtype: torch.dtype, analytic_gradient: bool = True) -> None:
        self.ff = TorchForceField.from_system(target.system, target.temperature, analytic_gradient=analytic_gradient)
        self.dtype = dtype

    def energy_and_force(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, force = self.ff.energy_and_force(x.detach().to(self.dtype))
        return u.double(), force.double()

    def close(self) -> None:
        pass


BASELINE = Backend("openmm_loop", OpenMMLoop)
BACKENDS: list[Backend] = [
    BASELINE,
    Backend("OpenMMEnergy(n_workers=1)", lambda t: OpenMMEnergy(t.system, t.temperature, n_workers=1)),
    Backend("OpenMMEnergy(n_workers=2)", lambda t: OpenMMEnergy(t.system, t.temperature, n_workers=2)),
    Backend("TorchForceField(float64)", lambda t: TorchForceFieldEvaluator(t, torch.float64)),
    Backend("TorchForceField(float32)", lambda t: TorchForceFieldEvaluator(t, torch.float32)),
    Backend("TorchForceField(float64,autograd)", lambda t: TorchForceFieldEvaluator(t, torch.float64, False)),
]


def _aldp_forcefield_system(*files: str) -> Any:
    """The shipped alanine dipeptide topology under openmm.app force-field ``files``: NoCutoff, unconstrained."""
    import openmm.app as app

    forcefield = app.ForceField(*files)
    topology = load_aldp("vacuum").topology
    return forcefield.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None, removeCMMotion=False)


def _openmmtools_aldp_implicit() -> Any:
    import warnings

    from bgflow_se3.reweight.pymbar_calls import quiet_pymbar_import

    with quiet_pymbar_import():  # openmmtools imports pymbar, which prints a JAX banner and a caveat on import
        from openmmtools import testsystems

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return testsystems.AlanineDipeptideImplicit(constraints=None).system


#: Alanine dipeptide Systems by target name (all on the shipped aldp.pdb atom order, 22 atoms).
ALDP_SYSTEMS: dict[str, Callable[[], Any]] = {
    "aldp_vacuum": lambda: load_aldp("vacuum").system,
    "aldp_implicit": lambda: load_aldp("implicit").system,
    "aldp_amber14_obc2": lambda: _aldp_forcefield_system("amber14-all.xml", "implicit/obc2.xml"),
    "aldp_amber14_gbn2": lambda: load_aldp("gbn2").system,
    "aldp_openmmtools_implicit": _openmmtools_aldp_implicit,
    "aldp_amber19_cmap": lambda: _aldp_forcefield_system("amber19-all.xml"),
    "aldp_charmm36_cmap": lambda: _aldp_forcefield_system("charmm36_2024.xml"),
}
TARGET_NAMES = (*ALDP_SYSTEMS, "lj13")


def make_targets(max_batch: int, seed: int = 0, systems: list[str] | None = None) -> list[Target]:
    """The selected targets (default: all), each with ``max_batch`` configurations drawn with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.from_numpy(load_aldp("vacuum").positions_nm)
    aldp_x = x0 + 0.02 * torch.randn(max_batch, *x0.shape, generator=g, dtype=torch.float64)
    grid = torch.cartesian_prod(*[torch.arange(3, dtype=torch.float64)] * 3)[:13] * 1.1
    lj_x = grid + 0.1 * torch.randn(max_batch, 13, 3, generator=g, dtype=torch.float64)
    targets = []
    for name in TARGET_NAMES:
        if systems is not None and name not in systems:
            continue
        if name == "lj13":
            lj = lennard_jones_system(13)
            targets.append(Target("lj13", lj.system, lj.temperature, lj_x))
        else:
            targets.append(Target(name, ALDP_SYSTEMS[name](), 300.0, aldp_x))
    return targets


def worker_cpu_seconds(evaluator) -> float:
    """CPU time (user + system, s) used so far by the evaluator's worker processes (Linux /proc; 10 ms ticks).

    Workers only run during their own backend's calls, so differences over a whole interleaved loop are exact up
    to the tick.
    """
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in getattr(evaluator, "worker_pids", lambda: [])():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def run(batch_sizes: list[int], repeats: int, backends: list[Backend], systems: list[str] | None = None) -> list[dict]:
    """Time every backend on every target and batch size; repeats are interleaved across backends, so that a change
    in background load (this machine is shared) hits all of them alike. Reports the median of the repeats."""
    rows = []
    for target in make_targets(max(batch_sizes), systems=systems):
        evaluators, setup_s, usable = [], [], []
        try:
            for backend in backends:
                start = time.perf_counter()
                try:
                    evaluators.append(backend.make(target))
                except UnsupportedSystemError as error:  # e.g. TorchForceField on the custom-force LJ System
                    print(f"skipping {backend.name} on {target.name}: {error}")
                    continue
                usable.append(backend)
                setup_s.append(time.perf_counter() - start)
            for batch in batch_sizes:
                x = target.positions[:batch]
                times: list[list[float]] = [[] for _ in usable]
                cpu = [-worker_cpu_seconds(evaluator) for evaluator in evaluators]
                energies = []
                for evaluator in evaluators:  # warm-up, and the energies for the agreement check
                    energies.append(evaluator.energy_and_force(x)[0])
                for _ in range(repeats):
                    for k, evaluator in enumerate(evaluators):
                        start, start_cpu = time.perf_counter(), time.process_time()
                        evaluator.energy_and_force(x)
                        times[k].append(time.perf_counter() - start)
                        cpu[k] += time.process_time() - start_cpu
                for k, evaluator in enumerate(evaluators):
                    cpu[k] += worker_cpu_seconds(evaluator)
                for k, backend in enumerate(usable):
                    seconds = statistics.median(times[k])
                    rows.append(
                        dict(
                            system=target.name,
                            backend=backend.name,
                            batch=batch,
                            seconds=seconds,
                            evals_per_s=batch / seconds,
                            cpu_us_per_eval=1e6 * cpu[k] / (repeats * batch),
                            setup_s=setup_s[k],
                            u=energies[k],
                        )
                    )
        finally:
            for evaluator in evaluators:
                evaluator.close()
    baseline = {(r["system"], r["batch"]): r for r in rows if r["backend"] == BASELINE.name}
    for r in rows:
        base = baseline[(r["system"], r["batch"])]
        r["ratio_vs_loop"] = r["evals_per_s"] / base["evals_per_s"]
        r["ratio_vs_loop_cpu"] = base["cpu_us_per_eval"] / r["cpu_us_per_eval"]
        rel = (r["u"] - base["u"]).abs() / base["u"].abs().clamp_min(1.0)
        r["max_rel_diff_vs_loop"] = float(rel.max())
    for r in rows:
        del r["u"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 256 only, 3 repeats")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's, i.e. OMP_NUM_THREADS)"
    )
    parser.add_argument(
        "--backends", nargs="+", default=None, help="run only backends whose name contains one of these strings"
    )
    parser.add_argument(
        "--systems", nargs="+", default=None, choices=TARGET_NAMES, help="e.g. aldp_implicit (default: all)"
    )
    args = parser.parse_args()
    batch_sizes, repeats = ([256], 3) if args.quick else (args.batch_sizes, args.repeats)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    backends = [BASELINE] + [
        b for b in BACKENDS[1:] if args.backends is None or any(key in b.name for key in args.backends)
    ]
    rows = run(batch_sizes, repeats, backends, args.systems)
    print(f"torch threads: {torch.get_num_threads()}")
    print("CPU us/eval: this process plus its OpenMM workers (on a shared machine, wall time hides the overhead)")
    header = f"{'system':<15}{'batch':>6}  {'backend':<34}{'evals/s':>10}{'x loop':>8}{'CPU us/eval':>12}"
    print(header + f"{'x loop CPU':>11}{'setup s':>9}{'max rel diff':>14}")
    for r in rows:
        print(
            f"{r['system']:<15}{r['batch']:>6}  {r['backend']:<34}{r['evals_per_s']:>10.0f}"
            f"{r['ratio_vs_loop']:>8.2f}{r['cpu_us_per_eval']:>12.1f}{r['ratio_vs_loop_cpu']:>11.2f}"
            f"{r['setup_s']:>9.2f}{r['max_rel_diff_vs_loop']:>14.1e}"
        )
    machine = dict(
        cpus=os.cpu_count(),
        platform=platform.platform(),
        python=platform.python_version(),
        torch=torch.__version__,
        openmm=openmm.__version__,
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
        torch_threads=torch.get_num_threads(),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(benchmark="energy_throughput", quick=args.quick, repeats=repeats, machine=machine, results=rows)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

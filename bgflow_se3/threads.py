"""Thread policy: torch and OpenMM thread counts from the cores this process may use and what else runs on them.

Torch's default (one thread per core) is right on an idle machine and badly wrong on a shared one: each of the
many small kernels of a batched energy or a flow pass waits for its slowest thread, and a thread whose core is
busy with another job is descheduled. Measured on a 2-core machine (TorchForceField, aldp implicit, f32, batch
1024, energy + forces): 80k/s alone; next to one busy process 50k/s at 1 torch thread but 13.8k/s at 2.

The policy (``plan_threads``):

- cores: the CPUs this process may run on: its affinity mask (``os.sched_getaffinity``), capped by a cgroup CPU
  quota (``cpu.max`` in cgroup v2, ``cfs_quota_us / cfs_period_us`` in v1) when there is one, the tightest over this
  process's own cgroup and its ancestors (found through /proc/self/cgroup and /proc/self/mountinfo);
- busy: cores kept busy by other processes now, measured over a quarter of a second from the per-CPU counters of
  /proc/stat (our CPUs only, minus this process's own CPU time), rounded to the nearest core;
- torch threads = cores - busy - our OpenMM workers, at least 1; each OpenMM worker's Context gets 1 thread.

One setting overrides the plan: ``set_threads(n)`` or the environment variable ``BGFLOW_SE3_THREADS``. The
standard ones are respected too: when ``OMP_NUM_THREADS`` is set, or when the caller changed
``torch.set_num_threads`` from torch's start-up value, torch's thread count is left as the user chose.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .cgroups import own_cgroups

__all__ = ["ThreadPlan", "apply_thread_policy", "plan_threads", "set_threads", "usable_cores"]

ENV_SETTING = "BGFLOW_SE3_THREADS"

# Where the CPU quota is read: this process's /proc entry (cgroup, mountinfo) and the cgroup mounts assumed when
# mountinfo cannot be read. Read at each call, so tests can point them at a fake tree.
PROC_SELF = Path("/proc/self")
CGROUP2_MOUNT = Path("/sys/fs/cgroup")
CGROUP1_CPU_MOUNT = Path("/sys/fs/cgroup/cpu")

_STARTUP_TORCH_THREADS = torch.get_num_threads()  # torch's own default, before anyone changed it
_user_threads: int | None = None  # set_threads()
_applied: int | None = None  # what apply_thread_policy last set (so a later plan may change our own choice)


@dataclass(frozen=True)
class ThreadPlan:
    """Thread counts for one process and its OpenMM workers.

    torch_threads: for ``torch.set_num_threads``. openmm_threads: "Threads" of each OpenMM worker's CPU Context.
    cores: CPUs this process may use. busy: cores busy with other work when planned. workers: our OpenMM workers.
    reason: why torch_threads has its value (shown in logs and benchmark JSON).
    """

    torch_threads: int
    openmm_threads: int
    cores: int
    busy: int
    workers: int
    reason: str


def usable_cores() -> int:
    """CPUs this process may use: its affinity mask capped by the cgroup CPU quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_cpu_quota() -> float | None:
    """The tightest CPU quota in cores over this process's own cgroups and their ancestors, or None when unlimited.

    v2: ``cpu.max`` ("quota period", "max period" for none); v1: ``cpu.cfs_quota_us / cpu.cfs_period_us`` (quota -1
    for none) in the hierarchy whose controllers include "cpu" (often mounted as "cpu,cpuacct"). The cgroups are
    found through /proc/self/cgroup and /proc/self/mountinfo (``cgroups.own_cgroups``): a job's quota sits on its
    own cgroup or a parent, rarely at the top of the hierarchy.
    """
    quotas = []
    for hierarchy in own_cgroups("cpu", CGROUP1_CPU_MOUNT, proc_self=PROC_SELF, v2_mount=CGROUP2_MOUNT):
        for directory in hierarchy.dirs:
            quota = _level_cpu_quota(directory, hierarchy.version)
            if quota is not None:
                quotas.append(quota)
    return min(quotas, default=None)


def _level_cpu_quota(directory: Path, version: int) -> float | None:
    """The CPU quota in cores set on one cgroup ``directory`` (v2 or v1 files), or None when it sets none."""
    try:
        if version == 2:
            text = (directory / "cpu.max").read_text().split()
            if not text or text[0] == "max":
                return None
            quota, period = int(text[0]), int(text[1]) if len(text) > 1 else 100_000
        else:
            quota = int((directory / "cpu.cfs_quota_us").read_text())
            period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, IndexError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _busy_cores(cores: int, interval_s: float = 0.25) -> int:
    """Cores other processes keep busy now, rounded to the nearest whole core, in [0, cores].

    Measured over ``interval_s`` from the per-CPU counters in /proc/stat (only the CPUs of our affinity mask) minus
    this process's own CPU time; where /proc/stat is missing, the 1-minute load average minus our running threads
    (which lags: a new neighbour reaches a load of 1 only after minutes).
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
        busy0, total0 = _cpu_jiffies(cpus)
        own0 = _own_cpu_seconds()
        start = time.perf_counter()
        time.sleep(interval_s)
        busy1, total1 = _cpu_jiffies(cpus)
        own = (_own_cpu_seconds() - own0) / (time.perf_counter() - start)  # cores we used meanwhile
        per_cpu = (total1 - total0) / len(cpus)  # jiffies of one CPU in the window
        busy = (busy1 - busy0) / per_cpu - own if per_cpu > 0 else 0.0
    except (AttributeError, OSError, ValueError, IndexError, ZeroDivisionError):
        try:
            busy = os.getloadavg()[0] - _own_running_threads()
        except (AttributeError, OSError):
            return 0
    return int(min(cores, max(0, round(busy))))


def _cpu_jiffies(cpus: list[int]) -> tuple[int, int]:
    """(busy, total) jiffies summed over the given CPUs, from /proc/stat (busy = total - idle - iowait)."""
    wanted = {f"cpu{c}" for c in cpus}
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            total += sum(values)
            busy += sum(values) - values[3] - values[4]
    if total == 0:
        raise ValueError("no CPU of the affinity mask in /proc/stat")
    return busy, total


def _own_running_threads() -> int:
    """Threads of this process in state R (running) now, from /proc; 0 where /proc is missing."""
    running = 0
    try:
        for task in Path("/proc/self/task").iterdir():
            stat = (task / "stat").read_text()
            if stat[stat.rindex(")") + 2] == "R":
                running += 1
    except (OSError, ValueError):
        return 0
    return max(0, running - 1)  # the thread reading /proc is running by definition; it is about to compute


def _own_cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used, all its threads."""
    t = os.times()
    return t.user + t.system


def set_threads(n: int | None) -> None:
    """The one setting: torch uses ``n`` threads from now on, whatever the policy says (None: back to the policy).

    Same as the environment variable ``BGFLOW_SE3_THREADS=n`` (this call wins over it).
    """
    global _user_threads
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"threads must be a positive int or None, got {n!r}")
    _user_threads = n
    if n is not None:
        torch.set_num_threads(n)


def plan_threads(n_workers: int = 0, cores: int | None = None, busy: int | None = None) -> ThreadPlan:
    """The thread counts for this process next to ``n_workers`` OpenMM worker processes of our own.

    cores, busy: override the detected values (for tests and benchmarks). See the module docstring for the rule.
    """
    if n_workers < 0:
        raise ValueError(f"n_workers must be >= 0, got {n_workers}")
    cores = usable_cores() if cores is None else int(cores)
    busy = _busy_cores(cores) if busy is None else int(busy)
    fixed = _fixed_threads()
    if fixed is not None:
        threads, reason = fixed
    else:
        threads = max(1, cores - busy - n_workers)
        reason = f"{cores} usable cores - {busy} busy with other work - {n_workers} OpenMM workers"
    return ThreadPlan(threads, 1, cores, busy, n_workers, reason)


def _fixed_threads() -> tuple[int, str] | None:
    """The user's choice of torch threads, if any: set_threads, BGFLOW_SE3_THREADS, OMP_NUM_THREADS, or a
    torch.set_num_threads call (torch's count differs from its start-up value and from our last choice)."""
    if _user_threads is not None:
        return _user_threads, "set_threads()"
    value = os.environ.get(ENV_SETTING)
    if value:
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"{ENV_SETTING} must be a positive integer, got {value!r}") from None
        if n < 1:
            raise ValueError(f"{ENV_SETTING} must be a positive integer, got {value!r}")
        return n, ENV_SETTING
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    current = torch.get_num_threads()
    if current != _STARTUP_TORCH_THREADS and current != _applied:
        return current, "torch.set_num_threads() by the caller"
    return None


def apply_thread_policy(n_workers: int = 0, cores: int | None = None, busy: int | None = None) -> ThreadPlan:
    """Plan (``plan_threads``) and set torch's thread count; returns the plan (its reason says why).

    cores, busy: as for ``plan_threads`` (e.g. a rank's share of the cores when several ranks share a machine).
    """
    global _applied
    plan = plan_threads(n_workers, cores, busy)
    if torch.get_num_threads() != plan.torch_threads:
        torch.set_num_threads(plan.torch_threads)
    _applied = plan.torch_threads
    return plan

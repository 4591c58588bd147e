"""Memory guards: how much memory a device has free, and a clear error before an allocation that cannot fit.

On the CPU the free memory is the tightest of: the system's ``MemAvailable``; the memory limits of this process's
own cgroup and of each of its ancestors (a parent's limit binds its children too), v2 or v1, found through
/proc/self/cgroup and /proc/self/mountinfo, the way a batch system (SLURM, Kubernetes) confines a job; and the
address-space limit (``ulimit -v``, RLIMIT_AS) minus this process's virtual size. The error names the limit that
binds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .cgroups import own_cgroups
from .errors import InsufficientMemoryError

try:
    import resource
except ImportError:  # not on POSIX: no address-space limit to read
    resource = None  # type: ignore[assignment]

__all__ = ["FreeMemory", "available_bytes", "available_memory", "check_fits", "format_bytes", "graph_bytes_per_item"]

#: the share of the free memory a single call may plan to use (the rest is for the allocator, the OS, others)
USABLE_FRACTION = 0.8
#: the free memory reported where no limit is known (other devices, no /proc)
NO_LIMIT = 2**62
#: limits at or above this many bytes mean "no limit" (cgroup v1 writes 2^63 rounded down to a page for none)
_UNLIMITED = 2**60

# Where the CPU guard reads: this process's /proc entries (cgroup, mountinfo, status, statm), the system's meminfo,
# and the cgroup mounts assumed when mountinfo cannot be read. Read at each call, so tests can point them at a
# fake tree.
PROC_SELF = Path("/proc/self")
PROC_MEMINFO = Path("/proc/meminfo")
CGROUP2_MOUNT = Path("/sys/fs/cgroup")
CGROUP1_MEMORY_MOUNT = Path("/sys/fs/cgroup/memory")


class FreeMemory(NamedTuple):
    """Memory a new allocation can use, and the limit that sets it."""

    n_bytes: int  # bytes free under the binding limit
    limit: str  # the binding limit in words, e.g. "the cgroup memory limit of 4.29 GB (/sys/fs/cgroup/.../memory.max)"


class _Files(NamedTuple):
    """The memory files of one cgroup version."""

    limit: str  # the limit in bytes, "max" (v2) or a huge number (v1) for none
    usage: str  # the usage in bytes, this cgroup and its descendants
    cache_key: str  # the memory.stat key of the hierarchical inactive page cache, which the kernel reclaims first


_V2 = _Files("memory.max", "memory.current", "inactive_file")
_V1 = _Files("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest unit that keeps it >= 1 (B, kB, MB, GB, TB; powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Memory a new allocation on ``device`` can use now, in bytes: ``available_memory(device).n_bytes``."""
    return available_memory(device).n_bytes


def available_memory(device: torch.device | str = "cpu") -> FreeMemory:
    """Memory a new allocation on ``device`` can use now (bytes) and the limit that sets it.

    CUDA: free device memory plus what torch's caching allocator holds unused. CPU: the tightest of the kernel's
    ``MemAvailable`` (/proc/meminfo); the headroom (limit minus usage, reclaimable inactive page cache not counted
    as usage) under the memory limit of this process's cgroup and of every ancestor up to the root of its
    hierarchy, in cgroup v2 (``memory.max``, ``memory.current``) and v1 (``memory.limit_in_bytes``,
    ``memory.usage_in_bytes``); and the address-space limit (``ulimit -v``) minus this process's virtual size
    (VmSize). Other devices, or a CPU without /proc and limits: ``NO_LIMIT`` bytes (no guard).
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        n_bytes = int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
        return FreeMemory(n_bytes, f"the free memory of {device}")
    if device.type != "cpu":
        return FreeMemory(NO_LIMIT, "no known limit")
    candidates = [_meminfo_available(PROC_MEMINFO), _cgroup_headroom(PROC_SELF), _address_space_headroom(PROC_SELF)]
    known = [c for c in candidates if c is not None]
    return min(known, key=lambda c: c.n_bytes, default=FreeMemory(NO_LIMIT, "no known limit"))


def check_fits(needed: float, device: torch.device | str, what: str, remedy: str) -> None:
    """Raise ``InsufficientMemoryError`` when ``needed`` bytes exceed ``USABLE_FRACTION`` of the free memory.

    what: the call, e.g. "log q + backward of 4096 configurations"; remedy: what the caller can do instead. The
    message names the size, the free memory and the limit that binds (``available_memory``).
    """
    free = available_memory(device)
    if needed > USABLE_FRACTION * free.n_bytes:
        raise InsufficientMemoryError(
            f"{what} would need about {format_bytes(needed)} on {torch.device(device)}, but only "
            f"{format_bytes(free.n_bytes)} is free, set by {free.limit}; {remedy}"
        )


def graph_bytes_per_item(run: Callable[[int], Any]) -> float:
    """Bytes autograd saves for backward per batch item of ``run(batch)``, measured with saved-tensor hooks.

    ``run`` is called with batches of 1 and 3 under grad mode; the difference over 2 leaves out what is saved once
    per call (parameters). Every saved tensor counts in full (views of one storage overcount: an upper bound).
    """
    saved = []
    for batch in (1, 3):
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run(batch)
        saved.append(total)
    return max(0.0, (saved[1] - saved[0]) / 2)


def _meminfo_available(meminfo: Path) -> FreeMemory | None:
    """``MemAvailable`` from ``meminfo`` (/proc/meminfo), or None when it cannot be read."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                n_bytes = int(line.split()[1]) * 1024
                return FreeMemory(n_bytes, f"the memory the system has available (MemAvailable in {meminfo})")
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom(proc_self: Path) -> FreeMemory | None:
    """The least headroom under the memory limits of this process's cgroups (v2 and v1) and their ancestors.

    proc_self: /proc/self (its ``cgroup`` and ``mountinfo`` files are read). None when no limit is set or the
    files cannot be read.
    """
    found = []
    for hierarchy in own_cgroups("memory", CGROUP1_MEMORY_MOUNT, proc_self=proc_self, v2_mount=CGROUP2_MOUNT):
        files = _V2 if hierarchy.version == 2 else _V1
        levels = [_level_headroom(d, files) for d in hierarchy.dirs]
        found.append(min((level for level in levels if level is not None), key=lambda f: f.n_bytes, default=None))
    known = [f for f in found if f is not None]
    return min(known, key=lambda f: f.n_bytes, default=None)


def _level_headroom(directory: Path, files: _Files) -> FreeMemory | None:
    """Bytes left under the memory limit of one cgroup ``directory``, or None when it sets no limit.

    Usage is the usage file minus the inactive page cache (``files.cache_key`` in memory.stat), which the kernel
    reclaims before the limit is hit (what ``docker stats`` and the kubelet call the working set).
    """
    try:
        text = (directory / files.limit).read_text().strip()
        limit = _UNLIMITED if text == "max" else int(text)
    except (OSError, ValueError):
        return None
    if limit >= _UNLIMITED:
        return None
    try:
        usage = int((directory / files.usage).read_text().strip())
    except (OSError, ValueError):
        usage = 0
    usage = max(0, usage - _memory_stat(directory / "memory.stat", files.cache_key))
    return FreeMemory(
        max(0, limit - usage),
        f"the cgroup memory limit of {format_bytes(limit)} ({directory / files.limit}) with "
        f"{format_bytes(usage)} in use",
    )


def _memory_stat(path: Path, key: str) -> int:
    """The value of ``key`` in a cgroup's memory.stat (bytes), 0 when missing."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _address_space_headroom(proc_self: Path) -> FreeMemory | None:
    """Bytes left under the soft address-space limit (``ulimit -v``, RLIMIT_AS), or None when there is none.

    Virtual memory counts, not resident: the headroom is the soft limit minus this process's virtual size (VmSize
    in /proc/self/status, else the first field of /proc/self/statm), which includes what torch and the thread
    arenas reserve without touching.
    """
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft < 0 or soft >= _UNLIMITED:
        return None
    size = _virtual_size(proc_self)
    return FreeMemory(
        max(0, soft - size),
        f"the address-space limit (ulimit -v) of {format_bytes(soft)} with a virtual size of {format_bytes(size)} "
        "in use",
    )


def _virtual_size(proc_self: Path) -> int:
    """This process's virtual memory size in bytes (VmSize, or statm's first field in pages); 0 when unreadable."""
    try:
        for line in (proc_self / "status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int((proc_self / "statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0

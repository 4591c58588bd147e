"""Memory guards: how much memory a device has free, and a clear error before an allocation that cannot fit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import InsufficientMemoryError

__all__ = ["available_bytes", "check_fits", "format_bytes", "graph_bytes_per_item"]

#: the share of the free memory a single call may plan to use (the rest is for the allocator, the OS, others)
USABLE_FRACTION = 0.8


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest unit that keeps it >= 1 (B, kB, MB, GB, TB; powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Memory a new allocation on ``device`` can use now, in bytes.

    CUDA: free device memory plus what torch's caching allocator holds unused. CPU: the kernel's
    ``MemAvailable`` (/proc/meminfo), capped by the cgroup limit of this process (v2 ``memory.max`` minus
    ``memory.current``, or v1 ``memory.limit_in_bytes`` minus ``memory.usage_in_bytes``) when there is one.
    Other devices, or a CPU without /proc: a very large number (no guard).
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return 2**62
    available = _meminfo_available()
    limit = _cgroup_headroom()
    if limit is not None:
        available = min(available, limit)
    return available


def check_fits(needed: float, device: torch.device | str, what: str, remedy: str) -> None:
    """Raise ``InsufficientMemoryError`` when ``needed`` bytes exceed ``USABLE_FRACTION`` of the free memory.

    what: the call, e.g. "log q + backward of 4096 configurations"; remedy: what the caller can do instead.
    """
    free = available_bytes(device)
    if needed > USABLE_FRACTION * free:
        raise InsufficientMemoryError(
            f"{what} would need about {format_bytes(needed)} on {torch.device(device)}, but only "
            f"{format_bytes(free)} is free; {remedy}"
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


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**62


def _cgroup_headroom() -> int | None:
    """Bytes left under this process's cgroup memory limit, or None when it has no limit."""
    pairs = (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    )
    for limit_path, usage_path in pairs:
        try:
            limit = Path(limit_path).read_text().strip()
            usage = int(Path(usage_path).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 2**60:
            return None
        return max(0, int(limit) - usage)
    return None

"""Data-parallel training under ``torch.distributed``: notice ``torchrun``, start the process group, reduce over ranks.

A run launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) gets its process group from ``init_from_env()``: NCCL when CUDA is available (each rank on
``cuda:LOCAL_RANK``), gloo on CPU. Without those variables and without a process group, ``init_from_env()`` returns
the single-process context and starts nothing, so a plain ``python script.py`` behaves as before.

The ``Trainer`` reduces gradients explicitly (one all-reduce of the flattened gradients per update, in
``DistributedContext.all_reduce_gradients``) instead of wrapping the flow in ``DistributedDataParallel``: the flow is
driven through ``sample`` / ``log_prob_joint`` and never through ``forward``, which is what DDP hooks; and a rank
whose samples are all masked out must still take part in the reduction, where DDP would wait for a backward pass
that never comes.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistributedContext", "init_from_env", "rank_seed"]

logger = logging.getLogger(__name__)

#: the variables torchrun sets for every worker; all three mean "launched by torchrun"
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedContext:
    """Where this process stands in a data-parallel job: rank, world size, backend and the device it trains on.

    ``DistributedContext()`` is the single process (rank 0 of 1, no process group); every collective is then the
    identity. ``from_process_group()`` describes an initialised default group. All collectives are blocking and must
    be called by every rank in the same order.
    """

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
        local_world_size: int = 1,
        backend: str | None = None,
    ) -> None:
        if not 0 <= rank < world_size or not 0 <= local_rank < local_world_size:
            raise ValueError(
                f"need 0 <= rank < world_size and 0 <= local_rank < local_world_size, got rank {rank}, world_size "
                f"{world_size}, local_rank {local_rank}, local_world_size {local_world_size}"
            )
        if world_size > 1 and backend is None:
            raise ValueError("a context of several ranks needs a backend (an initialised process group)")
        self.rank, self.world_size = int(rank), int(world_size)
        self.local_rank, self.local_world_size = int(local_rank), int(local_world_size)
        self.backend = backend
        self._object_group: Any = None

    @classmethod
    def from_process_group(cls) -> DistributedContext:
        """The context of the initialised default process group (``LOCAL_RANK`` / ``LOCAL_WORLD_SIZE`` from the
        environment, 0 / 1 when absent); the single-process context when there is none."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(
            dist.get_rank(),
            dist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
            str(dist.get_backend()),
        )

    def __repr__(self) -> str:
        return (
            f"DistributedContext(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank}, "
            f"local_world_size={self.local_world_size}, backend={self.backend!r})"
        )

    @property
    def distributed(self) -> bool:
        """Whether a process group is in use (also with one rank)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes metrics, checkpoints, plots and samples."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """The device this rank trains on: ``cuda:LOCAL_RANK`` under NCCL, else the CPU (or, for a single process,
        ``cuda`` when available)."""
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        if self.backend is None and torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")

    @property
    def cpus_per_rank(self) -> int:
        """This node's CPU cores shared among its ranks (>= 1): threads for torch or an OpenMM worker pool."""
        return max(1, (os.cpu_count() or 1) // self.local_world_size)

    # ---- collectives (the identity for a single process) ----------------------------------------------------------
    def _comm_device(self, t: Tensor) -> torch.device:
        return self.device if self.backend == "nccl" else t.device

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """The elementwise sum of t over ranks, as a new tensor on t's device with t's dtype (t is left alone)."""
        if not self.distributed:
            return t.clone()
        buf = t.detach().to(self._comm_device(t), copy=True)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.to(t.device)

    def all_reduce_floats(self, values: list[float]) -> list[float]:
        """Sum a list of Python floats over ranks (float64); NaN in any rank's entry gives NaN."""
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.all_reduce_sum(t).tolist()

    def all_gather_cat(self, t: Tensor) -> Tensor:
        """Every rank's t (same shape on every rank) concatenated along dim 0 in rank order, on t's device."""
        if not self.distributed:
            return t.clone()
        buf = t.detach().to(self._comm_device(t)).contiguous()
        parts = [torch.empty_like(buf) for _ in range(self.world_size)]
        dist.all_gather(parts, buf)
        return torch.cat(parts).to(t.device)

    def broadcast_module(self, module: nn.Module) -> None:
        """Overwrite the parameters and buffers of ``module`` on every rank with rank 0's (as DDP does at start)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                buf = t.detach().to(self._comm_device(t), copy=True)
                dist.broadcast(buf, src=0)
                t.copy_(buf.to(t.device))

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's picklable ``obj`` in rank order on rank 0 (None on the others); tensors should be on the CPU.

        Travels through a gloo group (NCCL cannot gather objects), created on first use.
        """
        if not self.distributed:
            return [obj]
        if self.backend != "gloo" and self._object_group is None:
            self._object_group = dist.new_group(backend="gloo")
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self._object_group)
        return out

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """End this process's part in the process group (after training; rank 0 may go on evaluating alone)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
        self._object_group = None

    def all_reduce_gradients(self, params: list[nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over ranks, in place: one all-reduce per parameter dtype.

        A missing gradient (``grad is None``) counts as zero; a parameter keeps ``grad = None`` only when no rank has
        one, so the optimiser skips exactly the parameters a single process would skip. Every rank ends with the same
        gradients, so the norm-based guards of the loop take the same decision everywhere.
        """
        if not self.distributed:
            return
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for p in params:
            by_dtype.setdefault(p.dtype, []).append(p)
        has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float64, device=self.device)
        has_grad = self.all_reduce_sum(has_grad) > 0
        present = {id(p): bool(h) for p, h in zip(params, has_grad.tolist())}
        for dtype, group in by_dtype.items():
            group = [p for p in group if present[id(p)]]
            if not group:
                continue
            flat = torch.cat(
                [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype) for p in group]
            )
            flat = self.all_reduce_sum(flat)
            offset = 0
            for p in group:
                n = p.numel()
                p.grad = flat[offset : offset + n].view_as(p).to(p.device)
                offset += n


def rank_seed(seed: int, rank: int, iteration: int = 0) -> int:
    """A 63-bit seed for rank ``rank`` at ``iteration``: ``seed + rank`` at iteration 0 (the start of a run);
    later (a resume on a different number of ranks) a hash of (seed, rank, iteration) that no other rank shares."""
    if iteration == 0:
        return int(seed) + int(rank)
    state = np.random.SeedSequence([int(seed) % 2**63, int(rank), int(iteration)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> DistributedContext:
    """Start the default process group when launched by ``torchrun``; return this process's context.

    backend: "nccl" or "gloo"; default NCCL when CUDA is available, else gloo (pass "gloo" to train on CPUs of a
    GPU machine). Under NCCL the current CUDA device becomes ``cuda:LOCAL_RANK``. timeout_s: seconds a collective
    waits for the other ranks before it raises (a rank that died ends the job instead of hanging it; torchrun also
    stops the other workers when one fails). An existing process group is reused. Without the torchrun variables
    (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) this starts nothing and returns the single-process context.
    """
    if dist.is_available() and dist.is_initialized():
        return DistributedContext.from_process_group()
    present = [name for name in TORCHRUN_VARIABLES if name in os.environ]
    if not present:
        return DistributedContext()
    if len(present) < len(TORCHRUN_VARIABLES):
        missing = sorted(set(TORCHRUN_VARIABLES) - set(present))
        raise RuntimeError(
            f"found {', '.join(present)} but not {', '.join(missing)} in the environment: launch with torchrun "
            "(which sets all of them), or unset them for a single process"
        )
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run a single process (unset RANK, WORLD_SIZE)")
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s}")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("backend 'nccl' needs CUDA; use backend='gloo' on CPUs")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    context = DistributedContext.from_process_group()
    logger.info("process group started: %s", context)
    return context

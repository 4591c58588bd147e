"""The thread plan of a training run: torch's threads beside the OpenMM worker processes behind the targets.

At its start ``Trainer.run`` applies the thread policy (``bgflow_se3.threads.apply_thread_policy``) with the number
of OpenMM worker processes behind the targets (``OpenMMEnergy(n_workers=k)``, k > 1, also inside wrapping energies;
one worker evaluates in this process and counts 0) and logs its reason when it changes. A user's choice
(``set_threads``, ``BGFLOW_SE3_THREADS``, ``OMP_NUM_THREADS``, ``torch.set_num_threads``) is kept. When several
ranks share a machine, each plans with its share of the cores (``cores // local_world_size``).
"""

from __future__ import annotations

import logging

from torch import nn

from ..energy.base import Energy
from ..sampling.joint import TargetDensity
from ..threads import ThreadPlan, apply_thread_policy, plan_threads, usable_cores
from .distributed import DistributedContext

__all__ = ["apply_training_threads", "rank_share", "worker_processes"]

logger = logging.getLogger(__name__)


def apply_training_threads(
    targets: tuple[TargetDensity | Energy | None, ...], dist: DistributedContext, previous: ThreadPlan | None
) -> ThreadPlan:
    """Set torch's threads by the thread policy for the OpenMM workers behind ``targets``; log the plan when it
    differs from ``previous`` (the plan of the last run). Returns the plan applied."""
    n_workers = worker_processes(*targets)
    cores = busy = None
    local_ranks = dist.local_world_size if dist.distributed else 1
    if local_ranks > 1:
        total = usable_cores()
        cores, busy = rank_share(total, plan_threads(0, cores=total).busy, local_ranks)
    plan = apply_thread_policy(n_workers, cores=cores, busy=busy)
    if previous is None or (previous.torch_threads, previous.reason) != (plan.torch_threads, plan.reason):
        logger.info("torch threads: %d (%s)", plan.torch_threads, plan.reason)
    return plan


def worker_processes(*targets: TargetDensity | Energy | None) -> int:
    """OpenMM worker processes behind ``targets``: the ``n_workers`` of each ``OpenMMEnergy`` with more than one
    (one worker evaluates in this process), also inside wrapping energies (e.g. ``RestrictedEnergy``). Found by its
    ``worker_pids`` method, so that train/ never imports openmm."""
    seen: set[int] = set()
    total = 0
    for target in targets:
        energy = target.energy if isinstance(target, TargetDensity) else target
        for module in energy.modules() if isinstance(energy, nn.Module) else ():
            n = getattr(module, "n_workers", None)
            if callable(getattr(module, "worker_pids", None)) and isinstance(n, int) and id(module) not in seen:
                seen.add(id(module))
                total += n if n > 1 else 0
    return total


def rank_share(cores: int, busy: int, local_ranks: int) -> tuple[int, int]:
    """(cores, busy) of one of ``local_ranks`` ranks on a machine with ``cores`` usable cores, ``busy`` of them busy:
    its share of the cores, and its share of the busy cores beyond what the other ranks of the job may keep busy
    (they count in the load average)."""
    share = max(1, cores // local_ranks)
    return share, max(0, busy - (local_ranks - 1) * share) // local_ranks

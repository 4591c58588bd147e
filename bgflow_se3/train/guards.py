"""The gradient guards of the training loop, and the counters they keep.

As in the augmented-coupling-flow reference: samples whose loss or log q is not finite, or whose log q is below
``min_log_q``, are masked out of the mean; a step whose gradient norm is not finite is skipped; once
``min_grad_history`` norms are known, a step whose norm exceeds ``skip_multiple`` x the median of the last
``grad_history`` norms is skipped and otherwise the gradient is clipped at ``clip_multiple`` x that median. Every
skip and mask is counted.

Under ``torch.distributed`` the loss is the masked mean over all ranks' samples, and the gradients are summed over
ranks by one all-reduce before the guards, which then decide alike on every rank.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .config import TrainConfig
from .distributed import DistributedContext
from .objectives import LossTerms

__all__ = ["Counters", "GradientGuards"]


@dataclass
class Counters:
    """The loop's counters, as a checkpoint holds them: steps the guards skipped (non-finite gradient norm, outlier
    norm, every sample masked), samples they masked, optimiser updates made, training wall time in s, whether the
    objective's setup ran, and the last gradient norms (the guards' median window)."""

    n_skipped_nonfinite: int = 0
    n_skipped_outlier: int = 0
    n_skipped_masked: int = 0
    n_masked_samples: int = 0
    n_updates: int = 0
    wall_time_s: float = 0.0
    setup_done: bool = False
    grad_norms: list[float] = field(default_factory=list)


class GradientGuards:
    """The masked loss and the guarded optimiser step of a ``Trainer`` (module docstring); keeps its ``Counters``.

    flow: the trained module (its parameters' gradients are guarded); optimizer: steps them; dist: the ranks.
    """

    def __init__(
        self, config: TrainConfig, flow: nn.Module, optimizer: torch.optim.Optimizer, dist: DistributedContext
    ) -> None:
        self.config = config
        self.flow = flow
        self.optimizer = optimizer
        self.dist = dist
        self.counters = Counters()
        self.grad_norms: deque[float] = deque(maxlen=config.grad_history)

    def snapshot(self) -> Counters:
        """The counters, with the current window of gradient norms (what a checkpoint saves)."""
        self.counters.grad_norms = list(self.grad_norms)
        return self.counters

    def load(self, counters: Counters) -> None:
        """Continue from saved ``counters`` (their gradient norms become the median window)."""
        self.counters = counters
        self.grad_norms = deque(counters.grad_norms, maxlen=self.config.grad_history)

    def masked_loss(self, terms: list[tuple[float, LossTerms]]) -> Tensor | None:
        """The weighted sum of the terms' masked mean losses; None when a term has no valid sample (the step is then
        skipped). Under ``torch.distributed`` a collective (``masked_loss_all_ranks``)."""
        if self.dist.distributed:
            return self.masked_loss_all_ranks(terms)
        total = None
        for weight, t in terms:
            mask = torch.isfinite(t.loss) & torch.isfinite(t.log_q) & (t.log_q > self.config.min_log_q)
            n_valid = int(mask.sum())
            self.counters.n_masked_samples += int(mask.numel()) - n_valid
            if n_valid == 0:
                return None
            term = weight * t.loss[mask].mean()
            total = term if total is None else total + term
        return total

    def masked_loss_all_ranks(self, terms: list[tuple[float, LossTerms]]) -> Tensor | None:
        """This rank's part of the masked mean over all ranks' samples: sum of its valid losses / valid count of all
        ranks, per term. The parts sum to the global loss, their gradients to its gradient. None (on every rank)
        when a term has no valid sample on any rank."""
        masks = [torch.isfinite(t.loss) & torch.isfinite(t.log_q) & (t.log_q > self.config.min_log_q) for _, t in terms]
        for mask in masks:
            self.counters.n_masked_samples += int(mask.numel()) - int(mask.sum())
        counts = self.dist.all_reduce_floats([float(mask.sum()) for mask in masks])
        if min(counts) == 0:
            return None
        parts = [weight * t.loss[mask].sum() / n for (weight, t), mask, n in zip(terms, masks, counts)]
        return sum(parts[1:], parts[0])

    def step(self) -> float:
        """Sum the gradients over ranks, then skip, clip or take the optimiser step (module docstring); returns the
        gradient norm before clipping."""
        cfg = self.config
        if self.dist.distributed:  # every rank reduces the same list, whichever gradients it holds
            self.dist.all_reduce_gradients([p for p in self.flow.parameters() if p.requires_grad])
        params = [p for p in self.flow.parameters() if p.grad is not None]
        if not params:
            raise RuntimeError("the loss does not depend on any flow parameter; check the objective")
        norm = float(torch.nn.utils.clip_grad_norm_(params, math.inf))
        if not math.isfinite(norm):
            self.counters.n_skipped_nonfinite += 1
            return norm
        enough = len(self.grad_norms) >= cfg.min_grad_history
        median = statistics.median(self.grad_norms) if enough else math.inf
        self.grad_norms.append(norm)
        if norm > cfg.skip_multiple * median:
            self.counters.n_skipped_outlier += 1
            return norm
        if enough:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_multiple * median)
        self.optimizer.step()
        self.counters.n_updates += 1
        return norm

"""Prioritised replay buffer of AIS samples: (x, a, log w, log q_old), sampled proportionally to w.

Sampling is without replacement by the Gumbel top-k trick in log space: the k largest of ``log w_i + G_i``
(G_i standard Gumbel) are a draw of k distinct indices with the sequential probabilities w_i / sum w of
sampling without replacement (Plackett-Luce; Kool et al. 2019). Nothing is exponentiated, so weights of
exp(-1e4) are as good as weights of 1. The buffer is a ring: once full, the oldest samples are overwritten.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["BufferBatch", "PrioritisedReplayBuffer"]


class BufferBatch(NamedTuple):
    """A batch drawn from the buffer.

    x: (batch, n_atoms, dim). a: (batch, n_aug, n_atoms, dim) (n_aug may be 0). log_w: AIS log weights,
    log_q_old: log q when the sample was stored or last adjusted, both (batch,), nats. indices: (batch,) long.
    """

    x: Tensor
    a: Tensor
    log_w: Tensor
    log_q_old: Tensor
    indices: Tensor


class PrioritisedReplayBuffer:
    """Ring buffer of at most ``max_length`` samples; ``ready`` once it holds ``min_length``.

    Storage is allocated on the first ``add`` with the dtype and device of the samples; log w and log q_old are
    kept in float64.
    """

    def __init__(self, max_length: int, min_length: int = 0) -> None:
        if max_length < 1 or not 0 <= min_length <= max_length:
            raise ValueError(f"need 0 <= min_length <= max_length and max_length >= 1, got {min_length}, {max_length}")
        self.max_length = int(max_length)
        self.min_length = int(min_length)
        self.x: Tensor | None = None
        self.a: Tensor | None = None
        self.log_w = torch.empty(0, dtype=torch.float64)
        self.log_q_old = torch.empty(0, dtype=torch.float64)
        self.length = 0
        self.position = 0
        self.n_dropped = 0

    def __len__(self) -> int:
        return self.length

    @property
    def ready(self) -> bool:
        """Whether the buffer holds at least ``min_length`` samples."""
        return self.length >= max(self.min_length, 1)

    def _allocate(self, x: Tensor, a: Tensor) -> None:
        n = self.max_length
        self.x = torch.zeros((n, *x.shape[1:]), dtype=x.dtype, device=x.device)
        self.a = torch.zeros((n, *a.shape[1:]), dtype=a.dtype, device=a.device)
        self.log_w = torch.full((n,), -torch.inf, dtype=torch.float64, device=x.device)
        self.log_q_old = torch.zeros(n, dtype=torch.float64, device=x.device)

    def add(self, x: Tensor, a: Tensor, log_w: Tensor, log_q: Tensor) -> int:
        """Store samples; rows with a non-finite x, a, log w or log q are dropped. Returns how many were dropped.

        x: (batch, n_atoms, dim); a: (batch, n_aug, n_atoms, dim); log_w, log_q: (batch,), nats.
        """
        if not (len(x) == len(a) == len(log_w) == len(log_q)):
            raise ValueError(f"batch sizes differ: x {len(x)}, a {len(a)}, log_w {len(log_w)}, log_q {len(log_q)}")
        x, a = x.detach(), a.detach()
        keep = (
            torch.isfinite(x).flatten(1).all(1)
            & torch.isfinite(a).flatten(1).all(1)
            & torch.isfinite(log_w)
            & torch.isfinite(log_q)
        )
        n_dropped = int((~keep).sum())
        self.n_dropped += n_dropped
        x, a, log_w, log_q = x[keep], a[keep], log_w.detach()[keep], log_q.detach()[keep]
        if self.x is None:
            self._allocate(x, a)
        elif tuple(x.shape[1:]) != tuple(self.x.shape[1:]) or tuple(a.shape[1:]) != tuple(self.a.shape[1:]):
            raise ValueError(
                f"sample shapes {tuple(x.shape[1:])}, {tuple(a.shape[1:])} differ from the buffer's "
                f"{tuple(self.x.shape[1:])}, {tuple(self.a.shape[1:])}"
            )
        n = len(x)
        if n > self.max_length:  # only the newest max_length fit
            x, a, log_w, log_q = (
                x[-self.max_length :],
                a[-self.max_length :],
                log_w[-self.max_length :],
                log_q[-self.max_length :],
            )
            n = self.max_length
        idx = (self.position + torch.arange(n, device=self.x.device)) % self.max_length
        self.x[idx] = x.to(self.x)
        self.a[idx] = a.to(self.a)
        self.log_w[idx] = log_w.to(self.log_w)
        self.log_q_old[idx] = log_q.to(self.log_q_old)
        self.position = (self.position + n) % self.max_length
        self.length = min(self.length + n, self.max_length)
        return n_dropped

    def sample(self, n: int, generator: torch.Generator | None = None) -> BufferBatch:
        """n distinct samples drawn proportionally to w without replacement (Gumbel top-k in log space)."""
        if not self.ready:
            raise RuntimeError(
                f"the buffer holds {self.length} samples, fewer than min_length={self.min_length}; "
                "add AIS samples first"
            )
        if n > self.length:
            raise ValueError(f"cannot draw {n} distinct samples from a buffer of {self.length}")
        n_positive = int(torch.isfinite(self.log_w[: self.length]).sum())
        if n > n_positive:
            raise ValueError(f"cannot draw {n} distinct samples: only {n_positive} in the buffer have weight > 0")
        device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(self.length, generator=generator, dtype=torch.float64, device=device).to(self.log_w.device)
        u = u.clamp(min=torch.finfo(torch.float64).tiny)
        gumbel = -torch.log(-torch.log(u))
        indices = torch.topk(self.log_w[: self.length] + gumbel, n).indices
        return BufferBatch(self.x[indices], self.a[indices], self.log_w[indices], self.log_q_old[indices], indices)

    def sample_batches(
        self, batch_size: int, n_batches: int, generator: torch.Generator | None = None
    ) -> list[BufferBatch]:
        """``n_batches`` batches of ``batch_size``, all distinct (one Gumbel top-k draw, split in order)."""
        batch = self.sample(batch_size * n_batches, generator)
        return [BufferBatch(*(t[i * batch_size : (i + 1) * batch_size] for t in batch)) for i in range(n_batches)]

    def adjust(self, log_w_adjust: Tensor, log_q_new: Tensor, indices: Tensor) -> None:
        """After an update of q: log w += log_w_adjust and log q_old = log_q_new at ``indices`` (all (batch,)).

        Rows whose new values are not finite keep log q_old and get log w = -inf (never drawn again).
        """
        log_w_adjust = log_w_adjust.detach().to(self.log_w)
        log_q_new = log_q_new.detach().to(self.log_q_old)
        indices = indices.to(self.log_w.device)
        finite = torch.isfinite(log_w_adjust) & torch.isfinite(log_q_new)
        new_w = torch.where(finite, self.log_w[indices] + log_w_adjust, torch.full_like(log_w_adjust, -torch.inf))
        self.log_w[indices] = new_w
        self.log_q_old[indices] = torch.where(finite, log_q_new, self.log_q_old[indices])

    def state_dict(self) -> dict:
        """Contents and counters (for checkpoints)."""
        return {
            "max_length": self.max_length,
            "min_length": self.min_length,
            "x": self.x,
            "a": self.a,
            "log_w": self.log_w,
            "log_q_old": self.log_q_old,
            "length": self.length,
            "position": self.position,
            "n_dropped": self.n_dropped,
        }

    def _ordered(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x, a, log w, log q_old of the stored samples, oldest first, each with leading dimension ``length``."""
        if self.x is None or self.length == 0:
            raise ValueError("the buffer is empty")
        start = self.position if self.length == self.max_length else 0
        order = (start + torch.arange(self.length, device=self.x.device)) % self.max_length
        return self.x[order], self.a[order], self.log_w[order], self.log_q_old[order]

    @classmethod
    def from_shards(cls, states: list[dict], rank: int, world_size: int) -> PrioritisedReplayBuffer:
        """Rank ``rank``'s share of the buffers of several ranks (``state_dict()``s): re-sharding for a resume on
        ``world_size`` ranks.

        The samples of all buffers are pooled by age (the i-th newest of every buffer next to each other, newest last)
        and dealt out round robin, so every new rank gets a like mix of every old rank's samples, old and new; a
        share larger than ``max_length`` keeps its newest. Weights and log q_old travel with their samples (AIS log
        weights of one target and one flow are comparable across ranks). Sizes come from ``states[0]``; rank 0 keeps
        the count of dropped samples. The share may hold fewer than ``min_length`` samples: top it up (FAB's
        ``setup`` does).
        """
        if not states or not 0 <= rank < world_size:
            raise ValueError(f"need at least one buffer state and 0 <= rank < world_size, got {len(states)}, {rank}")
        parts, ages = [], []
        for state in states:
            buffer = cls(int(state["max_length"]), int(state["min_length"]))
            buffer.load_state_dict(state)
            if len(buffer):
                parts.append(buffer._ordered())
                ages.append(torch.arange(len(buffer) - 1, -1, -1, dtype=torch.float64))  # 0 = newest
        new = cls(int(states[0]["max_length"]), int(states[0]["min_length"]))
        n_dropped = sum(int(s["n_dropped"]) for s in states) if rank == 0 else 0
        if not parts:
            new.n_dropped = n_dropped
            return new
        pooled = [torch.cat([p[k].to(parts[0][k].device) for p in parts]) for k in range(4)]
        shard = torch.cat([torch.full_like(age, float(i)) for i, age in enumerate(ages)])
        age = torch.cat(ages)
        order = np.lexsort((shard.numpy(), -age.numpy()))  # oldest first; ties in the order of the old ranks
        mine = torch.as_tensor(order[rank::world_size].copy(), device=pooled[0].device)
        if len(mine):
            new.add(*(t[mine] for t in pooled))
        new.n_dropped = n_dropped  # zero-weight samples (log w = -inf, never drawn again) are left out, not counted
        return new

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``."""
        self.max_length, self.min_length = int(state["max_length"]), int(state["min_length"])
        self.x, self.a = state["x"], state["a"]
        self.log_w, self.log_q_old = state["log_w"], state["log_q_old"]
        self.length, self.position, self.n_dropped = (
            int(state["length"]),
            int(state["position"]),
            int(state["n_dropped"]),
        )

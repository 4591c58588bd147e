"""Training objectives on the augmented joint: maximum likelihood, reverse KL, their mix, and FAB (alpha = 2).

Every loss comes per sample, shape (batch,), so that the training loop can mask samples whose loss is not
finite. Each objective is a small stateful object the loop drives: ``setup`` once, then per iteration
``batches`` (data, or one AIS batch pushed into the replay buffer and several buffer draws), and per batch
``losses`` (a list of (weight, ``LossTerms``) whose masked means are summed) and ``after_update``.

Under ``torch.distributed`` (see ``train/distributed.py``) the loop calls ``distribute`` once: data objectives then
draw the global batch (``batch_size`` x world size) with a generator every rank shares and keep their own slice, so
the run does not depend on the number of ranks; FAB runs its AIS batch and replay buffer per rank and keeps the HMC
step sizes equal on every rank. ``load_shards`` restores the per-rank states of a checkpoint, also one written by a
different number of ranks.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..energy.base import Energy
from ..sampling.ais import AnnealedImportanceSampler
from ..sampling.hmc import HamiltonianMonteCarlo
from ..sampling.joint import JointFlow, TargetDensity
from .buffer import BufferBatch, PrioritisedReplayBuffer
from .distributed import DistributedContext
from .metrics import effective_sample_size

__all__ = [
    "FABObjective",
    "LossTerms",
    "MLKLObjective",
    "MaximumLikelihoodObjective",
    "Objective",
    "ReverseKLObjective",
    "fab_loss",
    "maximum_likelihood_loss",
    "reverse_kl_loss",
]


class LossTerms(NamedTuple):
    """Per-sample loss (incl. the weighted aux loss), log q and aux loss of a batch, each shape (batch,)."""

    loss: Tensor
    log_q: Tensor
    aux: Tensor


def _model(flow: nn.Module | JointFlow) -> JointFlow:
    return flow if isinstance(flow, JointFlow) else JointFlow(flow)


def _target(target: Energy | TargetDensity) -> TargetDensity:
    return target if isinstance(target, TargetDensity) else TargetDensity(target)


def maximum_likelihood_loss(
    flow: nn.Module | JointFlow, x: Tensor, generator: torch.Generator | None = None, aux_weight: float = 1.0
) -> LossTerms:
    """Negative log-likelihood of data x (batch, n_atoms, dim) with a ~ pi(a | x) drawn fresh.

    The loss is ``-(log q(x, a) - log pi(a | x)) + aux_weight * aux``: its gradient is that of the joint NLL, and
    its mean is an upper bound on the marginal NLL -log q(x) (nats per configuration).
    """
    model = _model(flow)
    z = model.augment(x, generator)
    return _ml_terms(model, z, aux_weight)


def _ml_terms(model: JointFlow, z: Tensor, aux_weight: float) -> LossTerms:
    log_q, aux = model.log_prob_and_aux(z)
    log_pi = model.log_pi(z).detach()
    return LossTerms(-(log_q - log_pi) + aux_weight * aux, log_q, aux)


def reverse_kl_loss(
    flow: nn.Module | JointFlow,
    target: Energy | TargetDensity,
    n: int,
    generator: torch.Generator | None = None,
    aux_weight: float = 1.0,
) -> LossTerms:
    """Reverse KL on the augmented joint, per sample: log q(x, a) - log pi(a | x) + u(x), (x, a) ~ q reparameterised.

    Its mean is KL(q(x, a) || p(x) pi(a | x)) - log Z (nats). u is the regularised reduced energy of ``target``.
    The aux loss needs one more density pass on the (detached) samples; ``aux_weight = 0`` skips it.
    """
    model, density = _model(flow), _target(target)
    z, log_q = model.sample(n, generator)
    x, _ = model.unpack(z)
    loss = log_q - model.log_pi(z) - density(x)
    aux = torch.zeros_like(log_q)
    if aux_weight > 0 and model.has_aux:
        _, aux = model.log_prob_and_aux(z.detach())
    return LossTerms(loss + aux_weight * aux, log_q, aux)


def fab_loss(log_q: Tensor, log_q_old: Tensor, alpha: float = 2.0, max_weight: float = 10.0) -> Tensor:
    """FAB's alpha-divergence surrogate over replay-buffer samples, per sample (batch,).

    ``-clip(exp((1 - alpha)(log q - log q_old)), max=max_weight) * log q`` with the weight detached: the buffer drew
    the samples proportionally to AIS weights targeting p^alpha q_old^(1 - alpha); the factor re-targets them to the
    current q (Midgley et al. 2023).
    """
    log_ratio = (1.0 - alpha) * (log_q.detach() - log_q_old.to(log_q))
    weight = torch.exp(log_ratio).clamp(max=max_weight)
    return -weight * log_q


class Objective:
    """What the training loop drives. Subclasses override what they need; the defaults do nothing."""

    #: the target density whose evaluations are counted, if any
    target: TargetDensity | None = None
    #: the ranks this objective runs on and the generator they share (set by ``distribute``; None: one process)
    context: DistributedContext | None = None
    shared_generator: torch.Generator | None = None

    def distribute(self, context: DistributedContext, shared_generator: torch.Generator) -> None:
        """Called once by the loop under ``torch.distributed``, before ``setup``: the context of this rank and a
        generator seeded identically on every rank (for draws that must agree across ranks, e.g. the data batch)."""
        self.context = context
        self.shared_generator = shared_generator

    def setup(self, model: JointFlow, generator: torch.Generator) -> None:
        """Called once before the first iteration (not again on resume)."""

    def batches(self, model: JointFlow, generator: torch.Generator) -> list[Any]:
        """The batches of one iteration; one gradient update is made per batch. Called under no_grad."""
        raise NotImplementedError

    def losses(self, model: JointFlow, batch: Any, generator: torch.Generator) -> list[tuple[float, LossTerms]]:
        """(weight, per-sample terms) pairs; the loss is the sum of weight * masked mean."""
        raise NotImplementedError

    def after_update(self, model: JointFlow, batch: Any, terms: list[tuple[float, LossTerms]]) -> None:
        """Called after each gradient update (or skipped update)."""

    def metrics(self) -> dict[str, float]:
        """Metrics of the last iteration (floats)."""
        return {}

    @property
    def n_target_evaluations(self) -> int:
        """Configurations passed to the target energy so far."""
        return 0 if self.target is None else self.target.n_evaluations

    def state_dict(self) -> dict:
        """State for checkpoints."""
        return {"n_target_evaluations": self.n_target_evaluations}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``."""
        if self.target is not None:
            self.target.n_evaluations = int(state["n_target_evaluations"])

    def load_shards(self, states: list[dict], rank: int, world_size: int) -> None:
        """Restore rank ``rank`` of ``world_size`` from the per-rank ``state_dict()``s of a checkpoint (rank order).

        The checkpoint may come from another number of ranks (``len(states)``): with the same number each rank takes
        its own state, otherwise rank 0's (subclasses re-shard what is per rank). ``states[0]`` holds the run's
        total target evaluations; rank 0 takes it and the others start at 0, so the sum over ranks stays right.
        """
        self.load_state_dict(states[rank] if len(states) == world_size else states[0])
        if self.target is not None:
            self.target.n_evaluations = int(states[0]["n_target_evaluations"]) if rank == 0 else 0


class _DataMixin:
    data: Tensor
    batch_size: int
    context: DistributedContext | None
    shared_generator: torch.Generator | None

    def _data_batch(self, model: JointFlow, generator: torch.Generator) -> Tensor:
        """z of this rank's ``batch_size`` data samples, shape (batch_size, 1 + n_aug, n_atoms, dim).

        One process draws with ``generator``. Under ``torch.distributed`` (DistributedSampler-like) the global batch
        of ``batch_size * world_size`` indices, with replacement, and its augmentation noise come from the generator
        every rank shares; rank r keeps the disjoint slice r. The global batch is then the one a single process
        with ``batch_size * world_size`` draws, whatever the number of ranks (augmenting the whole batch on every
        rank costs one Gaussian draw per configuration).
        """
        p = model.parameter
        ctx, shared = self.context, self.shared_generator
        world, rank = (1, 0) if ctx is None or shared is None else (ctx.world_size, ctx.rank)
        gen = generator if ctx is None or shared is None else shared
        n = self.batch_size * world
        idx = torch.randint(len(self.data), (n,), generator=gen, device=gen.device)
        x = self.data[idx.to(self.data.device)].to(dtype=p.dtype, device=p.device)
        z = model.augment(x, gen)
        return z if world == 1 else z[rank * self.batch_size : (rank + 1) * self.batch_size]


def _check_data(data: Tensor) -> Tensor:
    if not isinstance(data, Tensor) or data.ndim != 3:
        raise ValueError(f"data must be a tensor of shape (n, n_atoms, dim), got {getattr(data, 'shape', type(data))}")
    if not bool(torch.isfinite(data).all()):
        raise ValueError("data holds NaN or infinite coordinates; remove those configurations first")
    return data


class MaximumLikelihoodObjective(_DataMixin, Objective):
    """Maximum likelihood on data (n, n_atoms, dim): batches drawn with replacement, a ~ pi(a | x) fresh each step."""

    def __init__(self, data: Tensor, batch_size: int = 128, aux_weight: float = 1.0) -> None:
        self.data = _check_data(data)
        self.batch_size = int(batch_size)
        self.aux_weight = float(aux_weight)

    def batches(self, model: JointFlow, generator: torch.Generator) -> list[Tensor]:
        return [self._data_batch(model, generator)]

    def losses(self, model: JointFlow, batch: Tensor, generator: torch.Generator) -> list[tuple[float, LossTerms]]:
        return [(1.0, _ml_terms(model, batch, self.aux_weight))]


class ReverseKLObjective(Objective):
    """Reverse KL on the augmented joint with ``batch_size`` fresh flow samples per step."""

    def __init__(self, target: Energy | TargetDensity, batch_size: int = 128, aux_weight: float = 1.0) -> None:
        self.target = _target(target)
        self.batch_size = int(batch_size)
        self.aux_weight = float(aux_weight)

    def batches(self, model: JointFlow, generator: torch.Generator) -> list[None]:
        return [None]

    def losses(self, model: JointFlow, batch: None, generator: torch.Generator) -> list[tuple[float, LossTerms]]:
        return [(1.0, reverse_kl_loss(model, self.target, self.batch_size, generator, self.aux_weight))]


class MLKLObjective(_DataMixin, Objective):
    """The weighted ML + reverse-KL mix of Köhler et al.: ml_weight * NLL(data) + kl_weight * KL(q || p)."""

    def __init__(
        self,
        data: Tensor,
        target: Energy | TargetDensity,
        batch_size: int = 128,
        ml_weight: float = 1.0,
        kl_weight: float = 1.0,
        aux_weight: float = 1.0,
    ) -> None:
        self.data = _check_data(data)
        self.target = _target(target)
        self.batch_size = int(batch_size)
        self.ml_weight, self.kl_weight, self.aux_weight = float(ml_weight), float(kl_weight), float(aux_weight)

    def batches(self, model: JointFlow, generator: torch.Generator) -> list[Tensor]:
        return [self._data_batch(model, generator)]

    def losses(self, model: JointFlow, batch: Tensor, generator: torch.Generator) -> list[tuple[float, LossTerms]]:
        kl = reverse_kl_loss(model, self.target, self.batch_size, generator, self.aux_weight)
        return [(self.ml_weight, _ml_terms(model, batch, self.aux_weight)), (self.kl_weight, kl)]


class FABObjective(Objective):
    """Flow Annealed importance sampling Bootstrap with a prioritised replay buffer (Midgley et al., ICLR 2023).

    Per iteration: ``batch_size`` flow samples are annealed by AIS towards p^alpha q^(1 - alpha) on the augmented
    joint (target p(x) pi(a | x)) and stored with their AIS log weights and log q; then ``n_updates`` disjoint
    batches drawn from the buffer proportionally to w give one gradient update each of ``fab_loss`` (+ aux), after
    which their log weights are re-targeted by (1 - alpha)(log q_new - log q_old). ``setup`` fills the buffer to
    ``buffer_min_length`` first. Sizes are in samples; the defaults follow fab-torch (64 to 512 batches).
    Non-finite targets: configurations whose target log-density came out non-finite (a NaN or +inf energy, e.g. a
    failed OpenMM evaluation; non-finite coordinates) are counted in ``n_nonfinite_target``, and AIS samples left
    with a non-finite weight or log q are not stored but counted in ``n_dropped_samples`` (both cumulative, in
    ``metrics()``); training goes on with the others.
    ais_chunk_size: AIS evaluates the flow's log q gradient this many samples at a time (same result, bounded
    memory; see ``AnnealedImportanceSampler``). The gradient updates use whole ``batch_size`` batches.
    """

    def __init__(
        self,
        target: Energy | TargetDensity,
        batch_size: int = 128,
        n_intermediate: int = 8,
        n_updates: int = 8,
        alpha: float = 2.0,
        max_weight: float = 10.0,
        buffer_max_length: int | None = None,
        buffer_min_length: int | None = None,
        aux_weight: float = 1.0,
        step_size: float = 0.1,
        n_leapfrog: int = 4,
        max_grad: float = 1e3,
        ais_chunk_size: int | None = None,
    ) -> None:
        self.target = _target(target)
        self.batch_size, self.n_updates = int(batch_size), int(n_updates)
        self.alpha, self.max_weight, self.aux_weight = float(alpha), float(max_weight), float(aux_weight)
        max_length = 512 * self.batch_size if buffer_max_length is None else int(buffer_max_length)
        min_length = 64 * self.batch_size if buffer_min_length is None else int(buffer_min_length)
        if min_length < self.batch_size * self.n_updates:
            raise ValueError(
                f"buffer_min_length ({min_length}) must hold n_updates * batch_size = "
                f"{self.n_updates * self.batch_size} "
                "samples (the updates of one iteration draw distinct samples)"
            )
        self.buffer = PrioritisedReplayBuffer(max_length, min_length)
        hmc = None
        if n_intermediate > 0:
            hmc = HamiltonianMonteCarlo(
                n_intermediate, step_size=step_size, n_leapfrog=n_leapfrog, max_grad=max_grad, project=JointFlow.project
            )
        self.ais = AnnealedImportanceSampler(n_intermediate, alpha=alpha, hmc=hmc, chunk_size=ais_chunk_size)
        self._metrics: dict[str, float] = {}
        self.n_nonfinite_target = 0  # configurations whose target log-density was not finite, over all AIS runs

    def run_ais(self, model: JointFlow, n: int, generator: torch.Generator | None = None):
        """One AIS batch of n flow samples towards p^alpha q^(1 - alpha); returns ``AISResult`` (packed z)."""
        with torch.no_grad():
            z, _ = model.sample(n, generator)
        return self.ais.run(z, model.log_prob, lambda zz: self._counted_log_p(model, zz), generator)

    def _counted_log_p(self, model: JointFlow, z: Tensor) -> Tensor:
        """log p~(x) + log pi(a | x) at z, shape (batch,); rows that are not finite are counted."""
        log_p = self.target.joint(model, z)
        self.n_nonfinite_target += int((~torch.isfinite(log_p.detach())).sum())
        return log_p

    def _ais_into_buffer(self, model: JointFlow, generator: torch.Generator) -> None:
        result = self.run_ais(model, self.batch_size, generator)
        x, a = model.unpack(result.z)
        self.buffer.add(x, a, result.log_w, result.log_q)
        finite = result.log_w[torch.isfinite(result.log_w)]
        self._metrics = {
            "ess_flow": effective_sample_size(result.flow_log_w),
            "ess_ais": effective_sample_size(result.log_w),
            "ais_log_w_mean": float(finite.mean()) if len(finite) else float("nan"),
            "hmc_acceptance": float(result.acceptance.mean()) if len(result.acceptance) else float("nan"),
            "hmc_step_size": float(self.ais.hmc.step_sizes.mean()) if self.ais.hmc is not None else float("nan"),
            "buffer_length": float(len(self.buffer)),
            "n_nonfinite_target": float(self.n_nonfinite_target),
            "n_dropped_samples": float(self.buffer.n_dropped),
        }

    def _synchronise_step_sizes(self) -> None:
        """Under ``torch.distributed``: every rank's HMC step sizes become their geometric mean over ranks, so the
        step sizes stay one global state (each rank adapts them by its own acceptance; the mean keeps the vote)."""
        ctx = self.context
        if ctx is None or not ctx.distributed or self.ais.hmc is None:
            return
        log_step = ctx.all_reduce_sum(self.ais.hmc.step_sizes.log()) / ctx.world_size
        self.ais.hmc.step_sizes = log_step.exp()
        self._metrics["hmc_step_size"] = float(self.ais.hmc.step_sizes.mean())

    def setup(self, model: JointFlow, generator: torch.Generator) -> None:
        needed = -(-self.buffer.min_length // self.batch_size)
        for _ in range(3 * needed + 10):
            if self.buffer.ready:
                break
            self._ais_into_buffer(model, generator)
        if not self.buffer.ready:
            raise RuntimeError(
                f"after {3 * needed + 10} AIS batches the replay buffer holds only {len(self.buffer)} samples with a "
                f"finite weight ({self.buffer.n_dropped} dropped): the target energy is non-finite (or the flow's "
                "log q is) almost everywhere the flow samples; check the energy, the units of the flow's length_scale, "
                "or lower buffer_min_length"
            )
        self._synchronise_step_sizes()  # once per rank: the AIS batches above may differ in number between ranks

    def batches(self, model: JointFlow, generator: torch.Generator) -> list[BufferBatch]:
        self._ais_into_buffer(model, generator)
        self._synchronise_step_sizes()
        return self.buffer.sample_batches(self.batch_size, self.n_updates, generator)

    def losses(self, model: JointFlow, batch: BufferBatch, generator: torch.Generator) -> list[tuple[float, LossTerms]]:
        p = model.parameter
        z = model.pack(batch.x, batch.a).to(dtype=p.dtype, device=p.device)
        log_q, aux = model.log_prob_and_aux(z)
        loss = fab_loss(log_q, batch.log_q_old, self.alpha, self.max_weight) + self.aux_weight * aux
        return [(1.0, LossTerms(loss, log_q, aux))]

    def after_update(self, model: JointFlow, batch: BufferBatch, terms: list[tuple[float, LossTerms]]) -> None:
        log_q = terms[0][1].log_q.detach()
        self.buffer.adjust((1.0 - self.alpha) * (log_q.double() - batch.log_q_old), log_q, batch.indices)

    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["buffer"] = self.buffer.state_dict()
        state["hmc"] = None if self.ais.hmc is None else self.ais.hmc.state_dict()
        state["n_nonfinite_target"] = self.n_nonfinite_target
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.buffer.load_state_dict(state["buffer"])
        if self.ais.hmc is not None:
            self.ais.hmc.load_state_dict(state["hmc"])
        self.n_nonfinite_target = int(state.get("n_nonfinite_target", 0))  # absent from older checkpoints

    def load_shards(self, states: list[dict], rank: int, world_size: int) -> None:
        """As ``Objective.load_shards``; from another number of ranks the replay buffers of all saved ranks are pooled
        and dealt out again (``PrioritisedReplayBuffer.from_shards``), the HMC step sizes (equal on every rank) come
        from rank 0. A rank whose new buffer holds fewer than ``buffer_min_length`` samples tops it up by AIS in
        ``setup``, which the loop runs again after a change of the number of ranks."""
        super().load_shards(states, rank, world_size)
        if len(states) != world_size:
            self.buffer = PrioritisedReplayBuffer.from_shards([s["buffer"] for s in states], rank, world_size)
            total = sum(int(s.get("n_nonfinite_target", 0)) for s in states)
            self.n_nonfinite_target = total if rank == 0 else 0  # rank 0 holds the run's count, as for evaluations

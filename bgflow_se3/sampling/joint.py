"""The augmented joint state z = (x, a) as one tensor, and the regularised, counted target density on it.

Training code sees every flow through ``JointFlow``: z packs x and its augmented copies a into one tensor of
shape ``(batch, 1 + n_aug, n_atoms, dim)`` (``z[:, 0]`` is x, ``z[:, 1:]`` is a), so that HMC, AIS and the replay
buffer work on a single array. Non-augmented flows (``sample(n) -> (x, log_q)``, ``log_prob(x)``) are the case
``n_aug = 0``. x lives on the centre-of-mass-free subspace; ``JointFlow.project`` removes the CoM component of
the x slot of a tangent vector (momenta, gradients), so Hamiltonian dynamics stays on that subspace.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..energy.base import Energy

__all__ = ["JointFlow", "TargetDensity"]


class JointFlow:
    """A flow seen as a density q(z) on the packed joint state z = (x, a), shape (batch, 1 + n_aug, n_atoms, dim).

    flow: an augmented flow following FLOW_PROTOCOL (``n_aug``, ``sample``, ``log_prob_joint``,
    ``log_prob_joint_and_aux``, ``sample_aug_target``, ``log_prob_aug_target``), or a non-augmented flow with
    ``sample(n, generator) -> (x, log_q)`` and ``log_prob(x)`` (and optionally ``log_prob_and_aux(x)``, e.g. a
    CNF's kinetic regulariser). Log-densities are in nats, shape (batch,).
    """

    def __init__(self, flow: nn.Module) -> None:
        self.flow = flow
        self.augmented = all(
            hasattr(flow, name) for name in ("n_aug", "log_prob_joint", "sample_aug_target", "log_prob_aug_target")
        )
        if not hasattr(flow, "sample") or not (self.augmented or hasattr(flow, "log_prob")):
            raise TypeError(
                f"{type(flow).__name__} does not follow the flow protocol: it needs sample(n, generator) and "
                "log_prob_joint/sample_aug_target/log_prob_aug_target (augmented) or log_prob (non-augmented)"
            )
        self.n_aug = int(flow.n_aug) if self.augmented else 0
        self.n_atoms = int(flow.n_atoms)
        self.dim = int(flow.dim)

    @property
    def event_shape(self) -> tuple[int, int, int]:
        """Shape of one joint state, ``(1 + n_aug, n_atoms, dim)``."""
        return (1 + self.n_aug, self.n_atoms, self.dim)

    @property
    def parameter(self) -> Tensor:
        """Any parameter of the flow (to read its dtype and device)."""
        return next(self.flow.parameters())

    @staticmethod
    def pack(x: Tensor, a: Tensor | None) -> Tensor:
        """z from x (batch, n_atoms, dim) and a (batch, n_aug, n_atoms, dim) or None."""
        return x[:, None] if a is None or a.shape[1] == 0 else torch.cat([x[:, None], a], dim=1)

    @staticmethod
    def unpack(z: Tensor) -> tuple[Tensor, Tensor]:
        """(x, a) from z; a has shape (batch, n_aug, n_atoms, dim), possibly with n_aug = 0."""
        return z[:, 0], z[:, 1:]

    @staticmethod
    def project(v: Tensor) -> Tensor:
        """Remove the centre-of-mass component of the x slot of a tangent vector v, shape like z."""
        x = v[:, :1]
        return torch.cat([x - x.mean(dim=2, keepdim=True), v[:, 1:]], dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n joint samples z (reparameterised) and their log q(z), shape (n,)."""
        out = self.flow.sample(n, generator=generator)
        if self.augmented:
            x, a, log_q = out
            return self.pack(x, a), log_q
        x, log_q = out
        return self.pack(x, None), log_q

    @staticmethod
    def _guarded(fn, z: Tensor) -> tuple[Tensor, ...]:
        """Evaluate fn(z) -> tensors of shape (batch,) on the finite rows only; other rows get -inf (first output)
        and 0 (the rest). Flows may refuse non-finite input; HMC proposals can be non-finite."""
        finite = torch.isfinite(z).flatten(1).all(1)
        if bool(finite.all()):
            return fn(z)
        safe = torch.where(finite.reshape(-1, *([1] * (z.ndim - 1))), z, torch.zeros_like(z))
        out = fn(safe)
        first = torch.where(finite, out[0], torch.full_like(out[0], -math.inf))
        return (first, *(torch.where(finite, o, torch.zeros_like(o)) for o in out[1:]))

    @property
    def has_aux(self) -> bool:
        """Whether the flow has an auxiliary loss (the augmented flow's, or a CNF's kinetic regulariser)."""
        return self.augmented or getattr(self.flow, "kinetic_weight", 0.0) > 0

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z) in nats, shape (batch,); -inf for rows with non-finite entries."""
        return self.log_prob_and_aux(z)[0]

    def log_prob_and_aux(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """log q(z) and the flow's auxiliary loss (>= 0), both shape (batch,); aux is 0 where the flow has none."""

        def fn(zz: Tensor) -> tuple[Tensor, Tensor]:
            x, a = self.unpack(zz)
            if self.augmented and hasattr(self.flow, "log_prob_joint_and_aux"):
                return tuple(self.flow.log_prob_joint_and_aux(x, a))
            if not self.augmented and hasattr(self.flow, "log_prob_and_aux"):  # e.g. a CNF's kinetic regulariser
                return tuple(self.flow.log_prob_and_aux(x))
            log_q = self.flow.log_prob_joint(x, a) if self.augmented else self.flow.log_prob(x)
            return log_q, torch.zeros_like(log_q)

        return self._guarded(fn, z)

    def log_pi(self, z: Tensor) -> Tensor:
        """log pi(a | x) of the augmented target, shape (batch,); 0 for non-augmented flows, -inf for non-finite z."""
        if not self.augmented:
            return torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)

        def fn(zz: Tensor) -> tuple[Tensor]:
            x, a = self.unpack(zz)
            return (self.flow.log_prob_aug_target(a, x),)

        return self._guarded(fn, z)[0]

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """z with a ~ pi(a | x) drawn fresh; x (batch, n_atoms, dim) is moved to its CoM-free version."""
        x = x - x.mean(dim=1, keepdim=True)
        if not self.augmented:
            return self.pack(x, None)
        return self.pack(x, self.flow.sample_aug_target(x, generator=generator))


def _lin_log(u: Tensor, cut: float, u_max: float) -> Tensor:
    """Reduced energy, linear below ``cut`` and logarithmic above: cut + log(1 + u - cut), capped at u_max.

    Smooth and monotone, so HMC and the loss never see the 1e10-kT energies of clashing atoms. Unlike
    ``bgflow_se3.energy.regularize_energy`` (which maps +inf and energies above its hard cap to one finite value),
    +inf stays +inf here, so a failed evaluation gets zero importance weight in AIS and the replay buffer.
    """
    above = torch.clamp(u - cut, min=0.0)
    reg = torch.where(u <= cut, u, cut + torch.log1p(above))
    return torch.where(torch.isinf(u), u, torch.clamp(reg, max=u_max))


class TargetDensity:
    """The unnormalised target log p~(x) = -u_reg(x) of an ``Energy``, with energy regularisation and a counter.

    energy: any ``Energy``; ``energy(x)`` gives reduced u (kT), shape (batch,), differentiable in x.
    energy_cut: reduced energies above this (kT) grow only logarithmically (``_lin_log``); ``math.inf`` disables
    (then also pass ``energy_max=math.inf`` for exact, unregularised weights).
    energy_max: finite reduced energies are capped here (kT); NaN and +inf energies (failed evaluations) give
    log p~ = -inf, i.e. zero weight.
    ``n_evaluations`` counts configurations passed to the energy so far.
    """

    def __init__(self, energy: Energy, energy_cut: float = 1e3, energy_max: float = 1e9) -> None:
        if energy_cut > energy_max:
            raise ValueError(f"energy_cut ({energy_cut}) must not exceed energy_max ({energy_max})")
        self.energy = energy
        self.energy_cut = float(energy_cut)
        self.energy_max = float(energy_max)
        self.n_evaluations = 0

    def __call__(self, x: Tensor) -> Tensor:
        """log p~(x) = -u_reg(x), shape (batch,), for x of shape (batch, n_atoms, dim)."""
        self.n_evaluations += int(x.shape[0])
        u = self.energy(x)
        u = torch.where(torch.isnan(u), torch.full_like(u, math.inf), u)
        if math.isinf(self.energy_cut):
            return -torch.where(torch.isinf(u), u, torch.clamp(u, max=self.energy_max))
        return -_lin_log(u, self.energy_cut, self.energy_max)

    def joint(self, model: JointFlow, z: Tensor) -> Tensor:
        """log p~(x) + log pi(a | x) of the augmented target at z, shape (batch,)."""
        x, _ = model.unpack(z)
        return self(x) + model.log_pi(z)

"""Batched Hamiltonian Monte Carlo with one adaptive step size per AIS intermediate distribution.

Each chain of the batch runs its own leapfrog trajectory (identity mass matrix) and Metropolis test. The step
size of intermediate ``index`` is multiplied by ``adapt_factor`` when the batch's mean acceptance probability
exceeds ``target_acceptance`` and divided by it otherwise (as in FAB, Midgley et al. 2023); ``freeze()`` stops the
adaptation for evaluation. Gradients are cleaned (NaN -> 0) and clamped elementwise at ``max_grad``: the leapfrog
map stays volume preserving and reversible (the force is still a function of position only), so the
Metropolis test keeps the target invariant. An optional linear ``project`` keeps the dynamics on a subspace
(the centre-of-mass-free x of ``JointFlow.project``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["HMCPoint", "HamiltonianMonteCarlo", "LogDensityFn", "autograd_log_density"]


class HMCPoint(NamedTuple):
    """A batch of states with their log-density and its gradient.

    z: positions, shape (batch, *event). log_prob: shape (batch,), nats (up to a constant). grad: d log_prob / dz,
    shape like z. extras: tensors with a leading batch dimension that the density function computed at z (e.g. the
    separate log q and log p of AIS); HMC carries them along with accepted moves.
    """

    z: Tensor
    log_prob: Tensor
    grad: Tensor
    extras: tuple[Tensor, ...] = ()


#: A density function: z -> (log_prob (batch,), grad (batch, *event), extras).
LogDensityFn = Callable[[Tensor], tuple[Tensor, Tensor, tuple[Tensor, ...]]]


def autograd_log_density(log_prob: Callable[[Tensor], Tensor]) -> LogDensityFn:
    """Wrap a plain log-density z -> (batch,) into a ``LogDensityFn`` that takes its gradient by autograd."""

    def fn(z: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            value = log_prob(z)
            (grad,) = torch.autograd.grad(value.sum(), z)
        return value.detach(), grad, ()

    return fn


def _select(accept: Tensor, new: Tensor, old: Tensor) -> Tensor:
    mask = accept.reshape(accept.shape + (1,) * (new.ndim - 1))
    return torch.where(mask, new, old)


class HamiltonianMonteCarlo:
    """HMC transitions for ``n_distributions`` intermediate distributions, each with its own step size.

    n_distributions: number of step sizes (one per AIS intermediate distribution).
    step_size: initial step size for all of them (units of z).
    n_leapfrog: leapfrog steps per transition; n_outer: transitions per call of ``step``.
    target_acceptance, adapt_factor: multiplicative adaptation of the step sizes (while not frozen).
    max_grad: elementwise clamp of the log-density gradient.
    project: a linear projection applied to momenta and gradients (None: the full space).
    """

    def __init__(
        self,
        n_distributions: int,
        step_size: float = 0.1,
        n_leapfrog: int = 4,
        n_outer: int = 1,
        target_acceptance: float = 0.65,
        adapt_factor: float = 1.05,
        max_grad: float = 1e3,
        project: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if n_distributions < 1 or n_leapfrog < 1 or n_outer < 1:
            raise ValueError(
                f"n_distributions, n_leapfrog and n_outer must be >= 1, got {n_distributions}, {n_leapfrog}, {n_outer}"
            )
        if not step_size > 0 or not adapt_factor >= 1 or not 0 < target_acceptance < 1 or not max_grad > 0:
            raise ValueError(
                "need step_size > 0, adapt_factor >= 1, 0 < target_acceptance < 1 and max_grad > 0; got "
                f"{step_size}, {adapt_factor}, {target_acceptance}, {max_grad}"
            )
        self.step_sizes = torch.full((n_distributions,), float(step_size), dtype=torch.float64)
        self.n_leapfrog = int(n_leapfrog)
        self.n_outer = int(n_outer)
        self.target_acceptance = float(target_acceptance)
        self.adapt_factor = float(adapt_factor)
        self.max_grad = float(max_grad)
        self.project = project
        self.adapting = True
        self.last_acceptance = torch.full((n_distributions,), float("nan"), dtype=torch.float64)

    def freeze(self) -> None:
        """Stop adapting the step sizes (evaluation)."""
        self.adapting = False

    def unfreeze(self) -> None:
        """Adapt the step sizes again (training)."""
        self.adapting = True

    def _clean(self, grad: Tensor) -> Tensor:
        grad = torch.nan_to_num(grad, nan=0.0, posinf=self.max_grad, neginf=-self.max_grad)
        grad = grad.clamp(-self.max_grad, self.max_grad)
        return grad if self.project is None else self.project(grad)

    def evaluate(self, z: Tensor, log_density: LogDensityFn) -> HMCPoint:
        """The ``HMCPoint`` at z (one call of ``log_density``)."""
        log_prob, grad, extras = log_density(z)
        return HMCPoint(z.detach(), log_prob.detach(), grad.detach(), tuple(e.detach() for e in extras))

    def _transition(
        self, point: HMCPoint, log_density: LogDensityFn, eps: float, generator: torch.Generator | None
    ) -> tuple[HMCPoint, Tensor]:
        z0 = point.z
        p0 = torch.randn(z0.shape, generator=generator, dtype=z0.dtype, device=z0.device)
        if self.project is not None:
            p0 = self.project(p0)
        z, p = z0, p0 + 0.5 * eps * self._clean(point.grad)
        for step in range(self.n_leapfrog):
            z = z + eps * p
            log_prob, grad, extras = log_density(z)
            grad = self._clean(grad)
            p = p + (eps if step < self.n_leapfrog - 1 else 0.5 * eps) * grad
        dims = tuple(range(1, z0.ndim))
        h0 = -point.log_prob + 0.5 * p0.pow(2).sum(dims)
        h1 = -log_prob.detach() + 0.5 * p.pow(2).sum(dims)
        log_accept = h0 - h1
        log_accept = torch.where(torch.isnan(log_accept), torch.full_like(log_accept, -torch.inf), log_accept)
        u = torch.rand(z0.shape[0], generator=generator, dtype=z0.dtype, device=z0.device)
        accept = torch.log(u) < log_accept
        accept_prob = log_accept.clamp(max=0.0).exp()
        new = HMCPoint(
            _select(accept, z.detach(), z0),
            torch.where(accept, log_prob.detach(), point.log_prob),
            _select(accept, grad.detach(), point.grad),
            tuple(_select(accept, e.detach(), e0) for e, e0 in zip(extras, point.extras)),
        )
        return new, accept_prob

    def step(
        self,
        point: HMCPoint,
        log_density: LogDensityFn,
        index: int = 0,
        generator: torch.Generator | None = None,
    ) -> tuple[HMCPoint, float]:
        """``n_outer`` HMC transitions of every chain with the step size of intermediate ``index``.

        point: the current states (from ``evaluate``, or the previous step). log_density: the density to leave
        invariant. Returns the new states and the mean acceptance probability over chains and transitions; adapts
        ``step_sizes[index]`` unless frozen.
        """
        if not 0 <= index < len(self.step_sizes):
            raise IndexError(f"index {index} out of range for {len(self.step_sizes)} step sizes")
        rates = []
        for _ in range(self.n_outer):
            point, accept_prob = self._transition(point, log_density, float(self.step_sizes[index]), generator)
            rate = float(accept_prob.mean())
            rates.append(rate)
            if self.adapting:
                factor = self.adapt_factor if rate > self.target_acceptance else 1.0 / self.adapt_factor
                self.step_sizes[index] *= factor
        rate = sum(rates) / len(rates)
        self.last_acceptance[index] = rate
        return point, rate

    def state_dict(self) -> dict:
        """Step sizes and the adaptation flag (for checkpoints)."""
        return {"step_sizes": self.step_sizes.clone(), "adapting": self.adapting}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``; the number of step sizes must match."""
        step_sizes = torch.as_tensor(state["step_sizes"], dtype=torch.float64)
        if step_sizes.shape != self.step_sizes.shape:
            raise ValueError(f"checkpoint has {len(step_sizes)} step sizes, this sampler {len(self.step_sizes)}")
        self.step_sizes = step_sizes.clone()
        self.adapting = bool(state["adapting"])

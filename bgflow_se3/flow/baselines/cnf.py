"""Continuous normalising flows on CoM-free particle coordinates: ODE integration, traces, the CoM-free base.

The flow runs from data (t = 0) to latent (t = 1) along ``dx/dt = f(x, t)``; the continuous change of variables
gives ``log q(x(0)) = log N_sub(x(1)) + int_0^1 div f(x(t), t) dt``. ``N_sub`` is the standard Gaussian restricted
to the CoM-free subspace and normalised there, on (n_atoms - 1) * dim degrees of freedom, so NLLs compare with the
literature. Integration is fixed-step RK4 (differentiable by backpropagation through the solver; torchdiffeq is not
a dependency). Divergences: ``"exact"`` (one autograd pass per coordinate, for small systems), ``"hutchinson"``
(one CoM-free Gaussian probe per solve, unbiased) or the dynamics' own closed form when it provides one.

Dynamics must be translation invariant and CoM preserving (true of the E-NF and kernel dynamics), so the full-space
trace equals the trace on the CoM-free subspace.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ...memory import check_fits, graph_bytes_per_item
from ..checks import check_positions

__all__ = [
    "ContinuousFlow",
    "TraceMethod",
    "com_free_gaussian_log_prob",
    "exact_divergence",
    "hutchinson_divergence",
    "remove_mean",
    "rk4_integrate",
    "sample_com_free_gaussian",
]

TraceMethod = Literal["exact", "hutchinson", "analytic"]


def remove_mean(x: Tensor) -> Tensor:
    """Subtract the centre of mass (equal masses). x: shape (batch, n_atoms, dim); returns the same shape."""
    return x - x.mean(dim=-2, keepdim=True)


def com_free_gaussian_log_prob(x: Tensor) -> Tensor:
    """log N(x; 0, I) on the CoM-free subspace, normalised on its (n_atoms - 1) * dim dimensions; nats.

    x: CoM-free positions, shape (batch, n_atoms, dim) (the CoM is removed first if present). Returns (batch,).
    """
    x = remove_mean(x)
    dof = (x.shape[-2] - 1) * x.shape[-1]
    return -0.5 * x.pow(2).sum(dim=(-2, -1)) - 0.5 * dof * math.log(2 * math.pi)


def sample_com_free_gaussian(
    n: int,
    n_atoms: int,
    dim: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw n CoM-free standard Gaussian configurations, shape (n, n_atoms, dim).

    Removing the mean of i.i.d. N(0, I) draws gives exactly the standard Gaussian on the subspace.
    ``generator`` may live on any device; draws are made on its device and moved.
    """
    gen_device = generator.device if generator is not None else device
    z = torch.randn(n, n_atoms, dim, generator=generator, dtype=dtype, device=gen_device)
    return remove_mean(z.to(device) if device is not None else z)


def exact_divergence(f: Tensor, x: Tensor, create_graph: bool) -> Tensor:
    """Exact trace of df/dx summed over all coordinates: n_atoms * dim autograd passes.

    f: dynamics output computed from x (requires grad), both shape (batch, n_atoms, dim). Returns (batch,).
    """
    flat_f = f.flatten(1)
    div = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    for k in range(flat_f.shape[1]):
        (g,) = torch.autograd.grad(flat_f[:, k].sum(), x, create_graph=create_graph, retain_graph=True)
        div = div + g.flatten(1)[:, k]
    return div


def hutchinson_divergence(f: Tensor, x: Tensor, probe: Tensor, create_graph: bool) -> Tensor:
    """Hutchinson estimate ``probe^T (df/dx) probe`` of the divergence; unbiased for a CoM-free Gaussian probe.

    f, x, probe: shape (batch, n_atoms, dim). Returns (batch,).
    """
    (vjp,) = torch.autograd.grad(f, x, probe, create_graph=create_graph, retain_graph=True)
    return (vjp * probe).sum(dim=(1, 2))


def rk4_integrate(
    func: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    x: Tensor,
    t0: float,
    t1: float,
    n_steps: int,
) -> tuple[Tensor, Tensor]:
    """Integrate ``dx/dt, dl/dt = func(t, x)`` from t0 to t1 with ``n_steps`` classic RK4 steps; l(t0) = 0.

    x: shape (batch, n_atoms, dim); dl/dt: shape (batch,) or (batch, k) (several accumulated integrals, e.g. the
    log-det and a regulariser). Returns ``(x(t1), l(t1))``, l shaped like dl/dt.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    h = (t1 - t0) / n_steps
    integral = torch.zeros((), dtype=x.dtype, device=x.device)
    for k in range(n_steps):
        t = torch.as_tensor(t0 + k * h, dtype=x.dtype, device=x.device)
        f1, d1 = func(t, x)
        f2, d2 = func(t + h / 2, x + h / 2 * f1)
        f3, d3 = func(t + h / 2, x + h / 2 * f2)
        f4, d4 = func(t + h, x + h * f3)
        x = x + h / 6 * (f1 + 2 * f2 + 2 * f3 + f4)
        integral = integral + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    return x, integral


class ContinuousFlow(nn.Module):
    """A CNF on CoM-free configurations of ``n_atoms`` particles in ``dim`` dimensions.

    dynamics: a module mapping ``(t, x)`` (t a 0-d tensor, x of shape (batch, n_atoms, dim)) to dx/dt of the same
    shape; it must be translation invariant and keep the CoM fixed. If it defines ``divergence(t, x)`` returning
    ``(dx/dt, div)`` it can be used with ``trace="analytic"``.
    trace: how the divergence is computed (see the module docstring); ``"auto"`` picks ``"analytic"`` when the
    dynamics has a closed form, else ``"exact"`` up to ``exact_max_dof`` coordinates, else ``"hutchinson"``.
    n_steps: RK4 steps on [0, 1].
    length_scale: std of the CoM-free Gaussian base in the length units of x (a fixed choice of the base; 1 is the
    literature's convention, the data's RMS coordinate trains faster). log q stays normalised on the subspace.
    kinetic_weight: strength of RNODE's kinetic-energy regulariser (Finlay et al. 2020), the auxiliary loss
    ``kinetic_weight * int_0^1 |f(x(t), t)|^2 dt`` per sample (``log_prob_and_aux``; length units of x squared).
    It keeps the trajectories straight and slow, so a fixed-step solve stays accurate: without it a CNF trained at
    few RK4 steps can learn a stiff field whose discretised log-det overstates the likelihood.
    """

    def __init__(
        self,
        dynamics: nn.Module,
        n_atoms: int,
        dim: int,
        n_steps: int = 20,
        trace: TraceMethod | Literal["auto"] = "auto",
        exact_max_dof: int = 16,
        length_scale: float = 1.0,
        kinetic_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if not length_scale > 0:
            raise ValueError(f"length_scale must be positive, got {length_scale}")
        if not kinetic_weight >= 0:
            raise ValueError(f"kinetic_weight must be >= 0, got {kinetic_weight}")
        self.length_scale = float(length_scale)
        self.kinetic_weight = float(kinetic_weight)
        if trace not in ("auto", "exact", "hutchinson", "analytic"):
            raise ValueError(f"trace must be 'auto', 'exact', 'hutchinson' or 'analytic', got {trace!r}")
        if trace == "analytic" and not hasattr(dynamics, "divergence"):
            raise ValueError(f"{type(dynamics).__name__} has no closed-form divergence; use 'exact' or 'hutchinson'")
        self.dynamics = dynamics
        self.n_atoms, self.dim, self.n_steps = int(n_atoms), int(dim), int(n_steps)
        if trace == "auto":
            if hasattr(dynamics, "divergence"):
                trace = "analytic"
            else:
                trace = "exact" if n_atoms * dim <= exact_max_dof else "hutchinson"
        self.trace: TraceMethod = trace
        self._graph_bytes: dict[tuple[Any, ...], float] = {}
        self._measuring = False

    def _reference(self) -> Tensor:
        return next(self.parameters())

    def _check(self, x: Tensor) -> Tensor:
        return remove_mean(check_positions(x, self.n_atoms, self.dim, self._reference()))

    def _integrate(
        self,
        x: Tensor,
        t0: float,
        t1: float,
        trace: TraceMethod,
        generator: torch.Generator | None,
        n_steps: int | None = None,
        kinetic: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """x(t1) and the integrated divergence from t0, shapes (batch, n_atoms, dim) and (batch,); with ``kinetic``
        the second output is (batch, 2): the integrated divergence and int |f|^2 dt (signed by t1 - t0)."""
        create_graph = torch.is_grad_enabled()
        if create_graph and x.shape[0] >= 64 and not self._measuring:
            self._guard_memory(x.shape[0], x.device, trace, n_steps, kinetic)
        probe = None
        if trace == "hutchinson":
            probe = sample_com_free_gaussian(
                x.shape[0], self.n_atoms, self.dim, generator=generator, dtype=x.dtype, device=x.device
            )

        def func(t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            if trace == "analytic":
                return self.dynamics.divergence(t, y)
            with torch.enable_grad():
                if not y.requires_grad:  # then y does not depend on the parameters: a fresh leaf is safe
                    y = y.detach().requires_grad_(True)
                f = self.dynamics(t, y)
                if trace == "exact":
                    div = exact_divergence(f, y, create_graph)
                else:
                    div = hutchinson_divergence(f, y, probe, create_graph)
            if not create_graph:
                f, div = f.detach(), div.detach()
            return f, div

        def with_kinetic(t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            f, div = func(t, y)
            return f, torch.stack([div, f.pow(2).sum(dim=(1, 2))], dim=-1)

        return rk4_integrate(with_kinetic if kinetic else func, x, t0, t1, n_steps or self.n_steps)

    def _guard_memory(self, batch: int, device: torch.device, trace: TraceMethod, n_steps: int | None, kinetic: bool):
        """``InsufficientMemoryError`` before a solve with gradients whose graph cannot fit (measured per
        configuration once per dtype, device, trace method and step count, on batches of 1 and 3)."""
        ref = self._reference()
        key = (ref.dtype, ref.device, trace, n_steps or self.n_steps, kinetic)
        if key not in self._graph_bytes:

            def run(size: int) -> None:
                generator = torch.Generator(device=ref.device).manual_seed(0)
                x = sample_com_free_gaussian(
                    size, self.n_atoms, self.dim, generator, dtype=ref.dtype, device=ref.device
                )
                self._integrate(x, 0.0, 1.0, trace, generator, n_steps, kinetic)

            self._measuring = True
            try:
                self._graph_bytes[key] = graph_bytes_per_item(run)
            finally:
                self._measuring = False
        check_fits(
            batch * self._graph_bytes[key],
            device,
            f"a CNF solve of {batch} configurations with gradients",
            "use a smaller batch, fewer RK4 steps, the Hutchinson trace, or torch.no_grad() when no gradient is needed",
        )

    def forward_with_log_det(
        self,
        x: Tensor,
        trace: TraceMethod | None = None,
        generator: torch.Generator | None = None,
        n_steps: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Map data to latent: ``z = x(1)`` and ``int_0^1 div f dt`` (= log |det dz/dx|).

        Shapes (batch, n_atoms, dim) and (batch,). n_steps overrides the flow's RK4 step count for this solve.
        """
        return self._integrate(self._check(x), 0.0, 1.0, trace or self.trace, generator, n_steps)

    def log_prob(
        self,
        x: Tensor,
        trace: TraceMethod | None = None,
        generator: torch.Generator | None = None,
        n_steps: int | None = None,
    ) -> Tensor:
        """log q(x) in nats, shape (batch,), for x of shape (batch, n_atoms, dim) (the CoM is removed first).

        trace overrides the flow's default divergence method (e.g. ``"exact"`` for evaluation after training with
        ``"hutchinson"``); ``generator`` seeds the Hutchinson probe; n_steps overrides the RK4 step count (e.g. a
        finer solve for evaluation).
        """
        z, log_det = self.forward_with_log_det(x, trace, generator, n_steps)
        return self._base_log_prob(z) + log_det

    def log_prob_and_aux(
        self, x: Tensor, trace: TraceMethod | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """log q(x) (nats) and the kinetic-energy regulariser ``kinetic_weight * int_0^1 |f|^2 dt``, both (batch,).

        One solve gives both; the aux loss is zero (and costs nothing) when ``kinetic_weight`` is 0.
        """
        if self.kinetic_weight == 0:
            log_q = self.log_prob(x, trace, generator)
            return log_q, torch.zeros_like(log_q)
        z, integrals = self._integrate(self._check(x), 0.0, 1.0, trace or self.trace, generator, kinetic=True)
        return self._base_log_prob(z) + integrals[:, 0], self.kinetic_weight * integrals[:, 1]

    def solver_log_prob_error(self, x: Tensor, refine: int = 4, trace: TraceMethod | None = None) -> Tensor:
        """|log q(x)| difference between the flow's fixed-step solve and one with ``refine`` times more steps, nats.

        A CNF trained with few fixed RK4 steps can learn a stiff field whose discretised log-det no longer matches
        the map (its "density" then fails to normalise: a test NLL below the target's entropy is the symptom). Check
        trained flows with this before trusting their NLL or importance weights. x: (batch, n_atoms, dim); returns
        (batch,). ``trace`` as in ``log_prob`` (Hutchinson estimates share one probe seed across both solves).
        """
        if refine < 2:
            raise ValueError(f"refine must be at least 2, got {refine}")
        with torch.no_grad():
            coarse = self.log_prob(x, trace, torch.Generator(device=x.device).manual_seed(0))
            fine = self.log_prob(x, trace, torch.Generator(device=x.device).manual_seed(0), self.n_steps * refine)
        return (coarse - fine).abs()

    def _base_log_prob(self, z: Tensor) -> Tensor:
        dof = (self.n_atoms - 1) * self.dim
        return com_free_gaussian_log_prob(z / self.length_scale) - dof * math.log(self.length_scale)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw n configurations and their log q: shapes (n, n_atoms, dim) CoM-free and (n,), nats.

        Integrates from latent (t = 1) back to data (t = 0); the divergence is accumulated along the same path, so
        ``log q(x) = log N_sub(z) - int_1^0 div f dt``. Differentiable w.r.t. the parameters when grad is enabled.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        ref = self._reference()
        z = sample_com_free_gaussian(n, self.n_atoms, self.dim, generator, dtype=ref.dtype, device=ref.device)
        z = z * self.length_scale
        x, delta = self._integrate(z, 1.0, 0.0, self.trace, generator)
        return x, self._base_log_prob(z) - delta

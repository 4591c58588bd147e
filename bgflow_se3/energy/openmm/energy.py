"""OpenMMEnergy: batched reduced energies and forces of a non-periodic openmm.System, in-process or in workers."""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ...errors import EnergyEvaluationError, UnsupportedSystemError, WorkerError
from ..base import Energy, OnError
from .worker import evaluate_batch, make_context

__all__ = ["OpenMMEnergy", "check_system"]


class _LocalBackend:
    """One Context in this process (``n_workers=1``): the same evaluation code the workers run."""

    def __init__(
        self, system_xml: str, platform: str, properties: dict[str, str] | None, virtual_sites: tuple[int, ...]
    ) -> None:
        self._context = make_context(system_xml, platform, properties)
        self._virtual_sites = virtual_sites
        self.closed = False

    def evaluate(
        self, positions: np.ndarray, indices: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """As ``WorkerPool.evaluate`` (``indices`` only name configurations in a pool's errors)."""
        if self.closed:
            raise WorkerError("this OpenMMEnergy is closed; create a new OpenMMEnergy")
        return evaluate_batch(self._context, positions, self._virtual_sites)

    def pids(self) -> list[int]:
        return []

    def close(self) -> None:
        self.closed = True
        self._context = None


class _ReducedEnergyFunction(torch.autograd.Function):
    """u(x) from precomputed forces: backward is ``grad_u * (-force)``, no second evaluation."""

    @staticmethod
    def forward(ctx, x: Tensor, evaluate) -> Tensor:
        u, force = evaluate(x)
        ctx.save_for_backward(force)
        return u

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_u: Tensor):
        (force,) = ctx.saved_tensors
        return -grad_u[:, None, None] * force, None


def _kelvin(temperature: Any) -> float:
    if hasattr(temperature, "value_in_unit"):
        import openmm.unit as unit

        if not temperature.unit.is_compatible(unit.kelvin):
            raise ValueError(f"temperature must be in kelvin (a float or an openmm Quantity), got {temperature}")
        return float(temperature.value_in_unit(unit.kelvin))
    return float(temperature)


def check_system(
    system: Any,
    allow_periodic: bool = False,
    allow_constraints: bool = False,
    allow_virtual_sites: bool = False,
) -> None:
    """Raise ``UnsupportedSystemError`` naming why ``system`` does not suit a Boltzmann generator.

    The flow models every Cartesian coordinate of every particle in open space, so periodic boxes, constraints and
    virtual sites are refused unless explicitly allowed.
    """
    import openmm

    if not isinstance(system, openmm.System):
        raise TypeError(f"system must be an openmm.System, got {type(system).__name__}")
    if system.getNumParticles() == 0:
        raise UnsupportedSystemError("the System has no particles")
    if not allow_periodic and system.usesPeriodicBoundaryConditions():
        periodic = [
            f"{i} ({type(force).__name__})"
            for i, force in enumerate(system.getForces())
            if force.usesPeriodicBoundaryConditions()
        ]
        raise UnsupportedSystemError(
            f"the System uses periodic boundary conditions (forces {', '.join(periodic)}); flows here model "
            "molecules in open space. Rebuild it with nonbondedMethod=NoCutoff (or CutoffNonPeriodic), or pass "
            "allow_periodic=True to evaluate it as is"
        )
    if not allow_constraints and system.getNumConstraints() > 0:
        raise UnsupportedSystemError(
            f"the System has {system.getNumConstraints()} distance constraints; the flow moves every Cartesian "
            "coordinate, so constrained distances would not be kept. Rebuild it with constraints=None (and "
            "rigidWater=False), or pass allow_constraints=True to evaluate energies at the given coordinates "
            "(constraints are then neither applied nor checked)"
        )
    if not allow_virtual_sites:
        sites = [i for i in range(system.getNumParticles()) if system.isVirtualSite(i)]
        if sites:
            raise UnsupportedSystemError(
                f"the System has {len(sites)} virtual sites (first: particle {sites[0]}); their positions are "
                "functions of other atoms, not degrees of freedom. Use a model without virtual sites, or pass "
                "allow_virtual_sites=True (their input coordinates are then ignored and get zero force)"
            )


class OpenMMEnergy(Energy):
    """Reduced energies ``u = E / kT`` and forces of an ``openmm.System``, batched, differentiable.

    ``energy(x)``: x of shape (batch, n_atoms, 3) in nm, float32 or float64 on any device; returns u (batch,),
    dimensionless, on x's device and dtype. Each configuration costs one OpenMM call returning energy and forces
    together (evaluated in float64); the backward pass reuses those forces (``grad_x = -grad_u * force``), so
    autograd never calls OpenMM again. ``energy.force(x)`` returns OpenMM's forces divided by kT, in 1/nm.
    ``energy_and_force(x)`` returns both from one evaluation.

    system: a non-periodic openmm.System without constraints or virtual sites (see ``check_system``; the
    ``allow_*`` flags lift those checks). temperature: kelvin, a float or an openmm Quantity.
    platform, platform_properties: as for ``openmm.Context`` ("Reference" is deterministic, so results repeat
    bit for bit; with workers on "CPU", each Context gets ``usable_cores() // n_workers`` threads unless "Threads" is
    given). n_workers: 1 evaluates in this process; more start that many worker processes (fresh
    interpreters, spawn semantics, never fork), each with its own Context, and split each batch into chunks across
    them. The results equal ``n_workers=1`` exactly. Workers import only numpy and openmm (not torch, not your
    ``__main__``), so they start in about a second and scripts need no ``__main__`` guard.

    Failures: a configuration with NaN/inf coordinates, one where OpenMM raises, or one with a non-finite energy or
    force (including overflow of the input dtype) gets ``u = +inf`` and zero force when ``on_error="inf"``, and
    raises ``NonFiniteInputError`` / ``EnergyEvaluationError`` when ``on_error="raise"``. Never energy 0.

    Workers: every wait has a deadline (``timeout_s`` seconds per reply: a worker starting or one chunk of at most
    32 KiB of positions); a timeout kills that worker and raises ``WorkerError``. A worker that dies is restarted
    and its chunk re-run, up to ``max_retries`` deaths per call. Workers exit on ``close()``, on leaving a ``with``
    block, when this object is garbage collected, at interpreter exit, and by themselves when this process dies.
    With ``n_workers=1`` OpenMM runs in this process, where a call cannot be interrupted: ``timeout_s`` does not
    apply. One evaluation runs at a time (calls from several threads are serialised). The System is serialised
    when the energy is built: later changes to ``system`` do not reach the Contexts.
    """

    def __init__(
        self,
        system: Any,
        temperature: Any = 300.0,
        platform: str = "Reference",
        n_workers: int = 1,
        *,
        platform_properties: dict[str, str] | None = None,
        timeout_s: float = 120.0,
        on_error: OnError = "inf",
        allow_periodic: bool = False,
        allow_constraints: bool = False,
        allow_virtual_sites: bool = False,
        max_retries: int = 3,
    ) -> None:
        import openmm

        check_system(system, allow_periodic, allow_constraints, allow_virtual_sites)
        super().__init__(system.getNumParticles(), 3, temperature=_kelvin(temperature), on_error=on_error)
        if int(n_workers) != n_workers or n_workers < 1:
            raise ValueError(f"n_workers must be a positive integer, got {n_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive (seconds), got {timeout_s}")
        if int(max_retries) != max_retries or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, got {max_retries}")
        self.system = system
        self.platform = str(platform)
        self.n_workers = int(n_workers)
        self._lock = threading.Lock()
        system_xml = openmm.XmlSerializer.serialize(system)
        virtual_sites = tuple(i for i in range(system.getNumParticles()) if system.isVirtualSite(i))
        if self.n_workers == 1:
            self._backend: Any = _LocalBackend(system_xml, self.platform, platform_properties, virtual_sites)
        else:
            from .pool import WorkerPool

            if self.platform == "CPU" and "Threads" not in (platform_properties or {}):
                # n_workers Contexts each starting one thread per core would oversubscribe the machine
                from ...threads import usable_cores

                threads = str(max(1, usable_cores() // self.n_workers))
                platform_properties = {**(platform_properties or {}), "Threads": threads}

            self._backend = WorkerPool(
                system_xml,
                self.platform,
                platform_properties,
                self.n_workers,
                timeout_s=timeout_s,
                virtual_sites=virtual_sites,
                max_retries=max_retries,
            )
        self._finalizer = weakref.finalize(self, self._backend.close)

    # ------------------------------------------------------------------------------------------- public API
    def forward(self, x: Tensor) -> Tensor:
        """Reduced energy u(x) = E(x)/kT, shape (batch,), differentiable through OpenMM's forces."""
        x = self.validate(x)
        return _ReducedEnergyFunction.apply(x, self._evaluate)

    def force(self, x: Tensor) -> Tensor:
        """OpenMM's forces over kT, ``-du/dx`` in 1/nm, shape (batch, n_atoms, 3); zero where u = +inf."""
        return self._evaluate(self.validate(x))[1]

    def energy_and_force(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, force)`` from one evaluation: u (batch,) in kT, force (batch, n_atoms, 3) in 1/nm; no autograd."""
        return self._evaluate(self.validate(x))

    def worker_pids(self) -> list[int]:
        """Process ids of the worker processes (empty for ``n_workers=1``)."""
        return self._backend.pids()

    def close(self) -> None:
        """Shut the workers down (or release the in-process Context). Idempotent; later calls raise WorkerError."""
        self._finalizer()

    def __getstate__(self):
        raise TypeError(
            "OpenMMEnergy holds OpenMM Contexts and worker processes and cannot be pickled or deep-copied; "
            "build a new one from the System (OpenMMEnergy(energy.system, energy.temperature, ...))"
        )

    def __enter__(self) -> OpenMMEnergy:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def extra_repr(self) -> str:
        return (
            f"n_atoms={self.n_atoms}, temperature={self.temperature:g} K, platform={self.platform!r}, "
            f"n_workers={self.n_workers}, on_error={self.on_error!r}"
        )

    # ------------------------------------------------------------------------------------------- evaluation
    def _evaluate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """u (batch,) and force (batch, n_atoms, 3) on x's device and dtype, with the failure policy applied."""
        finite = self.finite_mask(x).cpu().numpy()
        positions = x.detach().to(device="cpu", dtype=torch.float64).numpy()
        batch = positions.shape[0]
        energies = np.full(batch, np.nan)
        forces = np.zeros(positions.shape, dtype=np.float64)
        failures: dict[int, str] = {}
        rows = np.flatnonzero(finite)
        if rows.size:
            chunk = np.ascontiguousarray(positions if rows.size == batch else positions[rows])
            with self._lock:
                e, f, fail = self._backend.evaluate(chunk, rows)
            energies[rows], forces[rows] = e, f
            failures = {int(rows[i]): message for i, message in fail.items()}
        kT = self.kT
        u = torch.from_numpy(energies / kT).to(device=x.device, dtype=x.dtype)
        force = torch.from_numpy(forces / kT).to(device=x.device, dtype=x.dtype)
        ok = torch.isfinite(u) & torch.isfinite(force).flatten(1).all(dim=1)
        evaluated = torch.from_numpy(finite).to(x.device)
        bad_results = evaluated & ~ok
        if self.on_error == "raise" and bool(bad_results.any()):
            index = int(bad_results.nonzero()[0])
            reason = failures.get(index, f"the energy {energies[index] / kT:.6g} kT overflows {x.dtype}")
            raise EnergyEvaluationError(
                f"{int(bad_results.sum())} of {batch} configurations failed to evaluate (first at batch index "
                f"{index}: {reason}); pass on_error='inf' to get u=+inf and zero force for them instead"
            )
        if not bool(ok.all()):  # failed evaluations and non-finite inputs
            u = torch.where(ok, u, torch.full_like(u, float("inf")))
            force = torch.where(ok[:, None, None], force, torch.zeros_like(force))
        return u, force

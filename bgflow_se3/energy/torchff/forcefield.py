"""TorchForceField: an openmm.System compiled into batched torch energy terms (CPU or GPU, float32 or float64).

Every force goes through ``registry.compile_force``; the standard terms are evaluated together in one fused analytic
pass (``fused``), the others through autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import InsufficientMemoryError, UnsupportedSystemError
from ...memory import available_bytes, format_bytes
from ..base import Energy, OnError
from .base import ForceTerm, plain
from .fused import FusedParameters, fused_energy_and_gradient
from .registry import compile_force
from .standard import FUSED_TERMS, GBSAOBCTerm, build_fused_parameters

__all__ = ["TorchForceField"]

#: Working memory per atom pair and configuration, in units of the dtype's size, that the chunking on GPUs plans
#: with: measured peaks are ~26 (aldp, OBC, fused pass) and ~52 (GBn2, autograd), so 64 is a safe bound.
_BYTES_PER_PAIR = 64


class TorchForceField(Energy):
    """An ``openmm.System`` compiled into batched torch: reduced energies ``u = E / kT`` and forces, on any device.

    Build with :meth:`from_system`. Same interface and units as ``OpenMMEnergy``: ``ff(x)`` takes positions in
    nm, shape ``(batch, n_atoms, 3)``, and returns ``u = E / kT`` with E in kJ/mol and ``kT = R T``, shape
    ``(batch,)``, differentiable with respect to ``x``; ``ff.force(x)`` returns ``-du/dx`` in 1/nm and
    ``ff.energy_and_force(x)`` both from one evaluation; ``ff.potential_energy(x, groups)`` gives E in kJ/mol
    (of the chosen force groups). The dtype follows the input (parameters are float64 buffers cast per call;
    float32 is off by about 2e-6 relative in aldp energies and 3e-6 in forces), the device follows ``.to(device)``.

    With ``analytic_gradient=True`` (the default) the standard terms (bonds, angles, periodic torsions,
    ``NonbondedForce``, ``GBSAOBCForce``) are evaluated with their analytic gradient in one fused pass
    (``torchff.fused``): Lennard-Jones, Coulomb and OBC share one pair list, so distances are computed once;
    the other terms (custom forces, CMAP) are evaluated through autograd and added. ``force``/``energy_and_force``
    keep no autograd graph beyond one CPU chunk, and autograd through ``ff(x)`` uses the precomputed gradient of
    the fused part (differentiable once; pass ``analytic_gradient=False`` for double backward).

    Supported forces:

    - ``HarmonicBondForce``, ``HarmonicAngleForce``, ``PeriodicTorsionForce``;
    - ``NonbondedForce`` with ``NoCutoff`` (LJ + Coulomb, exclusions, exceptions incl. scaled 1-4);
    - ``GBSAOBCForce`` with ``NoCutoff`` (what ``amber99_obc.xml`` and Amber prmtop ``OBC2`` produce);
    - ``CMAPTorsionForce`` (OpenMM's bicubic maps; CHARMM36, ff19SB);
    - ``CustomBondForce``, ``CustomAngleForce``, ``CustomTorsionForce``, ``CustomExternalForce``,
      ``CustomCompoundBondForce``, ``CustomCentroidBondForce`` (``custom_bonded``: umbrella biases, restraints,
      CHARMM36's 1-4 LJ pairs, the LJ clusters' centre restraint);
    - ``CustomNonbondedForce`` with ``NoCutoff`` (per-particle parameters, computed values, tabulated functions,
      exclusions, interaction groups; CHARMM NBFIX tables) and ``CustomGBForce`` with ``NoCutoff`` (every
      computed-value and energy-term kind: ``implicit/obc2.xml``, ``gbn2.xml``, openmmtools' implicit systems)
      (``custom_nonbonded``);
    - ``CMMotionRemover`` is ignored. An LJ cluster fits as a ``NonbondedForce`` with zero charges.

    Custom expressions are compiled from OpenMM's Lepton language (``expressions``); global parameters take the
    System's default values (changing them later in an OpenMM Context does not reach this object). Anything else
    (``RBTorsionForce``, ``CustomHbondForce``, ``CustomManyParticleForce``,
    ``CustomCVForce``, AMOEBA, ...) raises ``UnsupportedForceError``; periodic boxes, cutoffs (any force),
    constraints and virtual sites raise ``UnsupportedSystemError``.

    Memory: bonded terms are O(n_terms) per configuration; the nonbonded terms are O(n_atoms^2): the fused pass
    holds about 30 ``(n_pairs, batch)`` tensors for OBC (n_pairs = n_atoms (n_atoms - 1) / 2), the autograd
    path a few ``(batch, n_pairs)`` tensors for ``NonbondedForce`` and about 20 dense ``(batch, n_atoms,
    n_atoms)`` tensors for ``GBSAOBCForce``; a ``CustomGBForce`` keeps the intermediates of its expressions over
    both orderings of every pair for the backward pass (about 50 ``(2 n_pairs, batch)`` tensors for GBn2).
    Measured peak for alanine dipeptide (22 atoms), energy + forces of a whole batch at once
    (``cpu_chunk_size=None``): 0.10 MB per configuration in implicit solvent and 0.04 MB in vacuum in float64
    (0.05 / 0.02 MB in float32; about 0.13 MB implicit on the autograd path), 0.20 MB with amber14 + GBn2
    (0.12 MB in float32), i.e. about 0.4 (0.8) GB for a batch of 4096 in float64. On CPU, ``cpu_chunk_size``
    bounds the working set to one chunk, for the custom terms too (their autograd graph is freed chunk by chunk).

    Speed, energy + forces through the fused pass against a per-sample OpenMM Reference loop in the same run
    (2-core CPU shared with other jobs, one torch thread, median of 3 runs; ``benchmarks/energy_throughput.py``):
    aldp implicit at batch 1024 2.3x (float64) and 4.0x (float32) the loop's throughput, vacuum 4.3x and 6.5x
    (autograd through every term: 0.5x and 1.5x in float64). Systems with custom forces, where OpenMM's Reference
    platform interprets the expressions per pair, at batch 1024 in float64 (float32): amber14 + OBC2 28x (47x),
    amber14 + GBn2 28x (49x), openmmtools' AlanineDipeptideImplicit 24x (41x), ff19SB with CMAP 31x (44x),
    CHARMM36 30x (50x) (load average 3.4-3.7 on the 2 cores). On a CPU busy with other work keep torch at one
    thread (``torch.set_num_threads(1)``): two threads on two busy cores ran 10-30x slower (each of the many
    small kernels waits for the descheduled thread).
    """

    def __init__(
        self,
        terms: Sequence[ForceTerm],
        n_atoms: int,
        temperature: float = 300.0,
        on_error: OnError = "inf",
        compile: bool = False,
        cpu_chunk_size: int | None = 256,
        analytic_gradient: bool = True,
    ) -> None:
        super().__init__(n_atoms, 3, temperature=temperature, on_error=on_error)
        if cpu_chunk_size is not None and cpu_chunk_size < 1:
            raise ValueError(f"cpu_chunk_size must be a positive int or None, got {cpu_chunk_size}")
        self.terms = nn.ModuleList(terms)
        self.cpu_chunk_size = cpu_chunk_size
        self.analytic_gradient = bool(analytic_gradient)
        self._compiled: Callable[[Tensor], Tensor] | None = None
        self._fused: Callable[..., tuple[Tensor, Tensor]] = fused_energy_and_gradient
        if compile and self.analytic_gradient:
            self._fused = torch.compile(fused_energy_and_gradient, dynamic=True)
        elif compile:
            self._compiled = torch.compile(self._total_energy, dynamic=True)
        self._compile = bool(compile)
        self._fused_cache: dict[tuple[Any, ...], FusedParameters] = {}

    @classmethod
    def from_system(
        cls,
        system: Any,
        temperature: float = 300.0,
        *,
        on_error: OnError = "inf",
        compile: bool = False,
        cpu_chunk_size: int | None = 256,
        analytic_gradient: bool = True,
    ) -> TorchForceField:
        """Compile ``system`` (an ``openmm.System``) at ``temperature`` (kelvin); parameters come from the System.

        compile: wrap the evaluation in ``torch.compile`` (the first call per dtype compiles, which takes a
            minute or more on CPU and needs a C++ compiler there); off by default.
        cpu_chunk_size: on CPU, batches larger than this are evaluated in chunks of this many configurations,
            which keeps the O(n_atoms^2) intermediates in cache (256 was fastest for aldp, in both dtypes);
            None evaluates the whole batch at once. Other devices take the whole batch when it fits in half
            their free memory, else chunks that do (``InsufficientMemoryError`` if not one configuration fits).
        analytic_gradient: evaluate the standard terms with analytic gradients in one fused pass (several times
            faster than autograd for energy + forces); the result is differentiable once only, so pass False for
            double backward (e.g. losses on forces), which builds the plain autograd graph per term.
        Raises ``UnsupportedSystemError`` / ``UnsupportedForceError`` as described in the class docstring.
        """
        n_atoms = system.getNumParticles()
        if n_atoms < 1:
            raise UnsupportedSystemError("the System has no particles")
        if system.usesPeriodicBoundaryConditions():
            raise UnsupportedSystemError(
                "the System uses periodic boundary conditions; TorchForceField supports only non-periodic "
                "Systems (vacuum or implicit solvent with NoCutoff); use OpenMMEnergy for periodic Systems"
            )
        terms = []
        masses = [plain(system.getParticleMass(i)) for i in range(n_atoms)]
        for index, force in enumerate(system.getForces()):
            term = compile_force(force, index, masses)
            if term is None:
                continue
            if isinstance(term, GBSAOBCTerm):
                term.analytic_gradient = analytic_gradient
            if term.per_particle and force.getNumParticles() != n_atoms:
                raise UnsupportedSystemError(
                    f"force {index} ({type(force).__name__}) has {force.getNumParticles()} particles, "
                    f"the System {n_atoms}"
                )
            terms.append(term)
        if system.getNumConstraints() > 0:
            raise UnsupportedSystemError(
                f"the System has {system.getNumConstraints()} constraints; TorchForceField evaluates "
                "unconstrained Systems only: build it with constraints=None and rigidWater=False"
            )
        virtual = [p for p in range(n_atoms) if system.isVirtualSite(p)]
        if virtual:
            raise UnsupportedSystemError(
                f"the System has {len(virtual)} virtual sites (first: particle {virtual[0]}); "
                "TorchForceField does not support virtual sites"
            )
        return cls(
            terms,
            n_atoms,
            temperature=temperature,
            on_error=on_error,
            compile=compile,
            cpu_chunk_size=cpu_chunk_size,
            analytic_gradient=analytic_gradient,
        )

    def potential_energy(self, x: Tensor, groups: Iterable[int] | None = None) -> Tensor:
        """Potential energy E(x) in kJ/mol, shape ``(batch,)``, for positions in nm, shape (batch, n_atoms, 3).

        groups: force groups to include (as OpenMM's ``getState(groups=...)``); None includes every term.
        No NaN policy here: non-finite positions give non-finite energies (``forward`` applies the policy).
        """
        x = self.validate(x)
        if x.shape[0] == 0:
            return x.new_zeros(0) + 0.0 * x.sum()  # empty, and still attached to x's graph
        return self._energy(x, None if groups is None else frozenset(groups))

    def force(self, x: Tensor) -> Tensor:
        """Force ``-du/dx`` in 1/nm, shape ``(batch, n_atoms, 3)``; zero for configurations with u = +inf."""
        return self.energy_and_force(x)[1]

    def energy_and_force(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, force)`` from one evaluation: u (batch,) in kT, force (batch, n_atoms, 3) in 1/nm, no autograd
        graph kept (terms outside the fused pass are differentiated chunk by chunk). Non-finite configurations, and
        finite ones whose energy or force is not finite (coincident atoms where OpenMM's energy or force is not
        finite either: interacting pairs, bonded pairs whose angle is then undefined; float32 overflow), get u = +inf
        and zero force (or raise, as ``on_error`` says). Coincident atoms that OpenMM evaluates to finite numbers
        (e.g. an excluded 1-3 pair) give the same finite numbers here."""
        x = self.validate(x)
        if x.shape[0] == 0:
            return x.new_zeros(0), torch.zeros_like(x)
        finite = self.finite_mask(x)
        all_finite = bool(finite.all())
        if not all_finite:
            x = torch.where(finite[:, None, None], x, _stand_in(x))
        if self.analytic_gradient:
            with torch.no_grad():
                parameters = self.fused_parameters(None, x.dtype, x.device)
                energy, grad = self._fused(x.detach(), parameters, True, self._chunk(x))
            others = self._autograd_terms(None)
        else:
            energy, grad, others = None, None, list(self.terms)
        if others:
            compiled = self._compiled if not self.analytic_gradient else None
            more_energy, more_grad = self._autograd_energy_and_gradient(x, others, compiled)
            energy = more_energy if energy is None else energy + more_energy
            grad = more_grad if grad is None else grad + more_grad
        u, force = energy / self.kT, grad / -self.kT
        if not all_finite:
            u = torch.where(finite, u, torch.full_like(u, float("inf")))
        # Finite rows whose energy is NaN or -inf, or whose force is not finite (coincident atoms, float32
        # overflow): u = +inf and zero force, or raise, as on_error says.
        broken = torch.isfinite(u) & ~torch.isfinite(force).flatten(1).all(dim=1)
        u = self._failed_to_inf(torch.where(broken, torch.full_like(u, float("nan")), u), x.dtype, finite)
        infinite = torch.isinf(u)
        if bool(infinite.any()):
            force = torch.where(infinite[:, None, None], torch.zeros_like(force), force)
        return u, force

    def fused_parameters(self, groups: frozenset[int] | None, dtype: torch.dtype, device: torch.device):
        """The standard terms of ``groups`` (None: all) as ``fused.FusedParameters`` in ``dtype`` on
        ``device`` (built once per combination and cached; moving the module clears the cache). Terms without a
        fused form (custom forces, CMAP) are left out: they go through autograd."""
        key = (groups, dtype, torch.device(device))
        if key not in self._fused_cache:
            terms = [
                t for t in self.terms if isinstance(t, FUSED_TERMS) and (groups is None or t.force_group in groups)
            ]
            self._fused_cache[key] = build_fused_parameters(terms, self.n_atoms, dtype, torch.device(device))
        return self._fused_cache[key]

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> TorchForceField:
        self._fused_cache = {}
        return super()._apply(fn, recurse)

    def _chunk(self, x: Tensor) -> int | None:
        # A compiled pass is fused already (and chunk loops would recompile per batch size).
        if self._compile:
            return None
        return self.cpu_chunk_size if x.device.type == "cpu" else self._device_chunk(x)

    def _device_chunk(self, x: Tensor) -> int | None:
        """Configurations per pass on a non-CPU device: the whole batch when it fits in half the free memory at
        ``_BYTES_PER_PAIR`` bytes per atom pair and configuration, else as many as fit (``InsufficientMemoryError``
        when not even one does)."""
        per_config = _BYTES_PER_PAIR * self.n_atoms**2 * x.element_size()
        free = available_bytes(x.device)
        fits = int(0.5 * free // per_config)
        if fits < 1:
            raise InsufficientMemoryError(
                f"the energy and forces of one configuration would need about {format_bytes(per_config)} on "
                f"{x.device}, but only {format_bytes(free)} is free; evaluate on the CPU or free memory"
            )
        return None if x.shape[0] <= fits else fits

    def _parts(self, x: Tensor) -> Sequence[Tensor]:
        """``x`` split into chunks: ``cpu_chunk_size`` configurations on CPU, as many as fit on other devices."""
        chunk = self.cpu_chunk_size if x.device.type == "cpu" else self._device_chunk(x)
        if chunk is not None and x.shape[0] > chunk:
            return x.split(chunk)
        return (x,)

    def _autograd_terms(self, groups: frozenset[int] | None) -> list[ForceTerm]:
        """The terms of ``groups`` without a fused analytic form (custom forces, CMAP)."""
        return [t for t in self.terms if not isinstance(t, FUSED_TERMS) and (groups is None or t.force_group in groups)]

    def _autograd_energy_and_gradient(
        self, x: Tensor, terms: Sequence[ForceTerm], compiled: Callable[[Tensor], Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Energy (kJ/mol, (batch,)) and dE/dx (kJ/mol/nm, (batch, n_atoms, 3)) of ``terms`` through autograd,
        chunk by chunk on CPU (each chunk's graph is freed before the next)."""
        energies, grads = [], []
        for part in self._parts(x):
            with torch.enable_grad():
                xg = part.detach().requires_grad_(True)
                energy = compiled(xg) if compiled is not None else _sum_terms(xg, terms)
                (grad,) = torch.autograd.grad(energy.sum(), xg)
            energies.append(energy.detach())
            grads.append(grad)
        if len(energies) == 1:
            return energies[0], grads[0]
        return torch.cat(energies), torch.cat(grads)

    def _energy(self, x: Tensor, groups: frozenset[int] | None) -> Tensor:
        if not self.analytic_gradient:
            if groups is None and self._compiled is not None:
                evaluate = self._compiled
            else:
                terms = [t for t in self.terms if groups is None or t.force_group in groups]

                def evaluate(part: Tensor) -> Tensor:
                    return _sum_terms(part, terms)

            return _concatenate([evaluate(part) for part in self._parts(x)])
        parameters = self.fused_parameters(groups, x.dtype, x.device)
        energy = _FusedEnergy.apply(x, parameters, self._fused, self._chunk(x))
        others = self._autograd_terms(groups)
        if others:
            energy = energy + _concatenate([_sum_terms(part, others) for part in self._parts(x)])
        return energy

    def _total_energy(self, x: Tensor) -> Tensor:
        return _sum_terms(x, self.terms)

    def _reduced_energy(self, x: Tensor) -> Tensor:
        return self.potential_energy(x) / self.kT

    def extra_repr(self) -> str:
        return (
            f"n_atoms={self.n_atoms}, temperature={self.temperature}, analytic_gradient={self.analytic_gradient}, "
            f"compiled={self._compile}"
        )


def _sum_terms(x: Tensor, terms: Iterable[ForceTerm]) -> Tensor:
    """Sum of the energies (kJ/mol, (batch,)) of ``terms`` at positions ``x`` (nm, (batch, n_atoms, 3))."""
    energy = x.new_zeros(x.shape[0])
    for term in terms:
        energy = energy + term(x)
    return energy


def _stand_in(x: Tensor) -> Tensor:
    """Stand-in positions for non-finite rows, shape (n_atoms, 3), nm, in ``x``'s dtype and device: a helix with
    about 0.5 nm between neighbours, so that no distance, angle or dihedral is degenerate and autograd through
    every term stays finite."""
    k = torch.arange(x.shape[1], dtype=x.dtype, device=x.device)
    return torch.stack([0.3 * torch.cos(1.7 * k), 0.3 * torch.sin(1.7 * k), 0.15 * k], dim=-1)


def _concatenate(parts: Sequence[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(list(parts))


class _FusedEnergy(torch.autograd.Function):
    """Total energy from ``fused_energy_and_gradient``; the backward uses the gradient computed alongside.

    Differentiable once with respect to the positions (not the parameters).
    """

    @staticmethod
    def forward(ctx, x, parameters, fused, chunk):
        energy, grad = fused(x, parameters, ctx.needs_input_grad[0], chunk)
        ctx.save_for_backward(grad)
        return energy

    @staticmethod
    def backward(ctx, grad_energy):
        if torch.is_grad_enabled():  # create_graph=True: a second derivative would silently be wrong
            raise RuntimeError(
                "TorchForceField's analytic gradient is differentiable once only; build it with "
                "analytic_gradient=False to differentiate forces (create_graph=True)"
            )
        (grad,) = ctx.saved_tensors
        scale = grad_energy.view(-1, 1, 1)
        # Rows that do not reach the loss (e.g. masked +inf energies) may hold non-finite gradients: keep them out.
        zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
        return torch.where(scale != 0, scale * grad, zero), None, None, None

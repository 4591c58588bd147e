"""Batched Langevin dynamics (BAOAB) and a clipped steepest-descent minimiser on any ``Energy`` with forces.

Many independent replicas advance together, so a ``TorchForceField`` evaluates them as one batch (on 2 CPU cores
~60k alanine-dipeptide energies + forces per second in float32). BAOAB (Leimkuhler & Matthews 2013) samples
configurations with small bias at large steps; the data it makes serve as training data and starting points, and
every estimate that uses them is reweighted with exact energies, so the integrator's bias never reaches a result.

Units: x in nm, masses in amu (g/mol), time in ps, kT in kJ/mol; the energy is reduced (u = E / kT) at its own
temperature, so the force in kJ/mol/nm is ``kT * energy.force(x)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..energy.base import Energy
from ..errors import NonFiniteInputError

__all__ = ["LangevinTrajectory", "RelaxedRun", "langevin_dynamics", "minimise", "relax_and_run"]


class LangevinTrajectory(NamedTuple):
    """frames (n_saved, n_replicas, n_atoms, 3), nm; u (n_saved, n_replicas), kT; the last state (x, v)."""

    frames: Tensor
    u: Tensor
    x: Tensor
    v: Tensor


def _energy_and_force(energy: Energy, x: Tensor) -> tuple[Tensor, Tensor]:
    if hasattr(energy, "energy_and_force"):
        return energy.energy_and_force(x)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        u = energy(xg)
        (grad,) = torch.autograd.grad(torch.where(torch.isfinite(u), u, torch.zeros_like(u)).sum(), xg)
    return u.detach(), -grad


def _check_start(x: Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"x must be float32 or float64 positions (nm), got {x.dtype}")
    if x.device.type != "meta" and not bool(torch.isfinite(x).all()):
        raise NonFiniteInputError("x holds NaN or infinite positions; start from finite configurations")


def minimise(
    energy: Energy, x: Tensor, n_steps: int = 200, max_displacement: float = 0.005, step: float = 1e-5
) -> Tensor:
    """Clipped steepest descent: x += min(step, max_displacement / |f_i|) f_i for every atom i, n_steps times.

    step (nm^2 per kT) must stay below 2 / (the stiffest curvature): 1e-5 suits covalent bonds (~1e5 kT/nm^2);
    max_displacement (nm) caps each atom's move, so clashes of hand-built starting structures are removed without
    blowing up. x (batch, n_atoms, 3) -> same shape.
    """
    _check_start(x)
    x = x.clone()
    for _ in range(n_steps):
        _, force = _energy_and_force(energy, x)
        norm = torch.linalg.vector_norm(force, dim=-1, keepdim=True)
        x = x + force * torch.clamp(max_displacement / torch.clamp_min(norm, 1e-30), max=step)
    return x


def langevin_dynamics(
    energy: Energy,
    x: Tensor,
    masses: Tensor,
    n_steps: int,
    *,
    timestep_ps: float = 0.002,
    friction_per_ps: float = 2.0,
    save_every: int = 100,
    v: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> LangevinTrajectory:
    """BAOAB Langevin dynamics of a batch of replicas at the energy's temperature.

    energy: reduced energy with ``kT`` (kJ/mol). x: (n_replicas, n_atoms, 3), nm. masses: (n_atoms,), amu
    (heavier hydrogens allow 2 fs without constraints and leave the configurational distribution unchanged).
    Saves every ``save_every`` steps. v: initial velocities (nm/ps), default Maxwell-Boltzmann. Returns a
    ``LangevinTrajectory``. Replicas whose energy becomes non-finite raise ``FloatingPointError`` (a too-large step).
    """
    kT = energy.kT
    if kT is None:
        raise ValueError("langevin_dynamics needs an energy with a temperature (kT in kJ/mol)")
    if x.ndim != 3 or masses.shape != (x.shape[1],):
        raise ValueError(f"x must be (n_replicas, n_atoms, 3) and masses (n_atoms,), got {x.shape}, {masses.shape}")
    _check_start(x)
    if not bool(torch.isfinite(masses).all() and (masses > 0).all()):
        raise ValueError(f"masses must be positive and finite (amu), got min {float(masses.min())}")
    if not (timestep_ps > 0 and friction_per_ps > 0 and save_every > 0 and n_steps >= 0):
        raise ValueError("timestep_ps, friction_per_ps and save_every must be positive, n_steps non-negative")
    inv_m = (1.0 / masses.to(x))[None, :, None]
    sigma_v = torch.sqrt(kT * inv_m)
    gen_device = generator.device if generator is not None else x.device

    def noise() -> Tensor:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=gen_device).to(x.device)

    v = noise() * sigma_v if v is None else v.clone()
    c1 = math.exp(-friction_per_ps * timestep_ps)
    c2 = math.sqrt(1.0 - c1 * c1)
    half = 0.5 * timestep_ps
    u, force = _energy_and_force(energy, x)
    frames, energies = [], []
    for step in tqdm(range(1, n_steps + 1), disable=not progress, desc="Langevin", leave=False):
        v = v + half * kT * force * inv_m
        x = x + half * v
        v = c1 * v + c2 * sigma_v * noise()
        x = x + half * v
        u, force = _energy_and_force(energy, x)
        v = v + half * kT * force * inv_m
        if step % save_every == 0:
            if not torch.isfinite(u).all():
                raise FloatingPointError(
                    f"{int((~torch.isfinite(u)).sum())} replicas reached non-finite energy at step {step}: "
                    f"reduce timestep_ps ({timestep_ps})"
                )
            frames.append(x.clone())
            energies.append(u.clone())
    empty = x.new_zeros((0, *x.shape))
    frames_t = torch.stack(frames) if frames else empty
    u_t = torch.stack(energies) if energies else x.new_zeros((0, x.shape[0]))
    return LangevinTrajectory(frames_t, u_t, x, v)


class RelaxedRun(NamedTuple):
    """frames (n_saved, n_replicas, n_atoms, 3), nm, of ``relax_and_run``; n_evaluations: energy + force
    evaluations per replica (minimisation, equilibration and production)."""

    frames: Tensor
    n_evaluations: int


def relax_and_run(
    energy: Energy,
    x0: Tensor,
    masses: Tensor,
    ps: float,
    *,
    equilibration_ps: float = 1.0,
    save_every_ps: float = 0.08,
    timestep_ps: float = 0.002,
    minimise_steps: int = 200,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> RelaxedRun:
    """Start structures x0 (n_replicas, n_atoms, 3), nm, relaxed by ``minimise`` (``minimise_steps``), run
    ``equilibration_ps`` of BAOAB (discarded; at least one step) and then ``ps`` (at least one save), saving every
    ``save_every_ps``: the seeded-replica protocol of ``simulate.seeded_md`` and ``workflow.coverage``."""
    x = minimise(energy, x0, n_steps=minimise_steps)
    n_eq = max(1, int(round(equilibration_ps / timestep_ps)))
    warm = langevin_dynamics(energy, x, masses, n_eq, timestep_ps=timestep_ps, save_every=n_eq, generator=generator)
    save_every = max(1, int(round(save_every_ps / timestep_ps)))
    n_steps = max(save_every, int(round(ps / timestep_ps)))
    run = langevin_dynamics(
        energy,
        warm.x,
        masses,
        n_steps,
        timestep_ps=timestep_ps,
        save_every=save_every,
        v=warm.v,
        generator=generator,
        progress=progress,
    )
    # minimise evaluates once per step, each Langevin call once at its start and once per step
    return RelaxedRun(run.frames, minimise_steps + (n_eq + 1) + (n_steps + 1))

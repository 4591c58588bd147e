"""Training data that cover every Ramachandran basin: batched Langevin replicas seeded on a (phi, psi) grid.

Unbiased MD at 300 K starts in one basin and rarely crosses into phi > 0, so a flow trained on it never proposes
the state whose free energy we want. Here each replica starts from the shipped structure with its phi and psi set
by rotating about the backbone bonds, is relaxed (clipped steepest descent) and then runs BAOAB Langevin dynamics
on a ``TorchForceField`` (all replicas as one batch). The frames are local-equilibrium samples of every basin in
proportions set by the seeding, not by the Boltzmann distribution: right for a proposal (wide coverage, the weights
fix the proportions), wrong as a reference. Hydrogens are made 4 amu heavy (masses do not change configurational
distributions) so 2 fs steps are stable without constraints.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from ..geometry import set_torsion
from ..sampling.langevin import relax_and_run
from ..systems.aldp import PHI_ATOMS, PSI_ATOMS, AlanineDipeptide
from .openmm_langevin import heavy_hydrogen_masses

__all__ = ["DEFAULT_SEEDS", "seeded_aldp_md"]

#: (phi, psi) seeds in radians: C5/beta, C7eq, alpha_R and PII (phi < 0); C7ax and alpha_L (phi > 0)
DEFAULT_SEEDS: tuple[tuple[float, float], ...] = tuple(itertools.product((-2.6, -1.4, 1.0), (-0.7, 0.6, 2.7)))


def seeded_aldp_md(
    aldp: AlanineDipeptide,
    energy,
    n_replicas: int = 252,
    ps: float = 8.0,
    *,
    equilibration_ps: float = 1.0,
    save_every_ps: float = 0.08,
    seeds: tuple[tuple[float, float], ...] = DEFAULT_SEEDS,
    timestep_ps: float = 0.002,
    hydrogen_mass: float = 4.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> Tensor:
    """Frames (n_saved * n_replicas, 22, 3) in nm (``dtype``) from Langevin replicas seeded on ``seeds``.

    energy: the reduced energy to simulate (a ``TorchForceField`` of ``aldp.system``; its temperature is used).
    n_replicas are spread evenly over the seeds; each runs ``equilibration_ps`` (discarded) then ``ps``, saving every
    ``save_every_ps``. Costs n_replicas * (ps + equilibration_ps) / timestep_ps energy + force evaluations (252
    replicas x 9 ps: 1.1e6, ~35 s on 2 CPU cores in float32).
    """
    if n_replicas < len(seeds):
        raise ValueError(f"n_replicas ({n_replicas}) must be at least the number of seeds ({len(seeds)})")
    bonds = [(a.index, b.index) for a, b in aldp.topology.bonds()]
    x = torch.tensor(aldp.positions_nm, dtype=dtype)[None]
    starts = torch.cat(
        [set_torsion(set_torsion(x, bonds, PHI_ATOMS, phi), bonds, PSI_ATOMS, psi) for phi, psi in seeds]
    )
    x0 = starts.repeat(math.ceil(n_replicas / len(seeds)), 1, 1)[:n_replicas]
    masses = torch.from_numpy(heavy_hydrogen_masses(aldp.system, aldp.topology, hydrogen_mass)).to(dtype)
    run = relax_and_run(
        energy,
        x0,
        masses,
        ps,
        equilibration_ps=equilibration_ps,
        save_every_ps=save_every_ps,
        timestep_ps=timestep_ps,
        generator=generator,
        progress=progress,
    )
    return run.frames.reshape(-1, *x.shape[1:])

"""Training data that visit every state, for any molecule: batched Langevin replicas seeded across torsion basins.

Unbiased MD at 300 K stays in the basin it starts in, so a flow trained on it never proposes the states whose free
energies we want. ``seeded_langevin`` generalises ``simulate.seeded_md.seeded_aldp_md`` from alanine dipeptide's
(phi, psi) grid to any molecule: each replica starts from the user's structure with every seeded torsion turned to
an angle of ``SEED_ANGLES`` (six arcs 60 degrees apart; each angle seeds the same number of replicas per torsion,
combined at random across torsions), is relaxed (clipped steepest descent: the seed falls into the nearest basin)
and then runs BAOAB Langevin dynamics with every replica in one batch. Nothing is tuned to a molecule: the
torsions are the ones the user's states name (for peptides every residue's phi and psi). The frames sample every
basin in proportions set by the seeding, not by the Boltzmann distribution: right for a proposal (the importance
weights fix the proportions; coverage only has to be there), wrong as a reference. Hydrogens are made 4 amu heavy
(masses do not change configurational distributions), so 2 fs steps are stable without constraints.

``state_coverage`` counts the frames in each state and ``check_coverage`` refuses, with ``UnreachedStateError``, a
state that no replica reached (before any training is spent on it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UnreachedStateError
from ..geometry import set_torsion
from ..sampling.langevin import relax_and_run
from ..simulate.openmm_langevin import heavy_hydrogen_masses
from .states import State, Torsion

__all__ = [
    "SEED_ANGLES",
    "CoverageData",
    "check_coverage",
    "seed_structures",
    "seeded_langevin",
    "split_replicas",
    "state_coverage",
]

#: seed angles (radians) of every seeded torsion: -150, -90, -30, 30, 90 and 150 degrees
SEED_ANGLES: tuple[float, ...] = tuple(math.radians(a) for a in (-150, -90, -30, 30, 90, 150))
#: states with fewer frames than this get a warning: they are reached, but thinly
FEW_FRAMES = 100


@dataclass(frozen=True)
class CoverageData:
    """Seeded Langevin frames. frames: (n_saved, n_replicas, n_atoms, 3) in nm; seeds: (n_replicas,
    n_seeded_torsions) seed angles in radians; torsions: the seeded torsions (one per rotatable bond);
    n_energy_evaluations: energy + force evaluations of all replicas (minimisation and dynamics)."""

    frames: Tensor
    seeds: Tensor
    torsions: tuple[Torsion, ...]
    n_energy_evaluations: int

    def flat(self) -> Tensor:
        """Every frame, (n_saved * n_replicas, n_atoms, 3)."""
        return self.frames.reshape(-1, *self.frames.shape[2:])

    def split(self, validation_fraction: float = 0.1) -> tuple[Tensor, Tensor]:
        """``split_replicas`` of these frames."""
        return split_replicas(self.frames, validation_fraction)


def split_replicas(frames: Tensor, validation_fraction: float = 0.1) -> tuple[Tensor, Tensor]:
    """(training, validation) frames, flattened, from frames (n_saved, n_replicas, n_atoms, 3): the last
    floor(validation_fraction * n_replicas) replicas, at least one and never all, are held out (whole replicas: their
    frames are correlated with nothing in the training set); a single replica is all training."""
    n_replicas = frames.shape[1]
    n_val = min(n_replicas - 1, max(1, int(validation_fraction * n_replicas))) if n_replicas > 1 else 0
    train = frames[:, : n_replicas - n_val].reshape(-1, *frames.shape[2:])
    valid = frames[:, n_replicas - n_val :].reshape(-1, *frames.shape[2:])
    return train, valid


def _distinct_bonds(torsions: Sequence[Torsion]) -> list[Torsion]:
    """One torsion per central bond: two torsions about the same bond cannot both be set by rotating it."""
    seen, kept = set(), []
    for t in torsions:
        bond = frozenset(t.atoms[1:3])
        if bond not in seen:
            seen.add(bond)
            kept.append(t)
    return kept


def seed_structures(
    positions_nm: Any,
    bonds: Sequence[tuple[int, int]],
    torsions: Sequence[Torsion],
    n_replicas: int,
    *,
    angles: Sequence[float] = SEED_ANGLES,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, tuple[Torsion, ...]]:
    """Start structures (n_replicas, n_atoms, 3) in nm: ``positions_nm`` with each torsion turned to a seed angle.

    Per torsion every angle of ``angles`` seeds n_replicas / len(angles) replicas (the remainder at random), in a
    random order independent of the other torsions'. Torsions about the same bond are seeded once (the first).
    Returns (structures, seeds (n_replicas, n_seeded) radians, the seeded torsions). A torsion about a ring bond
    raises ``ValueError`` (``geometry.moving_side``).
    """
    if n_replicas < 1:
        raise ValueError(f"n_replicas must be >= 1, got {n_replicas}")
    seeded = tuple(_distinct_bonds(torsions))
    grid = torch.as_tensor(list(angles), dtype=torch.float64)
    if grid.numel() == 0:
        raise ValueError("angles must name at least one seed angle")
    x = torch.tensor(np.array(positions_nm), dtype=dtype)[None].repeat(n_replicas, 1, 1)
    seeds = torch.empty(n_replicas, len(seeded), dtype=torch.float64)
    repeated = grid.repeat(math.ceil(n_replicas / grid.numel()))
    for k, torsion in enumerate(seeded):
        order = torch.randperm(repeated.numel(), generator=generator)[:n_replicas]
        seeds[:, k] = repeated[order]
        x = set_torsion(x, bonds, torsion.atoms, seeds[:, k].to(dtype))
    return x, seeds, seeded


def seeded_langevin(
    molecule: Any,
    energy: Any,
    torsions: Sequence[Torsion],
    n_replicas: int = 252,
    ps: float = 8.0,
    *,
    equilibration_ps: float = 1.0,
    save_every_ps: float = 0.08,
    angles: Sequence[float] = SEED_ANGLES,
    timestep_ps: float = 0.002,
    hydrogen_mass: float = 4.0,
    minimise_steps: int = 200,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> CoverageData:
    """Langevin replicas of ``molecule`` (a ``workflow.Molecule``) seeded in the basins of ``torsions``.

    energy: the reduced energy to simulate (a ``TorchForceField`` of ``molecule.system``, restricted to the
    molecule's handedness; its temperature is used). Each replica is seeded by ``seed_structures``, minimised
    (``minimise_steps`` clipped steepest-descent steps), run ``equilibration_ps`` (discarded) and then ``ps``,
    saving every ``save_every_ps``. Costs n_replicas * (ps + equilibration_ps) / timestep_ps energy + force
    evaluations. Raises ``FloatingPointError`` when a replica's energy becomes non-finite.
    """
    if not (ps > 0 and save_every_ps > 0 and timestep_ps > 0 and equilibration_ps >= 0):
        raise ValueError("ps, save_every_ps and timestep_ps must be positive and equilibration_ps non-negative")
    x0, seeds, seeded = seed_structures(
        molecule.positions_nm, molecule.bonds, torsions, n_replicas, angles=angles, generator=generator, dtype=dtype
    )
    masses = torch.from_numpy(heavy_hydrogen_masses(molecule.system, molecule.topology, hydrogen_mass)).to(dtype)
    run = relax_and_run(
        energy,
        x0,
        masses,
        ps,
        equilibration_ps=equilibration_ps,
        save_every_ps=save_every_ps,
        timestep_ps=timestep_ps,
        minimise_steps=minimise_steps,
        generator=generator,
        progress=progress,
    )
    return CoverageData(run.frames, seeds, seeded, n_replicas * run.n_evaluations)


def state_coverage(frames: Any, states: Mapping[str, State]) -> dict[str, int]:
    """How many of ``frames`` ((n, n_atoms, 3), nm) lie in each state: {state name: count}."""
    return {name: int(np.count_nonzero(np.asarray(state(frames), dtype=bool))) for name, state in states.items()}


def check_coverage(counts: Mapping[str, int], n_frames: int) -> list[str]:
    """Refuse a state no frame reached; return warnings for states with fewer than ``FEW_FRAMES`` frames.

    counts: ``state_coverage``'s result. Raises ``UnreachedStateError`` naming every unreached state.
    """
    unreached = [name for name, n in counts.items() if n == 0]
    if unreached:
        raise UnreachedStateError(
            f"no replica of the seeded Langevin data ({n_frames} frames) reached state "
            f"{', '.join(repr(s) for s in unreached)}, so no flow trained on them could estimate its free energy: "
            "check that the state is possible for this molecule (its angle ranges), or seed more replicas / run "
            "them longer (--replicas, --md-ps)"
        )
    return [
        f"state {name!r} holds only {n} of {n_frames} training frames: its free energy may come out unreliable"
        for name, n in counts.items()
        if n < FEW_FRAMES
    ]

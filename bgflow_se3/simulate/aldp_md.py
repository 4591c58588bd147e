"""Unbiased Langevin MD of alanine dipeptide, cached on disk: the training data of maximum likelihood.

``run_aldp_md`` writes ``positions.npy`` (frames, 22, 3) float32 in nm, ``trajectory.dcd`` with ``topology.pdb``
(read with ``mdtraj.load("trajectory.dcd", top="topology.pdb")``) and ``info.json``; ``load_aldp_md`` reads the
positions back. LangevinMiddleIntegrator at 300 K, 1/ps, with hydrogen mass repartitioning (3 amu; masses do not
change the configurational distribution) and no constraints, so frames are samples of exactly the shipped
System's Boltzmann distribution (correlated in time; unbiased MD rarely crosses into phi > 0, so it is training
data, not a free-energy reference). ``systems/aldp/md.py`` is the command-line recipe.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["default_md_dir", "load_aldp_md", "run_aldp_md"]

logger = logging.getLogger(__name__)

TEMPERATURE_K = 300.0
HYDROGEN_MASS_AMU = 3.0


def default_md_dir(solvent: str = "implicit") -> Path:
    """The cache folder of the MD data, ``~/.cache/bgflow_se3/aldp_md/<solvent>``."""
    return Path.home() / ".cache" / "bgflow_se3" / "aldp_md" / solvent


def run_aldp_md(
    solvent: str = "implicit",
    ns: float = 1.0,
    out: str | Path | None = None,
    *,
    save_every_ps: float = 1.0,
    equilibration_ps: float = 50.0,
    timestep_fs: float = 2.0,
    seed: int = 0,
    platform: str = "Reference",
) -> Path:
    """Simulate ``ns`` nanoseconds of production (after ``equilibration_ps``), one frame every ``save_every_ps``.

    solvent: "implicit" or "vacuum" (``load_aldp``). out: folder (default ``default_md_dir(solvent)``), created.
    platform: OpenMM platform ("Reference" is the fastest for 22 atoms on one core). Returns the folder.
    Raises ``RuntimeError`` when the simulation blows up.
    """
    import mdtraj
    import openmm
    import openmm.unit as unit

    from ..analysis import phi_psi
    from ..systems.aldp import load_aldp
    from .openmm_langevin import langevin_context, repartition_hydrogen_mass

    out = Path(out) if out is not None else default_md_dir(solvent)
    out.mkdir(parents=True, exist_ok=True)
    aldp = load_aldp(solvent)
    system = repartition_hydrogen_mass(aldp.system, aldp.topology, HYDROGEN_MASS_AMU)
    context = langevin_context(
        system, aldp.positions_nm, temperature=TEMPERATURE_K, timestep_fs=timestep_fs, seed=seed, platform=platform
    )
    openmm.LocalEnergyMinimizer.minimize(context, maxIterations=500)
    integrator = context.getIntegrator()
    steps_per_ps = int(round(1000 / timestep_fs))
    integrator.step(int(equilibration_ps * steps_per_ps))
    save_every = max(1, int(round(save_every_ps * steps_per_ps)))
    n_frames = int(round(ns * 1000 / save_every_ps))
    if n_frames < 1:
        raise ValueError(f"{ns} ns saved every {save_every_ps} ps gives no frame; simulate longer")
    frames = np.empty((n_frames, aldp.system.getNumParticles(), 3), dtype=np.float32)
    start = time.perf_counter()
    for i in range(n_frames):
        integrator.step(save_every)
        frames[i] = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    seconds = time.perf_counter() - start
    if not np.isfinite(frames).all():
        raise RuntimeError("the simulation blew up (non-finite positions); use a smaller timestep_fs")
    np.save(out / "positions.npy", frames)
    top = aldp.mdtraj_topology
    trajectory = mdtraj.Trajectory(frames, top)
    trajectory.save_dcd(str(out / "trajectory.dcd"))
    trajectory[0].save_pdb(str(out / "topology.pdb"))
    phi, _ = phi_psi(top, frames)
    info = {
        "solvent": solvent,
        "ns": ns,
        "frames": n_frames,
        "save_every_ps": save_every_ps,
        "timestep_fs": timestep_fs,
        "hydrogen_mass_amu": HYDROGEN_MASS_AMU,
        "temperature_K": TEMPERATURE_K,
        "seed": seed,
        "wall_s": seconds,
        "fraction_phi_in_0_2": float(np.mean((phi > 0) & (phi < 2))),
    }
    (out / "info.json").write_text(json.dumps(info, indent=1))
    logger.info("%d frames (%g ns) in %.1f s -> %s", n_frames, ns, seconds, out)
    return out


def load_aldp_md(
    solvent: str = "implicit", folder: str | Path | None = None, missing_ok: bool = False
) -> np.ndarray | None:
    """The cached MD frames, shape (frames, 22, 3), float32, nm.

    When there are none: ``FileNotFoundError`` naming the recipe, or with ``missing_ok`` a warning and None.
    """
    folder = Path(folder) if folder is not None else default_md_dir(solvent)
    path = folder / "positions.npy"
    if not path.exists():
        message = (
            f"no MD data at {path}; make it with `PYTHONPATH=. python systems/aldp/md.py --solvent {solvent} "
            f"--ns 10 --out {folder}` (about 30 s per ns on one CPU core)"
        )
        if missing_ok:
            warnings.warn(message, stacklevel=2)
            return None
        raise FileNotFoundError(message)
    return np.load(path)

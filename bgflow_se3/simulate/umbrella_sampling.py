"""Umbrella-sampling simulations along a dihedral with OpenMM: biased windows, cached and extendable on disk.

Each window adds a ``CustomTorsionForce`` ``k/2 * dphi^2`` (dphi wrapped into [-pi, pi)) to the System, runs
Langevin dynamics and stores its phi and psi time series, its final positions and velocities in
``<cache>/window_XXX.npz``; ``<cache>/config.json`` records the settings, so a later call with more nanoseconds
continues every window where it stopped instead of starting over.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "UmbrellaConfig",
    "add_torsion_bias",
    "biased_system",
    "default_umbrella_dir",
    "load_profile",
    "load_window_angles",
    "load_windows",
    "phi_atom_indices",
    "reference_profile",
    "reference_ramachandran",
    "run_umbrella",
    "shipped_profile",
    "shipped_ramachandran",
    "window_centers",
    "window_seed",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UmbrellaConfig:
    """Settings of an umbrella-sampling run (all windows share them); changing any needs a fresh cache.

    solvent: "implicit" or "vacuum" (``load_aldp``). n_windows: centres evenly on [-pi, pi).
    force_constant: bias stiffness, kJ/mol/rad^2. temperature: K. timestep_fs, friction_per_ps: Langevin.
    hydrogen_mass_amu: hydrogen mass repartitioning (None: natural masses; it leaves the configurational
    distribution unchanged and allows 2 fs without constraints). save_every: steps between stored phi values.
    start_at_center: start every window from the shipped structure with phi rotated to the window's centre
    (bond lengths and angles kept), instead of letting the bias drag phi there (a violent start that leaves
    slow modes to relax inside the production). equilibration_ps: biased dynamics before the first stored value.
    exchange_every_ps: None runs the windows independently; a time (ps) runs them as Hamiltonian replica exchange
    (``replica_exchange.run_replica_exchange``): every that many ps, neighbouring windows try to swap their
    configurations (Metropolis on the bias energies), so slow coordinates the bias does not touch (psi) relax in
    the windows where they move fast and travel to the others.
    platform: OpenMM platform ("Reference" is the fastest on one core for 22 atoms). seed: the run's random
    seed; every window (and every restart of it) draws its OpenMM seeds from ``window_seed(seed, k, ...)``, so runs
    with different seeds share no random stream.
    """

    solvent: str = "implicit"
    n_windows: int = 36
    force_constant: float = 200.0
    temperature: float = 300.0
    timestep_fs: float = 2.0
    friction_per_ps: float = 1.0
    hydrogen_mass_amu: float | None = 3.0
    save_every: int = 250
    start_at_center: bool = True
    equilibration_ps: float = 50.0
    exchange_every_ps: float | None = None
    platform: str = "Reference"
    seed: int = 0

    @property
    def kappa(self) -> float:
        """Force constant in kT / rad^2."""
        from ..energy import kT_in_kJ_per_mol

        return self.force_constant / kT_in_kJ_per_mol(self.temperature)

    @property
    def steps_per_ns(self) -> int:
        return int(round(1e6 / self.timestep_fs))


def window_centers(n_windows: int) -> np.ndarray:
    """Window centres evenly spaced on [-pi, pi), radians, shape (n_windows,)."""
    return -np.pi + 2 * np.pi * np.arange(n_windows) / n_windows


def window_seed(seed: int, window: int, restart: int = 0) -> int:
    """OpenMM random seed (in [1, 2^31 - 1)) of ``window`` of the run ``seed``, for its ``restart``-th (re)start.

    Hashed through ``numpy.random.SeedSequence``: distinct (seed, window, restart) give unrelated seeds, so the
    repeats ``seed, seed + 1, ...`` of a run are independent (with ``seed + window`` window k + 1 of one repeat
    would replay the random stream of window k of the next), and 0, which OpenMM reads as "pick one at random",
    never occurs.
    """
    state = np.random.SeedSequence([int(seed) % 2**32, int(window), int(restart)]).generate_state(1)[0]
    return 1 + int(state) % (2**31 - 2)


def add_torsion_bias(system, atoms: Sequence[int], force_constant: float, center: float) -> int:
    """Add ``force_constant/2 * dphi^2`` on the dihedral ``atoms`` (kJ/mol/rad^2, radians); returns the force index.

    The centre is the global parameter ``phi0`` (change it with ``context.setParameter("phi0", value)``).
    """
    import openmm

    force = openmm.CustomTorsionForce(
        "0.5*k_bias*dphi^2; dphi = d - two_pi*floor((d + 0.5*two_pi)/two_pi); d = theta - phi0;"
        "two_pi = 6.283185307179586"
    )
    force.addGlobalParameter("phi0", float(center))
    force.addGlobalParameter("k_bias", float(force_constant))
    force.addTorsion(*[int(a) for a in atoms], [])
    return system.addForce(force)


def phi_atom_indices(topology) -> list[int]:
    """Atom indices (4,) of the first backbone phi, found by mdtraj from the topology."""
    return _backbone_dihedral(topology, "phi")


def psi_atom_indices(topology) -> list[int]:
    """Atom indices (4,) of the first backbone psi, found by mdtraj from the topology."""
    return _backbone_dihedral(topology, "psi")


def _backbone_dihedral(topology, name: str) -> list[int]:
    import mdtraj

    top = mdtraj.Topology.from_openmm(topology)
    compute = {"phi": mdtraj.compute_phi, "psi": mdtraj.compute_psi}[name]
    indices, _ = compute(mdtraj.Trajectory(np.zeros((1, top.n_atoms, 3)), top), periodic=False)
    if len(indices) == 0:
        raise ValueError(f"the topology has no backbone {name} dihedral")
    return [int(a) for a in indices[0]]


def _start_at(positions_nm: np.ndarray, topology, atoms: Sequence[int], value: float) -> np.ndarray:
    """positions (n, 3) with the dihedral ``atoms`` rotated to ``value`` radians (the smaller side moves)."""
    import torch

    from ..sampling.torsion_setting import set_torsion

    bonds = [(a.index, b.index) for a, b in topology.bonds()]
    x = torch.as_tensor(np.asarray(positions_nm, dtype=np.float64))[None]
    return set_torsion(x, bonds, atoms, value)[0].numpy()


def biased_system(config: UmbrellaConfig, center: float) -> tuple:
    """The window System of ``config`` with its bias at ``center`` (radians; the global parameter ``phi0``).

    Returns (AlanineDipeptide, openmm.System with repartitioned masses and the phi bias, phi atoms (4,), psi
    atoms (4,)).
    """
    from ..systems.aldp import load_aldp
    from .openmm_langevin import repartition_hydrogen_mass

    aldp = load_aldp(config.solvent)
    system = copy.deepcopy(aldp.system)
    if config.hydrogen_mass_amu is not None:
        system = repartition_hydrogen_mass(system, aldp.topology, config.hydrogen_mass_amu)
    atoms = phi_atom_indices(aldp.topology)
    add_torsion_bias(system, atoms, config.force_constant, center)
    return aldp, system, atoms, psi_atom_indices(aldp.topology)


def window_context(
    config: UmbrellaConfig,
    aldp,
    system,
    phi_atoms: Sequence[int],
    center: float,
    seed: int,
    positions_nm: np.ndarray | None = None,
    velocities: np.ndarray | None = None,
):
    """A Langevin ``openmm.Context`` of a window System (``biased_system``), ready for production.

    Fresh (``positions_nm`` None): the shipped structure (phi rotated to ``center`` with ``config.start_at_center``),
    minimised, velocities drawn with ``seed``, ``config.equilibration_ps`` of biased dynamics. Resumed: the stored
    positions (nm, (n_atoms, 3)) and velocities (nm/ps). ``seed`` also seeds the integrator.
    """
    import openmm
    import openmm.unit as unit

    from .openmm_langevin import langevin_context

    fresh = positions_nm is None
    if fresh:
        positions_nm = aldp.positions_nm
        if config.start_at_center:
            positions_nm = _start_at(positions_nm, aldp.topology, phi_atoms, center)
    context = langevin_context(
        system,
        positions_nm,
        temperature=config.temperature,
        timestep_fs=config.timestep_fs,
        friction_per_ps=config.friction_per_ps,
        seed=seed,
        platform=config.platform,
    )
    if fresh:
        openmm.LocalEnergyMinimizer.minimize(context, maxIterations=200)
        context.setVelocitiesToTemperature(config.temperature * unit.kelvin, seed)
        context.getIntegrator().step(int(round(config.equilibration_ps * 1000 / config.timestep_fs)))
    else:
        context.setVelocities(velocities * unit.nanometer / unit.picosecond)
    return context


def record_angles(context, n_saves: int, save_every: int, phi_atoms, psi_atoms) -> np.ndarray:
    """Run ``n_saves`` x ``save_every`` steps, recording (phi, psi) in radians after each: shape (n_saves, 2)."""
    import openmm.unit as unit

    phi_index, psi_index = np.asarray(phi_atoms), np.asarray(psi_atoms)
    integrator = context.getIntegrator()
    angles = np.empty((n_saves, 2))
    for s in range(n_saves):
        integrator.step(save_every)
        x = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        angles[s] = _dihedral(x[phi_index]), _dihedral(x[psi_index])
    return angles


def _run_window(args: tuple) -> tuple[int, float]:
    """Extend window ``k`` to ``target_ns`` of production; returns (k, seconds spent)."""
    config_dict, k, target_ns, cache = args
    import openmm.unit as unit

    config = UmbrellaConfig(**config_dict)
    path = Path(cache) / f"window_{k:03d}.npz"
    center = float(window_centers(config.n_windows)[k])
    aldp, system, atoms, psi_atoms = biased_system(config, center)
    steps_per_ns = config.steps_per_ns
    start = time.perf_counter()
    if path.exists():
        stored = np.load(path)
        phi, steps_done = list(stored["phi"]), int(stored["steps"])
        if "psi" not in stored.files:
            raise ValueError(f"{path} was written before psi was recorded: extend it in a fresh cache instead")
        psi = list(stored["psi"])
        seed = window_seed(config.seed, k, 1 + steps_done // config.save_every)
        context = window_context(config, aldp, system, atoms, center, seed, stored["positions"], stored["velocities"])
    else:
        phi, psi, steps_done = [], [], 0
        context = window_context(config, aldp, system, atoms, center, window_seed(config.seed, k))
    target_steps = int(round(target_ns * steps_per_ns))
    n_chunks = max(0, (target_steps - steps_done) // config.save_every)
    angles = record_angles(context, n_chunks, config.save_every, atoms, psi_atoms)
    phi.extend(angles[:, 0].tolist())
    psi.extend(angles[:, 1].tolist())
    steps_done += n_chunks * config.save_every
    state = context.getState(getPositions=True, getVelocities=True)
    positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    if not np.isfinite(positions).all():
        raise RuntimeError(f"window {k} blew up (non-finite positions); use a smaller time step")
    velocities = state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        phi=np.asarray(phi),
        psi=np.asarray(psi),
        steps=steps_done,
        positions=positions,
        velocities=velocities,
        center=center,
    )
    tmp.replace(path)
    return k, time.perf_counter() - start


def _dihedral(x: np.ndarray) -> float:
    """Dihedral of four positions (4, 3), radians (IUPAC sign)."""
    b1, b2, b3 = x[1] - x[0], x[2] - x[1], x[3] - x[2]
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    return float(math.atan2(np.linalg.norm(b2) * np.dot(b1, n2), np.dot(n1, n2)))


def _check_config(config: UmbrellaConfig, cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / "config.json"
    if path.exists():
        stored = asdict(UmbrellaConfig(**json.loads(path.read_text())))  # fields added later take their defaults
        if stored != asdict(config):
            raise ValueError(
                f"the cache {cache} was made with other settings {stored}; use another cache directory "
                "or the same settings"
            )
    else:
        path.write_text(json.dumps(asdict(config), indent=1))


def run_umbrella(config: UmbrellaConfig, ns_per_window: float, cache: Path, workers: int = 1) -> float:
    """Run (or extend) every window to ``ns_per_window`` of production; returns the wall time in seconds.

    Windows already at that length are skipped; ``workers`` processes run windows in parallel. With
    ``config.exchange_every_ps`` set the windows run as replica exchange (``run_replica_exchange``).
    """
    cache = Path(cache)
    _check_config(config, cache)
    if config.exchange_every_ps is not None:
        from .replica_exchange import run_replica_exchange

        return run_replica_exchange(config, ns_per_window, cache, workers=workers)
    tasks = [(asdict(config), k, ns_per_window, str(cache)) for k in range(config.n_windows)]
    start = time.perf_counter()
    if workers <= 1:
        for task in tasks:
            k, seconds = _run_window(task)
            logger.info("window %d done in %.1f s", k, seconds)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for k, seconds in pool.map(_run_window, tasks):
                logger.info("window %d done in %.1f s", k, seconds)
    return time.perf_counter() - start


def load_windows(cache: Path) -> tuple[UmbrellaConfig, list[np.ndarray], float]:
    """The cached run: its config, the phi time series of every window (radians), and ns of production each."""
    config, phi, _, ns = load_window_angles(cache)
    return config, phi, ns


def load_window_angles(cache: Path) -> tuple[UmbrellaConfig, list[np.ndarray], list[np.ndarray] | None, float]:
    """The cached run: config, phi and psi time series of every window (radians; psi None for caches written
    before psi was recorded), and ns of production each."""
    cache = Path(cache)
    config_path = cache / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"no umbrella run cached in {cache}; run systems/aldp/umbrella.py first")
    config = UmbrellaConfig(**json.loads(config_path.read_text()))
    series, psi, steps = [], [], []
    for k in range(config.n_windows):
        path = cache / f"window_{k:03d}.npz"
        if not path.exists():
            raise FileNotFoundError(f"window {k} missing in {cache}; run the recipe again to complete it")
        stored = np.load(path)
        series.append(np.asarray(stored["phi"], dtype=np.float64))
        psi.append(np.asarray(stored["psi"], dtype=np.float64) if "psi" in stored.files else None)
        steps.append(int(stored["steps"]))
    psi_series = None if any(p is None for p in psi) else psi
    return config, series, psi_series, min(steps) / config.steps_per_ns


def default_umbrella_dir(solvent: str = "implicit") -> Path:
    """The umbrella cache of ``systems/aldp/umbrella.py``: ``~/.cache/bgflow_se3/aldp_umbrella/<solvent>``."""
    return Path.home() / ".cache" / "bgflow_se3" / "aldp_umbrella" / solvent


def shipped_profile(solvent: str = "implicit") -> tuple[np.ndarray, np.ndarray]:
    """The umbrella phi profile shipped with the package: bin centres (radians) and f (kT), (m,) each.

    ``bgflow_se3/systems/data/aldp/umbrella_profile_<solvent>.npz``, written by ``systems/aldp/umbrella.py``
    (replica exchange, 4 repeats x 36 windows x 1 ns: F(phi > 0) - F(phi <= 0) = 3.73 +/- 0.07 kT; provenance in
    the JSON beside it), so that plots and the phi KL have a reference on a fresh machine. Only ``implicit`` is
    shipped; others raise ``FileNotFoundError``.
    """
    stored = _shipped_arrays(f"umbrella_profile_{solvent}.npz", f"umbrella profile for {solvent!r}")
    return np.asarray(stored["centers"], dtype=np.float64), np.asarray(stored["f"], dtype=np.float64)


def _shipped_arrays(name: str, what: str) -> dict[str, np.ndarray]:
    """The arrays of ``bgflow_se3/systems/data/aldp/<name>``; ``FileNotFoundError`` naming ``what`` and the recipe."""
    from importlib import resources

    path = resources.files("bgflow_se3.systems") / "data" / "aldp" / name
    if not path.is_file():
        raise FileNotFoundError(f"no {what} is shipped; run systems/aldp/umbrella.py")
    with resources.as_file(path) as file, np.load(file) as stored:
        return {key: stored[key] for key in stored.files}


def reference_profile(cache: Path, solvent: str = "implicit") -> tuple[np.ndarray, np.ndarray]:
    """The phi profile in ``cache`` when the recipe wrote one there, else the shipped one (``shipped_profile``)."""
    if (Path(cache) / "profile.npz").exists():
        return load_profile(cache)
    return shipped_profile(solvent)


def load_profile(cache: Path, missing_ok: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """The phi free-energy profile written by ``systems/aldp/umbrella.py``: bin centres (radians) and f (kT), (m,) each.

    When the cache has no ``profile.npz``: ``FileNotFoundError`` naming the recipe, or with ``missing_ok`` a
    warning and None.
    """
    path = Path(cache) / "profile.npz"
    if not path.exists():
        message = f"no umbrella profile at {path}; run `PYTHONPATH=. python systems/aldp/umbrella.py`"
        if missing_ok:
            warnings.warn(message, stacklevel=2)
            return None
        raise FileNotFoundError(message)
    stored = np.load(path)
    return np.asarray(stored["centers"], dtype=np.float64), np.asarray(stored["f"], dtype=np.float64)


def shipped_ramachandran(solvent: str = "implicit") -> np.ndarray:
    """The umbrella (phi, psi) reference shipped with the package: probability, shape (64, 64), sums to 1.

    ``bgflow_se3/systems/data/aldp/umbrella_ramachandran_<solvent>.npz``, written by ``systems/aldp/umbrella.py``
    (MBAR-reweighted umbrella windows; provenance in the JSON beside it). Bins as ``periodic_histogram``: 64 equal
    bins per angle on [-pi, pi), index [phi, psi]. Only ``implicit`` is shipped; others raise ``FileNotFoundError``.
    """
    stored = _shipped_arrays(f"umbrella_ramachandran_{solvent}.npz", f"Ramachandran reference for {solvent!r}")
    return np.asarray(stored["p"], dtype=np.float64)


def reference_ramachandran(cache: Path, solvent: str = "implicit") -> np.ndarray:
    """The (phi, psi) histogram in ``cache`` when the recipe wrote one there, else the shipped one."""
    path = Path(cache) / "ramachandran.npz"
    if path.exists():
        return np.asarray(np.load(path)["p"], dtype=np.float64)
    return shipped_ramachandran(solvent)

"""Umbrella-sampling simulations along a dihedral with OpenMM: biased windows, cached and extendable on disk.

Each window (``umbrella_windows``) stores its phi and psi time series, its final positions and velocities in
``<cache>/window_XXX.npz``; ``<cache>/config.json`` records the settings, so a later call with more nanoseconds
continues every window where it stopped instead of starting over. The windows run independently, or as replica
exchange (``replica_exchange``) when ``UmbrellaConfig.exchange_every_ps`` is set. The shipped references and the
profile files the recipe writes are read by ``bgflow_se3.systems.aldp_references`` (re-exported here).
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..files import save_npz_atomically
from ..systems.aldp_references import (
    load_profile,
    reference_profile,
    reference_ramachandran,
    shipped_profile,
    shipped_ramachandran,
)
from .replica_exchange import run_replica_exchange
from .umbrella_windows import (
    UmbrellaConfig,
    add_torsion_bias,
    biased_system,
    phi_atom_indices,
    record_angles,
    window_centers,
    window_context,
    window_seed,
)

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
    save_npz_atomically(
        path,
        phi=np.asarray(phi),
        psi=np.asarray(psi),
        steps=steps_done,
        positions=positions,
        velocities=velocities,
        center=center,
    )
    return k, time.perf_counter() - start


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

"""Hamiltonian replica exchange between umbrella windows (OpenMM): neighbouring windows swap configurations.

The windows of an umbrella run differ only in the centre of their phi bias. Every ``exchange_every_ps`` the
replicas of neighbouring windows (a ring: the last window neighbours the first) try to swap, accepted with the
Metropolis probability of the bias energies alone,

    min(1, exp(-[u_i(phi_b) + u_j(phi_a) - u_i(phi_a) - u_j(phi_b)])),   u_k(phi) = kappa/2 * wrap(phi - c_k)^2,

so every window still samples its own biased ensemble while a configuration whose psi relaxed in a window where
psi moves fast can travel into the barrier windows where it does not. The swap moves the bias centre, not the
positions: each replica keeps its OpenMM context, which only gets a new ``phi0``.

The result is stored exactly like independent windows (``<cache>/window_XXX.npz`` with the phi and psi series of
each window, i.e. of whichever replica sat in it), so ``load_window_angles`` and the MBAR analysis read it
unchanged; ``<cache>/exchange.npz`` holds the replicas' positions and velocities, which window each replica is in,
and the swap statistics, so a later call with more nanoseconds continues the run.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import WorkerError
from ..files import save_npz_atomically
from ..worker_processes import exit_code, stop_process
from .umbrella_windows import UmbrellaConfig, biased_system, record_angles, window_centers, window_context, window_seed

__all__ = ["ExchangeStatistics", "exchange_statistics", "run_replica_exchange"]

logger = logging.getLogger(__name__)

_EXCHANGE_STREAM = 7919  # keeps the swap decisions' random stream apart from every window's OpenMM seeds
_WORKER_TIMEOUT_S = 600.0  # one exchange cycle of one worker; far above the ~1 s it takes


@dataclass(frozen=True)
class ExchangeStatistics:
    """Swap statistics of a replica-exchange run.

    attempted, accepted: swaps tried / accepted between window k and window k + 1 (mod n), shape (n_windows,).
    windows_visited: how many distinct windows each replica has sat in, shape (n_windows,).
    production_ns: production per window so far.
    """

    attempted: np.ndarray
    accepted: np.ndarray
    windows_visited: np.ndarray
    production_ns: float

    @property
    def acceptance(self) -> np.ndarray:
        """Accepted fraction per neighbour pair (k, k + 1), shape (n_windows,); NaN where none was tried."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.attempted > 0, self.accepted / np.maximum(self.attempted, 1), np.nan)


def exchange_statistics(cache: Path) -> ExchangeStatistics:
    """The swap statistics of the replica-exchange run cached in ``cache``."""
    path = Path(cache) / "exchange.npz"
    if not path.exists():
        raise FileNotFoundError(f"no replica-exchange state at {path}")
    with np.load(path) as stored:
        visited = np.array([len(np.unique(column)) for column in stored["window_history"].T])
        steps_per_ns = float(stored["steps_per_ns"])
        return ExchangeStatistics(
            attempted=stored["attempted"].copy(),
            accepted=stored["accepted"].copy(),
            windows_visited=visited,
            production_ns=float(stored["steps"]) / steps_per_ns,
        )


def bias_energy(phi: np.ndarray, center: np.ndarray, kappa: float) -> np.ndarray:
    """The window bias in kT: kappa/2 * wrap(phi - center)^2 with the difference wrapped into [-pi, pi)."""
    d = np.asarray(phi) - np.asarray(center)
    d = d - 2 * np.pi * np.floor((d + np.pi) / (2 * np.pi))
    return 0.5 * kappa * d**2


def run_replica_exchange(config: UmbrellaConfig, ns_per_window: float, cache: Path, workers: int = 1) -> float:
    """Run (or extend) the windows of ``config`` as replica exchange to ``ns_per_window`` ns of production each.

    config.exchange_every_ps: time between swap attempts (a whole number of ``config.save_every`` steps).
    workers: processes that share the replicas (each runs its contexts one after the other).
    Returns the wall time in seconds. The state is written every ~50 ps of production per window and at the end,
    atomically, so an interrupted run continues from its last write.
    """
    if config.exchange_every_ps is None or config.exchange_every_ps <= 0:
        raise ValueError(f"exchange_every_ps must be a positive time in ps, got {config.exchange_every_ps}")
    exchange_steps = int(round(config.exchange_every_ps * 1000 / config.timestep_fs))
    if exchange_steps < config.save_every or exchange_steps % config.save_every:
        raise ValueError(
            f"exchange_every_ps = {config.exchange_every_ps} is {exchange_steps} steps, not a whole multiple of "
            f"save_every = {config.save_every} steps"
        )
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    cache = Path(cache)
    n = config.n_windows
    centers = window_centers(n)
    start = time.perf_counter()
    state = _load_state(cache, config) or _fresh_state(config)
    target_steps = int(round(ns_per_window * config.steps_per_ns))
    n_cycles = max(0, (target_steps - state["steps"]) // exchange_steps)
    if n_cycles == 0:
        return 0.0
    saves = exchange_steps // config.save_every
    restart = int(state["restart"])
    rng = np.random.default_rng(np.random.SeedSequence([int(config.seed) % 2**32, _EXCHANGE_STREAM, restart]))
    groups = _start_groups(config, state, workers, restart)
    checkpoint_every = max(1, int(round(50.0 / config.exchange_every_ps)))
    try:
        from tqdm.auto import tqdm

        progress = tqdm(range(n_cycles), desc="replica exchange", unit="cycle", mininterval=5.0)
        for cycle in progress:
            window_of = state["window_of_replica"]
            angles = _run_cycle(groups, {r: float(centers[window_of[r]]) for r in range(n)}, saves)
            last_phi = np.empty(n)
            for r in range(n):
                k = window_of[r]
                state["phi"][k].extend(angles[r][:, 0].tolist())
                state["psi"][k].extend(angles[r][:, 1].tolist())
                last_phi[r] = angles[r][-1, 0]
            state["steps"] += exchange_steps
            _attempt_swaps(state, last_phi, centers, config.kappa, rng, parity=int(state["cycles"]) % 2)
            state["cycles"] += 1
            state["window_history"].append(state["window_of_replica"].copy())
            if (cycle + 1) % checkpoint_every == 0 or cycle + 1 == n_cycles:
                state["positions"], state["velocities"] = _snapshot(groups, n)
                _save_state(cache, config, state)
                acceptance = state["accepted"] / np.maximum(state["attempted"], 1)
                progress.set_postfix(ns=f"{state['steps'] / config.steps_per_ns:.3f}", acc=f"{acceptance.mean():.2f}")
    finally:
        _stop_groups(groups)
    return time.perf_counter() - start


def _attempt_swaps(
    state: dict, last_phi: np.ndarray, centers: np.ndarray, kappa: float, rng: np.random.Generator, parity: int
) -> None:
    """Metropolis swaps between windows (k, k + 1 mod n) for k = parity, parity + 2, ... (disjoint pairs)."""
    n = len(centers)
    window_of = state["window_of_replica"]
    replica_in = np.argsort(window_of)  # replica_in[k]: the replica sitting in window k
    last = n if n % 2 == 0 else n - 1  # an odd ring cannot be split into disjoint pairs round the wrap
    for k in range(parity, last, 2):
        j = (k + 1) % n
        a, b = replica_in[k], replica_in[j]
        delta = (
            bias_energy(last_phi[b], centers[k], kappa)
            + bias_energy(last_phi[a], centers[j], kappa)
            - bias_energy(last_phi[a], centers[k], kappa)
            - bias_energy(last_phi[b], centers[j], kappa)
        )
        state["attempted"][k] += 1
        if np.log(rng.uniform()) < -delta:
            state["accepted"][k] += 1
            window_of[a], window_of[b] = j, k
            replica_in[k], replica_in[j] = b, a


def _fresh_state(config: UmbrellaConfig) -> dict:
    n = config.n_windows
    return {
        "steps": 0,
        "cycles": 0,
        "restart": 0,
        "window_of_replica": np.arange(n),
        "phi": [[] for _ in range(n)],
        "psi": [[] for _ in range(n)],
        "attempted": np.zeros(n, dtype=np.int64),
        "accepted": np.zeros(n, dtype=np.int64),
        "window_history": [],
        "positions": None,
        "velocities": None,
    }


def _load_state(cache: Path, config: UmbrellaConfig) -> dict | None:
    """The cached run (window series cut to the steps the exchange state records), or None for a fresh cache."""
    path = cache / "exchange.npz"
    if not path.exists():
        return None
    with np.load(path) as stored:
        steps = int(stored["steps"])
        state = {
            "steps": steps,
            "cycles": int(stored["cycles"]),
            "restart": int(stored["restart"]) + 1,
            "window_of_replica": stored["window_of_replica"].copy(),
            "attempted": stored["attempted"].copy(),
            "accepted": stored["accepted"].copy(),
            "window_history": list(stored["window_history"]),
            "positions": stored["positions"].copy(),
            "velocities": stored["velocities"].copy(),
        }
    n_saved = steps // config.save_every
    state["phi"], state["psi"] = [], []
    for k in range(config.n_windows):
        with np.load(cache / f"window_{k:03d}.npz") as window:
            if len(window["phi"]) < n_saved:
                raise ValueError(f"{cache}/window_{k:03d}.npz is shorter than exchange.npz says; the cache is corrupt")
            state["phi"].append(window["phi"][:n_saved].tolist())
            state["psi"].append(window["psi"][:n_saved].tolist())
    return state


def _save_state(cache: Path, config: UmbrellaConfig, state: dict) -> None:
    """Window series first, the exchange state last (it says how much of the series is valid); each atomic."""
    centers = window_centers(config.n_windows)
    for k in range(config.n_windows):
        save_npz_atomically(
            cache / f"window_{k:03d}.npz",
            phi=np.asarray(state["phi"][k]),
            psi=np.asarray(state["psi"][k]),
            steps=state["steps"],
            center=centers[k],
        )
    history = np.asarray(state["window_history"], dtype=np.int16).reshape(-1, config.n_windows)
    save_npz_atomically(
        cache / "exchange.npz",
        steps=state["steps"],
        cycles=state["cycles"],
        restart=state["restart"],
        window_of_replica=state["window_of_replica"],
        attempted=state["attempted"],
        accepted=state["accepted"],
        window_history=history,
        positions=state["positions"],
        velocities=state["velocities"],
        steps_per_ns=config.steps_per_ns,
    )


class _ReplicaGroup:
    """The OpenMM contexts of some replicas, in one process: run them and report (phi, psi) every save."""

    def __init__(self, config: dict, replicas: list[int], state: dict, restart: int) -> None:

        self.config = UmbrellaConfig(**config)
        c = self.config
        centers = window_centers(c.n_windows)
        self.contexts = {}
        for r in replicas:
            center = float(centers[state["window_of_replica"][r]])
            aldp, system, phi_atoms, psi_atoms = biased_system(c, center)
            seed = window_seed(c.seed, r, restart)
            if state["positions"] is None:
                self.contexts[r] = window_context(c, aldp, system, phi_atoms, center, seed)
            else:
                positions, velocities = state["positions"][r], state["velocities"][r]
                self.contexts[r] = window_context(c, aldp, system, phi_atoms, center, seed, positions, velocities)
        self.phi_atoms, self.psi_atoms = np.array(phi_atoms), np.array(psi_atoms)

    def run(self, centers: dict[int, float], saves: int) -> dict[int, np.ndarray]:
        """Each replica at its window centre for ``saves`` x save_every steps; (phi, psi) per save, (saves, 2)."""
        out = {}
        for r, context in self.contexts.items():
            context.setParameter("phi0", centers[r])
            angles = record_angles(context, saves, self.config.save_every, self.phi_atoms, self.psi_atoms)
            if not np.isfinite(angles).all():
                raise RuntimeError(f"replica {r} blew up (non-finite positions); use a smaller time step")
            out[r] = angles
        return out

    def snapshot(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Positions (nm) and velocities (nm/ps) of every replica, (n_atoms, 3) each."""
        import openmm.unit as unit

        out = {}
        for r, context in self.contexts.items():
            s = context.getState(getPositions=True, getVelocities=True)
            out[r] = (
                s.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
                s.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond),
            )
        return out


def _serve(connection, config: dict, replicas: list[int], state: dict, restart: int) -> None:
    """Worker process: build the group, then answer ("run", centers, saves) / ("snapshot",) / ("stop",)."""
    try:
        group = _ReplicaGroup(config, replicas, state, restart)
        connection.send(("ok", None))
        while True:
            command = connection.recv()
            if command[0] == "stop":
                return
            result = group.run(*command[1:]) if command[0] == "run" else group.snapshot()
            connection.send(("ok", result))
    except (EOFError, KeyboardInterrupt):
        return
    except Exception:  # sent to the parent, which raises it
        connection.send(("error", traceback.format_exc()))
    finally:
        connection.close()


class _Remote:
    """A ``_ReplicaGroup`` in a worker process, with timeouts and a clear error when it dies."""

    def __init__(self, config: dict, replicas: list[int], state: dict, restart: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        sub_state = {
            "window_of_replica": state["window_of_replica"],
            "positions": state["positions"],
            "velocities": state["velocities"],
        }
        self.process = context.Process(target=_serve, args=(child, config, replicas, sub_state, restart), daemon=True)
        self.process.start()
        child.close()
        self.replicas = replicas

    def send(self, *command) -> None:
        try:
            self.connection.send(command)
        except (BrokenPipeError, ConnectionResetError):
            raise WorkerError(self._died()) from None

    def receive(self):
        if not self.connection.poll(_WORKER_TIMEOUT_S):
            raise WorkerError(
                f"replica-exchange worker (replicas {self.replicas}) sent nothing for {_WORKER_TIMEOUT_S} s"
            )
        try:
            status, result = self.connection.recv()
        except (EOFError, ConnectionResetError):
            raise WorkerError(self._died()) from None
        if status == "error":
            raise WorkerError(f"replica-exchange worker (replicas {self.replicas}) failed:\n{result}")
        return result

    def _died(self) -> str:
        code = exit_code(self.process, wait_s=5)
        return (
            f"replica-exchange worker (replicas {self.replicas}) died (exit code {code}); the last "
            "saved state is kept: run again to continue"
        )

    def stop(self) -> None:
        try:
            self.connection.send(("stop",))
        except OSError:
            pass
        stop_process(
            self.process, grace_s=10, escalation=("kill",), wait_s=None, name="replica-exchange worker", log=logger
        )
        self.connection.close()


def _start_groups(config: UmbrellaConfig, state: dict, workers: int, restart: int) -> list:
    n = config.n_windows
    shares = [list(range(w, n, workers)) for w in range(min(workers, n))]
    if len(shares) == 1:
        return [_ReplicaGroup(asdict(config), shares[0], state, restart)]
    groups = []
    try:
        for share in shares:
            groups.append(_Remote(asdict(config), share, state, restart))
        for group in groups:
            group.receive()  # built and equilibrated
    except BaseException:
        _stop_groups(groups)
        raise
    return groups


def _run_cycle(groups: list, centers: dict[int, float], saves: int) -> dict[int, np.ndarray]:
    if len(groups) == 1 and isinstance(groups[0], _ReplicaGroup):
        return groups[0].run(centers, saves)
    for group in groups:
        group.send("run", {r: centers[r] for r in group.replicas}, saves)
    out = {}
    for group in groups:
        out.update(group.receive())
    return out


def _snapshot(groups: list, n: int) -> tuple[np.ndarray, np.ndarray]:
    if len(groups) == 1 and isinstance(groups[0], _ReplicaGroup):
        parts = groups[0].snapshot()
    else:
        parts = {}
        for group in groups:
            group.send("snapshot")
        for group in groups:
            parts.update(group.receive())
    positions = np.stack([parts[r][0] for r in range(n)])
    velocities = np.stack([parts[r][1] for r in range(n)])
    return positions, velocities


def _stop_groups(groups: list) -> None:
    for group in groups:
        if isinstance(group, _Remote):
            group.stop()

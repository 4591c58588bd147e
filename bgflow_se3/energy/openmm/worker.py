"""One OpenMM Context evaluating batches of configurations; used in-process and as a worker process's main loop.

Energies come back in kJ/mol, shape (n,); forces in kJ/(mol nm), shape (n, n_atoms, 3); failures as a dict
``{batch index: message}``. The same function serves ``n_workers=1`` and every worker, so results agree bit for bit.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["evaluate_batch", "make_context", "worker_main"]

#: Seconds between checks that the parent process is still alive while a worker waits for work.
_PARENT_POLL_S = 1.0


def make_context(system_xml: str, platform: str, properties: dict[str, str] | None = None):
    """A Context for energy evaluation only (a VerletIntegrator that never steps) on the named platform."""
    import openmm

    names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if platform not in names:
        raise ValueError(f"OpenMM has no platform {platform!r} here; available: {', '.join(names)}")
    system = openmm.XmlSerializer.deserialize(system_xml)
    integrator = openmm.VerletIntegrator(0.001)
    return openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform), dict(properties or {}))


def _fast_state_readers():
    """OpenMM's raw accessors (no unit wrapping, 2-3x faster), or None where this OpenMM version lacks them."""
    import openmm

    get_vector = getattr(openmm.State, "_getVectorAsNumpy", None)
    get_energy = getattr(getattr(openmm, "_openmm", None), "State_getPotentialEnergy", None)
    if get_vector is None or get_energy is None or not hasattr(openmm.State, "Forces"):
        return None
    return get_vector, get_energy, openmm.State.Forces


_FAST_READERS: list = []  # filled on first use: [readers or None]


def _read_state(state, forces_out: np.ndarray) -> float:
    """Potential energy (kJ/mol) of ``state``; writes its forces (kJ/(mol nm)) into ``forces_out`` (n_atoms, 3)."""
    if not _FAST_READERS:
        _FAST_READERS.append(_fast_state_readers())
    readers = _FAST_READERS[0]
    if readers is None:
        return _read_state_public(state, forces_out)
    get_vector, get_energy, forces_kind = readers
    get_vector(state, forces_kind, forces_out)
    return float(get_energy(state))


def _read_state_public(state, forces_out: np.ndarray) -> float:
    """The same as ``_read_state`` through OpenMM's public, unit-aware API (the reference for tests)."""
    import openmm.unit as unit

    forces_out[...] = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    return float(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))


def evaluate_batch(
    context, positions: np.ndarray, virtual_sites: Sequence[int] = ()
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Energies and forces of each configuration, one ``getState(getEnergy, getForces)`` call per configuration.

    positions: float64 array, shape (n, n_atoms, 3), nm; rows are assumed finite (the caller filters).
    virtual_sites: indices of virtual-site particles; their positions are rebuilt from their parent atoms before
    each evaluation and their forces set to zero (OpenMM already adds them to the parents' forces), so the forces
    are the exact gradient of the energy as a function of all input coordinates.
    Returns energies (n,) in kJ/mol, forces (n, n_atoms, 3) in kJ/(mol nm), and ``{index: message}`` for every
    configuration where OpenMM raised or returned a non-finite energy or force (its energy is NaN, forces 0).
    """
    n = positions.shape[0]
    energies = np.full(n, np.nan)
    forces = np.zeros(positions.shape, dtype=np.float64)
    failures: dict[int, str] = {}
    for i in range(n):
        try:
            context.setPositions(positions[i])
            if len(virtual_sites):
                context.computeVirtualSites()
            state = context.getState(getEnergy=True, getForces=True)
            energy = _read_state(state, forces[i])
        except Exception as exc:  # OpenMM raises plain Exception subclasses; report, never hide
            failures[i] = f"OpenMM raised {type(exc).__name__}: {exc}"
            forces[i] = 0.0
            continue
        if not np.isfinite(energy) or not np.isfinite(forces[i]).all():
            failures[i] = f"OpenMM returned a non-finite energy ({energy}) or force"
            forces[i] = 0.0
            continue
        energies[i] = energy
    if len(virtual_sites):
        forces[:, list(virtual_sites)] = 0.0
    return energies, forces, failures


def worker_main(fd: int) -> None:
    """Main loop of a worker process talking over the socket ``fd`` (a ``multiprocessing`` Connection).

    Receives ``("init", system_xml, platform, properties, virtual_sites)``, replies ``("ready", pid)`` or
    ``("init_error", message)``, then answers each ``("eval", job, positions)`` with ``("result", job, energies,
    forces, failures)``. Exits on ``("close",)``, when the socket closes (the parent died), or when its parent
    process changes (it was re-parented as an orphan), so a worker never outlives its parent.
    """
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which shuts the pool down
    parent = os.getppid()
    conn = Connection(fd)
    try:
        _, system_xml, platform, properties, virtual_sites = conn.recv()
        context = make_context(system_xml, platform, properties)
    except (EOFError, OSError):
        return
    except Exception as exc:
        _send_quietly(conn, ("init_error", f"{type(exc).__name__}: {exc}"))
        return
    if not _send_quietly(conn, ("ready", os.getpid())):
        return
    while True:
        try:
            if not conn.poll(_PARENT_POLL_S):
                if os.getppid() != parent:
                    return
                continue
            message: Any = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "close":
            return
        if message[0] == "eval":
            _, job, positions = message
            energies, forces, failures = evaluate_batch(context, positions, virtual_sites)
            if not _send_quietly(conn, ("result", job, energies, forces, failures)):
                return


def _send_quietly(conn, message) -> bool:
    try:
        conn.send(message)
    except (BrokenPipeError, EOFError, OSError):
        return False
    return True


if __name__ == "__main__":  # started by pool.WorkerPool as a fresh interpreter: ... worker.py FD
    import sys

    worker_main(int(sys.argv[-1]))

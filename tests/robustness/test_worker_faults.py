"""OpenMM worker processes killed during an evaluation and during AIS: the call recovers with the exact result or
raises WorkerError; no call hangs and no worker (or zombie) outlives its OpenMMEnergy."""

import os
import signal
import threading

import pytest
import torch
from _robustness_helpers import deadline

from bgflow_se3 import OpenMMEnergy, WorkerError
from bgflow_se3.sampling import AnnealedImportanceSampler


def _kill_soon(pid: int, delay_s: float = 0.3) -> threading.Thread:
    """Freeze ``pid`` now (so it holds its chunks unanswered), SIGKILL it ``delay_s`` later, while a call waits."""
    os.kill(pid, signal.SIGSTOP)
    thread = threading.Timer(delay_s, os.kill, (pid, signal.SIGKILL))
    thread.start()
    return thread


def _batch(aldp, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.from_numpy(aldp.positions_nm)
    return x0 + 0.01 * torch.randn(n, *x0.shape, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def serial(aldp):
    with OpenMMEnergy(aldp.system) as energy:
        yield energy


def test_worker_killed_during_evaluation_recovers_exactly(aldp, serial, no_leaked_processes):
    x = _batch(aldp, 64, 0)
    with OpenMMEnergy(aldp.system, n_workers=2) as pool, deadline(60):
        victim = pool.worker_pids()[0]
        killer = _kill_soon(victim)
        u, force = pool.energy_and_force(x)
        killer.join()
        assert victim not in pool.worker_pids() and len(pool.worker_pids()) == 2
        u_ref, force_ref = serial.energy_and_force(x)
        assert torch.equal(u, u_ref) and torch.equal(force, force_ref)  # Reference platform: bit for bit


def test_worker_killed_with_no_retries_left_raises_worker_error_then_recovers(aldp, serial, no_leaked_processes):
    x = _batch(aldp, 64, 1)
    with OpenMMEnergy(aldp.system, n_workers=2, max_retries=0) as pool, deadline(60):
        killer = _kill_soon(pool.worker_pids()[1])
        with pytest.raises(WorkerError, match="died 1 times"):
            pool(x)
        killer.join()
        assert torch.equal(pool(x), serial(x))  # the next call restarts the workers


def _ais_run(energy, x0, kill: int | None = None) -> tuple:
    """AIS (3 intermediates x 2 leapfrog steps) from a Gaussian around x0 towards exp(-u); if ``kill`` is a pid,
    that worker is frozen and killed during the second energy evaluation of the run."""
    calls = []

    def log_q(z):
        return -0.5 * (z - x0).pow(2).flatten(1).sum(1) / 0.01**2

    def log_p(z):
        calls.append(1)
        if kill is not None and len(calls) == 2:
            _kill_soon(kill, 0.2)
        return -energy(z)

    ais = AnnealedImportanceSampler(3, step_size=1e-4, n_leapfrog=2)
    z = x0 + 0.01 * torch.randn(16, *x0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return ais.run(z, log_q, log_p, torch.Generator().manual_seed(6)), len(calls)


def test_worker_killed_during_ais_gives_the_same_result(aldp, serial, no_leaked_processes):
    x0 = torch.from_numpy(aldp.positions_nm)
    reference, n_calls = _ais_run(serial, x0)
    assert n_calls > 2 and torch.isfinite(reference.log_w).all()
    with OpenMMEnergy(aldp.system, n_workers=2) as pool, deadline(90):
        victim = pool.worker_pids()[0]
        result, _ = _ais_run(pool, x0, kill=victim)
        assert victim not in pool.worker_pids()
    for name in ("z", "log_w", "log_q", "log_p", "acceptance"):
        assert torch.equal(getattr(result, name), getattr(reference, name)), name


def test_worker_killed_during_ais_without_retries_raises_worker_error(aldp, no_leaked_processes):
    x0 = torch.from_numpy(aldp.positions_nm)
    with OpenMMEnergy(aldp.system, n_workers=2, max_retries=0) as pool, deadline(60):
        with pytest.raises(WorkerError, match="OpenMM worker processes died"):
            _ais_run(pool, x0, kill=pool.worker_pids()[1])

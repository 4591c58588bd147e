"""OpenMMEnergy with worker processes: exact agreement with n_workers=1, recovery, timeouts, no leaked processes."""

import gc
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bgflow_se3 import EnergyEvaluationError, OpenMMEnergy, WorkerError
from bgflow_se3.systems import load_aldp

ROOT = Path(__file__).resolve().parents[3]


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie has exited; its parent has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _worker_children(parent: int) -> set[int]:
    """Pids of live OpenMM worker processes whose parent is ``parent`` (a /proc scan, no psutil)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent and fields[0] != "Z" and b"energy/openmm/worker.py" in cmdline:
            found.add(int(entry.name))
    return found


def _wait_until_gone(pids, timeout_s: float = 10.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = {pid for pid in pids if _running(pid)}
        if not alive:
            return alive
        time.sleep(0.05)
    return {pid for pid in pids if _running(pid)}


@pytest.fixture(scope="module")
def aldp():
    return load_aldp("implicit")


@pytest.fixture(scope="module")
def serial(aldp):
    with OpenMMEnergy(aldp.system) as energy:
        yield energy


@pytest.fixture(scope="module")
def pool(aldp):
    with OpenMMEnergy(aldp.system, n_workers=2) as energy:
        yield energy


def perturbed(aldp, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.from_numpy(aldp.positions_nm)
    return x0 + 0.02 * torch.randn(n, *x0.shape, generator=g, dtype=torch.float64)


def test_two_workers_equal_one_worker_bit_for_bit(aldp, serial, pool):
    assert len(pool.worker_pids()) == 2 and serial.worker_pids() == []
    x = perturbed(aldp, 203)  # not a multiple of the chunk size
    x[17, 5, 1] = float("nan")
    u1, f1 = serial.energy_and_force(x)
    u2, f2 = pool.energy_and_force(x)
    assert torch.equal(u1, u2) and torch.equal(f1, f2)
    assert torch.isposinf(u2[17]) and torch.isfinite(u2[:17]).all()
    xg = x.clone().requires_grad_(True)
    pool(xg).sum().backward()
    assert torch.equal(xg.grad, -f1)
    assert torch.equal(pool(x[:1]), u1[:1]) and pool(x[:0]).shape == (0,)


def test_failed_evaluations_in_workers_follow_the_error_policy(aldp, serial, pool):
    x = perturbed(aldp, 40, seed=6)
    x[33] = 0.0  # every atom on one point: OpenMM returns a non-finite energy
    u, f = pool.energy_and_force(x)
    assert torch.isposinf(u[33]) and (f[33] == 0).all()
    assert torch.equal(u, serial(x)) and torch.isfinite(u[:33]).all()
    pool.on_error = "raise"
    try:
        with pytest.raises(EnergyEvaluationError, match="1 of 40 .* batch index 33: OpenMM returned a non-finite"):
            pool(x)
    finally:
        pool.on_error = "inf"


def _killer(pool, killed: list) -> threading.Thread:
    """Stop a worker now, and SIGKILL it from a thread once it holds chunks: it dies mid-run, with nothing replied."""
    pool._backend.wait_ready()  # a worker replaced in an earlier test may still be starting
    victim = pool.worker_pids()[0]
    os.kill(victim, signal.SIGSTOP)

    def kill_when_loaded():
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if any(slot.jobs and slot.process.pid == victim for slot in list(pool._backend._slots)):
                break
            time.sleep(1e-3)
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)

    thread = threading.Thread(target=kill_when_loaded)
    thread.start()
    return thread


def test_worker_killed_mid_run_is_restarted_and_its_chunks_rerun(aldp, serial, pool):
    x = perturbed(aldp, 1024, seed=1)
    expected = serial.energy_and_force(x)
    killed: list[int] = []
    killer = _killer(pool, killed)
    u, f = pool.energy_and_force(x)
    killer.join()
    assert torch.equal(u, expected[0]) and torch.equal(f, expected[1])
    assert killed[0] not in pool.worker_pids() and len(pool.worker_pids()) == 2
    assert not Path(f"/proc/{killed[0]}").exists()  # reaped, not a zombie


def test_worker_dead_between_calls_is_replaced(aldp, serial, pool):
    victim = pool.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    while _running(victim):
        time.sleep(0.01)
    x = perturbed(aldp, 64, seed=2)
    assert torch.equal(pool(x), serial(x))
    assert victim not in pool.worker_pids() and len(pool.worker_pids()) == 2


def test_too_many_deaths_raise_worker_error_then_the_pool_recovers(aldp, serial, pool):
    x = perturbed(aldp, 1024, seed=3)
    pool._backend.max_retries = 0
    try:
        killed: list[int] = []
        killer = _killer(pool, killed)
        with pytest.raises(WorkerError, match="died 1 times in one call"):
            pool(x)
        killer.join()
    finally:
        pool._backend.max_retries = 3
    assert torch.equal(pool(x[:50]), serial(x[:50]))


def _named_configurations(message: str) -> list[int]:
    """The batch indices a WorkerError names after "holding configuration(s)", e.g. "10..71, 258" -> [10, ..., 258]."""
    runs = re.search(r"holding configurations? ([0-9., ]+)\)", message).group(1).split(", ")
    bounds = [[int(v) for v in run.split("..")] for run in runs]
    return [i for b in bounds for i in range(b[0], b[-1] + 1)]


def test_a_dead_worker_error_names_exactly_the_configurations_it_held(aldp, pool, monkeypatch):
    """An uneven split (non-finite rows never reach a worker, so pool rows are not batch indices; the last chunk is
    short) and a victim killed while it holds chunks that are not contiguous (it finished one and got a later one,
    the other worker's chunks lie between): the error names the batch indices of exactly those configurations."""
    backend = pool._backend
    backend.wait_ready()
    x = perturbed(aldp, 1000, seed=8)
    x[:10, 0, 0] = float("nan")  # batch indices 0..9 go to no worker: pool row k is batch index k + 10 ...
    x[300, 4, 2] = float("inf")  # ... up to row 289, then k + 11
    rows = np.flatnonzero(torch.isfinite(x).flatten(1).all(dim=1).numpy())
    chunks: dict[int, tuple[int, int]] = {}  # job -> (start, stop) rows of the positions the pool was given
    deaths: list[list[int]] = []  # the jobs each dead worker held
    feed, poll = backend._feed, backend._poll

    def recording_feed(slot, pending, jobs, positions, depth):
        chunks.update(jobs)
        feed(slot, pending, jobs, positions, depth)

    def recording_poll(on_result, during_start=False):
        lost = poll(on_result, during_start)
        deaths.extend(jobs for _, jobs in lost)
        return lost

    monkeypatch.setattr(backend, "_feed", recording_feed)
    monkeypatch.setattr(backend, "_poll", recording_poll)
    monkeypatch.setattr(backend, "max_retries", 0)
    victim = backend._slots[0]

    def kill_when_scattered():
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            held = list(victim.jobs)
            if held and max(held) - min(held) + 1 > len(held):
                break
            time.sleep(1e-3)
        os.kill(victim.process.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_scattered)
    killer.start()
    with pytest.raises(WorkerError, match="died 1 times in one call") as info:
        pool(x)
    killer.join()
    (held,) = deaths
    assert max(held) - min(held) + 1 > len(held), held  # the victim's chunks were not contiguous
    pool_rows = [row for job in held for row in range(*chunks[job])]
    assert _named_configurations(str(info.value)) == sorted(int(rows[row]) for row in pool_rows)


def test_a_worker_dead_while_idle_is_not_said_to_hold_the_batch(aldp, serial, pool, monkeypatch):
    pool._backend.wait_ready()
    victim = pool._backend._slots[0].process
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)  # reaped: the pool sees it dead before it sends it anything
    monkeypatch.setattr(pool._backend, "max_retries", 0)
    with pytest.raises(WorkerError, match=r"the last one holding no configuration\)"):
        pool(perturbed(aldp, 64, seed=9))
    monkeypatch.undo()
    x = perturbed(aldp, 8, seed=10)
    assert torch.equal(pool(x), serial(x))


def test_hung_worker_times_out_with_a_clear_error(aldp, serial, pool):
    pool._backend.wait_ready()
    victim = pool.worker_pids()[0]
    os.kill(victim, signal.SIGSTOP)  # alive but never answers
    pool._backend.timeout_s = 1.0
    try:
        start = time.monotonic()
        with pytest.raises(WorkerError, match=r"longer than timeout_s=1 s .* was killed"):
            pool(perturbed(aldp, 256, seed=4))
        assert time.monotonic() - start < 15.0
    finally:
        pool._backend.timeout_s = 120.0
    assert _wait_until_gone([victim]) == set()
    x = perturbed(aldp, 32, seed=5)
    assert torch.equal(pool(x), serial(x)) and victim not in pool.worker_pids()


def test_close_context_manager_and_garbage_collection_stop_every_worker(aldp, pool):
    others = set(pool.worker_pids())
    with OpenMMEnergy(aldp.system, n_workers=2) as energy:
        pids = set(energy.worker_pids())
        assert len(pids) == 2 and pids <= _worker_children(os.getpid())
    assert energy.worker_pids() == []
    assert _wait_until_gone(pids, timeout_s=0.5) == set()  # close() waits for them: gone at once
    with pytest.raises(WorkerError, match="closed"):
        energy(perturbed(aldp, 2))

    energy = OpenMMEnergy(aldp.system, n_workers=2)
    pids = set(energy.worker_pids())
    del energy
    gc.collect()
    assert _wait_until_gone(pids, timeout_s=0.5) == set()
    assert _worker_children(os.getpid()) == others


def test_a_forked_child_neither_uses_nor_stops_the_parents_workers(aldp, serial, pool):
    pool._backend.wait_ready()
    before = pool.worker_pids()
    pid = os.fork()
    if pid == 0:  # child: evaluating must fail clearly, and exiting (which closes the pool) must not stop workers
        code = 1
        try:
            pool(perturbed(aldp, 2))
        except WorkerError as error:
            code = 0 if "this is a fork of it" in str(error) else 1
        finally:
            pool.close()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    x = perturbed(aldp, 16, seed=7)
    assert torch.equal(pool(x), serial(x))
    assert pool.worker_pids() == before  # the same workers: the child did not stop them


def test_failing_worker_start_is_reported_and_leaves_nothing(aldp, pool):
    others = set(pool.worker_pids())
    with pytest.raises(WorkerError, match="no platform 'Nope'"):
        OpenMMEnergy(aldp.system, platform="Nope", n_workers=2)
    assert _worker_children(os.getpid()) == others


def _script(body: str, head: str = "") -> str:
    imports = """
        import torch
        from bgflow_se3 import OpenMMEnergy
        from bgflow_se3.systems import load_aldp
    """
    return textwrap.dedent(head) + textwrap.dedent(imports) + textwrap.dedent(body)


def test_no_worker_survives_the_end_of_a_script():
    # The check is registered before anything else, so it runs after every other exit hook (LIFO): it sees whether
    # interpreter exit itself stopped the workers, before the workers could notice that their parent is gone.
    head = """
        import atexit, pathlib
        pids = []
        def check():
            alive = [p for p in pids if pathlib.Path(f"/proc/{p}").exists()]
            print("alive at exit:", alive, flush=True)
        atexit.register(check)
    """
    body = """
        aldp = load_aldp("vacuum")
        energy = OpenMMEnergy(aldp.system, n_workers=2)
        pids.extend(energy.worker_pids())
        x = torch.from_numpy(aldp.positions_nm).expand(8, 22, 3)
        print("pids", *pids, float(energy(x)[0]), flush=True)
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _script(body, head)], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    pids = [int(p) for p in lines[0].split()[1:3]]
    assert lines[-1] == "alive at exit: []", result.stdout
    assert _wait_until_gone(pids, timeout_s=1.0) == set()
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr


def test_workers_exit_by_themselves_when_the_parent_is_killed():
    body = """
        energy = OpenMMEnergy(load_aldp("vacuum").system, n_workers=2)
        print(*energy.worker_pids(), flush=True)
        import time
        time.sleep(120)
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-c", _script(body)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(_running(p) for p in pids)
    finally:
        parent.kill()
        parent.wait(10)
        parent.stdout.close()
    assert _wait_until_gone(pids, timeout_s=10.0) == set()

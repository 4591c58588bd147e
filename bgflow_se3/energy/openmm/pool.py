"""A pool of worker processes, each owning one OpenMM Context: chunked batches, timeouts, restarts, clean shutdown.

Workers are fresh interpreters running ``worker.py`` (spawn semantics: fork + exec, nothing inherited;
never a bare ``fork``, which OpenMM's CPU/CUDA platforms and torch's threads do not survive). Unlike
``multiprocessing``'s spawn they import neither torch nor the user's ``__main__``: a worker starts in about a
second and scripts need no ``if __name__ == "__main__"`` guard. They talk over a socket pair with
``multiprocessing.connection.Connection``. Every wait has a deadline; a worker that dies is restarted and its chunk
re-run (a bounded number of times); a worker that times out is killed and reported as a ``WorkerError``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np

from ...errors import WorkerError
from ...worker_processes import exit_code, stop_process

__all__ = ["WorkerPool"]

logger = logging.getLogger(__name__)

#: Seconds a worker gets to exit after ("close",) before it is terminated, then killed.
_JOIN_S = 2.0

#: Upper bound on the positions sent in one message, bytes.
_CHUNK_BYTES = 2**15

#: Most chunks a worker holds at once (it computes one while the next wait in its socket) ...
_DEPTH = 4

#: ... and most bytes of positions queued to one worker: well inside a Linux AF_UNIX socket buffer (~208 KiB).
_QUEUED_BYTES = 2**17

#: Runs the worker file as __main__ without putting its folder (or the cwd) on sys.path.
_BOOTSTRAP = "import runpy, sys; sys.path.pop(0); runpy.run_path(sys.argv[1], run_name='__main__')"
_WORKER_FILE = str(Path(__file__).with_name("worker.py"))


@dataclass
class _Slot:
    """One worker: its process, the parent's end of its socket, its state and the chunks it holds (oldest first)."""

    process: subprocess.Popen
    conn: Connection
    state: str = "starting"  # "starting" | "ready" | "lost" (found dead, not yet replaced) | "dead" (stopped)
    jobs: list[int] = field(default_factory=list)
    deadline: float = math.inf  # when the next reply is due; inf while nothing is expected


class WorkerPool:
    """``n_workers`` processes evaluating chunks of a batch of positions; see the module docstring.

    system_xml: the serialized openmm.System. platform, properties: as for ``openmm.Context``. virtual_sites:
    indices of virtual-site particles (see ``evaluate_batch``). timeout_s: longest wait for one reply (a worker
    starting, or its next chunk). max_retries: worker deaths tolerated per ``evaluate`` call before ``WorkerError``.

    Chunks: a batch is cut into about four chunks per worker, each at most ``_CHUNK_BYTES`` of positions, and every
    worker holds up to ``_DEPTH`` chunks at once (at most ``_QUEUED_BYTES``), so that it starts on the next one
    without waiting for this process to be scheduled, which matters on a busy machine. What is queued to a worker
    then fits in its socket buffer, so sending never blocks, even to a hung worker; the one exception is a single
    configuration over 128 KiB (more than about 5,400 atoms), which is sent whole.
    """

    def __init__(
        self,
        system_xml: str,
        platform: str,
        properties: dict[str, str] | None,
        n_workers: int,
        timeout_s: float,
        virtual_sites: tuple[int, ...] = (),
        max_retries: int = 3,
    ) -> None:
        self._init_message = ("init", system_xml, platform, properties, tuple(virtual_sites))
        self.n_workers = int(n_workers)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self._slots: list[_Slot] = []
        self._job_counter = 0
        # the chunks of the call in progress, {job: (start, stop)} rows of its positions, and the caller's index of
        # each row (None: the row numbers): what error messages name
        self._call_jobs: dict[int, tuple[int, int]] = {}
        self._call_indices: np.ndarray | None = None
        self.closed = False
        self._owner = os.getpid()  # a forked copy of this process must not drive (or stop) our workers
        try:
            self._slots = [self._start() for _ in range(self.n_workers)]
            self.wait_ready()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------------------------------------- lifecycle
    def _start(self) -> _Slot:
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, _WORKER_FILE, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()  # only the worker holds its end: it sees EOF when we die, and we when it dies
        conn = Connection(ours.detach())
        slot = _Slot(process, conn, "starting", [], time.monotonic() + self.timeout_s)
        try:
            conn.send(self._init_message)
        except (BrokenPipeError, EOFError, OSError):
            pass  # it died at once; _poll reports it
        return slot

    def wait_ready(self) -> None:
        """Start workers stopped earlier and block until every worker is ready; ``WorkerError`` if one cannot start."""
        if self.closed:
            raise WorkerError("this OpenMMEnergy's worker pool is closed; create a new OpenMMEnergy")
        for index, slot in enumerate(self._slots):
            if slot.state in ("dead", "lost"):
                self._stop(slot, graceful=False)
                self._slots[index] = self._start()
        while any(slot.state == "starting" for slot in self._slots):
            self._poll(lambda job, result: None, during_start=True)

    def pids(self) -> list[int]:
        """Process ids of the workers that have not been stopped (for tests and diagnostics)."""
        return [slot.process.pid for slot in self._slots if slot.state != "dead"]

    def close(self) -> None:
        """Stop every worker (ask, then SIGTERM, then SIGKILL), reap it and release its socket. Idempotent.

        In a forked copy of the owning process it only drops its copies of the sockets: the workers are not its own.
        """
        self.closed = True
        if os.getpid() != self._owner:
            for slot in self._slots:
                slot.conn.close()
            self._slots = []
            return
        for slot in self._slots:
            if slot.state != "dead":
                try:
                    slot.conn.send(("close",))
                except (BrokenPipeError, EOFError, OSError):
                    pass
        for slot in self._slots:
            if slot.state != "dead":
                self._stop(slot, graceful=True)
        self._slots = []

    def _stop(self, slot: _Slot, graceful: bool) -> None:
        """End one worker and reap it (no zombie): if ``graceful`` wait for it, then SIGTERM; else SIGKILL at once.

        A worker holds no state worth saving, so a hung or half-dead one is killed outright.
        """
        grace_s, escalation = (_JOIN_S, ("terminate", "kill")) if graceful else (0.0, ("kill",))
        stop_process(
            slot.process, grace_s=grace_s, escalation=escalation, wait_s=_JOIN_S, name="OpenMM worker", log=logger
        )
        slot.conn.close()
        slot.state, slot.jobs, slot.deadline = "dead", [], math.inf

    # ---------------------------------------------------------------------------------------------- evaluation
    def evaluate(
        self, positions: np.ndarray, indices: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """Energies (n,), forces (n, n_atoms, 3) and failures ``{index: message}`` in the order of ``positions``.

        positions: float64, shape (n, n_atoms, 3), nm. Energies in kJ/mol, forces in kJ/(mol nm), as
        ``evaluate_batch`` returns them; chunks go to whichever worker has room. indices: the caller's batch index
        of each row, shape (n,), which a ``WorkerError`` names (None: the row numbers); failures are keyed by row.
        """
        if self.closed:
            raise WorkerError("this OpenMMEnergy's worker pool is closed; create a new OpenMMEnergy")
        if os.getpid() != self._owner:
            raise WorkerError(
                f"this OpenMMEnergy's workers belong to process {self._owner}, and this is a fork of it; "
                "create a new OpenMMEnergy in this process"
            )
        n = positions.shape[0]
        energies = np.full(n, np.nan)
        forces = np.zeros(positions.shape, dtype=np.float64)
        failures: dict[int, str] = {}
        if n == 0:
            return energies, forces, failures
        size = max(1, min(_CHUNK_BYTES // positions[0].nbytes, math.ceil(n / (4 * self.n_workers))))
        depth = max(1, min(_DEPTH, _QUEUED_BYTES // (size * positions[0].nbytes)))
        first = self._job_counter
        jobs = {first + k: (start, min(start + size, n)) for k, start in enumerate(range(0, n, size))}
        self._job_counter += len(jobs)
        self._call_jobs, self._call_indices = jobs, indices
        pending = list(jobs)
        done: set[int] = set()
        deaths = 0

        def on_result(job: int, result) -> None:
            if job not in jobs:  # cannot happen (workers holding chunks are killed on abort); be safe
                return
            start, stop = jobs[job]
            e, f, fail = result
            energies[start:stop], forces[start:stop] = e, f
            failures.update({start + i: message for i, message in fail.items()})
            done.add(job)

        try:
            for index, slot in enumerate(self._slots):  # workers stopped in an earlier call come back now
                if slot.state == "dead":
                    self._slots[index] = self._start()
            while len(done) < len(jobs):
                for slot in self._slots:
                    self._feed(slot, pending, jobs, positions, depth)
                for index, lost_jobs in self._poll(on_result):
                    deaths += 1
                    pending[:0] = [job for job in lost_jobs if job not in done]
                    if deaths > self.max_retries:
                        raise WorkerError(
                            f"OpenMM worker processes died {deaths} times in one call (the last one holding "
                            f"{self._held(lost_jobs)}); a configuration may crash OpenMM. Check the positions, or "
                            "evaluate with n_workers=1 to see the error"
                        )
                    logger.warning("OpenMM worker died; restarting it and re-running its chunks")
                    self._stop(self._slots[index], graceful=False)
                    self._slots[index] = self._start()
        except BaseException:
            # Abort: kill the workers still holding chunks, so no stale reply reaches the next call; they restart
            # at the next call.
            for slot in self._slots:
                if slot.jobs or slot.state in ("starting", "lost"):
                    self._stop(slot, graceful=False)
            raise
        finally:
            self._call_jobs, self._call_indices = {}, None
        return energies, forces, failures

    def _held(self, held_jobs: list[int]) -> str:
        """The configurations of ``held_jobs`` (chunks of the call in progress) as the caller's batch indices, e.g.
        "configurations 10..71, 258..319"; "no configuration" for a worker that held none."""
        rows = [row for job in held_jobs if job in self._call_jobs for row in range(*self._call_jobs[job])]
        if not rows:
            return "no configuration"
        index = np.asarray(sorted(rows)) if self._call_indices is None else np.sort(self._call_indices[rows])
        return ("configuration " if index.size == 1 else "configurations ") + _runs(index)

    def _feed(
        self, slot: _Slot, pending: list[int], jobs: dict[int, tuple[int, int]], positions: np.ndarray, depth: int
    ) -> None:
        """Send pending chunks to ``slot`` until it holds ``depth``; mark it lost if it is found dead."""
        if slot.state != "ready" or not pending or len(slot.jobs) >= depth:
            return
        if exit_code(slot.process) is not None:
            slot.state = "lost"  # died while idle (e.g. between calls)
            return
        while pending and len(slot.jobs) < depth:
            job = pending[0]
            start, stop = jobs[job]
            try:
                slot.conn.send(("eval", job, positions[start:stop]))
            except (BrokenPipeError, EOFError, OSError):
                slot.state = "lost"
                return
            pending.pop(0)
            if not slot.jobs:
                slot.deadline = time.monotonic() + self.timeout_s
            slot.jobs.append(job)

    def _poll(self, on_result, during_start: bool = False) -> list[tuple[int, list[int]]]:
        """Wait for the next replies (until the earliest deadline) and dispatch them.

        Returns ``(slot index, chunks it held)`` for each worker found dead. Raises ``WorkerError`` on a timeout, on
        a worker that reports it cannot build its Context, and (``during_start``: the pool's first start) on a
        worker that dies before it is ready; a replacement worker dying while starting is a death like any other.
        """
        lost = [(index, list(slot.jobs)) for index, slot in enumerate(self._slots) if slot.state == "lost"]
        if lost:
            return lost
        waiting = [slot for slot in self._slots if slot.state == "starting" or slot.jobs]
        if not waiting:
            return lost
        timeout = max(0.0, min(slot.deadline for slot in waiting) - time.monotonic())
        ready = set(wait([slot.conn for slot in waiting], timeout))
        for index, slot in enumerate(self._slots):
            if slot not in waiting:
                continue
            message = None
            if slot.conn in ready:
                try:
                    message = slot.conn.recv()
                except (EOFError, OSError):
                    message = None
            if message is None:
                if slot.conn in ready or exit_code(slot.process) is not None:
                    if slot.state == "starting" and during_start:
                        self._stop(slot, graceful=True)
                        raise WorkerError(
                            f"OpenMM worker {slot.process.pid} died while starting (exit code "
                            f"{exit_code(slot.process)}); run python -c 'import openmm' to check the installation"
                        )
                    slot.state = "lost"
                    lost.append((index, list(slot.jobs)))
                elif time.monotonic() >= slot.deadline:
                    what = "to start" if slot.state == "starting" else f"to evaluate {self._held(slot.jobs[:1])}"
                    self._stop(slot, graceful=False)
                    raise WorkerError(
                        f"OpenMM worker took longer than timeout_s={self.timeout_s:g} s {what} and was killed; "
                        "raise timeout_s for large systems or slow platforms"
                    )
                continue
            kind = message[0]
            if kind == "ready":
                slot.state, slot.deadline = "ready", math.inf
            elif kind == "init_error":
                self._stop(slot, graceful=True)
                raise WorkerError(f"OpenMM worker could not create its Context: {message[1]}")
            elif kind == "result":
                _, job, e, f, fail = message
                if job in slot.jobs:
                    slot.jobs.remove(job)
                slot.deadline = time.monotonic() + self.timeout_s if slot.jobs else math.inf
                on_result(job, (e, f, fail))
        return lost


def _runs(index: np.ndarray) -> str:
    """Sorted integers as runs, e.g. [3, 4, 5, 9, 11, 12] -> "3..5, 9, 11..12"."""
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    runs = np.split(index, breaks)
    return ", ".join(str(run[0]) if run.size == 1 else f"{run[0]}..{run[-1]}" for run in runs)

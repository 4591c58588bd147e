"""The lifecycle of a worker process, one copy for every pool: is it still running, and stopping it with escalation.

Works on both kinds of process the package starts: a ``subprocess.Popen`` (the OpenMM worker pool) and a
``multiprocessing`` process (replica-exchange workers). How a worker is started and how it is talked to (a socket
with ``multiprocessing.connection``, a ``multiprocessing`` pipe) stays with its pool. Standard library only.
"""

from __future__ import annotations

import logging
import multiprocessing.process
import subprocess
from collections.abc import Sequence

__all__ = ["WorkerProcess", "exit_code", "stop_process"]

logger = logging.getLogger(__name__)

#: A worker process of either kind.
WorkerProcess = subprocess.Popen | multiprocessing.process.BaseProcess

#: What each escalation step sends.
_SIGNAL_NAMES = {"terminate": "SIGTERM", "kill": "SIGKILL"}


def exit_code(process: WorkerProcess, wait_s: float | None = 0.0) -> int | None:
    """The exit code of ``process`` once it has exited and been reaped, None while it runs.

    Waits up to ``wait_s`` seconds for it to exit (0: only looks; None: without limit). Negative: killed by that
    signal (e.g. -9 for SIGKILL), as ``subprocess`` and ``multiprocessing`` both report it.
    """
    if isinstance(process, subprocess.Popen):
        if wait_s == 0:
            return process.poll()
        try:
            return process.wait(wait_s)
        except subprocess.TimeoutExpired:
            return None
    if wait_s != 0:
        process.join(wait_s)
    return process.exitcode


def stop_process(
    process: WorkerProcess,
    *,
    grace_s: float,
    escalation: Sequence[str] = ("terminate", "kill"),
    wait_s: float | None = None,
    name: str = "worker process",
    log: logging.Logger = logger,
) -> bool:
    """End ``process`` and reap it (no zombie); True once it has exited.

    Waits up to ``grace_s`` seconds for it to exit by itself (0: does not wait; the caller may have asked it to
    stop), then sends each step of ``escalation`` in turn ("terminate": SIGTERM, "kill": SIGKILL), waiting up to
    ``wait_s`` seconds after each (None: without limit). A process still running after the last step is logged as
    ``"<name> <pid> did not exit after <signal>"`` on ``log`` (the caller's logger) and left (False): only a process
    stuck in the kernel outlives SIGKILL.
    """
    unknown = [step for step in escalation if step not in _SIGNAL_NAMES]
    if unknown:
        raise ValueError(f"escalation steps are 'terminate' and 'kill', got {unknown}")
    if grace_s and exit_code(process, grace_s) is not None:
        return True
    for step in escalation:
        if exit_code(process) is not None:
            return True
        getattr(process, step)()
        if exit_code(process, wait_s) is not None:
            return True
    if exit_code(process) is not None:
        return True
    last = _SIGNAL_NAMES[escalation[-1]] if escalation else "waiting"
    log.warning("%s %s did not exit after %s", name, process.pid, last)
    return False

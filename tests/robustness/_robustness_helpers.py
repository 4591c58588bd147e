"""Helpers of the robustness suite: a hang guard and a /proc scan for child processes (no psutil needed)."""

import contextlib
import os
import signal
import time
from pathlib import Path


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise TimeoutError in the main thread if the block runs longer than ``seconds`` (a hang guard; pytest-timeout
    is not a dependency). Unix only."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"the call hung: still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def children(parent: int | None = None) -> dict[int, str]:
    """Live and zombie children of ``parent`` (default: this process) as ``{pid: state}``, from /proc."""
    parent = os.getpid() if parent is None else parent
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if int(fields[1]) == parent:
            found[int(entry.name)] = fields[0]
    return found


def wait_for_no_children(before: dict[int, str], timeout_s: float = 10.0) -> dict[int, str]:
    """Children of this process that were not in ``before`` and are still there (alive or zombie) after a wait."""
    end = time.monotonic() + timeout_s
    while True:
        extra = {pid: state for pid, state in children().items() if pid not in before}
        if not extra or time.monotonic() > end:
            return extra
        time.sleep(0.05)

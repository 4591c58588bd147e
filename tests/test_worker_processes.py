"""The worker-process lifecycle helper: stopping escalates to SIGKILL for a process that ignores SIGTERM, and every
stopped process is reaped (no zombie), for both kinds of process the pools start."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path

from bgflow_se3.worker_processes import exit_code, stop_process

# prints once SIGTERM is ignored, then sleeps
_STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
)


def test_a_process_that_ignores_sigterm_is_killed_and_reaped():
    process = subprocess.Popen([sys.executable, "-c", _STUBBORN], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "ready\n"
        assert exit_code(process) is None
        assert stop_process(process, grace_s=0.1, escalation=("terminate", "kill"), wait_s=1.0)
        assert exit_code(process) == -signal.SIGKILL
        assert not Path(f"/proc/{process.pid}").exists()  # reaped, not a zombie
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def test_a_process_that_exits_in_its_grace_period_gets_no_signal():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    assert stop_process(process, grace_s=30.0)
    assert exit_code(process) == 0


def test_a_multiprocessing_process_is_stopped_and_reaped(caplog):
    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,), daemon=True)
    process.start()
    try:
        assert exit_code(process) is None
        with caplog.at_level(logging.WARNING):
            assert stop_process(process, grace_s=0.0, escalation=("kill",), wait_s=None)
        assert exit_code(process) == -signal.SIGKILL and not process.is_alive()
        assert not caplog.records
    finally:
        process.kill()
        process.join()

"""Stopping a training run cleanly: SIGINT / SIGTERM during ``Trainer.run``, and the exit of command-line scripts.

During ``run`` SIGINT and SIGTERM (in the main thread, where not ignored) ask for a stop: the current iteration
finishes, the checkpoint is written and ``TrainingInterrupted`` (a ``KeyboardInterrupt``; ``exit_code`` 130 or 143)
is raised; a second signal while a checkpoint is written waits for it, a second signal at any other time raises
``KeyboardInterrupt`` at once, leaving the last checkpoint as it was. The previous handlers are restored when ``run``
returns. Under ``torch.distributed`` the ranks agree on the stop (one small all-reduce per iteration, which also
carries rank 0's decision on the time-based checkpoints), so all stop and checkpoint after the same iterations.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from ..errors import TrainingInterrupted
from .distributed import DistributedContext

__all__ = ["STOP_SIGNALS", "StopSignals", "exit_when_interrupted"]

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """The stop signals of one ``Trainer`` (module docstring).

    dist: the ranks that agree on a stop. where: text for a second signal that stops at once, saying where the run
    is and which checkpoint is kept (e.g. ``"during iteration 5; the checkpoint of iteration 4 (...) is
    unchanged"``). ``signal``: the first SIGINT / SIGTERM received during ``run`` (None: none); ``writing``: a
    checkpoint is being written (a second signal waits for it).
    """

    def __init__(self, dist: DistributedContext, where: Callable[[], str]) -> None:
        self.dist = dist
        self.where = where
        self.signal: int | None = None
        self.writing = False

    @contextlib.contextmanager
    def caught(self) -> Iterator[None]:
        """SIGINT and SIGTERM call ``on_signal`` inside the block (main thread only; ignored signals stay ignored);
        the previous handlers come back afterwards."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        caught = [s for s, handler in previous.items() if handler is not signal.SIG_IGN]
        for s in caught:
            signal.signal(s, self.on_signal)
        try:
            yield
        finally:
            for s in caught:
                handler = previous[s]
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)

    def on_signal(self, signum: int, frame: object) -> None:
        """First signal: stop after the current iteration. Later ones: wait for a checkpoint being written, else
        raise ``KeyboardInterrupt`` now."""
        name = signal.Signals(signum).name
        if self.signal is None:
            self.signal = signum
            logger.warning(
                "%s: stopping after the current iteration, with a checkpoint (send it again to stop at once, without)",
                name,
            )
            return
        if self.writing:
            logger.warning("%s: a checkpoint is being written; stopping once it is complete", name)
            return
        raise KeyboardInterrupt(f"second {name}: stopped at once, {self.where()}")

    @contextlib.contextmanager
    def writing_checkpoint(self) -> Iterator[None]:
        """Inside the block a checkpoint is being written: a stop signal waits for it."""
        self.writing = True
        try:
            yield
        finally:
            self.writing = False

    def agree(self, checkpoint_due: bool) -> tuple[int | None, bool]:
        """(the signal that stops this run or None, whether a time-based checkpoint is due).

        ``checkpoint_due``: rank 0's decision (the other ranks' is ignored). Under ``torch.distributed`` one small
        all-reduce, so every rank gets the same answer: a signal on any rank stops every rank (SIGINT when some rank
        got SIGINT, else SIGTERM), and rank 0's clock alone times the checkpoints (every rank must take part in
        writing one)."""
        if not self.dist.distributed:
            return self.signal, checkpoint_due
        got_int, got_term, due_on_main = self.dist.all_reduce_floats(
            [float(self.signal == signal.SIGINT), float(self.signal == signal.SIGTERM), float(checkpoint_due)]
        )
        signum = signal.SIGINT if got_int > 0 else signal.SIGTERM if got_term > 0 else None
        return signum, due_on_main > 0


@contextlib.contextmanager
def exit_when_interrupted(on_exit: Callable[[], None] | None = None) -> Iterator[None]:
    """For command-line scripts: a ``TrainingInterrupted`` inside the block ends the program the shell's way.

    Calls ``on_exit`` (e.g. ``DistributedContext.close``), prints the stop and how to resume to stderr, and exits
    with the exception's ``exit_code`` (130 after SIGINT, 143 after SIGTERM). The checkpoint of the last complete
    iteration is already written, so rerunning with ``--resume`` continues.
    """
    try:
        yield
    except TrainingInterrupted as stop:
        if on_exit is not None:
            on_exit()
        print(f"{stop}\nrerun this command with --resume to continue", file=sys.stderr)
        sys.exit(stop.exit_code)

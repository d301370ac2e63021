"""The command line as a process: notes and warnings on stderr, which torchrun rank speaks,
how an error is printed under torchrun, SIGTERM as an exception, a closed stdout pipe."""
from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from .. import distributed
from .._warn import JkofastWarning


class _StderrNotes(logging.Handler):
    """The ``jkofast`` logger's notes (progress.say) on whatever sys.stderr is at the time."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"jkofast: {record.getMessage()}", file=sys.stderr)


@contextlib.contextmanager
def _notes_on_stderr():
    """While a command runs, the ``jkofast`` logger's notes go to stderr, once (not also to a
    root handler the host process may have); afterwards the logger is as it was."""
    log = logging.getLogger("jkofast")
    before = (log.level, log.propagate)
    handler = _StderrNotes()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    formatted = warnings.formatwarning
    package = str(Path(__file__).resolve().parent.parent) + os.sep  # jkofast/, this file being in jkofast/cli/

    def format_warning(message, category, filename, lineno, line=None):
        # jkofast's own warnings (lattice columns, the pure-torch fallback) as notes, not as a
        # Python source location and line (warn_user points past jkofast: here at runpy or the
        # console script): the command line's user did not write that code. (The
        # format, not the display: warnings recorded by catch_warnings are left alone.)
        if issubclass(category, JkofastWarning) or str(Path(filename).resolve()).startswith(package):
            return f"jkofast: warning: {message}\n"
        return formatted(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = formatted
        log.removeHandler(handler)
        log.level, log.propagate = before


def _rank0() -> bool:
    """Whether this process speaks for the command: always, except torchrun's ranks above 0
    (the same notes from every rank would only repeat)."""
    return os.environ.get("RANK", "0") == "0"


def _one_command_line() -> bool:
    """Whether every rank runs this same command line: one torchrun (one host) started them all."""
    return distributed.launched_local_world() == distributed.launched_world()


# How long a rank above 0 waits, with an error that rank 0 prints, before it prints the error
# itself and exits. torchrun stops every rank once one has exited with an error: a rank 0 stopped
# before it printed left no message at all (seen in 1 of 2 two-rank runs without a wait). When
# rank 0 exits first, torchrun ends the wait, so a long one costs nothing; it is long because the
# ranks can meet an error some seconds apart (the option check runs as each rank starts).
RANK0_PRINTS_WITHIN_S = 20.0


def _rank0_had_time_to_print() -> bool:
    """Wait RANK0_PRINTS_WITHIN_S; False if stopped meanwhile (torchrun's SIGTERM once rank 0
    has exited, Ctrl-C): the rank then leaves quietly."""
    try:
        time.sleep(RANK0_PRINTS_WITHIN_S)
    except KeyboardInterrupt:  # (_Terminated too: SIGTERM where _sigterm_raises is active)
        return False
    return True


def _print_error(exc, more: str = "") -> None:
    """``error: ...`` on stderr. Under torchrun an error that every rank raises alike (an option
    checked, rank 0's checkpoint error sent to all: distributed.raised_on_every_rank) is printed
    by rank 0 alone (ranks above 0 print it too only if rank 0 has not ended the run after
    RANK0_PRINTS_WITHIN_S), and any other by the rank that raised it, named: one rank's own
    failure (a file missing on its host, its GPU out of memory) is never hidden behind rank 0's."""
    world, rank = distributed.launched_world(), os.environ.get("RANK", "?")
    text, label = f"{exc}{more}", f"rank {rank} of {world}"
    if world == 1 or (distributed.is_raised_on_every_rank(exc) and _rank0()):
        print(f"error: {text}", file=sys.stderr)
    elif distributed.is_raised_on_every_rank(exc) and not _rank0_had_time_to_print():
        return
    elif text.startswith(label):  # a DistributedError names its rank already
        print(f"error: {text}", file=sys.stderr)
    else:
        print(f"error ({label}): {text}", file=sys.stderr)


def _note(message: str) -> None:
    if _rank0():
        print(f"jkofast: note: {message}", file=sys.stderr)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a scheduler, torchrun's teardown) as an exception where the
    program is, so that the same cleanup runs as for Ctrl-C: the scratch folder of pushed samples
    is deleted and a checkpoint being written is not left half-written."""


@contextlib.contextmanager
def _sigterm_raises():
    """While a command runs in the main thread, SIGTERM raises :class:`_Terminated`."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers: main thread only
        yield
        return

    def terminated(signum, frame):
        raise _Terminated()

    before = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end is closed (poll reports POLLERR on it; where
    poll is missing, as on Windows, the answer is no and the error is raised)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False

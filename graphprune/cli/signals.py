"""SIGTERM turned into an exception that unwinds the command, so that what it was staging is removed.

SIGTERM's default action kills the process on the spot: an atomic.StagedDirectory or a temp file being
written would stay on disk. Inside `sigterm_unwinds()` the signal raises Terminated in the main thread
instead (a BaseException: no `except Exception` stops it), as Ctrl-C raises KeyboardInterrupt.

A signal handler runs wherever the main thread is, a finaliser (`__del__`, a weakref or gc callback)
included, and Python swallows an exception raised there (sys.unraisablehook reports it, and the run goes
on). Such a swallowed Terminated is raised again, from a helper thread that signals the main thread
(_thread.interrupt_main), until it lands in ordinary code and unwinds the command.
"""
from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading
from typing import Iterator

RETRY_S = 0.01  # delay before a swallowed SIGTERM is raised again (the finaliser has returned by then)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread."""


def _raise_terminated(signum, frame):
    raise Terminated


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises Terminated while inside (main thread only: elsewhere Python cannot set a handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    report = sys.unraisablehook

    def raise_again(unraisable):
        if isinstance(unraisable.exc_value, Terminated):
            threading.Timer(RETRY_S, _thread.interrupt_main, (signal.SIGTERM,)).start()
        else:
            report(unraisable)

    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    sys.unraisablehook = raise_again
    try:
        yield
    finally:
        sys.unraisablehook = report
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

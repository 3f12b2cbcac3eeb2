"""A time bound on code that may never end: a chat template (Jinja) rendering, which is the user's program.

Jinja's sandbox caps ``range()`` at 100,000 items but not loops inside loops; a template that never finishes would
hang ``check``. In the main thread a SIGALRM timer interrupts it; elsewhere (a worker thread) a trace function
checks the clock. Either way the rendering stops with ``RenderTimeout``.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

TEMPLATE_SECONDS = 10.0
"""How long one rendering of a chat template may take (real templates take milliseconds)."""


class RenderTimeout(BaseException):
    """The bounded code ran past its time. A BaseException so that the template's own ``except Exception`` (and
    transformers') cannot swallow it; the caller turns it into a DataError naming the row."""


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Run the body for at most ``seconds``; past that, RenderTimeout is raised inside it."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        with _alarm(seconds):
            yield
    else:
        with _traced(seconds):
            yield


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise RenderTimeout(seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def _traced(seconds: float) -> Iterator[None]:
    deadline = time.monotonic() + seconds

    def tracer(frame, event: str, arg: object):
        if event == "call":
            frame.f_trace_opcodes = True  # a one-line loop has no line events, only opcodes
        elif time.monotonic() > deadline:
            raise RenderTimeout(seconds)
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(previous)

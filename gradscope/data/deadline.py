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
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import FrameType

TEMPLATE_SECONDS = 10.0
"""How long one rendering of a chat template may take (real templates take milliseconds)."""
TEMPLATE_CHARS = 4_000_000
"""The most characters one rendering may produce before it is tokenized (about a million tokens; a template that
repeats its input renders tens of millions, and tokenizing each prefix of them takes minutes and gigabytes)."""


class RenderTimeout(BaseException):
    """The bounded code ran past its time. A BaseException so that the template's own ``except Exception`` (and
    transformers') cannot swallow it; the caller turns it into a DataError naming the row."""


def bounded(seconds: float) -> AbstractContextManager[None]:
    """Run the body for at most ``seconds``; past that, RenderTimeout is raised inside it.

    In the main thread a SIGALRM timer interrupts any Python code of the body; in another thread the functions the
    body calls are traced (a loop written in the body's own frame is not: call the bounded code). Either way a single
    long call into C (one huge string repetition, a regular expression backtracking) ends before the bound can act.
    """
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _Alarm(seconds)
    return _Traced(seconds)


class _Alarm:
    """The bound in the main thread: a one-shot real-time timer whose handler raises."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.active = seconds, False

    def _expire(self, signum: int, frame: object) -> None:
        if self.active:
            raise RenderTimeout(self.seconds)

    def __enter__(self) -> None:
        self.previous = signal.signal(signal.SIGALRM, self._expire)
        self.active = True
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc: object) -> None:
        self.active = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)


class _Traced:
    """The bound in a worker thread (no signals there): a trace function that checks the clock at every opcode of
    the functions the body calls. Methods of this class are not traced, so leaving the body cannot time out."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.deadline = seconds, 0.0

    def _trace(self, frame: FrameType, event: str, arg: object) -> Callable | None:
        if event == "call":
            if frame.f_code in _UNTRACED:
                return None
            frame.f_trace_opcodes = True  # a one-line loop has no line events, only opcodes
        elif time.monotonic() > self.deadline:
            raise RenderTimeout(self.seconds)
        return self._trace

    def __enter__(self) -> None:
        self.previous = sys.gettrace()
        self.deadline = time.monotonic() + self.seconds
        sys.settrace(self._trace)

    def __exit__(self, *exc: object) -> None:
        sys.settrace(self.previous)


_UNTRACED = {_Traced.__exit__.__code__, _Traced._trace.__code__}

"""The time bound on chat-template rendering, in the main thread (SIGALRM) and in a worker thread (a trace function):
a loop is stopped with RenderTimeout within the bound, a short body is left alone, and what the bound changed
(the signal handler, the thread's trace function) is put back.

A worker that does not finish is a daemon thread joined with a timeout, so a broken bound fails the test instead of
hanging the run.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

import pytest

from gradscope.data import deadline
from gradscope.data.deadline import RenderTimeout, bounded
from gradscope.data.roles import RoleSpec, derive
from gradscope.errors import DataError

ENDLESS = (
    "{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100000) %}"
    "{% endfor %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}"
)
CHAT = {"messages": [{"role": "user", "content": "Say one."}, {"role": "assistant", "content": "One."}]}


def spin() -> None:
    while True:
        pass


def _bounded_spin(seconds: float) -> float:
    """Seconds until the bound stopped an endless loop (fails if it returns some other way)."""
    start = time.monotonic()
    try:
        with bounded(seconds):
            spin()
    except RenderTimeout:
        return time.monotonic() - start
    raise AssertionError("the loop ended without RenderTimeout")


def _in_thread(fn, timeout: float = 20.0) -> dict:
    """Run fn() in a daemon thread; its result or exception, and whether the thread finished within ``timeout``."""
    outcome: dict = {}

    def body():
        outcome["trace_before"] = sys.gettrace()
        try:
            outcome["result"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test to assert on
            outcome["error"] = err
        outcome["trace_after"] = sys.gettrace()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(timeout)
    outcome["finished"] = not thread.is_alive()
    return outcome


def test_in_the_main_thread_a_loop_is_stopped_and_the_alarm_handler_put_back():
    assert threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGALRM)
    with bounded(5.0):
        total = sum(range(1000))
    assert total == 499500
    assert 0.15 < _bounded_spin(0.2) < 3
    assert signal.getsignal(signal.SIGALRM) is handler
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_in_a_worker_thread_a_loop_is_stopped_within_the_bound():
    outcome = _in_thread(lambda: (_bounded_spin(0.2), _bounded_spin(0.5)))
    assert outcome["finished"], "the bound did not stop the loop in a worker thread"
    assert "error" not in outcome, outcome.get("error")
    first, second = outcome["result"]
    assert 0.15 < first < 3 and 0.45 < second < 3
    assert outcome["trace_after"] is outcome["trace_before"]  # the thread's tracer (a coverage tool's) is back


def test_in_a_worker_thread_a_short_body_finishes_and_leaves_no_tracer():
    def short():
        with bounded(5.0):
            value = json.loads(json.dumps(list(range(1000))))
        time.sleep(0.3)  # past no deadline of its own: nothing left behind may fire now
        return sum(value)

    outcome = _in_thread(short)
    assert outcome["finished"] and outcome.get("result") == 499500, outcome


def test_in_a_worker_thread_a_call_into_c_runs_to_its_end_and_leaving_the_bound_restores_the_tracer():
    # A C call (here time.sleep) gives the trace function no event until it returns: the bound cannot stop it. The
    # body then ends past its deadline, and leaving the bound must neither raise nor lose the thread's own tracer.
    def outer_tracer(frame, event, arg):
        return None

    def late():
        sys.settrace(outer_tracer)
        try:
            start = time.monotonic()
            with bounded(0.1):
                time.sleep(0.4)
            return time.monotonic() - start, sys.gettrace()
        finally:
            sys.settrace(None)

    outcome = _in_thread(late)
    assert outcome["finished"] and "error" not in outcome, outcome
    seconds, tracer = outcome["result"]
    assert seconds >= 0.4 and tracer is outer_tracer


@pytest.mark.parametrize("in_thread", [False, True])
def test_an_endless_chat_template_is_a_data_error_naming_the_row(fixture_tokenizer, monkeypatch, in_thread):
    monkeypatch.setattr(deadline, "TEMPLATE_SECONDS", 1.0)
    tokenizer = fixture_tokenizer("chatml")
    spec = RoleSpec(frozenset({tokenizer.eos_token_id}), chat_template=ENDLESS)

    def render():
        start = time.monotonic()
        try:
            derive(CHAT, 7, tokenizer, spec)
        except DataError as err:
            return str(err), time.monotonic() - start
        raise AssertionError("the endless template rendered")

    if in_thread:
        outcome = _in_thread(render)
        assert outcome["finished"], "the endless template hung a worker thread"
        assert "error" not in outcome, outcome.get("error")
        message, seconds = outcome["result"]
    else:
        message, seconds = render()
    assert "row 7" in message and "chat template did not finish rendering 1 message(s) within 1 s" in message
    assert seconds < 15  # one bound per rendering, stopped at the first


def test_in_a_worker_thread_a_real_template_renders_as_in_the_main_thread(fixture_tokenizer):
    tokenizer = fixture_tokenizer("chatml")
    spec = RoleSpec(frozenset({tokenizer.eos_token_id}))
    main = derive(CHAT, 0, tokenizer, spec)
    outcome = _in_thread(lambda: derive(CHAT, 0, tokenizer, spec))
    assert outcome["finished"] and "error" not in outcome, outcome
    assert (outcome["result"].input_ids, outcome["result"].roles) == (main.input_ids, main.roles)

"""``scan --num-proc N``: the source cut into parts (``gradscope.scan.parts``), each read and checked by the
pipeline of one process, in N - 1 forked workers and this process; this process folds the parts' verdicts in the
order of the data.

Per chunk, a part's checker keeps its verdicts, which rows have roles and why the others have none, and copies of
only the rows the ``ScanAccumulator`` can show (``ShownRows``): the accumulator runs unchanged, and the report is
the one one process writes."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np

from gradscope.data.chunks import Chunk
from gradscope.data.stream import Part
from gradscope.errors import DataError
from gradscope.scan.parts import source_parts
from gradscope.scan.pipeline import Job
from gradscope.scan.summary import row_scores, worst_candidates
from gradscope.scan.verdicts import CHECKS, Verdicts


@dataclass
class ShownRows:
    """Stands in for a chunk of a part: what ``ScanAccumulator.add`` reads of a chunk, with copies of only the rows
    it can show (``shown_rows``). ``first_row`` counts from the part's first row until the parts before it are
    counted; ``role_reasons`` were read with those row numbers, which no stream reader's reason names (only
    ``roles_from`` rows, which are read in one process, do)."""

    first_row: int
    rows: int
    known: np.ndarray  # (R,) the rows whose roles are known
    role_reasons: tuple[str, ...]
    kept: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # row in the chunk -> its arrays

    def known_rows(self) -> np.ndarray:
        return self.known

    def row(self, r: int) -> dict[str, np.ndarray]:
        return self.kept[r]  # a KeyError, never a wrong row, if the accumulator asked for one not sent

    @classmethod
    def of(cls, chunk: Chunk, v: Verdicts, examples: int, worst: int) -> ShownRows:
        kept = {r: {k: a.copy() for k, a in chunk.row(r).items()} for r in shown_rows(v, examples, worst)}
        return cls(chunk.first_row, chunk.rows, chunk.known_rows(), chunk.role_reasons, kept)


def shown_rows(v: Verdicts, examples: int, worst: int) -> list[int]:
    """The rows of a chunk ``ScanAccumulator`` may ask for: the first ``examples`` failing rows of each check
    (``_count``), and the rows ``_offer_worst`` offers to its heap of ``worst`` rows (``worst_candidates``)."""
    rows: set[int] = set()
    for name in CHECKS:
        rows.update(np.flatnonzero(v.fails[name])[:examples].tolist())
    rows.update(worst_candidates(row_scores(v), worst).tolist())
    return sorted(rows)


def parallel_checked_chunks(job: Job, num_proc: int) -> Iterator[tuple[Any, Verdicts]]:
    """Check every row of ``job.source`` in up to ``num_proc`` processes (this one and ``num_proc - 1`` workers, no
    more than the source has parts; one part: this process alone); yield the chunks with their verdicts, in the
    order of the data, as ``job.checked()`` yields them in one process (``ShownRows`` stand in for the chunks where
    the source was cut into parts).

    Raises:
        DataError: bad data, as one process reports it (the same message and row).
    """
    try:
        parts = source_parts(job.source, num_proc)
    except Exception:  # unreadable: the reader of one process says why, in its own words
        parts = []
    if len(parts) < 2:  # nothing to share: no process started
        yield from job.checked()
        return
    first, failed = 0, None
    with closing(_in_processes(job, parts, min(num_proc, len(parts)) - 1)) as results:
        for done in results:
            if isinstance(done, str):
                failed = done
                break
            for rows, v in done:
                rows.first_row += first
                yield rows, v
            first += sum(rows.rows for rows, _ in done)
    if failed is not None:  # bad data in a part: the data read as one process reads it, to report it as one process
        for _ in job.checked():
            pass
        raise DataError(f"a worker process could not read its part of the data: {failed}", path=job.source.path)


_JOB: Job | None = None
"""A worker process's job (set as it starts)."""


@dataclass
class _Pending:
    """A part on its way: checked by a worker (``future``), or here (``future`` None); ``done`` once checked."""

    part: Part
    future: Future | None
    done: list[tuple[ShownRows, Verdicts]] | str | None = None


def _in_processes(
    job: Job, parts: list[Part], workers: int
) -> Generator[list[tuple[ShownRows, Verdicts]] | str, None, None]:
    """Each part's checked chunks (or its error), in order, from ``workers`` worker processes and this one: while
    the part next in order is being checked by a worker, this process checks the earliest part no worker has
    started. At most two parts a process are on their way, so that memory stays bounded.

    The workers are forked: they inherit the modules this process imported (gradscope.scan imports torch: a spawned
    or forkserver worker imports it again, about a second of CPU each) and the job with its role reader, nothing
    pickled. Forking is safe here because a worker calls only NumPy and pyarrow's readers and writes nothing out: no
    torch and no tokenizer (the role reader's stream works on token arrays; its reasons on token lists), and pyarrow
    starts its thread pools anew in a forked child. The pool is made before this process reads any part."""
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start, initargs=(job,))
    todo, queue, broken = iter(parts), deque[_Pending](), False
    try:
        while True:
            for part in islice(todo, 2 * (workers + 1) - len(queue)):
                queue.append(_Pending(part, None if broken else pool.submit(_check_part, part)))
            if not queue:
                break
            head = queue[0]
            if head.done is None and head.future is not None and not head.future.done():
                idle = next((p for p in queue if p.done is None and (p.future is None or p.future.cancel())), None)
                if idle is not None:  # this process would wait: it checks a part no worker started
                    idle.future, idle.done = None, _check(job, idle.part)
                    continue
            queue.popleft()
            if head.done is None and head.future is not None:
                try:
                    head.done = head.future.result()
                except BrokenProcessPool:  # a worker died (killed): the parts on their way are checked here
                    broken = True
                    for pending in queue:
                        pending.future = None
            yield head.done if head.done is not None else _check(job, head.part)
        pool.shutdown()  # every part done: the workers end, and are waited for
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # stopped early (an error): parts not started are dropped


def _start(job: Job) -> None:
    """A worker starts: its job (handed over by the fork, not pickled), pyarrow decoding in this thread alone (the
    processes are the parallelism), and a watch on the process that forked it."""
    import pyarrow as pa

    global _JOB
    _JOB = job
    pa.set_cpu_count(1)
    threading.Thread(target=_end_with, args=(os.getppid(),), daemon=True).start()


PARENT_POLL_SECONDS = 0.5


def _end_with(parent: int) -> None:
    """End this worker once the process that forked it is gone. Killed (SIGTERM, SIGKILL, the OOM killer), that
    process cannot stop its pool, and a forked worker never sees its queue close: each holds the queue's other end
    too, so it would wait for work forever."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def _check_part(part: Part) -> list[tuple[ShownRows, Verdicts]] | str:
    """In a worker: ``_check`` of its job."""
    assert _JOB is not None, "set by _start"
    return _check(_JOB, part)


def _check(job: Job, part: Part) -> list[tuple[ShownRows, Verdicts]] | str:
    """One part read and checked, chunk by chunk (in a worker, or here); or, when it cannot be, the error's message
    (the parent then reads the data again, to report it as one process does)."""
    try:
        return [(ShownRows.of(chunk, v, job.examples, job.worst), v) for chunk, v in job.checked(part)]
    except Exception as err:  # noqa: BLE001  (any failure: the parent's own read names it)
        return f"{type(err).__name__}: {err}"

"""gradscope.scan.parallel: --num-proc gives the report of one process, errors as one process does, and writes
nothing beside the user's data or elsewhere."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import gradscope.data.chunks as chunk_module
from gradscope.data.stream import open_source
from gradscope.errors import DataError
from gradscope.scan import parts as parts_module
from gradscope.scan.dataset import scan
from gradscope.scan.parallel import ShownRows, parallel_checked_chunks
from gradscope.scan.pipeline import Job

TOKENIZER = Path(__file__).resolve().parents[2] / "fixtures/models/tiny-llama-chat"
FORMATS = ("parquet", "jsonl", "arrow", "datasets")


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of a few dozen rows (a few kB of JSON lines): the test files are cut into several parts."""
    monkeypatch.setattr(parts_module, "PART_ROWS", 40)
    monkeypatch.setattr(parts_module, "PART_BYTES", 2000)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few hundred tokens: each part is read in several chunks."""
    monkeypatch.setattr(chunk_module, "CHUNK_TOKENS", 300)


def _write(rows: list[dict[str, np.ndarray]], folder: Path, fmt: str) -> Path:
    """Rows in a format scan reads: Parquet in row groups of 32 rows, JSON lines with a blank line every 50 rows,
    an Arrow file (IPC file format) in record batches of 25 rows, a datasets directory of 2 shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [k for k in ("input_ids", "labels", "attention_mask", "completion_mask") if k in rows[0]]
    table = pa.table({k: pa.array([r[k].tolist() for r in rows], pa.list_(pa.int64())) for k in names})
    if fmt == "parquet":
        path = folder / "rows.parquet"
        pq.write_table(table, path, row_group_size=32)
    elif fmt == "jsonl":
        path = folder / "rows.jsonl"
        lines = [json.dumps({k: r[k].tolist() for k in names}) + "\n" for r in rows]
        path.write_text("".join(line + ("\n" if i % 50 == 49 else "") for i, line in enumerate(lines)))
    elif fmt == "arrow":
        path = folder / "rows.arrow"
        with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
            writer.write_table(table, max_chunksize=25)
    else:
        import datasets

        path = folder / "saved"
        datasets.Dataset(table).save_to_disk(str(path), num_shards=2)
    return path


def _chat_rows(rows: int = 400) -> list[dict[str, np.ndarray]]:
    """Rows as tiny-llama-chat's template renders one exchange, no role column; some train their prompt, some
    hold no assistant turn (roles unknown), some have the answer's <|im_end|> untrained."""
    rng = np.random.default_rng(0)
    out = []
    for r in range(rows):
        prompt, answer = rng.integers(4, 200, int(rng.integers(3, 30))), rng.integers(4, 200, int(rng.integers(3, 30)))
        head = [1, 296, 202, *prompt, 2, 202]
        turn = [1, 290, 202, *answer, 2, 202] if r % 7 else [*answer, 2, 202]  # every 7th: no assistant marker
        ids = head + turn
        labels = [-100] * len(head) + [-100, -100, -100, *answer, 2, -100] if r % 7 else [-100] * len(ids)
        if r % 11 == 0:
            labels[3:5] = ids[3:5]  # a trained prompt
        if r % 13 == 0:
            labels[-2] = -100  # <|im_end|> untrained
        out.append({"input_ids": np.array(ids), "labels": np.array(labels), "attention_mask": np.ones(len(ids), int)})
    return out


def _rows_and_options(roles: str, stream_rows) -> tuple[list[dict[str, np.ndarray]], dict]:
    if roles == "chat template":
        return _chat_rows(), {"tokenizer": TOKENIZER}
    if roles == "label-only":
        return [{k: v for k, v in r.items() if k != "completion_mask"} for r in stream_rows], {"end_token_ids": [2]}
    return [dict(r) for r in stream_rows], {"end_token_ids": [2]}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("roles", ["column", "chat template", "label-only"])
def test_num_proc_gives_the_report_of_one_process(tmp_path, small_parts, small_chunks, stream_rows, fmt, roles):
    rows, options = _rows_and_options(roles, stream_rows)
    path = _write(rows, tmp_path, fmt)
    one = asdict(scan(path, **options))
    assert one["rows"] == len(rows) and one["error_rows"] > 0 and one["worst_rows"]
    if roles != "label-only":
        assert one["checks"]["prompt_leak"]["rows"] > 0  # roles were read or given
    for num_proc in (2, 3):
        assert asdict(scan(path, num_proc=num_proc, **options)) == one  # counts, first rows, worst, findings, notes
    few = {"examples": 1, "worst": 2}  # the worst rows' ties across chunks and parts
    assert asdict(scan(path, num_proc=2, **options, **few)) == asdict(scan(path, **options, **few))


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_parts_are_checked_in_worker_processes(tmp_path, small_parts, stream_rows, fmt, monkeypatch):
    checkers, check = tmp_path / "checkers", Job.checked
    checkers.mkdir()

    def recorded(job: Job, part=None):
        (checkers / str(os.getpid())).touch()  # the process that checks this part
        return check(job, part)

    monkeypatch.setattr(Job, "checked", recorded)  # the workers are forked: they inherit it
    source = open_source(_write([dict(r) for r in stream_rows], tmp_path, fmt))
    assert len(parts_module.source_parts(source, 2)) >= 2
    checked = list(parallel_checked_chunks(Job(source, frozenset({2})), 2))
    assert {p.name for p in checkers.iterdir()} - {str(os.getpid())}  # a worker process checked parts
    assert all(isinstance(rows, ShownRows) for rows, _ in checked)  # each chunk's rows came back as a stand-in
    assert [rows.first_row for rows, _ in checked] == list(np.cumsum([0] + [rows.rows for rows, _ in checked])[:-1])
    assert sum(rows.rows for rows, _ in checked) == len(stream_rows)


def test_small_data_is_checked_in_this_process(tmp_path, stream_rows):
    """300 rows are one part: no worker is started, the chunks are this process's own."""
    source = open_source(_write([dict(r) for r in stream_rows], tmp_path, "parquet"))
    assert len(parts_module.source_parts(source, 4)) == 1
    checked = list(parallel_checked_chunks(Job(source, frozenset({2})), 4))
    assert checked and not any(isinstance(rows, ShownRows) for rows, _ in checked)


def test_json_lines_parts_cover_the_file_at_line_ends(tmp_path, small_parts, stream_rows):
    path = _write([dict(r) for r in stream_rows], tmp_path, "jsonl")
    parts = parts_module.source_parts(open_source(path), 2)
    data = path.read_bytes()
    assert len(parts) >= 3 and parts[0].start == 0 and parts[-1].stop == len(data)
    assert all(a.stop == b.start and data[a.stop - 1 : a.stop] == b"\n" for a, b in zip(parts, parts[1:], strict=False))
    assert all(p.columns == ("input_ids", "labels", "attention_mask", "completion_mask") for p in parts)


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_data_in_a_late_part_is_reported_as_one_process_reports_it(tmp_path, small_parts, stream_rows, fmt):
    """Two bad rows in two parts, in one chunk of one process: one process names the negative id first (its chunk's
    ids are checked before its labels); the workers report that, not the bad label their earlier part holds."""
    rows = [{k: v.copy() for k, v in r.items()} for r in stream_rows]
    rows[150]["labels"][1] = -5
    rows[270]["input_ids"][2] = -3
    path = _write(rows, tmp_path, fmt)
    with pytest.raises(DataError) as one:
        scan(path, end_token_ids=[2])
    assert "row 270" in str(one.value) and "negative token id -3" in str(one.value)
    for num_proc in (2, 3):
        with pytest.raises(DataError) as many:
            scan(path, end_token_ids=[2], num_proc=num_proc)
        assert str(many.value) == str(one.value) and vars(many.value) == vars(one.value)


def test_a_broken_json_line_in_a_late_part_is_reported_as_one_process_reports_it(tmp_path, small_parts, stream_rows):
    path = _write([dict(r) for r in stream_rows], tmp_path, "jsonl")
    lines = path.read_text().split("\n")
    lines[-20] = lines[-20][:30]  # cut inside a row
    path.write_text("\n".join(lines))
    with pytest.raises(DataError) as one:
        scan(path, end_token_ids=[2])
    with pytest.raises(DataError) as two:
        scan(path, end_token_ids=[2], num_proc=2)
    assert str(two.value) == str(one.value) and "row" in str(one.value)


def test_out_of_vocabulary_ids_are_refused_as_one_process_refuses_them(tmp_path, small_parts, stream_rows):
    rows = [{k: v.copy() for k, v in r.items()} for r in stream_rows]
    rows[260]["input_ids"][1] = 10**6
    path = _write(rows, tmp_path, "parquet")
    with pytest.raises(DataError) as one:
        scan(path, tokenizer=TOKENIZER)
    with pytest.raises(DataError) as two:
        scan(path, tokenizer=TOKENIZER, num_proc=2)
    assert str(two.value) == str(one.value) and "vocabulary" in str(one.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_nothing_is_converted_written_beside_the_data_or_left_behind(
    tmp_path, small_parts, stream_rows, fmt, monkeypatch
):
    import datasets

    data, cache, temp = tmp_path / "data", tmp_path / "cache", tmp_path / "temp"
    for folder in (data, cache, temp):
        folder.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)  # where datasets would convert the data
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where a temporary file would go
    path = _write([dict(r) for r in stream_rows], data, fmt)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    scan(path, end_token_ids=[2], num_proc=2)
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    assert not any(cache.iterdir()) and not any(temp.iterdir())


def test_num_proc_leaves_the_process_environment_as_it_was(tmp_path, small_parts, write_stream_rows):
    environ, values = os.environ, dict(os.environ)
    scan(write_stream_rows(tmp_path, "datasets"), end_token_ids=[2], num_proc=2)
    assert os.environ is environ and dict(os.environ) == values


def test_num_proc_reads_roles_from_the_chat_template_in_its_workers(tmp_path, small_parts):
    path = _write(_chat_rows(), tmp_path, "parquet")
    one, two = scan(path, tokenizer=TOKENIZER), scan(path, tokenizer=TOKENIZER, num_proc=2)
    assert not two.notes  # the workers read the roles: --num-proc was used
    assert one.checks["prompt_leak"]["rows"] > 0 and one.checks["roles_unknown"]["rows"] > 0
    assert asdict(two) == asdict(one)


KILLED_PARENT = """
import os, sys, time
from pathlib import Path
from gradscope.scan import parts
from gradscope.scan.dataset import scan
from gradscope.scan.pipeline import Job

parts.PART_ROWS = 40
parent, check, pids = os.getpid(), Job.checked, Path(sys.argv[2])

def stuck(job, part=None):
    if os.getpid() != parent:  # a worker: says it is there, then never finishes its part
        (pids / str(os.getpid())).touch()
        time.sleep(600)
    return check(job, part)

Job.checked = stuck
scan(sys.argv[1], end_token_ids=[2], num_proc=3)
"""


def _gone(pid: int) -> bool:
    """The process has ended (exited and reaped, or a zombie nobody reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
def test_workers_end_when_the_scan_process_is_killed(tmp_path, stream_rows):
    """SIGKILL (the OOM killer's) leaves the pool no chance to stop its workers: they end on their own."""
    import signal
    import subprocess
    import sys
    import time

    path, pids = _write([dict(r) for r in stream_rows], tmp_path, "parquet"), tmp_path / "pids"
    pids.mkdir()
    child = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, str(path), str(pids)])
    deadline = time.monotonic() + 60
    while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.1)
    workers = [int(p.name) for p in pids.iterdir()]
    assert len(workers) == 2, "both workers started"
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 20
    while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if not _gone(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)  # not left behind by the test either
    assert left == [], "workers outlived the killed scan"

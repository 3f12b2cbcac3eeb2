"""scan --num-proc on the command line: the report and the exit codes of one process; bad data in a worker's part
is one ``Error:`` line naming the row, as one process writes it, never a traceback."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.scan import parts as parts_module


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of a few dozen rows: the test file is cut into several parts (the workers are forked: they see it)."""
    monkeypatch.setattr(parts_module, "PART_ROWS", 40)


def _parquet(path, stream_rows, bad_row: int | None = None):
    names = ("input_ids", "labels", "attention_mask", "completion_mask")
    rows = [{k: r[k].tolist() for k in names} for r in stream_rows]
    if bad_row is not None:
        rows[bad_row]["input_ids"][1] = -7
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=32)
    return path


def _scan(*args: object):
    return CliRunner().invoke(app, ["scan", *map(str, args), "--end-token-id", "2"])


def test_num_proc_prints_the_report_and_exit_code_of_one_process(tmp_path, small_parts, stream_rows):
    path = _parquet(tmp_path / "rows.parquet", stream_rows)
    one, two = _scan(path, "--format", "json"), _scan(path, "--format", "json", "--num-proc", "2")
    assert one.exit_code == two.exit_code == 1  # the rows hold findings
    assert json.loads(two.stdout) == json.loads(one.stdout)


def test_bad_data_in_a_workers_part_is_one_error_line_naming_the_row(tmp_path, small_parts, stream_rows):
    path = _parquet(tmp_path / "rows.parquet", stream_rows, bad_row=280)
    one, two = _scan(path), _scan(path, "--num-proc", "2")
    assert two.exit_code == one.exit_code == 2
    assert "Traceback" not in two.output and isinstance(two.exception, SystemExit)
    errors = [line for line in two.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("Error:") and "row 280" in errors[0]
    assert two.stderr == one.stderr

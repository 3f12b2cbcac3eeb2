"""The verbs on paths do what the commands do: the same report from Python as from the command line, and every
format scan reads is read by check too."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import gradscope
from gradscope.cli import app

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
LLAMA = FIXTURES / "models/tiny-llama-chat"
ROWS = [
    {"input_ids": [5, 6, 7, 8, 2], "labels": [-100, -100, 7, 8, 2]},
    {"input_ids": [9, 10, 11, 2, 2], "labels": [9, 10, 11, 2, -100], "attention_mask": [1, 1, 1, 1, 0]},
]


def write(tmp: Path, fmt: str) -> Path:
    rows = [{"attention_mask": [1] * len(r["input_ids"]), **r} for r in ROWS]
    if fmt == "jsonl":
        path = tmp / "rows.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path = tmp / "rows.json"
        path.write_text(json.dumps(rows))
    elif fmt == "parquet":
        path = tmp / "rows.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path = tmp / "rows.arrow"
        table = pa.Table.from_pylist(rows)
        with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
            writer.write_table(table)
    return path


def verdict(report: gradscope.Report) -> tuple:
    return (
        [[t.trained for t in s.tokens] for s in report.samples],
        sorted((f.check, f.sample) for f in report.findings),
    )


@pytest.mark.parametrize("fmt", ["json", "parquet", "arrow"])
def test_check_reads_every_format_scan_reads(tmp_path, fmt):
    reference = gradscope.check_files(gradscope.Inputs(LLAMA, write(tmp_path, "jsonl"), batch_size=2))
    report = gradscope.check_files(gradscope.Inputs(LLAMA, write(tmp_path, fmt), batch_size=2))
    assert verdict(report) == verdict(reference)
    assert any(s.tokens[1].trained for s in report.samples)  # the rows really trained something


def test_check_files_is_what_the_command_reports():
    batch = FIXTURES / "batches/llama_prompt_leak.safetensors"
    report = gradscope.check_files(gradscope.Inputs(LLAMA, batch))
    result = CliRunner().invoke(app, ["check", str(LLAMA), str(batch), "--format", "json"])
    assert result.exit_code == 1
    cli = json.loads(result.stdout)
    assert cli["summary"] == report.to_dict()["summary"]
    assert [f["check"] for f in cli["findings"]] == [f.check for f in report.findings] != []


def test_grads_files_runs_overfit_on_the_first_batch():
    report = gradscope.grads_files(gradscope.Inputs(LLAMA, FIXTURES / "batches/llama_clean.safetensors"), overfit=3)
    assert report.grads is not None and report.overfit is not None and len(report.overfit.losses) == 4


def test_inspect_files_picks_the_row_and_names_a_missing_one(tmp_path):
    rows = write(tmp_path, "jsonl")
    report, sample = gradscope.inspect_files(gradscope.Inputs(LLAMA, rows), row=1)
    assert sample is report.samples[1] and sample.index == 1
    with pytest.raises(gradscope.DataError, match="there is no row 5: the data has 2"):
        gradscope.inspect_files(gradscope.Inputs(LLAMA, rows), row=5)


def test_roles_files_decodes_in_the_library(tmp_path):
    report = gradscope.roles_files(LLAMA, FIXTURES / "raw/chat.jsonl", samples=2)
    assert len(report.rows) == len(report.texts) == 2
    assert [len(t) for t in report.texts] == [len(r.input_ids) for r in report.rows]
    assert report.data["source"].endswith("chat.jsonl")

"""The CLI's one error boundary: usage errors, bad output paths and bad rows are one Error line and exit 2; the
library's parameter names become the flags the user typed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.cli.app import as_flags
from gradscope.errors import DataError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
LLAMA = str(FIXTURES / "models/tiny-llama-chat")
CLEAN = str(FIXTURES / "batches/llama_clean.safetensors")
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "100"})


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["check", LLAMA, CLEAN, "--format", "xml"], "'xml' is not one of 'text', 'json'"),
        (["check", LLAMA, CLEAN, "--bogus"], "No such option: --bogus"),
        (["check"], "Missing argument"),
        (["scan", CLEAN, "--num-proc", "0"], "--num-proc"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_usage_errors_are_one_error_line(args, expected):
    assert expected in one_error_line(run(*args))


@pytest.mark.parametrize("where", ["missing directory", "a directory"])
def test_an_output_path_that_cannot_be_written_is_bad_input(tmp_path, where):
    target = tmp_path / "nowhere" / "report.json" if where == "missing directory" else tmp_path
    line = one_error_line(run("check", LLAMA, CLEAN, "--output", target))
    assert str(target) in line
    assert not (tmp_path / "nowhere").exists()


def test_a_json_line_that_is_not_an_object_is_bad_input(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"input_ids": [1, 2, 3]}\n[1, 2, 3]\n')
    assert "line 2" in one_error_line(run("check", LLAMA, rows))
    assert "row 1" in one_error_line(run("scan", rows))


def test_library_parameters_are_shown_as_flags():
    assert (
        as_flags("give `accumulate` at most 2 (raise `batch_size`)")
        == "give --accumulate at most 2 (raise --batch-size)"
    )
    assert as_flags("give `tokenizer` DIR or `end_token_ids`") == "give --tokenizer DIR or --end-token-id"
    assert as_flags("no backticks, no change: a_b") == "no backticks, no change: a_b"


def test_a_library_error_names_the_parameter_and_the_cli_the_flag():
    import gradscope

    model, batch = None, {}
    with pytest.raises(gradscope.InputError, match="`accumulate` 0") as err:
        gradscope.check(model, batch, accumulate=0)
    assert "--" not in str(err.value)
    line = one_error_line(run("check", LLAMA, CLEAN, "--accumulate", "0"))  # typer's own range check
    assert "--accumulate" in line


def test_json_output_file_equals_stdout(tmp_path):
    out = tmp_path / "report.json"
    result = run("check", LLAMA, CLEAN, "--format", "json", "--output", out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == json.loads(result.stdout)


def test_data_errors_render_their_hint_as_flags():
    err = DataError("raw rows need a tokenizer", path="rows.jsonl", hint="pass `tokenizer` DIR")
    assert as_flags(str(err)) == "rows.jsonl: raw rows need a tokenizer; pass --tokenizer DIR"


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # the command imports check_files when it runs (start-up loads no torch), so the library's name is patched
    monkeypatch.setattr("gradscope.verbs.files.check_files", interrupted)
    result = run("check", LLAMA, CLEAN)
    assert result.exit_code == 130, result.output
    assert result.stderr.strip().splitlines() == ["Error: interrupted"] and "Traceback" not in result.output

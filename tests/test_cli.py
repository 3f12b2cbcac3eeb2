"""The CLI: exit codes, parsed JSON, and one clear Error line for every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from gradscope.cli import app, exit_code
from gradscope.report import Finding, Report
from tests.conftest import FIXTURES

runner = CliRunner()
LLAMA = str(FIXTURES / "models/tiny-llama-chat")
GPT2 = str(FIXTURES / "models/tiny-gpt2")
BATCHES = FIXTURES / "batches"


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def run_json(*args: str):
    result = run("check", *args, "--format", "json")
    return result, json.loads(result.stdout)


def test_clean_batch_exits_0_with_json_on_stdout():
    result, data = run_json(LLAMA, BATCHES / "llama_clean.safetensors")
    assert result.exit_code == 0, result.output
    assert data["schema_version"] == 1 and data["findings"] == [] and data["summary"]["ok"] is True


def test_leak_exits_1_with_findings():
    result, data = run_json(LLAMA, BATCHES / "llama_prompt_leak.safetensors")
    assert result.exit_code == 1
    assert [(f["check"], f["sample"]) for f in data["findings"]] == [("prompt_leak", i) for i in range(3)]


def test_jsonl_with_batch_size_and_samples():
    result, data = run_json(LLAMA, BATCHES / "llama_clean.jsonl", "--batch-size", "2", "--samples", "3")
    assert result.exit_code == 0
    assert [s["index"] for s in data["samples"]] == [0, 1, 2]
    assert len(data["summary"]["loss"]) == 2  # rows 0-1, then row 2


def test_output_file_matches_stdout(tmp_path):
    out = tmp_path / "report.json"
    result, data = run_json(GPT2, BATCHES / "gpt2_eos_untrained_lm_collator.safetensors", "--output", out)
    assert result.exit_code == 1
    assert json.loads(out.read_text()) == data
    assert {f["check"] for f in data["findings"]} == {"eos_untrained"}


def test_text_report_exit_codes():
    assert run("check", GPT2, BATCHES / "gpt2_clean.safetensors").exit_code == 0
    result = run("check", GPT2, BATCHES / "gpt2_prompt_leak.safetensors")
    assert result.exit_code == 1
    assert "prompt_leak" in result.stdout


def test_custom_loss_file(tmp_path):
    loss = tmp_path / "losses.py"
    loss.write_text(
        "import torch.nn.functional as F\n"
        "def token_mean(logits, labels):\n"
        "    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)\n"
    )
    result, data = run_json(LLAMA, BATCHES / "llama_clean.safetensors", "--loss", f"{loss}:token_mean")
    assert result.exit_code == 0, result.output
    assert data["model"]["loss"] == "token_mean"


def test_inspect_row():
    result = run("inspect", LLAMA, BATCHES / "llama_pad_leak.safetensors", "--row", "1")
    assert result.exit_code == 1
    assert "pad_leak" in result.stdout
    assert run("inspect", LLAMA, BATCHES / "llama_clean.safetensors", "--row", "2").exit_code == 0


def test_exit_code_strict_counts_warnings():
    warning = Finding("some_warning", "warning", 0, [], "m")
    report = Report(model={}, findings=[warning])
    assert exit_code(report, strict=False) == 0
    assert exit_code(report, strict=True) == 1
    assert exit_code(Report(model={}), strict=True) == 0


def _tensors(path: Path, **tensors):
    save_file({k: torch.tensor(v) for k, v in tensors.items()}, str(path))
    return path


def _bad_inputs(tmp: Path) -> dict[str, tuple[list, str]]:
    """Each bad input: the arguments, and a piece the one Error line must contain."""
    not_model = tmp / "not_model"
    not_model.mkdir()
    broken_config = tmp / "broken_config"
    broken_config.mkdir()
    (broken_config / "config.json").write_text("{not json")
    (broken_config / "model.safetensors").write_bytes(b"\0" * 16)
    corrupt = tmp / "corrupt.safetensors"
    corrupt.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00garbage")
    bad_json = tmp / "bad.jsonl"
    bad_json.write_text('{"input_ids": [1, 2, 3]}\n{"input_ids": [1, 2,\n')
    empty = tmp / "empty.jsonl"
    empty.write_text("\n")
    good = BATCHES / "llama_clean.safetensors"
    return {
        "missing model": ([tmp / "nope", good], "no such model directory"),
        "not a model": ([not_model, good], "no config.json"),
        "unreadable model": ([broken_config, good], "broken_config"),
        "model is a file": ([good, good], "not a directory"),
        "missing data": ([LLAMA, tmp / "nope.safetensors"], "no such data file"),
        "corrupt safetensors": ([LLAMA, corrupt], "cannot read safetensors"),
        "invalid json line": ([LLAMA, bad_json], "line 2: invalid JSON"),
        "empty data": ([LLAMA, empty], "no rows"),
        "id outside vocab": ([LLAMA, _tensors(tmp / "vocab.safetensors", input_ids=[[1, 2, 99999]])], "row 0: position 2"),
        "labels shape": ([LLAMA, _tensors(tmp / "labels.safetensors", input_ids=[[1, 2, 3]], labels=[[1, 2]])], "'labels' has shape"),
        "role shape": (
            [LLAMA, _tensors(tmp / "role.safetensors", input_ids=[[1, 2, 3]], completion_mask=[[1, 1, 1, 1]])],
            "'completion_mask' has shape",
        ),
        "id outside vocab, later batch": (
            [LLAMA, _jsonl(tmp / "later.jsonl", '{"input_ids": [1, 2]}\n{"input_ids": [1, 99999]}'), "--batch-size", "1"],
            "row 1: position 1",
        ),
        "jsonl length": ([LLAMA, _jsonl(tmp / "len.jsonl", '{"input_ids": [1, 2], "labels": [1]}')], "line 1: 'labels' has 1"),
        "unknown format": ([LLAMA, _jsonl(tmp / "data.csv", "a,b")], "unknown data format"),
        "loss file missing": ([LLAMA, good, "--loss", tmp / "nope.py:fn"], "nope.py: no such file"),
        "loss function missing": ([LLAMA, good, "--loss", f"{_jsonl(tmp / 'l.py', 'x = 1')}:fn"], "no function 'fn'"),
        "loss module missing": ([LLAMA, good, "--loss", "no_such_module_xyz:fn"], "cannot import module"),
        "loss spec malformed": ([LLAMA, good, "--loss", "justaname"], "is not FILE.py:FN"),
    }


def _jsonl(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    return path


@pytest.mark.parametrize(
    "case",
    [
        "missing model", "not a model", "unreadable model", "model is a file", "missing data", "corrupt safetensors",
        "invalid json line", "empty data", "id outside vocab", "id outside vocab, later batch", "labels shape", "role shape", "jsonl length",
        "unknown format", "loss file missing", "loss function missing", "loss module missing", "loss spec malformed",
    ],
)
def test_bad_input_exits_2_with_one_error_line(case, tmp_path):
    args, expected = _bad_inputs(tmp_path)[case]
    result = run("check", *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_inspect_row_out_of_range_exits_2():
    result = run("inspect", LLAMA, BATCHES / "llama_clean.safetensors", "--row", "7")
    assert result.exit_code == 2
    assert "there is no row 7" in result.stderr


def test_every_command_has_help_and_is_in_the_readme():
    readme = (FIXTURES.parent / "README.md").read_text()
    for command in ("check", "inspect", "scan"):
        result = run(command, "--help")
        assert result.exit_code == 0
        assert f"gradscope {command}" in readme
        for option in [o for o in result.stdout.split() if o.startswith("--") and o != "--help"]:
            assert option.strip(",") in readme, f"{command} {option} is not documented in README.md"


def test_scan_exit_codes_and_json():
    result = run("scan", BATCHES / "llama_clean.jsonl", "--tokenizer", LLAMA, "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema_version"] == 1 and data["kind"] == "scan" and data["summary"]["ok"] is True
    assert data["summary"]["rows"] == 4 and data["findings"] == []
    result = run("scan", BATCHES / "llama_prompt_leak.jsonl", "--tokenizer", LLAMA, "--format", "json", "--examples", "1")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["checks"]["prompt_leak"]["rows"] == 4 and data["checks"]["prompt_leak"]["first_rows"] == [0]
    assert data["summary"]["checks_failed"] == ["prompt_leak"] and data["summary"]["errors"] == 4
    assert [w["row"] for w in data["worst_rows"]][:1] == [2]
    assert set(data["distributions"]) == {"length", "trained_fraction"}


def test_scan_text_report_and_output_file(tmp_path):
    out = tmp_path / "scan.json"
    result = run("scan", BATCHES / "gpt2_eos_untrained_lm_collator.safetensors", "--tokenizer", GPT2, "--output", out)
    assert result.exit_code == 1
    assert "eos_untrained" in result.stdout and "gradscope inspect MODEL DATA --row N" in result.stdout
    assert json.loads(out.read_text())["checks"]["eos_untrained"]["rows"] == 3


def test_scan_without_end_tokens_says_eos_was_not_checked():
    result = run("scan", BATCHES / "llama_eos_untrained.safetensors", "--format", "json")
    assert result.exit_code == 0
    assert any("eos_untrained was not checked" in n for n in json.loads(result.stdout)["summary"]["notes"])
    result = run("scan", BATCHES / "llama_eos_untrained.safetensors", "--end-token-id", "2", "--format", "json")
    assert result.exit_code == 1


@pytest.mark.parametrize(
    "args, expected",
    [
        (["nope.jsonl"], "no such data"),
        ([BATCHES / "llama_clean.jsonl", "--tokenizer", BATCHES], "no tokenizer files"),
        (["RAW"], "raw text"),
    ],
)
def test_scan_bad_input_exits_2_with_one_error_line(args, expected, tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    result = run("scan", *[raw if a == "RAW" else a for a in args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], result.stderr
    assert result.stdout == ""


def test_device_map_auto_gives_the_same_report():
    _, plain = run_json(LLAMA, BATCHES / "llama_prompt_leak.safetensors")
    _, mapped = run_json(LLAMA, BATCHES / "llama_prompt_leak.safetensors", "--device-map", "auto")
    assert plain["model"].pop("device_map") is None
    assert mapped["model"].pop("device_map") in (None, {"": "cpu"})  # one CPU: accelerate may place nothing
    assert mapped == plain


def test_unavailable_device_exits_2():
    result = run("check", LLAMA, BATCHES / "llama_clean.safetensors", "--device", "cuda:99")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: device 'cuda:99' is not available")

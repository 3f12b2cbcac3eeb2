"""The CLI on batches without a role tensor: roles from the tokens, or "not verified", never a false clean."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.render.check import CheckView
from gradscope.report.check import Report, SampleReport
from gradscope.report.finding import Finding

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
LLAMA = FIXTURES / "models/tiny-llama-chat"
GPT2 = FIXTURES / "models/tiny-gpt2"
BATCHES = FIXTURES / "batches"
runner = CliRunner()


def check(*args: object) -> tuple[int, dict, str]:
    result = runner.invoke(app, ["check", *map(str, args), "--probes", "none", "--format", "json"])
    return result.exit_code, json.loads(result.stdout), result.output


def pairs(data: dict) -> list[tuple[str, int | None]]:
    return [(f["check"], f["sample"]) for f in data["findings"]]


@pytest.mark.parametrize(
    ("model", "extra", "source"),
    [
        (LLAMA, [], "chat_template"),
        (GPT2, ["--response-template", "Answer:"], "response_template"),
        (GPT2, ["--roles-from", BATCHES / "gpt2_raw_rows.jsonl"], "roles_from"),
    ],
    ids=["llama-chat-template", "gpt2-response-template", "gpt2-roles-from"],
)
def test_copy_labels_without_roles_is_a_prompt_leak(model, extra, source):
    prefix = "llama" if model == LLAMA else "gpt2"
    code, data, _ = check(model, BATCHES / f"{prefix}_prompt_leak_noroles.safetensors", *extra)
    assert code == 1
    assert pairs(data) == [("prompt_leak", i) for i in range(3)]
    assert [s["roles_source"] for s in data["samples"]] == [source] * 3
    assert data["summary"]["verified"] is True


@pytest.mark.parametrize(
    ("model", "batch", "extra"),
    [
        (LLAMA, "llama_unknown_roles", []),
        (GPT2, "gpt2_clean_noroles", ["--response-template", "Answer:"]),
    ],
    ids=["llama", "gpt2"],
)
def test_the_correct_twin_is_clean(model, batch, extra):
    code, data, _ = check(model, BATCHES / f"{batch}.safetensors", *extra, "--strict")
    assert code == 0 and data["findings"] == [] and data["summary"]["verified"] is True


def test_no_template_and_no_response_template_is_not_verified():
    batch = BATCHES / "gpt2_prompt_leak_noroles.safetensors"
    code, data, _ = check(GPT2, batch)
    assert code == 1 and data["summary"]["status"] == "not verified"  # never a silent pass
    assert check(GPT2, batch, "--allow-unknown-roles")[0] == 0
    assert pairs(data) == [("roles_unknown", None)]
    assert data["findings"][0]["severity"] == "warning"
    assert "the tokenizer has no chat template" in data["findings"][0]["message"]
    assert "--response-template" in data["findings"][0]["message"]
    assert data["summary"]["verified"] is False
    assert [s["roles_source"] for s in data["samples"]] == ["unknown"] * 3
    assert check(GPT2, batch, "--strict")[0] == 1
    text = runner.invoke(app, ["check", str(GPT2), str(batch), "--probes", "none"]).output
    assert "not verified" in text and "✓ clean" not in text


def test_roles_from_rows_that_do_not_match_is_one_error_line(tmp_path):
    rows = (BATCHES / "gpt2_raw_rows.jsonl").read_text().splitlines()
    other = tmp_path / "rows.jsonl"
    other.write_text("\n".join([rows[1], rows[0], rows[2]]) + "\n")
    result = runner.invoke(
        app, ["check", str(GPT2), str(BATCHES / "gpt2_prompt_leak_noroles.safetensors"), "--roles-from", str(other)]
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: {other}: row 0: position ")
    assert "differ" in lines[0] and "Traceback" not in result.output


def test_messages_keep_their_brackets_in_the_terminal():
    finding = Finding("label_misaligned", "error", 0, [1], "labels[t] is token t; [bold]not markup[/bold]")
    report = Report(model={}, samples=[SampleReport(0, [], [], "completion_mask")], findings=[finding])
    console = Console(width=200, file=io.StringIO(), color_system=None)
    console.print(CheckView(report))
    text = console.file.getvalue()
    assert "labels[t] is token t; [bold]not markup[/bold]" in text

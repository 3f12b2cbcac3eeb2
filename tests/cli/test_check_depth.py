"""``gradscope check --depth logits``: the masking verdict of the full check, and what it did not run, said."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradscope.cli import app

FIXTURES = Path(__file__).resolve().parent.parent.parent / "fixtures"
LLAMA = FIXTURES / "models/tiny-llama-chat"
BATCHES = FIXTURES / "batches"
runner = CliRunner()


def _check(*args: object):
    return runner.invoke(app, ["check", *map(str, args)])


@pytest.mark.parametrize("batch", ["llama_clean.safetensors", "llama_prompt_leak.jsonl"])
def test_depth_logits_exits_as_the_full_check_with_its_masking_findings(batch):
    path = BATCHES / batch
    full = _check(LLAMA, path, "--format", "json")
    masking = _check(LLAMA, path, "--format", "json", "--depth", "logits")
    assert masking.exit_code == full.exit_code, masking.output
    got, expected = json.loads(masking.stdout), json.loads(full.stdout)
    assert got["depth"] == "logits" and expected["depth"] == "full"
    assert got["findings"] == expected["findings"]
    assert [[t["trained"] for t in s["tokens"]] for s in got["samples"]] == [
        [t["trained"] for t in s["tokens"]] for s in expected["samples"]
    ]
    assert got["probes"]["causal"]["ran"] is False and got["probes"]["packing"]["ran"] is False


def test_the_terminal_report_says_what_depth_logits_did_not_run():
    result = _check(LLAMA, BATCHES / "llama_clean.safetensors", "--depth", "logits")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "depth logits" in text and "were not run" in text and "not run: depth logits" in text


def test_an_unknown_depth_is_one_error_line_and_exit_2():
    result = _check(LLAMA, BATCHES / "llama_clean.safetensors", "--depth", "deep")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: ") and "depth 'deep'" in lines[0]

"""The CLI's --html and --format junit: the files they write, parsed, and one Error line for a path it cannot write."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradscope.cli import app

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
LLAMA, GPT2 = str(FIXTURES / "models/tiny-llama-chat"), str(FIXTURES / "models/tiny-gpt2")
BATCHES = FIXTURES / "batches"
runner = CliRunner(env={"COLUMNS": "100"})


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


LEAK = BATCHES / "llama_prompt_leak.safetensors"


def test_check_html_is_the_report_page(tmp_path, html_page):
    out = tmp_path / "r.html"
    result = run("check", LLAMA, LEAK, "--html", out, "--format", "json")
    assert result.exit_code == 1, result.output
    page = html_page(out.read_text(encoding="utf-8"))
    assert sorted(page.tokens) == [0, 1, 2]
    assert [(r["data-check"], r["data-sample"]) for r in page.findings] == [("prompt_leak", str(i)) for i in range(3)]


def test_inspect_html_is_that_row(tmp_path, html_page):
    out = tmp_path / "row.html"
    result = run("inspect", LLAMA, LEAK, "--row", "1", "--html", out)
    assert result.exit_code == 1, result.output
    page = html_page(out.read_text(encoding="utf-8"))
    assert list(page.tokens) == [1] and "open" in page.details[1]
    assert [r["data-sample"] for r in page.findings] == ["1"]


def test_grads_and_scan_html(tmp_path, html_page):
    result = run("grads", LLAMA, BATCHES / "llama_clean.safetensors", "--html", tmp_path / "g.html")
    assert result.exit_code == 0, result.output
    grads = html_page((tmp_path / "g.html").read_text(encoding="utf-8"))
    assert [a for tag, a in grads.elements if tag == "g" and "mark" in (a.get("class") or "")]
    result = run(
        "scan",
        BATCHES / "gpt2_eos_untrained_lm_collator.safetensors",
        "--tokenizer",
        GPT2,
        "--html",
        tmp_path / "s.html",
    )
    assert result.exit_code == 1, result.output
    scan = html_page((tmp_path / "s.html").read_text(encoding="utf-8"))
    assert {a["data-check"]: a["data-state"] for tag, a in scan.elements if tag == "tr" and "data-state" in a}[
        "eos_untrained"
    ] == "error"


def test_format_junit_on_stdout(junit_schema):
    result = run("check", LLAMA, LEAK, "--format", "junit")
    assert result.exit_code == 1
    junit_schema.validate(result.stdout)
    failed = [c.get("name") for c in ET.fromstring(result.stdout).iter("testcase") if c.find("failure") is not None]
    assert failed == ["sample 0", "sample 1", "sample 2", "errors"]  # the last: the report's verdict


COMMANDS = {
    "check": ["check", LLAMA, LEAK],
    "grads": ["grads", LLAMA, LEAK],
    "inspect": ["inspect", LLAMA, LEAK],
    "scan": ["scan", LEAK],
}


@pytest.mark.parametrize(
    "name, option",
    [(name, "--html") for name in COMMANDS] + [(name, "--output") for name in ("check", "grads", "scan")],
)
def test_unwritable_path_is_one_error_line(tmp_path, name, option):
    command = COMMANDS[name]
    for path, said in ((tmp_path / "missing" / "r.html", "does not exist"), (tmp_path, "is a directory")):
        result = run(*command, option, path)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"Error: cannot write {path}") and said in lines[0], (
            result.stderr
        )
        assert result.stdout == "" and "Traceback" not in result.output  # refused before the model ran


def test_github_annotations_only_under_actions(monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    result = run("check", LLAMA, LEAK, "--format", "json")
    lines = [line for line in result.stderr.splitlines() if line.startswith("::")]
    assert len(lines) == 3 and all(
        line.startswith("::error ") and "title=gradscope prompt_leak (sample" in line for line in lines
    )
    monkeypatch.setenv("GITHUB_ACTIONS", "false")
    assert "::error" not in run("check", LLAMA, LEAK, "--format", "json").stderr


def test_roles_refuses_junit():
    result = run("roles", LLAMA, BATCHES / "llama_clean.jsonl", "--format", "junit")
    assert result.exit_code == 2 and result.stderr.startswith("Error: --format junit")

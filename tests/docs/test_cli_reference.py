"""docs/cli.md is what docs/make_cli_reference.py writes from the commands' own help, at any terminal width."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("make_cli_reference", DOCS / "make_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_up_to_date(generator):
    written = (DOCS / "cli.md").read_text(encoding="utf-8")
    fresh = generator.render_reference()
    diff = "".join(
        list(
            difflib.unified_diff(
                written.splitlines(True), fresh.splitlines(True), "docs/cli.md", "the commands' help now"
            )
        )[:40]
    )
    assert written == fresh, f"docs/cli.md is stale: run `{generator.REFRESH}` and commit it\n{diff}"


@pytest.mark.parametrize("columns", ["40", "250"])
def test_cli_reference_does_not_follow_the_terminal(generator, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", columns)
    monkeypatch.setenv("TERMINAL_WIDTH", columns)
    monkeypatch.setenv("FORCE_COLOR", "1")
    text = generator.render_reference()
    assert "\x1b[" not in text
    assert text == (DOCS / "cli.md").read_text(encoding="utf-8")

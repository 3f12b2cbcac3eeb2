"""The trainer × configuration table of docs/training-runs.md names, on each row, a test that exists and asserts it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def table_tests() -> list[str]:
    text = (ROOT / "docs/training-runs.md").read_text(encoding="utf-8")
    section = text.split("## Trainer × configuration → verdict", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| trainer ")]
    return [name for row in rows for name in re.findall(r"`(test_\w+)`", row.rsplit("|", 2)[-2])]


def defined_tests() -> set[str]:
    names = set()
    for path in (ROOT / "tests/integrations").glob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names |= {
            node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        }
    return names


def test_every_row_of_the_trainer_table_names_an_existing_test():
    named = table_tests()
    assert len(named) >= 25 and any("grpo" in n for n in named)
    assert sorted(set(named) - defined_tests()) == []

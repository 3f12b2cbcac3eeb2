"""The test suite's own layout: no test module imports another test module or tests.conftest.

Shared helpers are fixtures in tests/conftest.py, which pytest provides by name; importing a module that pytest also
collects runs its module-level code twice and registers its fixtures in the importer as well, and a helper imported
from a test module ties two test files together.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _imported_modules(tree: ast.Module) -> list[tuple[int, str]]:
    """Every module an ``import`` or ``from ... import`` names, with its line; relative imports as written."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.append((node.lineno, base))
            found += [
                (node.lineno, f"{base}.{alias.name}".replace("..", ".")) for alias in node.names if not node.module
            ]
    return found


def _is_test_code(module: str) -> bool:
    """``tests``, ``tests.*`` (conftest included), ``conftest``, any relative import, or a test module by name."""
    last = module.rsplit(".", 1)[-1]
    return (
        module.startswith(".")
        or module == "tests"
        or module.startswith("tests.")
        or module == "conftest"
        or last.startswith("test_")
        or last == "conftest"
    )


def test_no_test_module_imports_another_or_conftest():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, module in _imported_modules(tree):
            if _is_test_code(module):
                offenders.append(f"{path.relative_to(TESTS.parent)}:{line} imports {module}")
    assert offenders == [], "use a conftest fixture instead:\n" + "\n".join(offenders)


def test_the_check_sees_each_kind_of_import():
    """The parser above catches what it must (so an empty list of offenders means something)."""
    source = (
        "from tests.conftest import FIXTURES\nimport tests.data.test_stream\nfrom . import helpers\n"
        "from .test_roles import tok\nimport conftest\nfrom tests import conftest\n"
        "def f():\n    from tests.scan.test_dataset import random_rows\n"
        "import torch\nfrom pathlib import Path\nfrom gradscope.testing import assert_masking\n"
    )
    flagged = sorted({line for line, module in _imported_modules(ast.parse(source)) if _is_test_code(module)})
    assert flagged == [1, 2, 3, 4, 5, 6, 8]

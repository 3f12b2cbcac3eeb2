"""The package's layering, read from its import graph: stages import only downwards, views never reach torch, no
module imports itself back through others, and no module grows past the size a reader can hold."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gradscope"

LAYERS = (
    ("gradscope.cli", "gradscope.__main__", "gradscope"),
    ("gradscope.integrations", "gradscope.testing"),
    ("gradscope.verbs", "gradscope.scan"),
    ("gradscope.checks",),
    ("gradscope.engine",),
    ("gradscope.data",),
    ("gradscope.model",),
    ("gradscope.render",),
    ("gradscope.report", "gradscope.errors", "gradscope.constants", "gradscope.modes", "gradscope.tokenizer"),
)
"""Top to bottom. A module may import its own layer and the layers below it, never one above."""

MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(source: str, known: set[str]) -> set[str]:
    """The gradscope modules a source imports (``from gradscope.x import y`` counts x.y when that is a module)."""
    tree = ast.parse(source)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("gradscope"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gradscope"))
    return found & known


def third_party(source: str) -> set[str]:
    tree = ast.parse(source)
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {
        n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.level == 0
    }
    return names


def layer_of(module: str) -> int:
    matches = [
        (len(prefix), i)
        for i, layer in enumerate(LAYERS)
        for prefix in layer
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]  # the longest prefix decides: gradscope.cli.app is cli, not the package root


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{m} imports {d}" for m, deps in graph.items() for d in deps if d != "gradscope" and layer_of(d) < layer_of(m)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                found.append(path[path.index(dep) :] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def package_graph() -> dict[str, set[str]]:
    known = set(MODULES)
    return {m: imports_of(p.read_text(), known) - {m} for m, p in MODULES.items()}


def test_no_stage_imports_upwards():
    assert upward_imports(package_graph()) == []


def test_the_layering_test_catches_an_upward_import():
    graph = package_graph()
    graph["gradscope.engine.run"] = graph["gradscope.engine.run"] | {"gradscope.checks.masking"}
    assert upward_imports(graph) == ["gradscope.engine.run imports gradscope.checks.masking"]


def test_no_import_cycle():
    """Function-level imports included: an import deferred into a function is a circle all the same."""
    assert cycles(package_graph()) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_views_never_import_torch():
    graph = package_graph()
    views = [m for m in MODULES if m.startswith("gradscope.render")]
    reached, frontier = set(), set(views)
    while frontier:
        module = frontier.pop()
        reached.add(module)
        frontier |= graph[module] - reached
    heavy = {m: sorted(third_party(MODULES[m].read_text()) & {"torch", "transformers", "numpy"}) for m in reached}
    assert {m: h for m, h in heavy.items() if h} == {}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_too_long_to_read(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: split it along what it does"


def private_imports(sources: dict[str, str]) -> list[str]:
    """Underscore names imported from another gradscope module: a name shared across modules is public (a dunder
    such as ``__version__`` is public by convention)."""
    found = []
    for module, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("gradscope"):
                found += [
                    f"{module} imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not (a.name.startswith("__") and a.name.endswith("__"))
                ]
    return sorted(found)


def test_no_private_name_crosses_modules():
    assert private_imports({m: p.read_text() for m, p in MODULES.items()}) == []
    assert private_imports({"a": "def f():\n    from gradscope.engine.run import _x, y, __version__\n"}) == [
        "a imports gradscope.engine.run._x"
    ]

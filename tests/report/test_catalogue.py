"""The check catalogue: every check declared once, each held to its docs row and a fixture, and the lists other
modules keep read from it."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

import gradscope.checks.masking as masking
import gradscope.render.junit as junit
from gradscope.report import catalogue
from gradscope.report.catalogue import BY_NAME, CATALOGUE
from gradscope.scan.verdicts import CHECKS as SCANNED

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    (e["check"] if isinstance(e, dict) else e)
    for name in ("catalogue.json", "grads_catalogue.json")
    for case in json.loads((ROOT / "fixtures" / name).read_text())
    for e in case.get("expect", [])
}


def test_each_check_is_declared_once():
    names = [spec.name for spec in CATALOGUE]
    assert len(names) == len(set(names)) and set(BY_NAME) == set(names)


@pytest.mark.parametrize("spec", CATALOGUE, ids=[s.name for s in CATALOGUE])
def test_each_check_has_its_docs_row_with_its_severity(spec):
    text = (ROOT / spec.docs).read_text()
    rows = re.findall(rf"^\| `{spec.name}` \| (error|warning) \|", text, flags=re.M)
    assert rows, f"{spec.docs} has no '| `{spec.name}` | severity |' row"
    assert set(rows) == {spec.severity}


@pytest.mark.parametrize("spec", CATALOGUE, ids=[s.name for s in CATALOGUE])
def test_each_check_has_a_fixture(spec):
    """A case of the fixture catalogues expects it, or the named test reproduces it (and names it)."""
    if spec.name in EXPECTED:
        assert spec.fixture is None, "a fixture case expects it: name no test"
        return
    assert spec.fixture, f"{spec.name}: no fixture case expects it and no test is named"
    path, test = spec.fixture.split("::")
    source = (ROOT / path).read_text()
    [node] = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == test]
    assert f'"{spec.name}"' in (ast.get_source_segment(source, node) or "") or spec.name in source


def test_every_finding_a_check_function_gives_is_declared():
    """Every Finding("name", "severity", ...) the package writes is a catalogue entry with that severity."""
    found = {}
    for path in (ROOT / "gradscope").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Finding" and len(node.args) >= 2:
                name, severity = node.args[:2]
                if isinstance(name, ast.Constant) and isinstance(severity, ast.Constant):
                    found.setdefault(name.value, set()).add(severity.value)
    assert set(found) <= set(BY_NAME), set(found) - set(BY_NAME)
    assert all(severities == {BY_NAME[name].severity} for name, severities in found.items())
    assert len(found) > 20


def test_the_lists_of_other_modules_are_the_catalogue_s():
    assert (
        [c.__name__ for c in masking.ROOT_CHECKS]
        == list(catalogue.ROOT_CHECKS)
        == ["no_loss", "masked_label_trained", "label_misaligned"]
    )
    per_sample = [c.__name__ for c in masking.SAMPLE_CHECKS]
    assert per_sample == [n for n in catalogue.SAMPLE_CHECKS if n in per_sample]  # in the catalogue's order
    assert set(catalogue.SAMPLE_CHECKS) - set(per_sample) - set(catalogue.ROOT_CHECKS) == {
        "turn_end_untrained",  # eos_untrained's finding when each turn's end but the last is untrained
        "causal_leak",
        "cross_document_leak",
        "aux_loss_reaches_padding",  # structural probes (engine)
    }
    assert SCANNED == tuple(s.scan for s in CATALOGUE if s.scan and not s.not_verified)
    assert junit.SAMPLE_CHECKS is catalogue.SAMPLE_CHECKS and junit.ROLE_CHECKS is catalogue.ROLE_CHECKS
    assert catalogue.ROLE_CHECKS == ("prompt_leak", "completion_untrained", "prefill_trained")
    assert catalogue.SCAN_WARNINGS == {"completion_truncated", "roles_unknown", "prefill_trained"}


def test_no_module_keeps_its_own_list_of_checks():
    """grep: no second ROLE_CHECKS, SCAN_WARNINGS, SAMPLE_CHECKS or ROOT_CHECKS written out as names."""
    pattern = re.compile(
        r"^(ROLE_CHECKS|SCAN_WARNINGS|SAMPLE_CHECKS|ROOT_CHECKS|CHECKS|PROBE_OF|NETWORK_CHECKS)\b[^=]*=\s*"
        r"(frozenset\(\{|\(|\{)\s*\"",
        re.M,
    )
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "gradscope").rglob("*.py")
        if p.name != "catalogue.py" and pattern.search(p.read_text())
    ]
    assert offenders == []

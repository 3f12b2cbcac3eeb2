"""JUnit XML and GitHub annotations: valid against the JUnit schema, and every finding a failed test case."""

from __future__ import annotations

import ast
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import gradscope.checks.masking as analyze
from gradscope.render.junit import ROLES_UNKNOWN, SAMPLE_CHECKS, github_annotations, to_junit
from gradscope.report import Finding, Report, SampleReport, ScanReport, TokenReport
from gradscope.report.verdict import verdict

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CATALOGUE = json.loads((FIXTURES / "catalogue.json").read_text())


@pytest.fixture(scope="module")
def reports(catalogue_reports) -> dict[str, Report]:
    return catalogue_reports


def report_of(reports: dict[str, Report], name: str) -> Report:
    return reports[name]


def cases(xml: str) -> list[ET.Element]:
    """The check cases (the last suite, ``gradscope.verdict``, is the report's status: tests/report/test_verdict.py)."""
    return [c for c in ET.fromstring(xml).findall("testsuite/testcase") if c.get("classname") != "gradscope.verdict"]


def test_schema_rejects_what_readers_do_not_know(junit_schema):
    """The schema can fail: a test case without a name, and a count that is not a number."""
    assert not junit_schema.is_valid(
        '<testsuites><testsuite name="a" tests="1" failures="0" errors="0"><testcase/></testsuite></testsuites>'
    )
    assert not junit_schema.is_valid('<testsuites><testsuite name="a" tests="x" failures="0" errors="0"/></testsuites>')
    assert junit_schema.is_valid(
        '<testsuites><testsuite name="a" tests="1" failures="0" errors="0"><testcase name="b"/></testsuite>'
        "</testsuites>"
    )


@pytest.mark.parametrize(
    "name",
    [
        "llama_prompt_leak",
        "llama_clean",
        "llama_no_loss",
        "llama_unknown_roles",
        "llama_per_sequence_mean_loss",
        "gpt2_packed_mask_leak",
        "llama_accumulate_mismatch",
    ],
)
def test_junit_validates_and_each_error_is_a_failed_case(reports, name, junit_schema):
    report = report_of(reports, name)
    xml = to_junit(report)
    junit_schema.validate(xml)
    failed = [
        (c.get("classname"), c.get("name"), c.find("failure").text) for c in cases(xml) if c.find("failure") is not None
    ]
    expected = [
        (f"gradscope.{f.check}", "the batch" if f.sample is None else f"sample {f.sample}", f.message)
        for f in report.errors
    ]
    assert sorted(failed) == sorted(expected)
    root = ET.fromstring(xml)
    fails = verdict(report).fails()  # the verdict case fails as the exit code does
    assert int(root.get("failures")) == len(report.errors) + fails
    assert int(root.get("tests")) == len(cases(xml)) + 1


def test_one_case_per_sample_per_check(reports):
    report = report_of(reports, "llama_prompt_leak")
    names = [(c.get("classname"), c.get("name")) for c in cases(to_junit(report))]
    for check in SAMPLE_CHECKS:
        assert [n for k, n in names if k == f"gradscope.{check}"] == [f"sample {s.index}" for s in report.samples]
    assert len(names) == len(set(names))


def test_failure_message_names_check_sample_and_positions(reports):
    report = report_of(reports, "llama_prompt_leak")
    f = report.errors[0]
    [case] = [
        c
        for c in cases(to_junit(report))
        if c.get("classname") == "gradscope.prompt_leak" and c.get("name") == f"sample {f.sample}"
    ]
    message = case.find("failure").get("message")
    assert message.startswith(f"prompt_leak (sample {f.sample}, positions {f.positions[0]}-")
    assert case.find("failure").get("type") == "error"


def test_warning_passes_unless_strict(reports):
    report = report_of(reports, "llama_per_sequence_mean_loss")
    [warning] = report.warnings
    [case] = [c for c in cases(to_junit(report)) if c.get("classname") == f"gradscope.{warning.check}"]
    assert case.find("failure") is None and warning.message in case.find("system-out").text
    [strict] = [c for c in cases(to_junit(report, strict=True)) if c.get("classname") == f"gradscope.{warning.check}"]
    assert strict.find("failure").get("type") == "warning"


def test_checks_that_did_not_run_are_skipped_not_passed(reports):
    unknown = report_of(reports, "gpt2_prompt_leak_not_verified")
    skipped = {
        (c.get("classname"), c.find("skipped").get("message"))
        for c in cases(to_junit(unknown))
        if c.find("skipped") is not None
    }
    assert ("gradscope.prompt_leak", ROLES_UNKNOWN) in skipped
    no_loss = report_of(reports, "llama_no_loss")  # sample 1 has no loss: nothing else is judged there
    judged = [c for c in cases(to_junit(no_loss)) if c.get("name") == "sample 1" and c.find("skipped") is None]
    assert [c.get("classname") for c in judged] == ["gradscope.no_loss"]


def test_sample_checks_are_every_check_analyze_runs():
    """The JUnit list names every per-sample check of analyze and structure (a new check must be added there)."""
    structural = {"causal_leak", "cross_document_leak", "aux_loss_reaches_padding"}
    per_turn = {"turn_end_untrained"}  # eos_untrained's finding when every turn's closing token but the last is missed
    names = {c.__name__ for c in (*analyze.ROOT_CHECKS, *analyze.SAMPLE_CHECKS)} | structural | per_turn
    assert set(SAMPLE_CHECKS) == names


def test_unknown_check_still_fails():
    report = Report(model={}, findings=[Finding("a_new_check", "error", None, [], "something broke")])
    [case] = cases(to_junit(report))
    assert case.get("classname") == "gradscope.a_new_check" and case.find("failure").text == "something broke"


def test_scan_junit_one_case_per_check(junit_schema):
    report = ScanReport(
        source={"path": "rows.jsonl"},
        rows=10,
        checks={
            "no_loss": {"rows": 0, "positions": 0, "first_rows": []},
            "prompt_leak": {"rows": 2, "positions": 9, "first_rows": [3, 7]},
        },
        findings=[Finding("prompt_leak", "error", 3, [1, 2], "prompt tokens 1–2 are trained")],
    )
    xml = to_junit(report)
    junit_schema.validate(xml)
    by_check = {c.get("classname"): c for c in cases(xml)}
    assert by_check["gradscope.no_loss"].find("failure") is None
    text = by_check["gradscope.prompt_leak"].find("failure").text
    assert text.startswith("2 of 10 row(s) fail (rows 3, 7)") and "row 3: prompt tokens 1–2 are trained" in text


def _scan_without_roles(unknown: int) -> ScanReport:
    entry = lambda rows, first: {"rows": rows, "positions": 0, "first_rows": first}  # noqa: E731
    return ScanReport(
        source={"path": "rows.jsonl"},
        rows=4,
        checks={
            "prompt_leak": entry(0, []),
            "pad_leak": entry(0, []),
            "roles_unknown": entry(unknown, list(range(unknown))),
        },
        findings=[Finding("roles_unknown", "warning", None, [], "not verified: the roles of rows ... are unknown")],
    )


def test_scan_role_checks_are_skipped_where_no_row_has_roles_and_narrowed_where_some_do(junit_schema):
    xml = to_junit(_scan_without_roles(unknown=4))
    junit_schema.validate(xml)
    by_check = {c.get("classname"): c for c in cases(xml)}
    assert by_check["gradscope.prompt_leak"].find("skipped").get("message") == ROLES_UNKNOWN
    assert by_check["gradscope.pad_leak"].find("skipped") is None  # labels alone decide it
    assert "batch: not verified" in by_check["gradscope.roles_unknown"].find("system-out").text
    partly = {c.get("classname"): c for c in cases(to_junit(_scan_without_roles(unknown=3)))}
    assert partly["gradscope.prompt_leak"].find("skipped") is None
    assert partly["gradscope.prompt_leak"].get("name") == "the 1 of 4 rows with known roles"


def test_xml_special_characters_survive(junit_schema):
    token = TokenReport(0, 1, "x", "prompt", -100, False, None, None, None, 0.0, 0.0)
    message = 'labels <-100> & "quoted" \x1b'.replace("\x1b", "")
    report = Report(
        model={}, samples=[SampleReport(0, [token], [])], findings=[Finding("prompt_leak", "error", 0, [0], message)]
    )
    xml = to_junit(report)
    junit_schema.validate(xml)
    assert [c.find("failure").text for c in cases(xml) if c.find("failure") is not None] == [message]


def test_github_annotations_escape_and_level():
    findings = [
        Finding("prompt_leak", "error", 0, [1, 2, 3, 9], "line one\nline two: 100%"),
        Finding("uneven_token_weights", "warning", None, [], "weights, differ"),
    ]
    report = Report(model={}, findings=findings, data={"source": "data/train.jsonl"})
    error, warning = github_annotations(report)
    assert error == (
        "::error file=data/train.jsonl,title=gradscope prompt_leak (sample 0)::positions 1-3, 9: "
        "line one%0Aline two: 100%25"
    )
    assert warning == "::warning file=data/train.jsonl,title=gradscope uneven_token_weights (batch)::weights, differ"
    assert github_annotations(report, strict=True)[1].startswith("::error ")
    assert "file=" not in github_annotations(Report(model={}, findings=findings, data={"source": "/abs/x"}))[0]


def test_views_import_no_torch():
    """The layering rule: the HTML and JUnit views read the report's dataclasses with the standard library only."""
    package = Path(__file__).resolve().parents[2] / "gradscope"
    for path in [*sorted((package / "render" / "html").glob("*.py")), package / "render" / "junit.py"]:
        tree = ast.parse(path.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        gradscope_modules = {m for m in imported if m.startswith("gradscope")}
        allowed = ("gradscope.report", "gradscope.render.sanitize")  # the output rule: standard library only
        assert all(
            m in allowed or m.startswith(("gradscope.report.", "gradscope.render.html")) for m in gradscope_modules
        ), path
        assert not {m for m in imported if m.split(".")[0] in ("torch", "numpy", "rich", "transformers")}, path

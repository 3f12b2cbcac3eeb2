"""CI output: a report as JUnit XML (one test case per sample per check) and as GitHub Actions annotations.

Views never import torch: this module reads the report's dataclasses only. Errors are failed test cases;
warnings pass (their message in ``system-out``) unless ``strict``, as the exit code counts them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gradscope.render.sanitize import text_block, xml_text
from gradscope.report import SCAN_WARNINGS, Finding, Report, SampleReport, ScanReport, Severity
from gradscope.report.catalogue import (
    FULL_DEPTH,
    PROBE_OF,
    ROLE_CHECKS,
    ROOT_CHECKS,
    SAMPLE_CHECKS,
)
from gradscope.report.text import format_positions
from gradscope.report.verdict import Verdict, verdict

ROLES_UNKNOWN = "roles unknown: no role tensor, roles_from rows, response template or chat template gave them"


@dataclass
class Case:
    """One JUnit test case: a check on one sample (or on the batch)."""

    check: str
    subject: str
    failure: Finding | None = None
    skipped: str | None = None
    output: str | None = None


def to_junit(report: Report | ScanReport, *, strict: bool = False, allow_unknown_roles: bool = False) -> str:
    """The report as JUnit XML: one ``testsuite`` per check, one ``testcase`` per sample (``check``) or per check
    over all rows (``scan``), and a last ``gradscope.verdict`` suite whose one case is named by the report's status
    (``gradscope.report.verdict``) and fails as the exit code does.

    Args:
        report: What ``check``, ``grads``, ``verify`` or ``scan`` returned.
        strict: Warnings fail too (``--strict``).
        allow_unknown_roles: A ``not verified`` report passes (``--allow-unknown-roles``).

    Returns:
        The XML document, its failure messages the findings' own.
    """
    cases = _scan_cases(report) if isinstance(report, ScanReport) else _report_cases(report)
    command = "scan" if isinstance(report, ScanReport) else ("check" if report.samples else "gradient")
    suites = ET.Element("testsuites", name=f"gradscope {command}")
    for check in dict.fromkeys(c.check for c in cases):
        _suite(suites, f"gradscope.{check}", [c for c in cases if c.check == check], strict)
    _verdict_suite(suites, verdict(report), strict, allow_unknown_roles)
    _totals(suites, suites.findall("testsuite"), skipped=False)  # the common schema has no skipped on testsuites
    ET.indent(suites)
    return xml_text('<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n")


def _suite(parent: ET.Element, name: str, cases: Sequence[Case], strict: bool) -> None:
    suite = ET.SubElement(parent, "testsuite", name=name)
    for case in cases:
        element = ET.SubElement(suite, "testcase", name=case.subject, classname=name, time="0")
        f = case.failure
        failing = f is not None and (f.severity == "error" or strict)
        if f is not None and failing:
            failure = ET.SubElement(element, "failure", message=_headline(f), type=f.severity)
            failure.text = f.message
        elif case.skipped is not None:
            ET.SubElement(element, "skipped", message=case.skipped)
        text = case.output or (f"warning: {case.failure.message}" if case.failure is not None and not failing else None)
        if text:
            ET.SubElement(element, "system-out").text = text
    _totals(suite, [suite])


def _verdict_suite(parent: ET.Element, v: Verdict, strict: bool, allow_unknown_roles: bool) -> None:
    """The status every view shows, as one case: it fails when the report fails (``Verdict.fails``)."""
    suite = ET.SubElement(parent, "testsuite", name="gradscope.verdict")
    element = ET.SubElement(suite, "testcase", name=v.status, classname="gradscope.verdict", time="0")
    counts = f"{v.errors} error(s), {v.warnings} warning(s), {v.unverified} not verified"
    if v.fails(strict=strict, allow_unknown_roles=allow_unknown_roles):
        why = " (--allow-unknown-roles lets it pass)" if v.status == "not verified" else ""
        ET.SubElement(element, "failure", message=f"{v.status}: {counts}{why}", type=v.status).text = counts
    else:
        ET.SubElement(element, "system-out").text = f"{v.status}: {counts}"
    _totals(suite, [suite])


def _totals(element: ET.Element, suites: Iterable[ET.Element], skipped: bool = True) -> None:
    cases = [c for s in suites for c in s.findall("testcase")]
    element.set("tests", str(len(cases)))
    element.set("failures", str(sum(c.find("failure") is not None for c in cases)))
    element.set("errors", "0")
    if skipped:
        element.set("skipped", str(sum(c.find("skipped") is not None for c in cases)))
    element.set("time", "0")


def _headline(f: Finding) -> str:
    where = "the batch" if f.sample is None else f"sample {f.sample}"
    positions = f", positions {_ascii_positions(f.positions)}" if f.positions else ""
    return f"{f.check} ({where}{positions}): {f.message.split(': ')[0].split('. ')[0]}"


def _report_cases(r: Report) -> list[Case]:
    """Per sample and check, then the batch-wide checks that ran; every finding is a case (none is dropped)."""
    by_key = {(f.check, f.sample): f for f in r.findings}
    cases = [case for s in r.samples for case in _sample_cases(r, s, by_key)]
    for check in _batch_checks(r):
        cases.append(Case(check, "the batch", by_key.get((check, None)), _probe_skip(r, check)))
    covered = {id(c.failure) for c in cases}
    for f in r.findings:  # a check this module does not know yet still fails its run
        if id(f) not in covered:
            cases.append(Case(f.check, "the batch" if f.sample is None else f"sample {f.sample}", f))
    return cases


def _sample_cases(r: Report, s: SampleReport, by_key: dict[tuple[str, int | None], Finding]) -> list[Case]:
    root = next((c for c in ROOT_CHECKS if (c, s.index) in by_key), None)
    roles_unknown = all(t.role is None for t in s.tokens if t.role != "pad")
    cases = []
    for check in SAMPLE_CHECKS:
        skipped = _probe_skip(r, check)
        if root is not None and check != root:
            skipped = f"not judged: the sample fails {root}, the root cause"
        elif roles_unknown and check in ROLE_CHECKS:
            skipped = ROLES_UNKNOWN
        cases.append(Case(check, f"sample {s.index}", by_key.get((check, s.index)), skipped))
    return cases


def _probe_skip(r: Report, check: str) -> str | None:
    if check in FULL_DEPTH and r.depth == "logits":
        return "not run at the logits depth: no gradient at the embeddings was computed"
    probe = r.probes.get(PROBE_OF.get(check, ""))
    if probe is None or probe.ran:
        return None
    return (
        f"the {PROBE_OF[check]} probe did not run: {probe.note}"
        if probe.note
        else f"the {PROBE_OF[check]} probe did not run"
    )


def _batch_checks(r: Report) -> list[str]:
    """The batch-wide checks of the passes that ran."""
    checks = ["nonfinite"] if r.samples else []
    checks += [c for c in ("uneven_token_weights", "accumulation_mismatch") if PROBE_OF[c] in r.probes]
    if r.grads is not None:
        checks += ["frozen_model", "untrained_parameters", "nonfinite", "exploding_gradient", "vanishing_gradient"]
    if r.overfit is not None:
        checks.append("cannot_overfit")
    if r.verify is not None:
        checks += ["nonfinite", "gradient_mismatch"]
    return list(dict.fromkeys(checks))


def _scan_cases(r: ScanReport) -> list[Case]:
    """One case per check over every row: a scan covers millions of rows; the message names the first ones."""
    cases = []
    unknown = r.checks.get("roles_unknown", {}).get("rows", 0)
    for name, entry in r.checks.items():
        failure = None
        if entry["rows"]:
            first = ", ".join(map(str, entry["first_rows"])) + (
                " ..." if entry["rows"] > len(entry["first_rows"]) else ""
            )
            examples = "\n".join(
                f"{'batch' if f.sample is None else f'row {f.sample}'}: {f.message}"
                for f in r.findings
                if f.check == name
            )
            severity: Severity = "warning" if name in SCAN_WARNINGS else "error"
            failure = Finding(
                name, severity, None, [], f"{entry['rows']} of {r.rows} row(s) fail (rows {first})\n{examples}"
            )
        subject, skipped = f"all {r.rows} rows", (f"not run: {r.not_run[name]}" if name in r.not_run else None)
        if name in ROLE_CHECKS and unknown and not skipped:  # judged only where the roles are known
            subject = f"the {r.rows - unknown} of {r.rows} rows with known roles"
            skipped = None if r.rows > unknown or failure else ROLES_UNKNOWN
        cases.append(Case(name, subject, failure, skipped))
    return cases


def github_annotations(report: Report | ScanReport, *, strict: bool = False) -> list[str]:
    """GitHub Actions workflow commands, one ``::error`` (or ``::warning``) line per finding.

    Args:
        report: The report.
        strict: Warnings are ``::error`` lines too, as they fail the run.

    Returns:
        Lines for stderr; Actions shows each as an annotation on the run and its summary.
    """
    source = _source(report)
    lines = []
    for f in report.findings:
        level = "error" if f.severity == "error" or strict else "warning"
        where = "batch" if f.sample is None else f"{'row' if isinstance(report, ScanReport) else 'sample'} {f.sample}"
        title = _escape_property(f"gradscope {f.check} ({where})")
        file = f"file={_escape_property(source)}," if source else ""
        positions = f"positions {_ascii_positions(f.positions)}: " if f.positions else ""
        lines.append(f"::{level} {file}title={title}::{_escape_data(positions + f.message)}")
    return lines


def _source(report: Report | ScanReport) -> str | None:
    """The data file, when it is a path relative to the workspace (Actions links those)."""
    path = report.source.get("path") if isinstance(report, ScanReport) else report.data.get("source")
    return str(path) if path and not str(path).startswith("/") else None


def _escape_data(text: str) -> str:
    """Controls shown escaped and command prefixes neutralised, then the runner's own escapes (its ``%0A`` is a
    line break inside the annotation, not in the log)."""
    return text_block(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _ascii_positions(positions: Sequence[int]) -> str:
    return format_positions(positions, dash="-")

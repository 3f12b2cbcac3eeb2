"""The one verdict: its status and counts, each use's policy, and every view following it (none decides alone)."""

from __future__ import annotations

import io
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import gradscope.render.html.page  # noqa: F401  (imported on demand by to_html: loaded before it is patched)
import gradscope.report.verdict as verdicts
from gradscope.cli import app, exit_code
from gradscope.errors import MaskingError
from gradscope.integrations.callback import GradscopeCallback
from gradscope.render.check import CheckView
from gradscope.render.junit import to_junit
from gradscope.render.scan import ScanView
from gradscope.report import Finding, Report, SampleReport, ScanReport, TokenReport
from gradscope.report.verdict import Verdict, verdict
from gradscope.testing import assert_masking

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
STATUSES = ("clean", "not verified", "warnings", "errors")


def finding(check: str, severity: str = "error", sample: int | None = 0) -> Finding:
    return Finding(check, severity, sample, [1], f"{check} fired")  # type: ignore[arg-type]


def sample(index: int, role: str | None = "completion", source: str = "completion_mask") -> SampleReport:
    tokens = [TokenReport(p, 5, "a", role, 5, True, 5, 0.1, 1.0, 0.5, 0.1) for p in range(2)]
    return SampleReport(index, tokens, [[0.1, 0.2]], roles_source=source)


def report(*findings: Finding, unknown: int = 0) -> Report:
    samples = [sample(0), sample(1)] + [sample(2 + i, None, "unknown") for i in range(unknown)]
    return Report(model={}, samples=samples, findings=list(findings))


@pytest.mark.parametrize(
    "findings, unknown, expected",
    [
        ((), 0, Verdict("clean", 0, 0, 0)),
        ((finding("prefill_trained", "warning"),), 0, Verdict("warnings", 0, 1, 0)),
        ((finding("roles_unknown", "warning", None),), 2, Verdict("not verified", 0, 0, 2)),
        (
            (finding("roles_unknown", "warning", None), finding("completion_truncated", "warning")),
            1,
            Verdict("not verified", 0, 1, 1),
        ),
        (
            (finding("prompt_leak"), finding("pad_leak", sample=1), finding("roles_unknown", "warning", None)),
            1,
            Verdict("errors", 2, 0, 1),
        ),
    ],
)
def test_status_and_counts(findings, unknown, expected):
    assert verdict(report(*findings, unknown=unknown)) == expected


def test_policy_per_use():
    """Status is one; the policy differs: not verified fails unless allowed, warnings only under strict."""
    table = {
        (s, strict, allow): Verdict(s, 0, 0, 0).fails(strict=strict, allow_unknown_roles=allow)  # type: ignore[arg-type]
        for s in STATUSES
        for strict in (False, True)
        for allow in (False, True)
    }
    assert [k for k, fails in table.items() if fails] == [
        ("not verified", False, False),
        ("not verified", True, False),
        ("not verified", True, True),
        ("warnings", True, False),
        ("warnings", True, True),
        ("errors", False, False),
        ("errors", False, True),
        ("errors", True, False),
        ("errors", True, True),
    ]


def scan_report(error_rows: int, checks: dict[str, int], unknown: int = 0) -> ScanReport:
    entries = {
        name: {"rows": rows, "positions": rows, "first_rows": list(range(min(rows, 3)))}
        for name, rows in checks.items()
    }
    entries["roles_unknown"] = {"rows": unknown, "positions": 0, "first_rows": list(range(min(unknown, 3)))}
    return ScanReport(
        source={"path": "rows.jsonl", "format": "jsonl", "end_token_ids": [2]},
        rows=500_000,
        tokens=9,
        trained_tokens=3,
        checks=entries,
        error_rows=error_rows,
        warning_rows=0,
    )


def test_scan_headline_counts_the_rows_that_fail():
    """3,500 of 500,000 rows fail (two checks, some rows both): the headline names 3,500, never every row."""
    r = scan_report(3_500, {"prompt_leak": 3_000, "eos_untrained": 1_000})
    out = io.StringIO()
    Console(file=out, width=200, highlight=False).print(ScanView(r))
    headline = out.getvalue().splitlines()[0]
    assert headline == "✗ masking errors in 3500 of 500000 row(s): prompt_leak ×3000, eos_untrained ×1000"
    assert r.summary()["errors"] == 3_500 and r.summary()["status"] == "errors"


def test_scan_without_counted_rows_falls_back_to_the_largest_check():
    r = scan_report(0, {"prompt_leak": 30, "eos_untrained": 10})
    r.error_rows = None  # a report built by hand: no distinct count
    assert verdict(r).errors == 30


# ------------------------------------------------------------------------------------------ every view follows


def terminal(r: Report | ScanReport) -> str:
    out = io.StringIO()
    Console(file=out, width=200, highlight=False).print(ScanView(r) if isinstance(r, ScanReport) else CheckView(r))
    return out.getvalue()


def html_status(r: Report | ScanReport) -> tuple[str, str]:
    """The banner's data-status and the page title's last word(s)."""
    page = r.to_html()
    banner = re.search(r'class="verdict [a-z]+" role="status" data-status="([a-z ]+)"', page)
    title = re.search(r"<title>gradscope [a-z]+: ([a-z ]+)</title>", page)
    assert banner and title, page[:400]
    return banner.group(1), title.group(1)


def junit_status(r: Report | ScanReport, **policy: bool) -> tuple[str, bool]:
    suites = ET.fromstring(to_junit(r, **policy)).findall("testsuite")
    [case] = [c for s in suites if s.get("name") == "gradscope.verdict" for c in s.findall("testcase")]
    return case.get("name") or "", case.find("failure") is not None


LABELS = {"clean": "✓ clean", "not verified": "? not verified", "warnings": "! warnings", "errors": "✗ masking errors"}


def views(r: Report | ScanReport) -> dict[str, object]:
    """What each view says the status is."""
    text = terminal(r)
    return {
        "terminal": next((s for s, label in LABELS.items() if text.startswith(label)), text.splitlines()[0]),
        "html": html_status(r),
        "junit": junit_status(r)[0],
        "json": json.loads(json.dumps(r.to_dict()))["summary"]["status"],
    }


def agree(status: str) -> dict[str, object]:
    return {"terminal": status, "html": (status, status), "junit": status, "json": status}


@pytest.fixture
def forced(monkeypatch):
    """``forced(status)``: the one verdict function made to answer ``status`` for every report, wherever a module
    holds it (by module or by name); a view that decides on its own does not follow and its test fails."""

    def force(status: str) -> None:
        original = verdicts.verdict

        def fake(report):
            real = original(report)
            return Verdict(status, real.errors, real.warnings, real.unverified)  # type: ignore[arg-type]

        for name, module in list(sys.modules.items()):
            if name.startswith("gradscope") and getattr(module, "verdict", None) is original:
                monkeypatch.setattr(module, "verdict", fake)

    return force


@pytest.mark.parametrize("status", STATUSES)
def test_every_view_follows_the_verdict_function(forced, status, catalogue_reports):
    """A clean report and a leaking one, made to say each status: terminal, HTML, JUnit and JSON all say it, and
    the exit code, assert_masking's policy and the callback's fail_on follow."""
    forced(status)
    for name in ("llama_clean", "llama_prompt_leak"):
        r = catalogue_reports[name]
        assert views(r) == agree(status), name
        fails = Verdict(status, 0, 0, 0).fails()  # type: ignore[arg-type]
        assert exit_code(r, strict=False) == int(fails)
        assert exit_code(r, strict=False, allow_unknown_roles=True) == int(status == "errors")
        assert junit_status(r) == (status, fails)
        assert junit_status(r, allow_unknown_roles=True)[1] == (status == "errors")
        for fail_on, stops in (("error", status == "errors"), ("warning", status != "clean"), (None, False)):
            raised = False
            try:
                GradscopeCallback(fail_on=fail_on).watcher._act(r)
            except MaskingError:
                raised = True
            assert raised == stops, (name, fail_on)
    s = scan_report(0, {"prompt_leak": 0})
    assert views(s) == agree(status)


@pytest.mark.parametrize("status", STATUSES)
def test_assert_masking_follows_the_verdict_function(forced, status, fixture_model, fixture_batch):
    forced(status)
    model, tokenizer = fixture_model("models/tiny-llama-chat")
    batch = fixture_batch("llama_clean")
    fails = Verdict(status, 0, 0, 0).fails()  # type: ignore[arg-type]
    if fails:
        with pytest.raises(AssertionError, match=status):
            assert_masking(model, batch, tokenizer=tokenizer, depth="logits")
    else:
        assert_masking(model, batch, tokenizer=tokenizer, depth="logits")


# ------------------------------------------------------------------------------------------ not verified


def test_not_verified_is_never_shown_as_clean_nor_a_silent_pass(catalogue_reports, tmp_path):
    """A batch whose roles no source gives: every view says not verified, the CLI exits 1, and
    --allow-unknown-roles lets it exit 0 while it still says not verified."""
    r = catalogue_reports["gpt2_prompt_leak_not_verified"]
    assert views(r) == agree("not verified")
    page = tmp_path / "page.html"
    args = [
        "check",
        FIXTURES / "models/tiny-gpt2",
        FIXTURES / "batches/gpt2_prompt_leak_noroles.safetensors",
        "--depth",
        "logits",
        "--html",
        page,
    ]
    runner = CliRunner(env={"COLUMNS": "160"})
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1 and result.stdout.startswith("? not verified"), result.output
    assert "✓ clean" not in page.read_text() and 'data-status="not verified"' in page.read_text()
    allowed = runner.invoke(app, [str(a) for a in [*args, "--allow-unknown-roles", "--format", "junit"]])
    assert allowed.exit_code == 0 and '<testcase name="not verified"' in allowed.stdout
    scanned = runner.invoke(app, ["scan", str(args[2]), "--tokenizer", str(args[1]), "--format", "json"])
    assert scanned.exit_code == 1 and json.loads(scanned.stdout)["summary"]["status"] == "not verified"
    assert (
        runner.invoke(app, ["scan", str(args[2]), "--tokenizer", str(args[1]), "--allow-unknown-roles"]).exit_code == 0
    )


def test_the_callback_logs_not_verified_as_a_warning_and_says_what_stops_it(catalogue_reports, caplog):
    r = catalogue_reports["gpt2_prompt_leak_not_verified"]
    with caplog.at_level("WARNING", logger="gradscope"):
        GradscopeCallback(fail_on="error").watcher._act(r)  # trains on: stopping a run it cannot read would be worse
    assert "not verified" in caplog.text and "fail_on='warning'" in caplog.text
    with pytest.raises(MaskingError):
        GradscopeCallback(fail_on="warning").watcher._act(r)

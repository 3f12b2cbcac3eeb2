"""The one verdict: a report's status word and counts, and whether that status fails a given use.

Every view (terminal, HTML, JUnit, JSON), the command line's exit code, ``gradscope.testing.assert_masking`` and
the Trainer callback's ``fail_on`` read the status from :func:`verdict`; none decides it on its own. Policy may
differ by use (``strict``, ``allow_unknown_roles``, the callback's ``fail_on``); the status never does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gradscope.report.catalogue import NOT_VERIFIED
from gradscope.report.finding import Finding


class Report(Protocol):
    """What the verdict reads of a ``check`` report (``gradscope.report.check.Report``, a watched step's); a
    protocol, so that the report modules can call the verdict without an import circle."""

    @property
    def findings(self) -> list[Finding]: ...
    @property
    def errors(self) -> list[Finding]: ...
    @property
    def warnings(self) -> list[Finding]: ...
    @property
    def samples(self) -> Sequence[Any]: ...
    def summary(self) -> dict[str, Any]: ...


class ScanReport(Protocol):
    """What the verdict reads of a ``scan`` report (``gradscope.report.scan.ScanReport``)."""

    @property
    def rows(self) -> int: ...
    @property
    def checks(self) -> dict[str, dict[str, Any]]: ...
    @property
    def failed_checks(self) -> list[str]: ...
    def rows_failing(self, warnings: bool) -> int: ...
    def summary(self) -> dict[str, Any]: ...


Status = Literal["clean", "not verified", "warnings", "errors"]

MARKS: dict[str, str] = {"clean": "✓", "not verified": "?", "warnings": "!", "errors": "✗"}
"""The sign each view puts before the status word, so a reader without colour reads the same."""


@dataclass(frozen=True)
class Verdict:
    """A report's status and its counts.

    Attributes:
        status: ``errors`` (an error finding), else ``not verified`` (some samples' or rows' roles are unknown, so
            their prompt was not checked), else ``warnings``, else ``clean``.
        errors: Error findings (``check``), or rows that fail an error check (``scan``).
        warnings: Warning findings other than the not-verified ones (``check``), or rows that fail a warning check
            (``scan``).
        unverified: Samples (``check``) or rows (``scan``) whose roles are unknown.
    """

    status: Status
    errors: int
    warnings: int
    unverified: int

    @property
    def mark(self) -> str:
        """The status with its sign: ``✓ clean``, ``? not verified``, ``! warnings``, ``✗ errors``."""
        return f"{MARKS[self.status]} {self.status}"

    def fails(self, *, strict: bool = False, allow_unknown_roles: bool = False) -> bool:
        """Whether this status fails a use: errors always; not verified unless ``allow_unknown_roles``; anything
        but clean with ``strict``."""
        if self.status == "errors" or (strict and self.status != "clean"):
            return True
        return self.status == "not verified" and not allow_unknown_roles


def verdict(report: Report | ScanReport) -> Verdict:
    """The status and counts of a ``check``, ``grads``, ``verify`` or ``scan`` report (or a watched step's)."""
    if hasattr(report, "checks") and hasattr(report, "rows"):  # a ScanReport: counts are rows
        scan: ScanReport = report  # type: ignore[assignment]
        unverified = sum(scan.checks.get(name, {}).get("rows", 0) for name in NOT_VERIFIED)
        errors, warnings = scan.rows_failing(warnings=False), scan.rows_failing(warnings=True)
    else:
        check: Report = report
        errors = len(check.errors)
        warnings = sum(f.check not in NOT_VERIFIED for f in check.warnings)
        unknown = [f for f in check.findings if f.check in NOT_VERIFIED]
        samples = sum(s.roles_source == "unknown" for s in check.samples)
        unverified = (samples or len(unknown)) if unknown else 0
    status: Status = "errors" if errors else "not verified" if unverified else "warnings" if warnings else "clean"
    return Verdict(status, errors, warnings, unverified)


def headline(report: Report | ScanReport, subject: str = "masking") -> tuple[Verdict, str, str]:
    """The verdict line every view shows: (verdict, label, the rest), e.g. ``✗ masking errors`` and
    ``: 3 in 3 of 3 sample(s) (prompt_leak ×3)``; terminal and HTML style it, neither words it."""
    v = verdict(report)
    if hasattr(report, "checks") and hasattr(report, "rows"):
        return v, *_scan_line(report, v)  # type: ignore[arg-type]
    r: Report = report
    s = r.summary()
    warned = sorted({f.check for f in r.warnings if f.check not in NOT_VERIFIED})
    extra = f", {v.warnings} warning(s) ({', '.join(warned)})" if v.warnings else ""
    if v.status == "errors":
        what = ", ".join(f"{name} ×{n}" for name, n in Counter(f.check for f in r.errors).items())
        samples = {f.sample for f in r.errors}
        where = "the batch" if samples == {None} else f"{len(samples - {None})} of {s['samples']} sample(s)"
        return v, f"✗ {subject} errors", f": {v.errors}{f' in {where}' if r.samples else ''} ({what}){extra}"
    if v.status == "not verified" and not s["samples"]:
        return v, v.mark, f": no sample was checked (roles_unknown){extra}"
    if v.status == "not verified":
        return (
            v,
            v.mark,
            (
                f": roles unknown for {v.unverified} of {s['samples']} sample(s), so their prompt was not "
                f"checked (roles_unknown); {s['trained_tokens']} of {s['tokens']} tokens trained{extra}"
            ),
        )
    trained = f": {s['samples']} sample(s), {s['trained_tokens']} of {s['tokens']} tokens trained" if r.samples else ""
    return v, v.mark, trained + (extra if trained or not extra else ": " + extra[2:])


def _scan_line(r: ScanReport, v: Verdict) -> tuple[str, str]:
    s = r.summary()
    what = ", ".join(f"{name} ×{r.checks[name]['rows']}" for name in r.failed_checks if name not in NOT_VERIFIED)
    if v.status == "errors":
        return "✗ masking errors", f" in {v.errors} of {s['rows']} row(s): {what}"
    if v.status == "not verified":
        return v.mark, (
            f": roles unknown for {v.unverified} of {s['rows']} row(s), so their prompt was not checked "
            f"(roles_unknown); {s['trained_tokens']} of {s['tokens']} tokens trained" + (f"; {what}" if what else "")
        )
    if v.status == "warnings":
        return v.mark, f" in {v.warnings} of {s['rows']} row(s): {what}"
    return v.mark, f": {s['rows']} row(s), {s['trained_tokens']} of {s['tokens']} tokens trained"

"""The report of a whole-dataset scan."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gradscope.report.catalogue import NOT_VERIFIED, SCAN_WARNINGS
from gradscope.report.finding import SCHEMA_VERSION, Finding, Findings, HtmlView, clean_json


@dataclass
class ScanReport(Findings, HtmlView):
    """Everything ``gradscope scan`` found in a dataset, from its labels alone.

    Attributes:
        source: What was scanned: path, format, tokenizer, end token ids.
        rows: Rows scanned.
        tokens: Non-padding tokens scanned.
        trained_tokens: How many of them the labels train.
        checks: Per check: ``rows`` that fail it, flagged ``positions`` in them, and the ``first_rows`` that fail.
        distributions: ``length`` (non-padding tokens per row: exact quantiles) and ``trained_fraction``
            (trained / non-padding tokens per row: rows per bin).
        worst_rows: The rows with the most flagged positions: ``row``, ``positions``, ``checks``.
        findings: Every finding of the rows shown in full (each check's first rows and the worst rows), exactly as
            ``check`` writes them.
        notes: What the scan could not check and why.
        not_run: Checks the scan could not run at all, and why (no tokenizer, no end token, no row's roles known).
        error_rows: Rows that fail at least one error check (a row failing two checks counts once); None when
            not counted (a report built by hand): then the largest count of one error check.
        warning_rows: Rows that fail at least one warning check other than ``roles_unknown``; None as above.
    """

    source: dict[str, Any]
    rows: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    distributions: dict[str, Any] = field(default_factory=dict)
    worst_rows: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    not_run: dict[str, str] = field(default_factory=dict)
    error_rows: int | None = None
    warning_rows: int | None = None

    @property
    def failed_checks(self) -> list[str]:
        return [name for name, entry in self.checks.items() if entry["rows"]]

    @property
    def ok(self) -> bool:
        """True when no row fails an error check (``completion_truncated``, a warning, leaves it True)."""
        return not [name for name in self.failed_checks if name not in SCAN_WARNINGS]

    @property
    def verified(self) -> bool:
        """False when some rows' roles are unknown: their prompt was not checked."""
        return not self.checks.get("roles_unknown", {}).get("rows")

    def rows_failing(self, warnings: bool) -> int:
        """Rows that fail an error check (or, with ``warnings``, a warning check other than ``roles_unknown``)."""
        counted = self.warning_rows if warnings else self.error_rows
        if counted is not None:
            return counted
        return max(
            (
                entry["rows"]
                for name, entry in self.checks.items()
                if (name in SCAN_WARNINGS) == warnings and name not in NOT_VERIFIED
            ),
            default=0,
        )

    def summary(self) -> dict[str, Any]:
        from gradscope.report.verdict import verdict

        return {
            "status": verdict(self).status,
            "ok": self.ok,
            "verified": self.verified,
            "rows": self.rows,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
            "errors": self.rows_failing(warnings=False),
            "warnings": self.rows_failing(warnings=True),
            "checks_failed": sorted(self.failed_checks),
            "checks_not_run": dict(self.not_run),
            "notes": list(self.notes),
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, schema v1, ``"kind": "scan"``."""
        return clean_json(
            {
                "schema_version": SCHEMA_VERSION,
                "kind": "scan",
                "source": self.source,
                "checks": self.checks,
                "distributions": self.distributions,
                "worst_rows": self.worst_rows,
                "findings": [asdict(f) for f in self.findings],
                "summary": self.summary(),
            }
        )

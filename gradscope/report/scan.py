"""The report of a whole-dataset scan."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gradscope.report.finding import SCHEMA_VERSION, Finding, Findings, HtmlView, clean_json

SCAN_WARNINGS = frozenset({"completion_truncated", "roles_unknown", "prefill_trained"})
"""Scan checks whose findings are warnings, as in check; every other scan check is an error."""


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

    def _rows_failing(self, warnings: bool) -> int:
        return sum(entry["rows"] for name, entry in self.checks.items() if (name in SCAN_WARNINGS) == warnings)

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "verified": self.verified,
            "rows": self.rows,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
            "errors": self._rows_failing(warnings=False),
            "warnings": self._rows_failing(warnings=True),
            "checks_failed": sorted(self.failed_checks),
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

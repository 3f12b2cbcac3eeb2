"""A finding, and what every report holding findings shares: schema version, JSON clean-up."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

SCHEMA_VERSION = 1

Severity = Literal["error", "warning"]


@dataclass
class Finding:
    """One problem, in the user's terms.

    Attributes:
        check: The check's stable name (``prompt_leak``, ``eos_untrained``, ...).
        severity: ``error`` (exit 1) or ``warning`` (exit 1 only with --strict).
        sample: Row index of the sample, or None for the whole batch.
        positions: Token positions concerned, ascending.
        message: What happened, the usual cause and the fix.
    """

    check: str
    severity: Severity
    sample: int | None
    positions: list[int]
    message: str


class _Findings:
    """Errors and warnings among a report's findings."""

    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _clean(obj: Any) -> Any:
    """JSON has no NaN or Infinity: write them as null."""
    if isinstance(obj, float):
        return _finite_or_none(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


class _HtmlView:
    """The HTML view of a report: a page to write, and the same view inline in a notebook."""

    def to_html(self, *, sample: int | None = None) -> str:
        """One self-contained HTML page (inline CSS and JS, no network); ``sample``: that sample alone."""
        from gradscope.render.html import to_html

        return to_html(self, sample=sample)

    def _repr_html_(self) -> str:
        from gradscope.render.html import html_fragment

        return html_fragment(self)

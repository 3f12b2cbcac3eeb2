"""A finding, and what every report holding findings shares: schema version, JSON clean-up."""

from __future__ import annotations

import math
from collections.abc import Callable
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


class Findings:
    """Errors and warnings among a report's findings."""

    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]


def finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def clean_json(obj: Any) -> Any:
    """JSON has no NaN or Infinity: write them as null."""
    if isinstance(obj, float):
        return finite_or_none(obj)
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clean_json(v) for v in obj]
    return obj


HtmlPage = Callable[..., str]
"""A function from a report (and keyword options) to HTML."""

_html: dict[str, HtmlPage] = {}
"""The HTML view, installed by ``gradscope.render.html`` when it is imported (``import gradscope`` does): the
report stage never imports a view; the view registers itself here."""


def install_html_view(page: HtmlPage, fragment: HtmlPage) -> None:
    """Make ``page`` the view ``to_html`` calls and ``fragment`` the one ``_repr_html_`` calls."""
    _html.update(page=page, fragment=fragment)


def _html_view(kind: str) -> HtmlPage:
    if kind not in _html:
        raise RuntimeError("no HTML view is installed: import gradscope.render.html (import gradscope does) first")
    return _html[kind]


class HtmlView:
    """The HTML view of a report: a page to write, and the same view inline in a notebook."""

    def to_html(self, *, sample: int | None = None) -> str:
        """One self-contained HTML page (inline CSS and JS, no network); ``sample``: that sample alone."""
        return _html_view("page")(self, sample=sample)

    def _repr_html_(self) -> str:
        return _html_view("fragment")(self)

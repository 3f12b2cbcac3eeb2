"""Report: plain dataclasses for what gradscope found, and their JSON form (schema v1). No printing here."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
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


@dataclass
class TokenReport:
    """One token of one sample. Loss-side values are None at position 0, which nothing predicts."""

    position: int
    token_id: int
    text: str | None
    role: str | None
    label: int | None
    trained: bool
    target_id: int | None
    loss: float | None
    weight: float | None
    logit_grad_norm: float
    embedding_grad_norm: float


@dataclass
class SampleReport:
    """One row of the data: its tokens and a layers x positions matrix of gradient norms."""

    index: int
    tokens: list[TokenReport]
    layer_grad_norms: list[list[float]]

    @property
    def trained_positions(self) -> list[int]:
        return [t.position for t in self.tokens if t.trained]


class _Findings:
    """Errors and warnings among a report's findings."""

    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]


@dataclass
class Report(_Findings):
    """Everything ``gradscope.check`` found.

    Attributes:
        model: What was run: architecture, layers, vocabulary, dtype, device, loss.
        samples: Per-sample token reports.
        findings: Problems found, errors and warnings.
        notes: What the run could not check and why (e.g. roles unknown), in plain words.
        losses: The loss of each batch that was run.
    """

    model: dict[str, Any]
    samples: list[SampleReport] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when there is no error finding."""
        return not self.errors

    def summary(self) -> dict[str, Any]:
        tokens = [t for s in self.samples for t in s.tokens if t.role != "pad"]
        return {
            "ok": self.ok,
            "samples": len(self.samples),
            "tokens": len(tokens),
            "trained_tokens": sum(t.trained for t in tokens),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "checks_failed": sorted({f.check for f in self.findings}),
            "loss": [_finite_or_none(x) for x in self.losses],
            "notes": list(self.notes),
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, schema v1 (non-finite numbers become null)."""
        return _clean(
            {
                "schema_version": SCHEMA_VERSION,
                "model": self.model,
                "samples": [asdict(s) for s in self.samples],
                "findings": [asdict(f) for f in self.findings],
                "summary": self.summary(),
            }
        )


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


@dataclass
class ScanReport(_Findings):
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
        """True when no row fails a check (every scan check is an error)."""
        return not self.failed_checks

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rows": self.rows,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
            "errors": sum(entry["rows"] for entry in self.checks.values()),
            "warnings": 0,
            "checks_failed": sorted(self.failed_checks),
            "notes": list(self.notes),
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, schema v1, ``"kind": "scan"``."""
        return _clean(
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

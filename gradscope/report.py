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


class _HtmlView:
    """The HTML view of a report: a page to write, and the same view inline in a notebook."""

    def to_html(self, *, sample: int | None = None) -> str:
        """One self-contained HTML page (inline CSS and JS, no network); ``sample``: that sample alone."""
        from gradscope.html import to_html

        return to_html(self, sample=sample)

    def _repr_html_(self) -> str:
        from gradscope.html import html_fragment

        return html_fragment(self)


@dataclass
class ProbeReport:
    """What one structural probe did and cost, summed over the batches.

    Attributes:
        ran: False when it was not chosen (``--probes``) or had nothing to test.
        seconds: Wall-clock time of its extra passes (the causal and packing probes share theirs, see ``shared``).
        backward_passes: Extra backward passes (one per slice of a batched backward).
        forward_passes: Extra forward passes.
        batched: The backward passes ran as one vmapped call (True) or one by one (False); None without any.
        shared: Other probes that ran in the same backward passes (their cost is counted once, here and there).
        note: What it covered, or why it did not run, in plain words.
    """

    ran: bool = False
    seconds: float = 0.0
    backward_passes: int = 0
    forward_passes: int = 0
    batched: bool | None = None
    shared: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class AccumulationReport:
    """One batch re-run as K accumulated micro-batches (``--accumulate K``), against the full batch."""

    batch: int
    micro_batches: int
    cosine: float
    relative_error: float
    trained_tokens: list[int]  # per micro-batch


@dataclass
class ParamGrad:
    """One parameter in the parameter-gradient pass.

    Attributes:
        name: As ``model.named_parameters()`` names it.
        module: The module that owns it.
        group: The module group it is reported under (``embedding``, ``layer 0 attention``, ``head``, ...).
        adapter: A PEFT adapter parameter (else a base-model parameter).
        shape: Its shape.
        trainable: ``requires_grad``.
        status: ``trained``, ``no_gradient`` (nothing reached it), ``zero_gradient`` (exactly zero, and still zero
            after one optimizer step), ``nonfinite`` or ``frozen`` (not trainable).
        grad_norm: ||dL/dp||, None when no gradient reached it or it is frozen.
        weight_norm: ||p||.
        sgd_update_ratio: ||lr * g|| / ||p||, SGD's update relative to the weight.
        adam_update_ratio: ||lr * g / (|g| + eps)|| / ||p||, Adam's first update relative to the weight.
        tied_to: Other names of the same tensor (tied embeddings), reported once under ``name``.
    """

    name: str
    module: str
    group: str
    adapter: bool
    shape: list[int]
    trainable: bool
    status: str
    grad_norm: float | None
    weight_norm: float
    sgd_update_ratio: float | None
    adam_update_ratio: float | None
    tied_to: list[str] = field(default_factory=list)


@dataclass
class ModuleGrad:
    """One module group (adapter and base parameters in separate rows): its norms and update ratios.

    Norms and ratios are over its trainable parameters that received a gradient; ``weight_norm`` over all of them.
    """

    name: str
    kind: str
    layer: int | None
    adapter: bool
    modules: list[str]
    parameters: int
    trainable_parameters: int
    grad_norm: float | None
    weight_norm: float
    sgd_update_ratio: float | None
    adam_update_ratio: float | None


@dataclass
class GradReport:
    """The parameter-gradient pass: one backward with parameter gradients on one batch.

    Attributes:
        loss: The batch's loss.
        lr: The learning rate the update ratios are computed at.
        max_grad_norm: The clipping threshold the clip factor is computed for.
        global_norm: The norm ``torch.nn.utils.clip_grad_norm_`` computes over every gradient.
        clip_factor: ``min(1, max_grad_norm / (global_norm + 1e-6))``, what clipping multiplies the gradient by.
        depth_ratio: The first decoder block's gradient norm over the last one's (> 1: it grows toward the input).
        block_grad_norms: Gradient norm of each decoder block's trainable parameters (None: none has a gradient).
        modules: Per module group.
        parameters: Per parameter.
        adapter: For a PEFT model: its type and how many parameters are adapter and base, trainable, and their norms.
        notes: What was decided or could not be checked.
    """

    loss: float
    lr: float
    max_grad_norm: float
    global_norm: float | None
    clip_factor: float | None
    depth_ratio: float | None
    block_grad_norms: list[float | None]
    modules: list[ModuleGrad]
    parameters: list[ParamGrad]
    adapter: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class OverfitReport:
    """``--overfit N``: N optimizer steps on the one batch, on a deep copy of the model.

    Attributes:
        steps: N.
        optimizer: ``adamw`` or ``sgd``.
        lr: Learning rate.
        losses: N + 1 losses: before each step, then after the last.
        drop: ``1 - last / first``; None when a loss is not finite.
        dropped: The last loss is at most ``1 - min_drop`` times the first.
        min_drop: The fraction the loss must fall by.
    """

    steps: int
    optimizer: str
    lr: float
    losses: list[float]
    drop: float | None
    dropped: bool
    min_drop: float


@dataclass
class DirectionCheck:
    """Autograd's directional derivative against central finite differences, along one unit direction.

    Attributes:
        target: What was perturbed (``input embeddings``, a parameter's name, or an input's name).
        direction: ``gradient`` (along autograd's own gradient) or ``random N``.
        autograd: <grad, d>.
        finite_difference: The derivative along d by the fourth-order central difference.
        relative_error: |fd - autograd| / max(|fd|, |autograd|, floor).
        ok: relative_error <= tolerance.
    """

    target: str
    direction: str
    autograd: float
    finite_difference: float
    relative_error: float
    ok: bool


@dataclass
class VerifyReport:
    """``gradscope verify``: directional derivatives of the loss, autograd against finite differences.

    Attributes:
        dtype: The dtype of the model copy that was checked.
        precision: The precision the loss was found to be computed in (``float64`` or ``float32``), which sets the
            step and the tolerance.
        step: h of the fourth-order central difference.
        tolerance: The largest relative error that counts as agreement.
        loss: The loss of the copy.
        checks: One per target and direction.
        max_relative_error: The largest relative error.
        notes: What limited the check.
    """

    dtype: str
    precision: str
    step: float
    tolerance: float
    loss: float
    checks: list[DirectionCheck]
    max_relative_error: float | None
    notes: list[str] = field(default_factory=list)


@dataclass
class Report(_Findings, _HtmlView):
    """Everything ``gradscope.check`` found.

    Attributes:
        model: What was run: architecture, layers, vocabulary, dtype, device, loss.
        samples: Per-sample token reports.
        findings: Problems found, errors and warnings.
        notes: What the run could not check and why (e.g. roles unknown), in plain words.
        losses: The loss of each batch that was run.
        data: Where the batches came from: the file, the row format, and what built the labels (raw data only).
        grads: The parameter-gradient pass (``gradscope grads``, ``check --params``), else None.
        overfit: The ``--overfit`` run, else None.
        verify: The finite-difference check (``gradscope verify``), else None.
        probes: What each structural probe (causal, packing, weights, accumulate) did and cost.
        accumulation: ``--accumulate K`` results, one per batch.
    """

    model: dict[str, Any]
    samples: list[SampleReport] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    grads: GradReport | None = None
    overfit: OverfitReport | None = None
    verify: VerifyReport | None = None
    probes: dict[str, ProbeReport] = field(default_factory=dict)
    accumulation: list[AccumulationReport] = field(default_factory=list)

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
        """The JSON form, schema v1 (non-finite numbers become null); ``grads``, ``overfit``, ``verify``, ``probes``
        and ``accumulation`` only when those passes ran."""
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "data": self.data,
            "samples": [asdict(s) for s in self.samples],
            "findings": [asdict(f) for f in self.findings],
            "summary": self.summary(),
        }
        if self.probes:
            out["probes"] = {name: asdict(p) for name, p in self.probes.items()}
        if self.accumulation:
            out["accumulation"] = [asdict(a) for a in self.accumulation]
        for key in ("grads", "overfit", "verify"):
            section = getattr(self, key)
            if section is not None:
                out[key] = asdict(section)
        return _clean(out)


def format_findings(findings: list[Finding]) -> str:
    """Findings as plain text lines, one per finding: check (sample, positions): message."""
    return "\n".join(f"- {f.check} (sample {f.sample}, positions {f.positions}): {f.message}" for f in findings)


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


SCAN_WARNINGS = frozenset({"completion_truncated"})
"""Scan checks whose findings are warnings, as in check; every other scan check is an error."""


@dataclass
class ScanReport(_Findings, _HtmlView):
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

    def _rows_failing(self, warnings: bool) -> int:
        return sum(entry["rows"] for name, entry in self.checks.items() if (name in SCAN_WARNINGS) == warnings)

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
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

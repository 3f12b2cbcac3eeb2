"""The report of a check: per sample, per token, probes, and the batch's findings (JSON schema v1)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gradscope.report.catalogue import NOT_VERIFIED
from gradscope.report.finding import SCHEMA_VERSION, Finding, Findings, HtmlView, clean_json, finite_or_none
from gradscope.report.weights import GradReport, OverfitReport, VerifyReport


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
    embedding_grad_norm: float | None  # None where not computed (the masking-only depth)


@dataclass
class SampleReport:
    """One row of the data: its tokens, a layers x positions matrix of gradient norms, and where its roles came from.

    ``roles_source`` is the batch key that held the roles (``completion_mask``, ``assistant_masks``,
    ``gradscope_roles`` when gradscope derived them from raw rows), or ``roles_from``, ``response_template``,
    ``chat_template`` when read from the tokens, or ``unknown`` (see docs/roles.md).
    """

    index: int
    tokens: list[TokenReport]
    layer_grad_norms: list[list[float]]
    roles_source: str | None = None

    @property
    def trained_positions(self) -> list[int]:
        return [t.position for t in self.tokens if t.trained]


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
class Report(Findings, HtmlView):
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
        depth: ``full`` (a backward through the network) or ``logits`` (the loss's backward only: no embedding or
            layer norms, no causal or packing probe).
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
    depth: str = "full"

    @property
    def ok(self) -> bool:
        """True when there is no error finding."""
        return not self.errors

    def summary(self) -> dict[str, Any]:
        from gradscope.report.verdict import verdict

        tokens = [t for s in self.samples for t in s.tokens if t.role != "pad"]
        return {
            "status": verdict(self).status,
            "ok": self.ok,
            "samples": len(self.samples),
            "tokens": len(tokens),
            "trained_tokens": sum(t.trained for t in tokens),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "checks_failed": sorted({f.check for f in self.findings}),
            "loss": [finite_or_none(x) for x in self.losses],
            "notes": list(self.notes),
            "verified": not any(f.check in NOT_VERIFIED for f in self.findings),
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, schema v1 (non-finite numbers become null); ``grads``, ``overfit``, ``verify``, ``probes``
        and ``accumulation`` only when those passes ran."""
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "depth": self.depth,
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
        return clean_json(out)

"""The check catalogue: every check gradscope runs, declared once.

The lists that other modules keep (the per-sample checks ``check`` runs and their order, the checks that need
roles, scan's checks and which of its findings are warnings, JUnit's test cases) are read from :data:`CATALOGUE`.
Adding a check means: its pure function, one :class:`CheckSpec` below, its section in docs/findings.md (or the
doc named by ``docs``) and a fixture case whose ``expect`` names it (tests/report/test_catalogue.py holds every
entry to both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scope = Literal["sample", "batch"]
Pass = Literal["check", "grads", "overfit", "verify"]


@dataclass(frozen=True)
class CheckSpec:
    """One check.

    Attributes:
        name: The stable name findings carry (``prompt_leak``).
        severity: ``error`` or ``warning``.
        scope: ``sample``: judged per sample (row); ``batch``: once for the batch or the run.
        needs_roles: Judged only where the sample's roles are known (skipped, and counted as not verified, else).
        root: A root cause: a sample that fails it is judged by nothing else.
        not_verified: Its finding means part of the data could not be judged (the report is ``not verified``).
        passes: The passes that run it (``check`` is the masking pass; ``grads``, ``overfit``, ``verify``).
        probe: The structural probe that runs it, if any (skipped when that probe did not run).
        full_depth: Needs the gradient at the embeddings: not run at the ``logits`` depth.
        scan: Its name in ``gradscope scan`` (the same verdict from the labels alone), or None when a scan cannot
            run it (it needs a model's gradient).
        docs: The doc whose table describes it (a ``| `name` | severity |`` row).
        fixture: Where it is reproduced when no case of fixtures/catalogue.json or fixtures/grads_catalogue.json
            expects it: ``tests/PATH.py::test_name``.
    """

    name: str
    severity: Literal["error", "warning"]
    scope: Scope = "sample"
    needs_roles: bool = False
    root: bool = False
    not_verified: bool = False
    passes: tuple[Pass, ...] = ("check",)
    probe: str | None = None
    full_depth: bool = False
    scan: str | None = None
    docs: str = "docs/findings.md"
    fixture: str | None = None


def _sample(
    name: str, severity: Literal["error", "warning"] = "error", *, scan: bool = True, **kw: object
) -> CheckSpec:
    return CheckSpec(name, severity, "sample", scan=name if scan else None, **kw)  # type: ignore[arg-type]


CATALOGUE: tuple[CheckSpec, ...] = (
    # Per sample, in the order check runs them: the root causes first, then role, boundary and layout checks.
    _sample("no_loss", root=True),
    _sample("masked_label_trained", root=True, scan=False),
    _sample("label_misaligned", root=True),
    _sample("prompt_leak", needs_roles=True),
    _sample("pad_leak"),
    _sample("completion_untrained", needs_roles=True),
    _sample("eos_untrained"),
    _sample("turn_end_untrained", docs="docs/roles.md"),
    _sample(
        "completion_truncated",
        "warning",
        fixture="tests/checks/test_masking.py::test_completion_truncated_is_a_warning_counting_kept_and_cut_tokens",
    ),
    _sample("boundary_leak", probe="packing"),
    _sample("bos_duplicated", docs="docs/roles.md"),
    _sample("bos_missing"),
    _sample("pads_attended", docs="docs/roles.md"),
    _sample("packed_without_boundaries", docs="docs/roles.md"),
    _sample("media_tokens_trained", scan=False, docs="docs/roles.md"),
    _sample("prefill_trained", "warning", needs_roles=True),
    _sample("causal_leak", scan=False, probe="causal"),
    _sample("cross_document_leak", scan=False, probe="packing"),
    _sample("aux_loss_reaches_padding", scan=False, full_depth=True),
    # A new per-sample check (e.g. one on the labels' declared intent) goes here, with its scan twin if any.
    # What could not be judged: a warning that makes the report "not verified", never "clean".
    CheckSpec("roles_unknown", "warning", "batch", not_verified=True, scan="roles_unknown", docs="docs/roles.md"),
    CheckSpec(
        "step_unobserved",
        "warning",
        "batch",
        not_verified=True,
        docs="docs/findings.md",
        fixture="tests/integrations/test_watch_loops.py::test_a_step_whose_loss_is_never_seen_is_not_verified",
    ),
    # Once per batch or run.
    CheckSpec(
        "nonfinite",
        "error",
        "batch",
        passes=("check", "grads", "verify"),
        fixture="tests/checks/test_masking.py::test_nonfinite_is_batch_level_and_suppresses_role_checks",
    ),
    CheckSpec("uneven_token_weights", "warning", "batch", probe="weights"),
    CheckSpec("accumulation_mismatch", "error", "batch", probe="accumulate"),
    CheckSpec(
        "step_scale",
        "error",
        "batch",
        docs="docs/findings.md",
        fixture="tests/integrations/test_watch_loops.py::test_plain_loop_mis_scaled_accumulation_gets_step_scale",
    ),
    CheckSpec(
        "frozen_model",
        "error",
        "batch",
        passes=("grads",),
        fixture="tests/verbs/test_grads.py::test_frozen_model_is_the_only_finding",
    ),
    CheckSpec("untrained_parameters", "error", "batch", passes=("grads",)),
    CheckSpec("exploding_gradient", "warning", "batch", passes=("grads",)),
    CheckSpec(
        "vanishing_gradient",
        "warning",
        "batch",
        passes=("grads",),
        fixture="tests/verbs/test_grads.py::test_depth_checks",
    ),
    CheckSpec(
        "cannot_overfit",
        "warning",
        "batch",
        passes=("overfit",),
        fixture="tests/verbs/test_overfit.py::test_a_learning_rate_of_zero_cannot_overfit",
    ),
    CheckSpec(
        "gradient_mismatch",
        "error",
        "batch",
        passes=("verify",),
        fixture="tests/verbs/test_verify.py::test_verify_catches_the_wrong_backward_loss",
    ),
)

BY_NAME: dict[str, CheckSpec] = {spec.name: spec for spec in CATALOGUE}

SAMPLE_CHECKS: tuple[str, ...] = tuple(s.name for s in CATALOGUE if s.scope == "sample")
"""Checks that judge one sample (row) each, in the order ``check`` runs them."""

ROOT_CHECKS: tuple[str, ...] = tuple(s.name for s in CATALOGUE if s.root)
"""A sample that fails one of these is not judged by the others."""

ROLE_CHECKS: tuple[str, ...] = tuple(s.name for s in CATALOGUE if s.needs_roles)
"""Checks judged only where a sample's roles are known."""

NOT_VERIFIED: frozenset[str] = frozenset(s.name for s in CATALOGUE if s.not_verified)
"""Findings that make a report ``not verified``."""

SCAN_CHECKS: tuple[str, ...] = tuple(s.scan for s in CATALOGUE if s.scan and not s.not_verified)
"""What a scan judges per row, in the order of ``check``."""

SCAN_WARNINGS: frozenset[str] = frozenset(s.scan for s in CATALOGUE if s.scan and s.severity == "warning")
"""Scan checks whose findings are warnings, as in check; every other scan check is an error."""

PROBE_OF: dict[str, str] = {s.name: s.probe for s in CATALOGUE if s.probe}
"""Checks that a structural probe runs: skipped when the probe did not run."""

FULL_DEPTH: tuple[str, ...] = tuple(s.name for s in CATALOGUE if s.full_depth)
"""Checks that read the gradient at the embeddings: not run at the masking-only depth."""


def severity(name: str) -> str:
    """A check's severity (``error`` for a name the catalogue does not know: an unknown check still fails)."""
    spec = BY_NAME.get(name)
    return spec.severity if spec is not None else "error"

"""What could not be checked for want of roles: a finding, so that no report says clean when it did not look."""

from __future__ import annotations

from collections.abc import Sequence

from gradscope.checks.sample import SampleView
from gradscope.constants import PAD
from gradscope.report.finding import Finding
from gradscope.report.text import format_positions

SCAN_ROLES_HINT = (
    "To give roles: a completion_mask column; `response_template` with the text that starts each completion; or a "
    "tokenizer with a chat template gradscope can read"
)
ROLES_HINT = (
    "To give roles: a completion_mask in the batch; `response_template` with the text that "
    "starts each completion; `roles_from` with the raw rows the batch was made from; or a tokenizer "
    "with a chat template gradscope can read"
)


def roles_unknown(
    samples: Sequence[int],
    reasons: Sequence[str | None],
    noun: str = "sample",
    total: int | None = None,
    hint: str | None = None,
    evidence: str = "",
) -> Finding | None:
    """A warning naming the samples whose roles are unknown and why: their prompt was not checked.

    Args:
        samples: Sample (or row) indices whose roles could not be derived, ascending: all of them, or the first
            of ``total``.
        reasons: Why (repeats are said once).
        noun: What an index counts: ``sample`` (check) or ``row`` (scan).
        total: How many there are in all, when ``samples`` holds only the first.
        hint: How to give roles, where the caller knows better than check's or scan's own hint.
        evidence: What the labels alone establish about those samples (``labels_evidence``), said next to it.
    """
    if not samples:
        return None
    why = "; ".join(dict.fromkeys(r for r in reasons if r)) or "no role source"
    count = len(samples) if total is None else total
    which = f"{noun} {samples[0]}" if count == 1 else f"{noun}s {format_positions(samples)}"
    if count > len(samples):
        which = f"{count:,} {noun}s (the first: {format_positions(samples)})"
    return Finding(
        "roles_unknown",
        "warning",
        None,
        [],
        f"not verified: the roles of {which} are unknown ({why}). prompt_leak and completion_untrained were not "
        "checked there, and eos_untrained looked only at end tokens right after trained tokens, so a trained prompt "
        f"goes unseen.{f' What the labels alone establish: {evidence}.' if evidence else ''} "
        f"{hint or (ROLES_HINT if noun == 'sample' else SCAN_ROLES_HINT)}.",
    )


def label_facts(views: Sequence[SampleView]) -> tuple[list[int], list[int]]:
    """What the labels, the pipeline's declared intent, establish about samples whose roles are unknown: (those
    that label every real token: the labels copy input_ids, so a prompt, if there is one, is trained; those that
    mask some real tokens and whose gradient trains none of the masked ones: the mask is honoured, and whether it
    masks the prompt exactly is what the roles would tell)."""
    copies, masks = [], []
    for v in views:
        if v.labelled is None:
            continue
        real = v.where(v.roles != PAD)
        masked = [p for p in real if not v.labelled[p]]
        if real and not masked:
            copies.append(v.index)
        elif masked and not any(bool(v.trained[p]) for p in masked):
            masks.append(v.index)
    return copies, masks


def labels_evidence(copies: Sequence[int], masks: Sequence[int], noun: str = "sample") -> str:
    """``label_facts`` in words, for the ``roles_unknown`` warning ("" when the labels establish nothing)."""
    parts = []
    if copies:
        parts.append(
            f"the labels train every real token of {_which(noun, copies)}: they copy input_ids, so a prompt "
            "there, if any, is trained"
        )
    if masks:
        parts.append(
            f"the labels of {_which(noun, masks)} mask some real tokens (-100) and the gradient trains none of them"
        )
    return "; ".join(parts)


def _which(noun: str, indices: Sequence[int]) -> str:
    return f"{noun} {indices[0]}" if len(indices) == 1 else f"{noun}s {format_positions(indices)}"

"""What could not be checked for want of roles: a finding, so that no report says clean when it did not look."""

from __future__ import annotations

from collections.abc import Sequence

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


def roles_unknown(samples: Sequence[int], reasons: Sequence[str | None], noun: str = "sample",
                  total: int | None = None, hint: str | None = None) -> Finding | None:
    """A warning naming the samples whose roles are unknown and why: their prompt was not checked.

    Args:
        samples: Sample (or row) indices whose roles could not be derived, ascending: all of them, or the first
            of ``total``.
        reasons: Why (repeats are said once).
        noun: What an index counts: ``sample`` (check) or ``row`` (scan).
        total: How many there are in all, when ``samples`` holds only the first.
        hint: How to give roles, where the caller knows better than check's or scan's own hint.
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
        f"goes unseen. {hint or (ROLES_HINT if noun == 'sample' else SCAN_ROLES_HINT)}.",
    )

"""Assertions for users' test suites: make masking correctness a CI check.

from gradscope.testing import assert_masking

def test_collator_masks_the_prompt(model, tokenizer, collator, rows):
    assert_masking(model, collator(rows), tokenizer=tokenizer)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from gradscope.report.catalogue import NOT_VERIFIED
from gradscope.report.check import Report
from gradscope.report.text import format_findings
from gradscope.report.verdict import verdict
from gradscope.verbs.check import check


def assert_masking(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    strict: bool = False,
    allow_unknown_roles: bool = False,
    **kwargs: Any,
) -> Report:
    """Run ``gradscope.check`` and fail with every finding listed when masking is wrong.

    Args:
        model: The causal LM, as for ``gradscope.check``.
        batch: The batch, as for ``gradscope.check``.
        strict: Fail on warnings too.
        allow_unknown_roles: Pass although some rows' roles could not be derived (``roles_unknown``), so their
            prompt was not checked; by default that fails, since such a batch is not verified.
        **kwargs: Passed to ``gradscope.check`` (tokenizer, loss_fn, end_token_ids, ...).

    Returns:
        The Report, when it passes.

    Raises:
        AssertionError: listing every finding (check, sample, positions, message).
    """
    __tracebackhide__ = True
    report = check(model, batch, **kwargs)
    v = verdict(report)
    if v.fails(strict=strict, allow_unknown_roles=allow_unknown_roles):
        shown = [f for f in report.findings if f.severity == "error" or strict or f.check in NOT_VERIFIED]
        raise AssertionError(f"gradscope found {len(shown)} masking problem(s) ({v.status}):\n{format_findings(shown)}")
    return report

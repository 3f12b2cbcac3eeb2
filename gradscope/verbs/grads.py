"""``grads``: the gradient that reaches the weights, one backward as a trainer runs it, and the checks on it."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from gradscope.checks.grads import DEFAULT_LR, DEFAULT_MAX_GRAD_NORM, GradThresholds, grad_findings, gradient_report
from gradscope.model.prepare import describe_model, prepare_batch, to_device
from gradscope.model.usercode import LossFn
from gradscope.report.check import Report


def grads(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    loss_fn: LossFn | None = None,
    lr: float = DEFAULT_LR,
    max_grad_norm: float = DEFAULT_MAX_GRAD_NORM,
    keep_dropout: bool = False,
    thresholds: GradThresholds = GradThresholds(),
    report: Report | None = None,
    source: str | None = None,
) -> Report:
    """The parameter-gradient health report of one batch: norms, clipping, update ratios and findings.

    Args:
        model: A loaded causal LM (a ``peft.PeftModel`` too). Its requires_grad flags say what is trained; it is
            left exactly as it was (no ``.grad`` written, weights untouched, modes and dropout restored).
        batch: As for ``gradscope.check``.
        loss_fn: ``fn(logits, labels) -> scalar`` replacing the model's own loss.
        lr: The learning rate for the update-to-weight ratios.
        max_grad_norm: The clipping threshold for the clip factor.
        keep_dropout: Leave dropout on.
        thresholds: Where the depth checks fire.
        report: Add to this report (``check --params``) instead of starting a new one.
        source: The data file, for error messages.

    Returns:
        The Report, with ``grads`` set and the findings added.

    Raises:
        InputError: the batch does not fit the model, or the model/loss fails on it.
    """
    full = prepare_batch(model, batch, source)
    device = next(model.parameters()).device
    options = {"loss_fn": loss_fn, "lr": lr, "max_grad_norm": max_grad_norm, "keep_dropout": keep_dropout}
    g = gradient_report(model, to_device(full, device), **options)
    if report is None:
        report = Report(model=describe_model(model, loss_fn), losses=[g.loss])
    report.grads = g
    report.findings += grad_findings(g, thresholds)
    return report

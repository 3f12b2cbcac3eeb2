"""``overfit``: the "overfit one batch" sanity check, on a deep copy of the model."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import nn

from gradscope.checks.grads import DEFAULT_LR
from gradscope.checks.overfit import MIN_DROP, cannot_overfit, dropped
from gradscope.data.batch import prepare_batch
from gradscope.engine.optimize import loss_curve
from gradscope.errors import InputError
from gradscope.model.prepare import describe_model, to_device
from gradscope.model.usercode import LossFn
from gradscope.modes import OPTIMIZERS, Optimizer
from gradscope.report.check import Report
from gradscope.report.weights import OverfitReport
from gradscope.verbs.grads import require_finite


def overfit(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    steps: int,
    lr: float = DEFAULT_LR,
    optimizer: Optimizer = "adamw",
    loss_fn: LossFn | None = None,
    keep_dropout: bool = False,
    report: Report | None = None,
    source: str | None = None,
) -> Report:
    """Overfit one batch on a deep copy of ``model`` and report the loss curve, and ``cannot_overfit`` when it stays.

    Args:
        model: The causal LM; it is deep-copied, the copy trained, the original untouched. Its requires_grad flags
            say what is trained.
        batch: As for ``gradscope.check``.
        steps: N optimizer steps.
        lr: Learning rate.
        optimizer: ``adamw`` (weight decay 0) or ``sgd``.
        loss_fn: ``fn(logits, labels) -> scalar`` replacing the model's own loss.
        keep_dropout: Leave dropout on.
        report: Add to this report instead of starting a new one.
        source: The data file, for error messages.

    Returns:
        The Report with ``overfit`` set.

    Raises:
        InputError: the batch does not fit the model, or the model/loss fails on it.
    """
    if optimizer not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {optimizer!r}", hint=f"use one of {', '.join(OPTIMIZERS)}")
    require_finite(lr=lr)
    full = prepare_batch(model, batch, source)
    device = next(model.parameters()).device
    student = copy.deepcopy(model)
    losses = loss_curve(
        student,
        to_device(full, device),
        steps=steps,
        lr=lr,
        optimizer=optimizer,
        loss_fn=loss_fn,
        keep_dropout=keep_dropout,
    )
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    del student
    first, last = losses[0], losses[-1]
    drop = 1 - last / first if math.isfinite(first) and math.isfinite(last) and first != 0 else None
    o = OverfitReport(steps, optimizer, lr, losses, drop, dropped(losses), MIN_DROP)
    if report is None:
        report = Report(model=describe_model(model, loss_fn), losses=[first])
    report.overfit = o
    report.findings += [f for f in [cannot_overfit(o, trainable)] if f is not None]
    return report

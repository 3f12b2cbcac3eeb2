"""``--overfit N``: the "overfit one batch" sanity check.

N optimizer steps on the one batch alone, on a deep copy of the model (the user's model and its weights are never
touched), recording the loss before each step and after the last. A setup that can train at all drives the loss of
a single batch down; one that cannot (nothing trainable, a loss that does not reach the weights, a learning rate
of zero, a broken backward) does not.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import nn

from gradscope.analyze import format_count
from gradscope.check import describe_model, prepare_batch, to_device
from gradscope.errors import InputError
from gradscope.grads import DEFAULT_LR
from gradscope.report import Finding, OverfitReport, Report
from gradscope.run import LossFn, call_model, training_state

OPTIMIZERS = ("adamw", "sgd")
MIN_DROP = 0.5
"""The loss "drops" when the last loss is at most (1 - MIN_DROP) times the first: it at least halves."""


def _optimizer(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    # Weight decay off: it would pull the loss of one batch up, and transformers' default is 0 too.
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def loss_curve(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    steps: int,
    lr: float,
    optimizer: str = "adamw",
    loss_fn: LossFn | None = None,
    keep_dropout: bool = False,
) -> list[float]:
    """Train ``model`` itself for ``steps`` steps on ``batch``; the N + 1 losses (before each step, after the last).

    The caller passes a copy: this updates the weights in place.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(optimizer, params, lr) if params else None
    losses = []
    with training_state(model, keep_dropout=keep_dropout):
        for _ in range(steps):
            _, loss = call_model(model, batch, loss_fn)
            losses.append(float(loss.detach()))
            if opt is None or not loss.requires_grad:
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            losses.append(float(call_model(model, batch, loss_fn)[1]))
    return losses


def dropped(losses: list[float], min_drop: float = MIN_DROP) -> bool:
    """The last loss is finite and at most (1 - min_drop) times the first."""
    first, last = losses[0], losses[-1]
    return math.isfinite(first) and math.isfinite(last) and last <= (1 - min_drop) * first


def cannot_overfit(o: OverfitReport, trainable: int) -> Finding | None:
    """The loss of the one batch did not drop by ``min_drop`` in N steps."""
    if o.dropped:
        return None
    first, last = o.losses[0], o.losses[-1]
    if trainable == 0:
        cause = "nothing is trainable, so no step changes anything"
    elif not (math.isfinite(first) and math.isfinite(last)):
        cause = "the loss went non-finite: the learning rate is too high, or the loss divides by zero"
    else:
        cause = (
            "usual causes: parameters that receive no gradient, a loss that does not reach the weights, a learning "
            "rate far too small (try a larger --lr or more steps before concluding), or a broken backward "
            "(run gradscope verify)"
        )
    return Finding(
        "cannot_overfit",
        "warning",
        None,
        [],
        f"the loss of one batch went from {first:.4g} to {last:.4g} in {format_count(o.steps, 'step')} of "
        f"{o.optimizer} at lr {o.lr:g}; it should at least fall by {o.min_drop:.0%} when the setup can learn at "
        f"all: {cause}.",
    )


def overfit(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    steps: int,
    lr: float = DEFAULT_LR,
    optimizer: str = "adamw",
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
    full = prepare_batch(model, batch, source)
    device = next(model.parameters()).device
    student = copy.deepcopy(model)
    options = {"steps": steps, "lr": lr, "optimizer": optimizer, "loss_fn": loss_fn, "keep_dropout": keep_dropout}
    losses = loss_curve(student, to_device(full, device), **options)
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

"""``grads``: the gradient that reaches the weights, one backward as a trainer runs it, and the checks on it."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from gradscope.checks.grads import (
    DEFAULT_LR,
    DEFAULT_MAX_GRAD_NORM,
    GradThresholds,
    adapter_summary,
    block_norms,
    clip_factor,
    depth_ratio,
    global_norm,
    grad_findings,
    module_rows,
    param_grad,
    param_status,
)
from gradscope.data.batch import prepare_batch
from gradscope.engine.params import PROBE_STEP, Slot, gradient_stats, param_backward, parameter_layout, still_zero
from gradscope.errors import InputError
from gradscope.model.layers import find_decoder_layers
from gradscope.model.prepare import describe_model, to_device
from gradscope.model.usercode import LossFn
from gradscope.report.check import Report
from gradscope.report.text import format_count
from gradscope.report.weights import GradReport


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
    require_finite(lr=lr, max_grad_norm=max_grad_norm)
    full = prepare_batch(model, batch, source)
    device = next(model.parameters()).device
    g = gradient_report(
        model, to_device(full, device), loss_fn=loss_fn, lr=lr, max_grad_norm=max_grad_norm, keep_dropout=keep_dropout
    )
    if report is None:
        report = Report(model=describe_model(model, loss_fn), losses=[g.loss])
    report.grads = g
    report.findings += grad_findings(g, thresholds)
    return report


def require_finite(**values: float) -> None:
    """Each value a finite, non-negative number (an infinite learning rate makes every ratio inf or nan)."""
    for name, value in values.items():
        if not math.isfinite(value) or value < 0:
            raise InputError(f"`{name}` is {value}; it must be a finite number, 0 or more")


def gradient_report(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    loss_fn: LossFn | None = None,
    lr: float = DEFAULT_LR,
    max_grad_norm: float = DEFAULT_MAX_GRAD_NORM,
    keep_dropout: bool = False,
) -> GradReport:
    """One backward with parameter gradients on a prepared batch (on the model's device), reduced to a GradReport.

    Raises:
        ModelCallError: the model or loss fails on this batch.
    """
    slots = parameter_layout(model)
    trainable = [s.param for s in slots if s.param.requires_grad]
    loss, grads = param_backward(model, batch, loss_fn, trainable, keep_dropout)
    stats = {id(p): gradient_stats(p, g) for p, g in zip(trainable, grads, strict=True)}
    zero = [p for p in trainable if stats[id(p)].zero]
    moving = [
        (p, g)
        for p, g in zip(trainable, grads, strict=True)
        if g is not None and stats[id(p)].finite and not stats[id(p)].zero
    ]
    del grads  # the reductions are all the report needs: free the full gradients before the probe
    stuck = still_zero(model, batch, loss_fn, keep_dropout, zero, moving) if zero else set()
    del moving
    params = [param_grad(s, stats.get(id(s.param)), param_status(s, stats.get(id(s.param)), stuck), lr) for s in slots]
    layers = find_decoder_layers(model)
    blocks = block_norms(params, slots, len(layers) if layers is not None else 0)
    norm = global_norm(params)
    return GradReport(
        loss=float(loss),
        lr=lr,
        max_grad_norm=max_grad_norm,
        global_norm=norm,
        clip_factor=clip_factor(norm, max_grad_norm),
        depth_ratio=depth_ratio(blocks),
        block_grad_norms=blocks,
        modules=module_rows(slots, stats, lr),
        parameters=params,
        adapter=adapter_summary(model, params),
        notes=_notes(slots, zero),
    )


def _notes(slots: list[Slot], zero: list[nn.Parameter]) -> list[str]:
    notes = [
        f"{s.name} is tied to {', '.join(s.tied_to)} (the same tensor): reported once, under {s.group}"
        for s in slots
        if s.tied_to
    ]
    if zero:
        notes.append(
            f"{format_count(len(zero), 'parameter')} had an exactly zero gradient and were looked at again after a "
            f"sign step of {PROBE_STEP:g} on the others (a zero gradient can be temporary: a fresh LoRA's lora_A gets "
            "one only once lora_B has moved)"
        )
    return notes

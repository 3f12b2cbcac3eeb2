"""``verify``: autograd's gradient against central finite differences, on the user's model and batch."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from gradscope.checks.verify import gradient_mismatch, nonfinite_loss
from gradscope.data.batch import prepare_batch
from gradscope.engine.finite_diff import (
    EMBEDDINGS,
    FLOAT32,
    FLOAT32_NOTE,
    Precision,
    check_gradient,
    model_loss_fn,
    precision_context,
    probe_copy,
    sample_parameters,
)
from gradscope.engine.run import training_state
from gradscope.model.layers import input_embeddings
from gradscope.model.prepare import describe_model, to_device
from gradscope.model.usercode import LossFn
from gradscope.report.check import Report
from gradscope.report.weights import DirectionCheck, VerifyReport


def verify(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    loss_fn: LossFn | None = None,
    directions: int = 2,
    parameters: int = 4,
    seed: int = 0,
    report: Report | None = None,
    source: str | None = None,
) -> Report:
    """Check autograd's gradient of the loss against central finite differences, on a float64 copy of the model.

    Args:
        model: A loaded causal LM; it is deep-copied (converted to float64 where it allows), never changed.
        batch: As for ``gradscope.check``.
        loss_fn: ``fn(logits, labels) -> scalar`` replacing the model's own loss: the usual suspect.
        directions: Random directions per target, after autograd's own gradient direction.
        parameters: How many parameters to check besides the input embeddings (spread over the model).
        seed: Seeds the random directions.
        report: Add to this report instead of starting a new one.
        source: The data file, for error messages.

    Returns:
        The Report with ``verify`` set and ``gradient_mismatch`` when autograd disagrees.

    Raises:
        InputError: the batch does not fit the model, or the model/loss fails on it.
    """
    full = prepare_batch(model, batch, source)
    probe, cast, notes = probe_copy(model, to_device(full, next(model.parameters()).device), loss_fn)
    names = sample_parameters(model, parameters)
    value, precision, checks = _check_probe(probe, cast, loss_fn, names, directions=directions, seed=seed)
    dtype = str(next(probe.parameters()).dtype).removeprefix("torch.")
    if dtype == "float64" and precision is FLOAT32:
        notes.append(FLOAT32_NOTE)
    worst = max((c.relative_error for c in checks), default=None)
    precision = precision or FLOAT32
    v = VerifyReport(dtype, precision.name, precision.step, precision.tolerance, value, checks, worst, notes)
    if report is None:
        report = Report(model=describe_model(model, loss_fn), losses=[value])
    report.verify = v
    report.findings += [f for f in [nonfinite_loss(v), gradient_mismatch(v)] if f is not None]
    return report


def _check_probe(
    probe: nn.Module,
    batch: Mapping[str, torch.Tensor],
    loss_fn: LossFn | None,
    names: Sequence[str],
    *,
    directions: int,
    seed: int,
) -> tuple[float, Precision | None, list[DirectionCheck]]:
    """check_gradient on the probe's loss; no checks (and no precision) when the loss is not finite."""
    with training_state(probe):
        probe.requires_grad_(False)  # the substituted tensors are the leaves; nothing else needs a gradient
        fn = model_loss_fn(probe, batch, loss_fn, names)
        inputs = _start_point(probe, batch, names)
        value = float(fn(inputs).detach())
        if not math.isfinite(value):
            return value, None, []
        return check_gradient(fn, inputs, names=[EMBEDDINGS, *names], directions=directions, seed=seed)


def _start_point(probe: nn.Module, batch: Mapping[str, torch.Tensor], names: Sequence[str]) -> list[torch.Tensor]:
    """[zero perturbation of the input embeddings (B, T, H), the current values of the sampled parameters]."""
    with torch.no_grad(), precision_context(probe):
        embedded = input_embeddings(probe)(batch["input_ids"])
    params = dict(probe.named_parameters())
    return [torch.zeros_like(embedded)] + [params[n].detach() for n in names]

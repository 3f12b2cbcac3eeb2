"""Gradient accumulation: the batch split into micro-batches, each token's weight in the summed gradient."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gradscope.data.batch import select_rows
from gradscope.engine.forward import Graph, call_model
from gradscope.engine.windows import differentiable_head, synced_clock


@dataclass
class Accumulation:
    """The full-batch gradient at the logits against the sum of K micro-batch gradients."""

    micro_batches: int
    rows: list[list[int]]  # the rows of each micro-batch
    cosine: float
    relative_error: float  # ||accumulated - full|| / ||full||
    scale: float  # ||accumulated|| / ||full||
    seconds: float


def accumulate(graph: Graph, micro_batches: int) -> Accumulation:
    """Re-run the batch as gradient accumulation does and compare gradients at the logits.

    The rows are split into ``micro_batches`` consecutive groups; each runs through the model with the user's loss,
    divided by the number of micro-batches (transformers' Trainer without ``num_items_in_batch``). The full-batch
    gradient comes from the core run's graph. Gradients are taken at the LM head's output (the logits, before any
    soft-capping or dtype copy), which is the only differentiable tensor of the micro-batch runs: no backward goes
    through the model. Models without an output embedding module are compared at the logits.
    """
    assert graph.logits is not None, "the accumulation probe keeps the loss -> logits graph (loss_graph)"
    began = synced_clock(graph.logits.device)
    at_head = graph.head_output is not None and graph.head_output.requires_grad
    output = graph.head_output if graph.head_output is not None and at_head else graph.logits
    full = torch.autograd.grad(graph.loss, output, retain_graph=True)[0]
    parts = [rows.tolist() for rows in torch.tensor_split(torch.arange(len(full)), micro_batches)]
    moments = torch.zeros(4, dtype=torch.float64)
    with differentiable_head(graph.model) as leaves:
        for rows in parts:
            logits, loss = call_model(graph.model, select_rows(graph.batch, rows), graph.loss_fn)
            output = leaves[-1] if at_head and leaves else logits  # (b, T, V)
            moments += _moments(full[rows], _grad_or_zero(loss / micro_batches, output))
    cosine, relative, scale = _compare(*moments.tolist())
    return Accumulation(micro_batches, parts, cosine, relative, scale, synced_clock(graph.logits.device) - began)


def _grad_or_zero(loss: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if not loss.requires_grad:
        return torch.zeros_like(logits)
    grad = torch.autograd.grad(loss, logits, allow_unused=True)[0]
    return torch.zeros_like(logits) if grad is None else grad


def _moments(full: torch.Tensor, accumulated: torch.Tensor) -> torch.Tensor:
    """<full, acc>, ||full||^2, ||acc||^2, ||acc - full||^2, summed row by row into float64.

    Each row's (T * V) products are reduced in fp32 (a copy of the gradients in float64 would cost more than the
    micro-batch forward); the difference is taken before squaring, so equal gradients give exactly 0.
    """
    out = torch.zeros(4, dtype=torch.float64)
    for a, b in zip(full.float().flatten(1), accumulated.float().flatten(1), strict=True):  # (T * V,) per row
        sums = torch.stack([torch.dot(a, b), torch.dot(a, a), torch.dot(b, b), torch.linalg.vector_norm(b - a) ** 2])
        out += sums.double().cpu()
    return out


def _compare(dot: float, full_sq: float, acc_sq: float, diff_sq: float) -> tuple[float, float, float]:
    """cosine, relative error and scale of the accumulated gradient against the full one."""
    if full_sq == 0:
        return (1.0, 0.0, 1.0) if acc_sq == 0 else (float("nan"), float("inf"), float("inf"))
    cosine = dot / math.sqrt(full_sq * acc_sq) if acc_sq > 0 else 0.0
    return cosine, math.sqrt(diff_sq / full_sq), math.sqrt(acc_sq / full_sq)

"""Probe windows: which outputs of which rows a probe traces back to which inputs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from gradscope.model.layers import input_embeddings, output_embeddings

SEED = 0


@dataclass(frozen=True)
class Window:
    """One row's projected outputs in one slice of the batched backward.

    Attributes:
        slice: Which of the batched backward's slices it belongs to.
        row: The row of the batch.
        start: First projected position: the row's first real token, or a document start.
        cut: Positions ``>= cut`` are the future of every projected position (== the row's end when the causal
            probe is off, so nothing is checked there).
        boundary: ``start`` is a document boundary: positions ``< start`` belong to earlier documents.
        future: Positions ``>= cut`` are checked.
    """

    slice: int
    row: int
    start: int
    cut: int
    boundary: bool
    future: bool


def plan_windows(
    starts: torch.Tensor, real: torch.Tensor, *, causal: bool, packing: bool, per_row: int = 1
) -> list[Window]:
    """Where to cut each row: up to ``per_row`` windows, one per slice of the batched backward.

    Each window begins at the row's first real token or at a document boundary (boundaries spread evenly over the
    row when there are more than ``per_row``; a single window takes the last document, which has every other one
    before it) and is cut inside its document at 1/(n+1), 2/(n+1), ... of its length, so that both the future and
    earlier documents are checked by the same backward pass.

    Args:
        starts: (B, T) bool, document starts (``gradscope.batch.document_starts``).
        real: (B, T) bool, tokens that are not padding.
        causal: Check the future (cuts inside the row).
        packing: Check earlier documents (windows that begin at a boundary).
        per_row: Windows per row.
    """
    windows = []
    for row in range(len(real)):
        tokens = real[row].nonzero().flatten().tolist()
        if len(tokens) < 2:
            continue
        first, end = tokens[0], tokens[-1] + 1
        boundaries = [t for t in starts[row].nonzero().flatten().tolist() if first < t < end] if packing else []
        windows += _row_windows(row, first, end, boundaries, causal, per_row)
    return windows


def _row_windows(row: int, first: int, end: int, boundaries: list[int], causal: bool, per_row: int) -> list[Window]:
    begins = [first, *boundaries] if causal else boundaries
    if not begins:
        return []
    if len(begins) > per_row == 1:
        begins = begins[-1:]
    elif len(begins) > per_row:  # spread over the row: first, ..., last
        begins = [begins[k * (len(begins) - 1) // (per_row - 1)] for k in range(per_row)]
    elif causal:  # fewer documents than slices: cut the same documents at other points
        begins = [begins[k % len(begins)] for k in range(per_row)]
    out = []
    for k, start in enumerate(begins):
        doc_end = next((b for b in boundaries if b > start), end)
        cut = min(start + max(1, round((doc_end - start) * (k + 1) / (per_row + 1))), end) if causal else end
        future = causal and cut < end
        if future or start > first:
            out.append(Window(k, row, start, cut, boundary=start > first, future=future))
    return out


def in_slices(windows: list[Window]) -> list[Window]:
    """Number each row's windows 0, 1, ...: windows of different rows share a slice of the batched backward."""
    count: dict[int, int] = {}
    out = []
    for w in windows:
        out.append(replace(w, slice=count.get(w.row, 0)))
        count[w.row] = count.get(w.row, 0) + 1
    return out


@contextmanager
def differentiable_head(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Make the LM head's output a leaf that requires grad, so the logits carry a graph to the loss only.

    Yields the list of leaves made, one per forward. Without an output embedding module, the input embedding's
    output is made the leaf instead (a graph through the whole model).
    """
    leaves: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        leaves.append(output.detach().requires_grad_(True))
        return leaves[-1]

    head = output_embeddings(model)
    handle = (head if head is not None else input_embeddings(model)).register_forward_hook(hook)
    try:
        yield leaves
    finally:
        handle.remove()


def synced_clock(device: torch.device) -> float:
    """Seconds, after the device's queued work is done (GPU kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()

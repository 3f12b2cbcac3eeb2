"""Structural probes: what the core run's backward already shows, and extra backward passes through its forward.

- **screen** (free): in a causal model whose packed documents are isolated, the loss's gradient reaches
  embedding[s] only through trained logits at t >= s in s's document. So it must be exactly zero at every real token
  after the last trained logit of its document (under the shifted causal-LM loss, at least each row's last token;
  in a packed row, each document's untrained last token). The core backward computed that gradient: reading it
  costs nothing, and a non-zero value there is a leak from earlier tokens (the future is visible) or from later
  documents (packed documents see each other), or a loss term outside the logits.
- **causal / packing windows**: vector-Jacobian products. Outputs in a window of positions ``[start, cut)`` of a
  row are projected on a random direction and backpropagated to the input embeddings. The gradient must be exactly
  zero at every position the window may not see: positions ``>= cut`` (the future) and, when ``start`` is a
  document boundary, positions ``< start`` (earlier packed documents; in a causal model nothing else can carry
  them). Windows run where the screen fires (to say which leak it is), in rows the screen cannot cover, and
  ``per_row`` more per row when asked (``--windows``); all slices run as one batched backward
  (``is_grads_batched=True``, i.e. vmap), or one by one when the model cannot be vmapped.
- **accumulation**: the batch re-run as K micro-batches with the user's loss, each micro loss divided by K as
  transformers' Trainer does without ``num_items_in_batch``, the sum compared with the full-batch gradient.

The projection starts at the input of the output embedding (the LM head): the logits at t are a function of that
hidden state at t alone, so a random projection there is a random projection of the logits (in the head's row
space) at a cost of D instead of V numbers per position. Models without an output embedding start at the logits.
This module returns tensors; ``gradscope.structure`` turns them into findings.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from gradscope.batch import select_rows
from gradscope.run import Graph, call_model

PROBES = ("causal", "packing", "weights")
"""The probes ``--probes`` chooses from; all run by default."""

WINDOWS_PER_ROW = 0
"""Random-projection windows per row on top of the screen, by default (``--windows``): each costs about one
activation-only backward pass, while the screen is free."""

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


@dataclass
class Dependence:
    """Which input positions each window's projected outputs depend on."""

    windows: list[Window]
    seen: torch.Tensor  # (n_slices, B, T) bool: the gradient at embedding[t] is non-zero
    batched: bool  # one vmapped backward (True) or a loop of backward passes (False)
    seconds: float

    @property
    def passes(self) -> int:
        return len(self.seen)


@dataclass
class Screen:
    """The core run's backward read as a probe (see the module docstring).

    Attributes:
        after: (B, T) bool, real tokens after the last trained logit of their document: the loss's gradient must
            be exactly zero there.
        reached: (B, T) bool, those tokens the loss's gradient reaches nonetheless.
        boundaries: Inner document boundaries whose earlier document has such a token, so that every later
            document's dependence on it is tested.
        seconds: Time to read it.
    """

    after: torch.Tensor
    reached: torch.Tensor
    boundaries: int
    seconds: float

    @property
    def rows(self) -> list[int]:
        """Rows where the loss's gradient reaches a token it may not."""
        return self.reached.any(1).nonzero().flatten().tolist()


@dataclass
class Accumulation:
    """The full-batch gradient at the logits against the sum of K micro-batch gradients."""

    micro_batches: int
    rows: list[list[int]]  # the rows of each micro-batch
    cosine: float
    relative_error: float  # ||accumulated - full|| / ||full||
    scale: float  # ||accumulated|| / ||full||
    seconds: float


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


def screen(graph: Graph, starts: torch.Tensor, real: torch.Tensor) -> Screen:
    """Where the core backward's gradient reaches tokens after the last trained logit of their document.

    Args:
        graph: The core run, with its gradient at the embeddings and its trained logits.
        starts: (B, T) bool, document starts (``gradscope.batch.document_starts``).
        real: (B, T) bool, tokens that are not padding.
    """
    began = _clock(graph.embedding.device)
    trained = graph.trained if graph.trained is not None else torch.zeros_like(real)
    after = after_the_loss(trained, starts, real)
    reached = (graph.loss_grad != 0).any(-1).cpu() & after if graph.loss_grad is not None else torch.zeros_like(after)
    return Screen(after, reached, _screened_boundaries(after, starts, real), _clock(graph.embedding.device) - began)


def after_the_loss(trained: torch.Tensor, starts: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: real tokens after the last trained logit of their document (all of it when none is trained).

    Args:
        trained: (B, T) bool at logit positions: the logit at t (predicting t + 1) has a non-zero loss gradient.
            A trained logit on padding counts for the document the padding follows.
        starts: (B, T) bool, document starts.
        real: (B, T) bool, tokens that are not padding.
    """
    doc = starts.long().cumsum(1)  # (B, T) document index within the row
    position = torch.arange(doc.shape[1]).expand_as(doc)
    last = torch.full((doc.shape[0], doc.shape[1] + 1), -1)  # (B, documents) last trained logit, -1 for none
    last = last.scatter_reduce(1, doc, torch.where(trained, position, -1), "amax")
    return real & (position > last.gather(1, doc))


def _screened_boundaries(after: torch.Tensor, starts: torch.Tensor, real: torch.Tensor) -> int:
    """Inner boundaries (between real tokens) whose earlier document holds a token after the loss."""
    return int((_boundary_tested(after, starts.long().cumsum(1)) & starts & real).sum())


def confirming_windows(found: Screen, starts: torch.Tensor, real: torch.Tensor, *, causal: bool, packing: bool) -> list[Window]:
    """The windows that say what the screen found, in each row where it fired.

    Take s, the last token the loss's gradient wrongly reaches. Its own logit is untrained and so are those after
    it in its document, so the gradient came from an earlier logit (the future is visible: window ``[first, s)``,
    cut at s) or from a later document (window from the next document start to the row's end, boundary); a model
    with neither dependence has a loss term outside the logits, and both windows come back clean. When s is in the
    last document, the boundary window starts at the last document and tells whether documents also see each other.
    """
    out = []
    for row in found.rows:
        s = int(found.reached[row].nonzero().max())
        tokens = real[row].nonzero().flatten()
        first, end = int(tokens[0]), int(tokens[-1]) + 1
        boundaries = [b for b in starts[row].nonzero().flatten().tolist() if first < b < end]
        if causal and s > first:
            out.append(Window(0, row, first, s, boundary=False, future=True))
        if packing and boundaries:
            start = next((b for b in boundaries if b > s), boundaries[-1])
            out.append(Window(0, row, start, end, boundary=True, future=False))
    return out


def uncovered_rows(found: Screen, starts: torch.Tensor, real: torch.Tensor, *, causal: bool, packing: bool) -> torch.Tensor:
    """(B, T) ``real`` restricted to the rows the screen tests nothing in: no token after the loss (causal), or a
    packed row none of whose boundaries it tests (packing). Those rows get windows."""
    doc = starts.long().cumsum(1)
    inner = starts & real
    tested = _boundary_tested(found.after, doc) & inner
    blind = (causal & ~found.after.any(1)) | (packing & inner.any(1) & ~tested.any(1))
    return real & blind[:, None]


def _boundary_tested(after: torch.Tensor, doc: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the document before position t's document holds a token after the loss."""
    has_after = torch.zeros(doc.shape[0], doc.shape[1] + 1, dtype=torch.long).scatter_reduce(1, doc, after.long(), "amax")
    return has_after.gather(1, (doc - 1).clamp(min=0)).bool()


def in_slices(windows: list[Window]) -> list[Window]:
    """Number each row's windows 0, 1, ...: windows of different rows share a slice of the batched backward."""
    count: dict[int, int] = {}
    out = []
    for w in windows:
        out.append(replace(w, slice=count.get(w.row, 0)))
        count[w.row] = count.get(w.row, 0) + 1
    return out


def trace_dependence(graph: Graph, windows: list[Window], *, seed: int = SEED) -> Dependence:
    """Backpropagate a random projection of each window's outputs to the input embeddings, all slices at once.

    Returns:
        For every slice, row and position, whether the embedding there influences the slice's projected outputs.
    """
    began = _clock(graph.embedding.device)
    output = graph.head_input if _aligned(graph.head_input, graph.logits) else graph.logits  # (B, T, D)
    cotangent = _cotangents(output, windows, seed)  # (n, B, T, D)
    seen, batched = _vjp_nonzero(output, graph.embedding, cotangent)
    return Dependence(windows, seen, batched, _clock(graph.embedding.device) - began)


def _aligned(head_input: torch.Tensor | None, logits: torch.Tensor) -> bool:
    """The head's input has one vector per logits position (the head was called once, on every position)."""
    return head_input is not None and head_input.requires_grad and head_input.shape[:-1] == logits.shape[:-1]


def _cotangents(output: torch.Tensor, windows: list[Window], seed: int) -> torch.Tensor:
    """One random projection per position, kept inside each slice's windows and zero elsewhere."""
    n = 1 + max(w.slice for w in windows)
    inside = torch.zeros(n, *output.shape[:2], 1, dtype=output.dtype, device=output.device)
    for w in windows:
        inside[w.slice, w.row, w.start : w.cut] = 1
    generator = torch.Generator(device=output.device).manual_seed(seed)
    projection = torch.randn(output.shape, generator=generator, device=output.device, dtype=output.dtype)
    return inside * projection


def _vjp_nonzero(output: torch.Tensor, leaf: torch.Tensor, cotangent: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(n, B, T) bool: where each slice's gradient at ``leaf`` is non-zero; and whether vmap did it in one pass."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*performance drop.*")  # a vmap fallback is still correct
            grads = torch.autograd.grad(output, leaf, cotangent, retain_graph=True, is_grads_batched=True)[0]
        return (grads != 0).any(-1).cpu(), True
    except (RuntimeError, NotImplementedError):
        # Models with data-dependent control flow or ops without a batching rule cannot run under vmap.
        seen = [(torch.autograd.grad(output, leaf, c, retain_graph=True)[0] != 0).any(-1).cpu() for c in cotangent]
        return torch.stack(seen), False


def accumulate(graph: Graph, micro_batches: int) -> Accumulation:
    """Re-run the batch as gradient accumulation does and compare gradients at the logits.

    The rows are split into ``micro_batches`` consecutive groups; each runs through the model with the user's loss,
    divided by the number of micro-batches (transformers' Trainer without ``num_items_in_batch``). The full-batch
    gradient comes from the core run's graph. Gradients are taken at the LM head's output (the logits, before any
    soft-capping or dtype copy), which is the only differentiable tensor of the micro-batch runs: no backward goes
    through the model. Models without an output embedding module are compared at the logits.
    """
    began = _clock(graph.logits.device)
    at_head = graph.head_output is not None and graph.head_output.requires_grad
    full = torch.autograd.grad(graph.loss, graph.head_output if at_head else graph.logits, retain_graph=True)[0]
    parts = [rows.tolist() for rows in torch.tensor_split(torch.arange(len(full)), micro_batches)]
    moments = torch.zeros(4, dtype=torch.float64)
    with _differentiable_head(graph.model) as leaves:
        for rows in parts:
            logits, loss = call_model(graph.model, select_rows(graph.batch, rows), graph.loss_fn)
            output = leaves[-1] if at_head and leaves else logits  # (b, T, V)
            moments += _moments(full[rows], _grad_or_zero(loss / micro_batches, output))
    cosine, relative, scale = _compare(*moments.tolist())
    return Accumulation(micro_batches, parts, cosine, relative, scale, _clock(graph.logits.device) - began)


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
    for a, b in zip(full.float().flatten(1), accumulated.float().flatten(1)):  # (T * V,) per row
        sums = torch.stack([torch.dot(a, b), torch.dot(a, a), torch.dot(b, b), torch.linalg.vector_norm(b - a) ** 2])
        out += sums.double().cpu()
    return out


def _compare(dot: float, full_sq: float, acc_sq: float, diff_sq: float) -> tuple[float, float, float]:
    """cosine, relative error and scale of the accumulated gradient against the full one."""
    if full_sq == 0:
        return (1.0, 0.0, 1.0) if acc_sq == 0 else (float("nan"), float("inf"), float("inf"))
    cosine = dot / math.sqrt(full_sq * acc_sq) if acc_sq > 0 else 0.0
    return cosine, math.sqrt(diff_sq / full_sq), math.sqrt(acc_sq / full_sq)


@contextmanager
def _differentiable_head(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Make the LM head's output a leaf that requires grad, so the logits carry a graph to the loss only.

    Yields the list of leaves made, one per forward. Without an output embedding module, the input embedding's
    output is made the leaf instead (a graph through the whole model).
    """
    leaves: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        leaves.append(output.detach().requires_grad_(True))
        return leaves[-1]

    head = model.get_output_embeddings()
    handle = (head if isinstance(head, nn.Module) else model.get_input_embeddings()).register_forward_hook(hook)
    try:
        yield leaves
    finally:
        handle.remove()


def _sees_forbidden(w: Window, seen: torch.Tensor) -> bool:
    """The window's outputs depend on its future (when checked) or on earlier documents (when a boundary)."""
    return bool((w.future and seen[w.cut:].any()) or (w.boundary and seen[: w.start].any()))


def _clock(device: torch.device) -> float:
    """Seconds, after the device's queued work is done (GPU kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class ProbeRun:
    """The probes of one batch, run from ``forward_backward``'s ``after_backward`` on the core run's graph.

    Args:
        starts: (B, T) bool, document starts.
        real: (B, T) bool, tokens that are not padding.
        causal: Check that no output depends on later tokens.
        packing: Check that packed documents do not depend on each other.
        per_row: Random-projection windows per row on top of the screen (``--windows``).
        micro_batches: Re-run the batch as this many accumulated micro-batches (``--accumulate``).
    """

    def __init__(
        self,
        starts: torch.Tensor,
        real: torch.Tensor,
        *,
        causal: bool,
        packing: bool,
        per_row: int = WINDOWS_PER_ROW,
        micro_batches: int | None = None,
    ) -> None:
        self.starts, self.real = starts, real
        self.causal, self.packing, self.per_row = causal, packing, per_row
        self.micro_batches = micro_batches
        self.screen: Screen | None = None
        self.windows: list[Window] = []
        self.dependence: Dependence | None = None
        self.accumulation: Accumulation | None = None

    @property
    def needed(self) -> bool:
        """Whether any probe is to run: otherwise the core run need not keep its graph."""
        return self.causal or self.packing or bool(self.micro_batches)

    def __call__(self, graph: Graph) -> None:
        # Accumulation first: it needs the loss -> logits part of the graph, which the VJPs leave intact anyway.
        if self.micro_batches:
            self.accumulation = accumulate(graph, self.micro_batches)
        if self.causal or self.packing:
            self.screen = screen(graph, self.starts, self.real)
            self.windows = self._windows(self.screen)
        if self.windows:
            self.dependence = trace_dependence(graph, self.windows)

    @property
    def unexplained(self) -> list[int]:
        """Rows where the screen fired but no window shows an output depending on a token it may not see: the
        loss reaches those tokens by a path outside the logits (or through a leak of a probe not chosen)."""
        if self.screen is None:
            return []
        dep = self.dependence
        return [
            r for r in self.screen.rows
            if dep is None or not any(_sees_forbidden(w, dep.seen[w.slice, r]) for w in dep.windows if w.row == r)
        ]

    def _windows(self, found: Screen) -> list[Window]:
        """Confirming windows where the screen fired, one window in rows it cannot test, and ``per_row`` more."""
        flags = {"causal": self.causal, "packing": self.packing}
        windows = confirming_windows(found, self.starts, self.real, **flags)
        windows += plan_windows(self.starts, uncovered_rows(found, self.starts, self.real, **flags), **flags)
        if self.per_row:
            windows += plan_windows(self.starts, self.real, **flags, per_row=self.per_row)
        return in_slices(windows)

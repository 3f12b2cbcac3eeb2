"""Structural probes: extra backward passes through the core run's forward (batched vector-Jacobian products)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from gradscope.constants import PROBES, WINDOWS_PER_ROW  # noqa: F401  (re-exported)
from gradscope.engine.accumulate import Accumulation, accumulate
from gradscope.engine.forward import Graph
from gradscope.engine.screen import Screen, confirming_windows, screen, uncovered_rows
from gradscope.engine.windows import SEED, Window, in_slices, plan_windows, synced_clock


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


def trace_dependence(graph: Graph, windows: list[Window], *, seed: int = SEED) -> Dependence:
    """Backpropagate a random projection of each window's outputs to the input embeddings, all slices at once.

    Returns:
        For every slice, row and position, whether the embedding there influences the slice's projected outputs.
    """
    assert graph.embedding is not None, "probes run only at depths that keep the embedding"
    began = synced_clock(graph.embedding.device)
    output = graph.head_input if _aligned(graph.head_input, graph.logits) else graph.logits  # (B, T, D)
    assert output is not None, "logits are freed only where the head's input is aligned"
    cotangent = _cotangents(output, windows, seed)  # (n, B, T, D)
    seen, batched = _vjp_nonzero(output, graph.embedding, cotangent)
    return Dependence(windows, seen, batched, synced_clock(graph.embedding.device) - began)


def _aligned(head_input: torch.Tensor | None, logits: torch.Tensor | None) -> bool:
    """The head's input has one vector per logits position (the head was called once, on every position); logits
    freed before the probes were so only where it had."""
    if head_input is None or not head_input.requires_grad:
        return False
    return logits is None or head_input.shape[:-1] == logits.shape[:-1]


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


def _sees_forbidden(w: Window, seen: torch.Tensor) -> bool:
    """The window's outputs depend on its future (when checked) or on earlier documents (when a boundary)."""
    return bool((w.future and seen[w.cut :].any()) or (w.boundary and seen[: w.start].any()))


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
            began = synced_clock(graph.device)
            network = graph.network()  # the forward again when the core run freed it (clean batches never get here)
            rerun = synced_clock(graph.device) - began if graph.rerun is not None else 0.0
            self.dependence = trace_dependence(network, self.windows)
            self.dependence.seconds += rerun

    @property
    def unexplained(self) -> list[int]:
        """Rows where the screen fired but no window shows an output depending on a token it may not see: the
        loss reaches those tokens by a path outside the logits (or through a leak of a probe not chosen)."""
        if self.screen is None:
            return []
        dep = self.dependence
        return [
            r
            for r in self.screen.rows
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

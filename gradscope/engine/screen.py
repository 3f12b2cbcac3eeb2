"""The free screen: what the core run's own backward already shows about causality and packing."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradscope.engine.forward import Graph
from gradscope.engine.windows import Window, synced_clock


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


def screen(graph: Graph, starts: torch.Tensor, real: torch.Tensor) -> Screen:
    """Where the core backward's gradient reaches tokens after the last trained logit of their document.

    Args:
        graph: The core run, with its gradient at the embeddings and its trained logits.
        starts: (B, T) bool, document starts (``gradscope.batch.document_starts``).
        real: (B, T) bool, tokens that are not padding.
    """
    began = synced_clock(graph.device)
    trained = graph.trained if graph.trained is not None else torch.zeros_like(real)
    after = after_the_loss(trained, starts, real)
    reached = (graph.loss_grad != 0).any(-1).cpu() & after if graph.loss_grad is not None else torch.zeros_like(after)
    return Screen(after, reached, _screened_boundaries(after, starts, real), synced_clock(graph.device) - began)


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


def confirming_windows(
    found: Screen, starts: torch.Tensor, real: torch.Tensor, *, causal: bool, packing: bool
) -> list[Window]:
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


def uncovered_rows(
    found: Screen, starts: torch.Tensor, real: torch.Tensor, *, causal: bool, packing: bool
) -> torch.Tensor:
    """(B, T) ``real`` restricted to the rows the screen tests nothing in: no token after the loss (causal), or a
    packed row none of whose boundaries it tests (packing). Those rows get windows."""
    doc = starts.long().cumsum(1)
    inner = starts & real
    tested = _boundary_tested(found.after, doc) & inner
    blind = (causal & ~found.after.any(1)) | (packing & inner.any(1) & ~tested.any(1))
    return real & blind[:, None]


def _boundary_tested(after: torch.Tensor, doc: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the document before position t's document holds a token after the loss."""
    has_after = torch.zeros(doc.shape[0], doc.shape[1] + 1, dtype=torch.long).scatter_reduce(
        1, doc, after.long(), "amax"
    )
    return has_after.gather(1, (doc - 1).clamp(min=0)).bool()
